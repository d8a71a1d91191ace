"""Regenerate every checked-in generated artifact, or with --check fail when one has drifted.

Generated artifacts (CRD YAML from the operator's API models, the API reference, gRPC protocol stubs,
the chart README) are committed so users can read them without running anything; CI runs this with
--check so a change to a source that is not followed by `python scripts/generate.py` fails the build.
Each generator returns {relative path: expected file content}.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Generators that are repository tooling rather than product code live beside this script.
sys.path.insert(0, str(ROOT / "scripts"))

# "module:function" -> a callable returning {path relative to the repo root: content}.
GENERATORS: list[str] = [
    "ferry_runtime.protocol.grpc.stubs:generate",
    # The CRD YAML first: the chart's CRD template is made from the files crds/ holds.
    "ferry_operator.crdgen:generate",
    "chartgen:generate",
]


def _load(spec: str) -> Callable[[], dict[str, str]]:
    module_name, _, attr = spec.partition(":")
    generator: Callable[[], dict[str, str]] = getattr(importlib.import_module(module_name), attr)
    return generator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="report drift instead of writing files")
    args = parser.parse_args(argv)
    drifted: list[str] = []
    for spec in GENERATORS:
        for rel, content in _load(spec)().items():
            path = ROOT / rel
            current = path.read_text() if path.exists() else None
            if current == content:
                continue
            if args.check:
                drifted.append(rel)
                diff = difflib.unified_diff(
                    (current or "").splitlines(keepends=True),
                    content.splitlines(keepends=True),
                    f"{rel} (committed)",
                    f"{rel} (generated)",
                )
                sys.stderr.writelines(list(diff)[:80])
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(content)
                print(f"wrote {rel}")
    if drifted:
        print(
            f"generated files out of date: {', '.join(drifted)}; run `python scripts/generate.py`",
            file=sys.stderr,
        )
        return 1
    print(f"generated artifacts up to date ({len(GENERATORS)} generators)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
