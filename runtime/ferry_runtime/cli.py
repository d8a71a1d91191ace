"""`ferry-runtime`: serve one ONNX model over the Open Inference Protocol v2."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import uvloop

from ferry_runtime.server import Runtime
from ferry_runtime.settings import load_settings


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
    except ValueError as error:
        print(f"ferry-runtime: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return uvloop.run(Runtime(settings).run())


if __name__ == "__main__":
    sys.exit(main())
