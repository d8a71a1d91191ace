"""Where the model, the data and the output live: URIs resolved to local paths.

Fetching is ferry_runtime.storage's job (the storage initializer, the one home of Ferry's URI schemes and
of the model digest): local paths are used in place, everything else is fetched into a scratch directory.
The output is written to a local directory: a path, file:///PATH, or pvc://CLAIM/PATH, which the Job
reaches through the claim mounted at ${FERRY_PVC_ROOT:-/mnt/pvc}/CLAIM (the same rule as the fetcher's).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ferry_optimizer.errors import InputError
from ferry_optimizer.key import file_sha256
from ferry_runtime import storage


@dataclass(frozen=True)
class Located:
    path: Path
    sha256: str
    # ferry-fetch's digest: of the file's bytes, or of a directory's sorted "<sha256>  ./<path>" manifest.


def local_path(uri: str) -> Path | None:
    """The local path a URI names without fetching (a plain path or file://), or None."""
    parts = urlsplit(uri)
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    if parts.scheme == "":
        return Path(uri)
    return None


def digest(path: Path) -> str:
    """The digest ferry-fetch --sha256 checks, so a spec.model.sha256 is also the key's model digest."""
    return storage.directory_digest(path) if path.is_dir() else file_sha256(path)


def fetch(uri: str, scratch: Path, flag: str) -> Located:
    """A local copy (or the local original) of what `uri` names, with its digest."""
    path = local_path(uri)
    if path is not None:
        if not path.exists():
            raise InputError(flag, "an existing file or directory", uri)
        return Located(path, digest(path))
    name = Path(urlsplit(uri).path.rstrip("/")).name or "object"
    dest = scratch / flag.strip("-") / name
    if uri.endswith("/"):
        dest.mkdir(parents=True, exist_ok=True)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        fetched = storage.fetch(uri, dest)
    except (storage.FetchError, OSError) as error:
        raise InputError(
            flag, "a URI ferry-fetch can read (file://, pvc://, http(s)://, s3://)", str(error)
        ) from error
    return Located(dest, fetched.sha256)


def output_dir(uri: str) -> Path:
    """The local directory the artifacts are written to."""
    path = local_path(uri)
    if path is not None:
        return path
    parts = urlsplit(uri)
    if parts.scheme == "pvc" and parts.netloc:
        return (
            Path(os.environ.get("FERRY_PVC_ROOT", "/mnt/pvc"))
            / parts.netloc
            / unquote(parts.path.lstrip("/"))
        )
    raise InputError("--output", "a local path, file:///PATH or pvc://CLAIM/PATH", uri)
