"""Generates the protobuf message module (and its typed .pyi) from grpc_predict_v2.proto.

Registered in scripts/generate.py so CI fails when the committed stubs drift from the .proto. Only the
message classes are generated: the service is wired by hand in `server.py` with typed handlers, which
keeps the whole module under mypy --strict (grpc_tools' *_pb2_grpc.py is untyped).

The messages are registered in a private descriptor pool, not protobuf's default one: Triton's client
(tritonclient.grpc) registers the same `inference.*` names from its own copy of the protocol, and two
files defining one symbol in the default pool make whichever is imported second fail. Message names
never travel on the wire, so a private pool changes nothing for clients.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

PROTO = Path(__file__).with_name("grpc_predict_v2.proto")
GENERATED = "runtime/ferry_runtime/protocol/grpc/generated"


def generate() -> dict[str, str]:
    # grpc_tools is a development dependency: imported here so the serving image never needs it.
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as out:
        status = protoc.main(
            [
                "grpc_tools.protoc",
                f"--proto_path={PROTO.parent}",
                f"--python_out={out}",
                f"--pyi_out={out}",
                str(PROTO),
            ]
        )
        if status != 0:
            raise RuntimeError(f"protoc failed with status {status} on {PROTO}")
        files = {
            f"{GENERATED}/{path.name}": path.read_text()
            for path in sorted(Path(out).iterdir())
            if path.suffix in {".py", ".pyi"}
        }
    module = f"{GENERATED}/grpc_predict_v2_pb2.py"
    if _DEFAULT_POOL not in files[module]:
        raise RuntimeError(f"protoc output changed shape: {_DEFAULT_POOL!r} not found in {module}")
    files[module] = files[module].replace(_DEFAULT_POOL, _PRIVATE_POOL)
    # protoc's .pyi uses bare `Mapping` for map fields, which mypy --strict reports as type-arg.
    stub = f"{GENERATED}/grpc_predict_v2_pb2.pyi"
    files[stub] = '# mypy: disable-error-code="type-arg"\n' + files[stub]
    return files


_DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile("
_PRIVATE_POOL = "_descriptor_pool.DescriptorPool().AddSerializedFile("
