"""The serving container's memory request and the download volume's size when the spec sets none.

A generative pod's memory is known before it starts: the weights it maps, the KV-cache pool it allocates
up front (maxSequences slots of the model's context length, float32 keys and values: what
ferry_runtime.generative.engine allocates) and the runtime itself. Requesting less lets the scheduler
pack pods that the kernel then kills under load; requesting a flat 512Mi did exactly that for any model
past a few hundred MB. The figures come from the optimization Job (status.optimization.artifact), so a
generative folder served as is (no Job) and tensor models keep the flat default.
"""

from __future__ import annotations

import math
import re

from ferry_operator.builders.inputs import BuildInputs

MIB = 1 << 20
# Memory request of a tensor model's runtime, or of a generative one whose size is unknown.
DEFAULT_MEMORY = "512Mi"
# The runtime process around a generative model: Python, ONNX Runtime, the tokenizer, the HTTP server
# and the ONNX Runtime arena for one prefill chunk's activations (docs/generative.md "Memory" has the
# measurement behind it).
RUNTIME_OVERHEAD_BYTES = 256 * MIB
# Room in the download volume beyond the model's bytes: the drift reference, a file being resumed and
# the filesystem's own blocks.
DOWNLOAD_HEADROOM_BYTES = 64 * MIB

_SUFFIXES = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 1 << 10,
    "Mi": 1 << 20,
    "Gi": 1 << 30,
    "Ti": 1 << 40,
    "Pi": 1 << 50,
    "Ei": 1 << 60,
    "m": 10**-3,
}
_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|m)?$")


def quantity_bytes(quantity: int | str) -> int | None:
    """A Kubernetes quantity in bytes (rounded up); None when it does not parse (the API server then
    refuses the Deployment with its own message)."""
    match = _QUANTITY.match(str(quantity).strip())
    if match is None:
        return None
    number, suffix = match.groups()
    return math.ceil(float(number) * _SUFFIXES[suffix or ""])


def generative_memory_bytes(inputs: BuildInputs) -> int | None:
    """Weights + a full KV-cache pool + the runtime, for a generative artifact whose figures are known."""
    artifact = inputs.artifact
    if (
        artifact.format != "onnx-genai"
        or artifact.size_bytes is None
        or artifact.kv_cache_bytes_per_token is None
        or artifact.context_length is None
    ):
        return None
    sequences = inputs.spec.serving.generation.max_sequences
    kv_pool = artifact.kv_cache_bytes_per_token * artifact.context_length * sequences
    return artifact.size_bytes + kv_pool + RUNTIME_OVERHEAD_BYTES


def _memory_limit(inputs: BuildInputs) -> tuple[int | str, int] | None:
    limits = inputs.spec.serving.resources.limits or {}
    if "memory" not in limits:
        return None
    limit = quantity_bytes(limits["memory"])
    return None if limit is None else (limits["memory"], limit)


def kv_cache_budget(inputs: BuildInputs) -> int | None:
    """The runtime's KV-cache budget (FERRY_RUNTIME_KV_CACHE_BYTES) when limits.memory cannot hold the
    full pool: the runtime then runs fewer sequences instead of being killed for memory, and refuses to
    start, saying why, when not even one fits. None: no budget needed (or nothing known to size by)."""
    sized = generative_memory_bytes(inputs)
    limit = _memory_limit(inputs)
    if sized is None or limit is None or limit[1] >= sized:
        return None
    assert inputs.artifact.size_bytes is not None  # generative_memory_bytes needs it
    return max(limit[1] - inputs.artifact.size_bytes - RUNTIME_OVERHEAD_BYTES, 1)


def tensor_memory_bytes(inputs: BuildInputs) -> int | None:
    """A tensor model whose size an optimization Job reported: its weights once, plus 10% and the
    runtime; None when that is within DEFAULT_MEMORY (small models keep it). ONNX Runtime holds the
    weights once (measured: a 577 MiB INT8 model with external data peaks at 683 MiB RSS,
    tests/optimizer/test_optimizer_external_data.py)."""
    artifact = inputs.artifact
    if artifact.format != "onnx" or artifact.size_bytes is None:
        return None
    sized = math.ceil(artifact.size_bytes * 1.1) + RUNTIME_OVERHEAD_BYTES
    default = quantity_bytes(DEFAULT_MEMORY)
    assert default is not None
    return sized if sized > default else None


def memory_request(inputs: BuildInputs) -> int | str:
    """The memory request of a serving container whose spec gives none: sized for a generative model
    or a tensor model of known size (in whole MiB), else DEFAULT_MEMORY; never above limits.memory (a
    request above its limit is invalid)."""
    limit = _memory_limit(inputs)
    sized = generative_memory_bytes(inputs) or tensor_memory_bytes(inputs)
    if sized is None:
        sized = quantity_bytes(DEFAULT_MEMORY)
        assert sized is not None
        return DEFAULT_MEMORY if limit is None or limit[1] >= sized else limit[0]
    if limit is not None and limit[1] < sized:
        return limit[0]
    return f"{math.ceil(sized / MIB)}Mi"


def download_volume(inputs: BuildInputs) -> str | None:
    """The download volume's size (the `models` emptyDir's sizeLimit and the runtime container's
    ephemeral-storage request), when the model's size is known (status.model.sizeBytes, from the
    optimization Job): the scheduler then places the pod on a node with the disk for it, and a download
    that outgrows it evicts that pod rather than filling the node. None: unknown, no bound."""
    size = inputs.artifact.size_bytes
    if size is None:
        return None
    return f"{math.ceil((size * 1.05 + DOWNLOAD_HEADROOM_BYTES) / MIB)}Mi"
