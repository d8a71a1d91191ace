"""The content key of an optimization: digest(source model, optimize spec, optimizer version).

The operator is the key's home for in-cluster runs: it computes the key before any model bytes are read,
names the optimization Job after it and passes it to `ferry-optimize --key`, which records it verbatim.
The algorithm is docs/optimizer.md's ("The content key") and must give byte-identical keys to
`ferry_optimizer.key.content_key` (tests/optimization_jobs/test_content_key.py compares the two on many
specs); the operator must not import ferry_optimizer, so it is restated here from the operator's typed API:

    payload = {"model": <model identity>, "optimize": <normalized spec>, "optimizer": <optimizer version>}
    key     = sha256 hex of json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)

The model identity is spec.model.sha256 when set (exactly the digest ferry-fetch verifies and the
optimizer computes) and otherwise the model URI: the operator cannot read the bytes, so a file replaced at
the same URI keeps its key. As with KServe's storageUri, a new model needs a new sha256 or a new URI (or
any change to the optimize spec) to be optimized again.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ferry_operator.api import models

# The order ferry-optimize normalizes `export` to (the API treats it as a set).
EXPORT_ORDER: tuple[models.ExportFormat, ...] = ("onnx", "tflite", "tflite-int8")


def model_identity(source: models.ModelSource) -> str:
    """What stands for the model's bytes in the key: its SHA-256 when the spec pins it, else its URI."""
    return source.sha256 if source.sha256 is not None else source.uri


def normalized_optimize(optimize: models.Optimize | None) -> dict[str, Any]:
    """The normalized spec (ferry_optimizer.spec.OptimizeSpec.to_dict()): every default filled in, absent
    optional blocks omitted, numbers as floats where the field is a number, export in canonical order.
    No optimize block (a non-ONNX model that is only converted) normalizes like an empty one."""
    spec = optimize if optimize is not None else models.Optimize()
    training = spec.training
    result: dict[str, Any] = {
        "graph": spec.graph,
        "quantize": spec.quantize,
        "training": {
            "learningRate": float(training.learning_rate),
            "schedule": training.schedule,
            "l2": float(training.l2),
            "batchSize": int(training.batch_size),
        },
        "export": [fmt for fmt in EXPORT_ORDER if fmt in spec.export],
    }
    if spec.prune is not None:
        result["prune"] = {
            "sparsity": float(spec.prune.sparsity),
            "method": spec.prune.method,
            "epochs": int(spec.prune.epochs),
        }
    if spec.distill is not None:
        student: dict[str, Any] = {"widthFactor": float(spec.distill.student.width_factor)}
        if spec.distill.student.depth is not None:
            student["depth"] = int(spec.distill.student.depth)
        result["distill"] = {
            "student": student,
            "epochs": int(spec.distill.epochs),
            "temperature": float(spec.distill.temperature),
        }
    if spec.data is not None:
        result["data"] = {"uri": spec.data.uri, "samples": int(spec.data.samples)}
    if spec.quantize in ("int4", "int8"):
        weight_only = spec.weight_only or models.WeightOnly()
        result["weightOnly"] = {
            "blockSize": int(weight_only.block_size),
            "accuracyLevel": int(weight_only.accuracy_level),
        }
    if spec.validate_ is not None:
        validate = spec.validate_
        if validate.metric == "perplexity":
            increase = validate.max_increase if validate.max_increase is not None else 0.05
            result["validate"] = {"metric": validate.metric, "maxIncrease": float(increase)}
        else:
            drop = validate.max_drop if validate.max_drop is not None else 0.01
            result["validate"] = {"metric": validate.metric, "maxDrop": float(drop)}
    return result


def content_key(spec: models.ModelDeploymentSpec, optimizer_version: str) -> str:
    """The key of optimizing `spec.model` with `spec.optimize` by optimizer `optimizer_version`."""
    payload = {
        "model": model_identity(spec.model),
        "optimize": normalized_optimize(spec.optimize),
        "optimizer": optimizer_version,
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
