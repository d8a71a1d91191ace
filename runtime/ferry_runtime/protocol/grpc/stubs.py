"""Generates the protobuf message module (and its typed .pyi) from grpc_predict_v2.proto.

Registered in scripts/generate.py so CI fails when the committed stubs drift from the .proto. Only the
message classes are generated: the service is wired by hand in `server.py` with typed handlers, which
keeps the whole module under mypy --strict (grpc_tools' *_pb2_grpc.py is untyped).
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
        return {
            f"{GENERATED}/{path.name}": path.read_text()
            for path in sorted(Path(out).iterdir())
            if path.suffix in {".py", ".pyi"}
        }
