"""The `devcluster` command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path

from ferry_devcluster import (
    build,
    cluster,
    components,
    kube,
    monitoring,
    prometheus,
    prometheus_adapter,
    real_node,
)
from ferry_devcluster.config import ClusterConfig, default_port_base, default_state_dir

MAX_NODES = 500


def _count(flag: str) -> Callable[[str], int]:
    # argparse's `type` callback: a named error instead of "invalid int value"
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} expects a whole number, got {text!r}") from None
        if not 0 <= value <= MAX_NODES:
            raise argparse.ArgumentTypeError(f"{flag} must be between 0 and {MAX_NODES}, got {value}")
        return value

    return parse


def _port_base(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--port-base expects a port number, got {text!r}") from None
    if not 1024 <= value <= 65435:
        raise argparse.ArgumentTypeError(f"--port-base must be between 1024 and 65435, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="devcluster",
        description="A real local Kubernetes (etcd, kube-apiserver, controller manager, scheduler) with kwok "
        "fake nodes and metrics-server, bound to 127.0.0.1.",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where PKI, etcd data, logs and kubeconfigs live "
        "(default: $FERRY_DEVCLUSTER_DIR or <repo>/.devcluster)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="start the cluster (or repair it) and wait until it works")
    up.add_argument(
        "--nodes", type=_count("--nodes"), default=None, help="CPU fake nodes (default 2, or as last up)"
    )
    up.add_argument(
        "--gpu-nodes",
        type=_count("--gpu-nodes"),
        default=None,
        help="fake nodes with nvidia.com/gpu (default 1)",
    )
    up.add_argument(
        "--real-node",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also run a real node (containerd, kubelet, kube-proxy, CNI): real-node-0 (default: as last up)",
    )
    up.add_argument(
        "--port-base",
        type=_port_base,
        default=None,
        help="ports are this plus fixed offsets (default: $FERRY_DEVCLUSTER_PORT_BASE or 26400)",
    )

    down = commands.add_parser("down", help="stop every process of the cluster")
    down.add_argument(
        "--purge", action="store_true", help="also delete the state directory (PKI, etcd data, logs)"
    )

    status = commands.add_parser("status", help="what runs and whether the cluster is ready")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    commands.add_parser("kubeconfig", help="print the admin kubeconfig's path")
    commands.add_parser("versions", help="print the pinned version of every component")

    crds = commands.add_parser("monitoring-crds", help="the monitoring.coreos.com CRDs, on demand")
    crds.add_argument("action", choices=["install", "uninstall", "status"])

    prom = commands.add_parser(
        "prometheus", help="a Prometheus on the host scraping what the ServiceMonitors describe"
    )
    prom.add_argument(
        "action",
        choices=["up", "down", "url", "discover"],
        help="up: (re)generate the scrape configuration from the ServiceMonitors and start or reload it; "
        "discover: the target discovery loop that `up` runs in the background",
    )

    adapter = commands.add_parser(
        "adapter",
        help="prometheus-adapter on the host: the custom metrics API (custom.metrics.k8s.io) for HPAs",
    )
    adapter.add_argument(
        "action",
        choices=["up", "down"],
        help="up: start it (again when options changed) and register APIService "
        f"{prometheus_adapter.APISERVICE_NAME}; down: unregister and stop it",
    )
    adapter.add_argument(
        "--prometheus",
        metavar="URL",
        default=None,
        help="the Prometheus it queries (default: `devcluster prometheus`'s, http://127.0.0.1:<base+90>)",
    )

    which = commands.add_parser("which", help="print a cached binary's path, building it if missing")
    which.add_argument("binary", help="e.g. helm, kubectl, kube-apiserver, kubelet")

    load = commands.add_parser(
        "load-image", help="copy images from podman into the real node's containerd (no registry here)"
    )
    load.add_argument("images", nargs="+", metavar="IMAGE", help="e.g. ferry-runtime:0.1.0")

    build_cmd = commands.add_parser("build", help="build (or find cached) binaries; default: the cluster's")
    build_cmd.add_argument("binaries", nargs="*")
    return parser


def resolve_config(args: argparse.Namespace) -> ClusterConfig:
    """The cluster the command acts on: options given now, else those saved by the last `up`."""
    state_dir = (args.state_dir or default_state_dir()).resolve()
    saved = ClusterConfig.load(state_dir)
    base = saved or ClusterConfig(state_dir=state_dir, port_base=default_port_base())
    changes = {
        key: value
        for key, value in (
            ("nodes", getattr(args, "nodes", None)),
            ("gpu_nodes", getattr(args, "gpu_nodes", None)),
            ("port_base", getattr(args, "port_base", None)),
            ("real_node", getattr(args, "real_node", None)),
        )
        if value is not None
    }
    return dataclasses.replace(base, **changes)


def _up(config: ClusterConfig) -> int:
    if config.nodes + config.gpu_nodes == 0 and not config.real_node:
        print(
            "devcluster: --nodes and --gpu-nodes are both 0 without --real-node; a cluster needs at least "
            "one node",
            file=sys.stderr,
        )
        return 2
    saved = ClusterConfig.load(config.state_dir)
    running = cluster.Cluster(saved, sys.stderr).supervisor.pid("kube-apiserver") if saved else None
    if saved is not None and running is not None and saved.port_base != config.port_base:
        print(
            f"devcluster: the cluster in {config.state_dir} is running on port base {saved.port_base}; "
            f"run `devcluster down` before changing it to {config.port_base}",
            file=sys.stderr,
        )
        return 2
    if config.real_node:
        config = dataclasses.replace(config, node_ip=real_node.host_ip())
    the_cluster = cluster.Cluster(config, sys.stderr)
    timings = the_cluster.up()
    print(
        f"devcluster: up with {config.nodes} node(s) + {config.gpu_nodes} GPU node(s) at {config.server_url} "
        f"({timings.render()})",
        file=sys.stderr,
    )
    print(f"export KUBECONFIG={config.admin_kubeconfig}")
    return 0


def _status(args: argparse.Namespace, config: ClusterConfig) -> int:
    report = cluster.Cluster(config, sys.stderr).status()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            if key == "processes":
                for name, pid in value.items():
                    print(f"  {name:<24} {f'running (pid {pid})' if pid else 'stopped'}")
            else:
                print(f"{key}: {', '.join(value) if isinstance(value, list) else value}")
    return 0 if str(report.get("apiserver", "")).startswith("ready") else 3


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = resolve_config(args)
    try:
        if args.command == "up":
            return _up(config)
        if args.command == "down":
            stopped = cluster.Cluster(config, sys.stderr).down(purge=args.purge)
            print(
                f"devcluster: stopped {', '.join(stopped) if stopped else 'nothing (not running)'}",
                file=sys.stderr,
            )
            return 0
        if args.command == "status":
            return _status(args, config)
        if args.command == "kubeconfig":
            if not config.admin_kubeconfig.exists():
                print(f"devcluster: no cluster in {config.state_dir}; run `devcluster up`", file=sys.stderr)
                return 1
            print(config.admin_kubeconfig)
            return 0
        if args.command == "versions":
            for module, version in cluster.versions().items():
                print(f"{module} {version}")
            print(f"kubectl {build.kubectl()}")
            return 0
        if args.command == "monitoring-crds":
            if args.action == "install":
                monitoring.install(config.admin_kubeconfig)
            elif args.action == "uninstall":
                monitoring.uninstall(config.admin_kubeconfig)
            print(" ".join(monitoring.installed(config.admin_kubeconfig)) or "(none installed)")
            return 0
        if args.command == "prometheus":
            if args.action == "up":
                monitors, jobs = prometheus.up(config)
                print(
                    f"devcluster: prometheus scrapes {jobs} endpoint(s) of {monitors} ServiceMonitor(s); "
                    f"configuration {prometheus.config_path(config)}",
                    file=sys.stderr,
                )
            elif args.action == "discover":
                prometheus.discover_forever(config)
            elif args.action == "down":
                was_running = prometheus.down(config)
                state = "stopped" if was_running else "was not running"
                print(f"devcluster: prometheus {state}", file=sys.stderr)
                return 0
            print(prometheus.url(config))
            return 0
        if args.command == "adapter":
            if args.action == "up":
                prometheus_url = args.prometheus or prometheus.url(config)
                prometheus_adapter.up(config, prometheus_url)
                print(
                    f"devcluster: prometheus-adapter serves {prometheus_adapter.APISERVICE_NAME} from "
                    f"{prometheus_url}; metrics {prometheus_adapter.CONCURRENCY_METRIC}, "
                    f"{prometheus_adapter.RPS_METRIC}",
                    file=sys.stderr,
                )
            else:
                state = "stopped" if prometheus_adapter.down(config) else "was not running"
                print(f"devcluster: prometheus-adapter {state}", file=sys.stderr)
            return 0
        if args.command == "load-image":
            if not (config.real_node and real_node.containerd_ready(config)):
                print(
                    f"devcluster: no real node runs in {config.state_dir}; run `devcluster up --real-node`",
                    file=sys.stderr,
                )
                return 1
            for image in args.images:
                reference = real_node.normalized_reference(image)
                real_node.import_podman_image(config, image, reference)
                print(reference)
            return 0
        if args.command == "which":
            print(build.kubectl() if args.binary == "kubectl" else build.ensure([args.binary])[args.binary])
            return 0
        if args.command == "build":
            for name, path in build.ensure(args.binaries or components.CONTROL_PLANE_BINARIES).items():
                print(f"{name} {path}")
            return 0
    except (
        cluster.ClusterError,
        build.BuildError,
        kube.KubectlError,
        real_node.RealNodeError,
        prometheus.PrometheusError,
        prometheus_adapter.AdapterError,
        KeyError,
        FileNotFoundError,
    ) as error:
        print(f"devcluster: {error}", file=sys.stderr)
        return 1
    raise AssertionError(f"unhandled command {args.command}")
