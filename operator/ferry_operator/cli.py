"""`ferry-operator [--namespace NS ... | --all-namespaces]`: run the operator against the current kubeconfig
(or the pod's service account)."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from collections.abc import Sequence

import kopf
from kopf._core.engines import peering

from ferry_operator import __version__, config, wiring


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ferry-operator",
        description=(
            "Reconcile ModelDeployments (ferry.dev/v1alpha1) into served models. Settings come from "
            "FERRY_OPERATOR_* environment variables (see docs/operator.md)."
        ),
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        metavar="NS",
        help="watch this namespace (repeatable; kopf globs like 'ml-*' work)",
    )
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace")
    parser.add_argument("--version", action="version", version=f"ferry-operator {__version__}")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = config.from_env(os.environ)
    except config.ConfigError as error:
        print(f"ferry-operator: {error}", file=sys.stderr)
        return 2
    namespaces: list[str] = list(args.namespace) or ([] if args.all_namespaces else list(settings.namespaces))
    wiring.configure_logging(settings)
    ferry = wiring.create(settings, namespaces)
    # Registering the handlers is importing the module (kopf's decorators add them to its registry).
    from ferry_operator import handlers  # noqa: F401

    asyncio.run(
        kopf.operator(
            clusterwide=not namespaces,
            namespaces=namespaces,
            settings=wiring.operator_settings(settings),
            memo=kopf.Memo(ferry=ferry),
            standalone=True,
            # kopf's default identity looks the user up in /etc/passwd, which a container running as an
            # arbitrary numeric uid (the images' 65532) does not list: it would crash at start
            identity=peering.Identity(f"ferry-operator@{socket.gethostname()}"),
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
