"""The content key of an optimization: digest(source model, optimize spec, optimizer version).

Standard library only, so the operator (which never loads ML libraries) can compute the same key. The
algorithm, documented in docs/optimizer.md:

    model_digest = the digest `ferry-fetch --sha256` verifies (ferry_runtime.storage): sha256 hex of the
                   model file's bytes; for a directory (a SavedModel), sha256 hex of the lines
                   "<file sha256 hex>  ./<relative posix path>\\n" sorted by path
    payload      = {"model": model_digest, "optimize": spec.to_dict(), "optimizer": optimizer_version}
    key          = sha256 hex of json.dumps(payload, sort_keys=True, separators=(",", ":"),
                   ensure_ascii=True) encoded as UTF-8

spec.to_dict() is the normalized spec: camelCase, every default filled in, absent optional blocks
omitted, export in the order onnx, tflite, tflite-int8.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ferry_optimizer.spec import OptimizeSpec

_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def content_key(model_sha256: str, spec: OptimizeSpec, optimizer_version: str) -> str:
    payload = {"model": model_sha256, "optimize": spec.to_dict(), "optimizer": optimizer_version}
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
