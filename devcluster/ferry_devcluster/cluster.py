"""`up`, `down` and `status`: bring the processes to the wanted state and wait until the cluster works.

`up` is a reconcile, not a script: each process is started only if it is not already running with the
same command line (a changed command line, say after a devcluster upgrade, restarts just that process),
and the cluster objects are applied server-side. Running it twice gives one cluster.

The node side is a list of processes plus the objects that register nodes; fake nodes (kwok) are the
one kind today. A real node (containerd, kubelet, kube-proxy, CNI) is another such provider; see
docs/devcluster.md, "Adding the real node".
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from ferry_devcluster import (
    build,
    components,
    control_plane,
    fake_nodes,
    kube,
    kubeconfig,
    metrics_server,
    pki,
    processes,
    prometheus_adapter,
    real_node,
)
from ferry_devcluster.config import LOOPBACK, ClusterConfig
from ferry_devcluster.processes import ProcessSpec, Supervisor

# Generous: on a loaded 2-core machine the API server alone can take a minute to become ready.
START_TIMEOUT_SECONDS = 300.0
# Stop order: dependants first, etcd last, so nothing logs a storm of connection errors on the way down.
STOP_ORDER: tuple[str, ...] = (
    *real_node.PROCESS_NAMES,
    "metrics-server",
    "kwok",
    "kube-scheduler",
    "kube-controller-manager",
    "kube-apiserver",
    "etcd",
)


class ClusterError(RuntimeError):
    """The cluster could not be brought to the wanted state; the message says which part and why."""


@dataclass
class Timings:
    """Seconds spent per phase of `up`, printed at the end."""

    phases: list[tuple[str, float]] = field(default_factory=list)
    _started: float = field(default_factory=time.monotonic)
    _phase_started: float = field(default_factory=time.monotonic)

    def mark(self, phase: str) -> None:
        now = time.monotonic()
        self.phases.append((phase, now - self._phase_started))
        self._phase_started = now

    @property
    def total(self) -> float:
        return time.monotonic() - self._started

    def render(self) -> str:
        parts = ", ".join(f"{phase} {seconds:.1f}s" for phase, seconds in self.phases)
        return f"{parts}; total {self.total:.1f}s"


def _command_digest(spec: ProcessSpec, config_dir: Path) -> str:
    """What a process was started with: its command line, environment and the content of the
    configuration files it names, so a changed kwok stage list restarts kwok like a changed flag."""
    digest = hashlib.sha256(json.dumps([spec.argv, dict(spec.env)]).encode())
    for arg in spec.argv:
        path = Path(arg.partition("=")[2] or arg)
        if path.parent == config_dir and path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _log_tail(supervisor: Supervisor, name: str, lines: int = 25) -> str:
    path = supervisor.log_file(name)
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _wait_until(
    what: str,
    ready: Callable[[], bool],
    supervisor: Supervisor,
    watched: Sequence[str],
    timeout: float = START_TIMEOUT_SECONDS,
) -> None:
    """Poll `ready` until true; fail fast with the log tail if a watched process dies meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        if ready():
            return
        for name in watched:
            if supervisor.pid(name) is None:
                raise ClusterError(
                    f"{name} exited while waiting for {what}; last lines of {supervisor.log_file(name)}:\n"
                    f"{_log_tail(supervisor, name)}"
                )
        if time.monotonic() > deadline:
            logs = ", ".join(str(supervisor.log_file(name)) for name in watched)
            raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}; see {logs}")
        time.sleep(0.25)


class Cluster:
    """One devcluster, identified by its state directory."""

    def __init__(self, config: ClusterConfig, out: TextIO) -> None:
        self.config = config
        self.out = out
        self.supervisor = Supervisor(config.run_dir, config.log_dir)

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One `up` or `down` at a time per state directory (engineers and test sessions share one)."""
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        with (self.config.state_dir / "operation.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def say(self, message: str) -> None:
        print(message, file=self.out, flush=True)

    # ----------------------------------------------------------------------------- probes
    def _apiserver(self) -> kube.ApiClient:
        return kube.ApiClient.for_apiserver(self.config)

    def _component_endpoint(self, port_name: str, verify_with_ca: bool) -> kube.ApiClient:
        pki_dir = self.config.pki_dir
        return kube.ApiClient(
            f"https://{LOOPBACK}:{self.config.port(port_name)}",
            pki_dir / "ca.crt" if verify_with_ca else None,
            pki_dir / "admin.crt",
            pki_dir / "admin.key",
        )

    def etcd_healthy(self) -> bool:
        try:
            url = f"http://{LOOPBACK}:{self.config.port('etcd')}/health"
            with urllib.request.urlopen(url, timeout=2) as reply:
                return bool(json.loads(reply.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def apiserver_ready(self) -> bool:
        return self._apiserver().get("/readyz")[0] == 200

    def component_healthy(self, port_name: str, verify_with_ca: bool = False) -> bool:
        # the controller manager and scheduler serve /healthz with a self-signed certificate
        return self._component_endpoint(port_name, verify_with_ca).get("/healthz")[0] == 200

    def ready_nodes(self) -> list[str]:
        nodes = self._apiserver().get_json("/api/v1/nodes")
        if nodes is None:
            return []
        ready = []
        for node in nodes.get("items", []):
            conditions = node.get("status", {}).get("conditions", [])
            if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
                ready.append(str(node["metadata"]["name"]))
        return ready

    def namespace_exists(self, name: str) -> bool:
        return self._apiserver().get(f"/api/v1/namespaces/{name}")[0] == 200

    def default_service_account_exists(self) -> bool:
        return self._apiserver().get("/api/v1/namespaces/default/serviceaccounts/default")[0] == 200

    def metrics_api_available(self) -> bool:
        apiservice = self._apiserver().get_json(
            f"/apis/apiregistration.k8s.io/v1/apiservices/{metrics_server.APISERVICE_NAME}"
        )
        if apiservice is None:
            return False
        conditions = apiservice.get("status", {}).get("conditions", [])
        return any(c.get("type") == "Available" and c.get("status") == "True" for c in conditions)

    # ----------------------------------------------------------------------------- processes
    def _ensure_running(self, spec: ProcessSpec) -> bool:
        """Start the process unless it already runs with this command line. True if started."""
        digest_file = self.config.run_dir / f"{spec.name}.command"
        digest = _command_digest(spec, self.config.config_dir)
        if self.supervisor.pid(spec.name) is not None:
            if digest_file.exists() and digest_file.read_text() == digest:
                return False
            self.say(f"devcluster: {spec.name}'s command line changed; restarting it")
            self.supervisor.stop(spec.name)
        self.supervisor.start(spec)
        digest_file.write_text(digest)
        return True

    # ----------------------------------------------------------------------------- up
    def up(self) -> Timings:
        with self._exclusive():
            return self._up()

    def _up(self) -> Timings:
        config = self.config
        timings = Timings()
        if config.real_node:
            # before anything starts: a refused `up` leaves the machine as it was
            real_node.refuse_a_second_node(config)
        config.save()

        binaries = build.ensure(components.CONTROL_PLANE_BINARIES)
        timings.mark("binaries")

        pki.ensure(config)
        kubeconfig.write_all(config)
        config.config_dir.mkdir(parents=True, exist_ok=True)
        control_plane.scheduler_config_path(config).write_text(control_plane.scheduler_configuration(config))
        fake_nodes.kwok_config_path(config).write_text(
            fake_nodes.kwok_configuration(fake_nodes.kwok_module_dir())
        )
        timings.mark("pki+config")

        self._ensure_running(control_plane.etcd(config, binaries["etcd"]))
        _wait_until("etcd /health", self.etcd_healthy, self.supervisor, ["etcd"])
        timings.mark("etcd")

        self._ensure_running(control_plane.apiserver(config, binaries["kube-apiserver"]))
        _wait_until(
            "kube-apiserver /readyz and the kube-system namespace",
            lambda: self.apiserver_ready() and self.namespace_exists("kube-system"),
            self.supervisor,
            ["etcd", "kube-apiserver"],
        )
        timings.mark("apiserver")

        self._ensure_running(control_plane.controller_manager(config, binaries["kube-controller-manager"]))
        self._ensure_running(control_plane.scheduler(config, binaries["kube-scheduler"]))
        self._apply_cluster_objects()
        self._ensure_running(fake_nodes.kwok_process(config, binaries["kwok"]))
        self._ensure_running(metrics_server.process(config, binaries["metrics-server"]))
        self._reconcile_nodes()
        timings.mark("components")

        everything = [name for name in reversed(STOP_ORDER) if name not in real_node.PROCESS_NAMES]
        _wait_until(
            "the controller manager, scheduler, kwok and metrics-server to report healthy",
            lambda: (
                self.component_healthy("kube-controller-manager")
                and self.component_healthy("kube-scheduler")
                and self.component_healthy("kwok", verify_with_ca=True)
                and self.component_healthy("metrics-server", verify_with_ca=True)
            ),
            self.supervisor,
            everything,
        )
        wanted_nodes = set(fake_nodes.node_names(config))
        _wait_until(
            f"{len(wanted_nodes)} nodes Ready",
            lambda: wanted_nodes <= set(self.ready_nodes()),
            self.supervisor,
            everything,
        )
        _wait_until(
            "the default ServiceAccount", self.default_service_account_exists, self.supervisor, everything
        )
        _wait_until(
            f"APIService {metrics_server.APISERVICE_NAME} Available",
            self.metrics_api_available,
            self.supervisor,
            everything,
        )
        timings.mark("ready")
        if config.real_node:
            self._up_real_node(timings)
        return timings

    def _up_real_node(self, timings: Timings) -> None:
        """containerd, the kubelet and kube-proxy on this machine, registered as one more node."""
        config = self.config
        binaries = build.ensure(["kubelet", "kube-proxy", "coredns", *components.CNI_PLUGIN_BINARIES])
        real_node.prepare_host()
        real_node.ensure_cgroup_root(config)
        real_node.link_cni_plugins(config, {name: binaries[name] for name in components.CNI_PLUGIN_BINARIES})
        real_node.cni_conf_dir(config).mkdir(parents=True, exist_ok=True)
        real_node.containerd_config_path(config).write_text(real_node.containerd_config(config))
        real_node.kubelet_config_path(config).write_text(real_node.kubelet_configuration(config))
        real_node.kube_proxy_config_path(config).write_text(real_node.kube_proxy_configuration(config))
        real_node.corefile_path(config).write_text(real_node.corefile(config))
        timings.mark("node binaries+config")

        self._ensure_running(real_node.containerd_process(config))
        _wait_until(
            "containerd's socket", lambda: real_node.containerd_ready(config), self.supervisor, ["containerd"]
        )
        real_node.ensure_pause_image(config)
        timings.mark("containerd")

        node_processes = ["containerd", "kubelet", "kube-proxy"]
        # a node object outlives its kubelet (it is in etcd): after a restart, Ready counts only
        # when the new kubelet has reported it
        kubelet_started = time.time() if self.supervisor.pid("kubelet") is None else 0.0
        self._ensure_running(real_node.kubelet_process(config, binaries["kubelet"], config.node_ip))
        self._ensure_running(real_node.kube_proxy_process(config, binaries["kube-proxy"]))
        pod_cidr: list[str] = []

        def node_has_pod_cidr() -> bool:
            node = self._apiserver().get_json(f"/api/v1/nodes/{real_node.NODE_NAME}") or {}
            cidr = node.get("spec", {}).get("podCIDR")
            if cidr:
                pod_cidr.append(str(cidr))
            return bool(cidr)

        # the controller manager allocates the node's range once the kubelet registers it; the
        # bridge's subnet must be that range, so the CNI configuration is written only then
        _wait_until(
            f"node {real_node.NODE_NAME} registered with a podCIDR",
            node_has_pod_cidr,
            self.supervisor,
            node_processes,
        )
        conflist = real_node.cni_conflist(config, pod_cidr[-1])
        path = real_node.cni_conflist_path(config)
        if not path.exists() or path.read_text() != conflist:
            path.write_text(conflist)
        _wait_until(
            f"node {real_node.NODE_NAME} Ready",
            lambda: self._real_node_ready_since(kubelet_started),
            self.supervisor,
            node_processes,
        )
        timings.mark("real node")

        self._recycle_released_volumes()
        for index in range(real_node.LOCAL_VOLUMES):
            directory = real_node.local_volume_dir(config, index)
            directory.mkdir(parents=True, exist_ok=True)
            # pods run as any user; the volume is theirs to write
            directory.chmod(0o777)
        kube.apply(config.admin_kubeconfig, real_node.dns_objects(config) + real_node.storage_objects(config))
        self._ensure_running(real_node.coredns_process(config, binaries["coredns"]))
        _wait_until(
            "CoreDNS /ready",
            lambda: real_node.coredns_ready(config),
            self.supervisor,
            [*node_processes, "coredns"],
        )
        timings.mark("dns")

    def _real_node_ready_since(self, since: float) -> bool:
        node = self._apiserver().get_json(f"/api/v1/nodes/{real_node.NODE_NAME}") or {}
        for condition in node.get("status", {}).get("conditions", []):
            if condition.get("type") == "Ready" and condition.get("status") == "True":
                heartbeat = datetime.fromisoformat(condition["lastHeartbeatTime"].replace("Z", "+00:00"))
                # the API's timestamps have whole seconds
                return heartbeat.timestamp() >= since - 1.0
        return False

    def _recycle_released_volumes(self) -> None:
        """A local PV whose claim was deleted stays Released (no provisioner deletes it): empty its
        directory and recreate it, so `up` always offers every volume again."""
        key, value = real_node.NODE_LABEL
        listed = kube.kubectl(self.config.admin_kubeconfig, "get", "pv", "-l", f"{key}={value}", "-o", "json")
        for volume in json.loads(listed.stdout).get("items", []):
            if volume.get("status", {}).get("phase") != "Released":
                continue
            path = Path(volume["spec"]["local"]["path"])
            if path.is_relative_to(real_node.node_dir(self.config)):
                shutil.rmtree(path, ignore_errors=True)
            kube.kubectl(
                self.config.admin_kubeconfig, "delete", "pv", volume["metadata"]["name"], "--wait=true"
            )

    def _apply_cluster_objects(self) -> None:
        config = self.config
        kube.apply_files(
            config.admin_kubeconfig,
            metrics_server.upstream_manifest_paths(metrics_server.module_dir())
            + [fake_nodes.kwok_module_dir() / relative for relative in fake_nodes.KWOK_MANIFEST_FILES],
        )
        ca_bundle = base64.b64encode((config.pki_dir / "ca.crt").read_bytes()).decode()
        kube.apply(config.admin_kubeconfig, metrics_server.cluster_objects(config, ca_bundle))
        prometheus_adapter.unregister_when_stopped(config)

    def _reconcile_nodes(self) -> None:
        """Create missing fake nodes, delete surplus ones; leave existing ones (and kwok's status) be."""
        config = self.config
        key, value = fake_nodes.MANAGED_BY_LABEL
        listed = kube.kubectl(
            config.admin_kubeconfig, "get", "nodes", "-l", f"{key}={value}", "-o", "name"
        ).stdout.split()
        existing = {name.removeprefix("node/") for name in listed}
        wanted = fake_nodes.node_objects(config, components.KUBERNETES.version)
        missing = [node for node in wanted if node["metadata"]["name"] not in existing]
        if missing:
            # a plain create, as a kubelet registers: server-side apply would drop the status (the
            # capacity), which the Node strategy resets on its main resource
            document = json.dumps({"apiVersion": "v1", "kind": "List", "items": missing})
            kube.kubectl(config.admin_kubeconfig, "create", "-f", "-", stdin=document)
        surplus = sorted(existing - {node["metadata"]["name"] for node in wanted})
        if surplus:
            kube.kubectl(config.admin_kubeconfig, "delete", "node", "--wait=false", *surplus)

    # ----------------------------------------------------------------------------- down / status
    def down(self, purge: bool = False) -> list[str]:
        """Stop every process of this cluster; with purge, delete its state too. Returns what ran."""
        if not self.config.state_dir.exists():
            return []
        with self._exclusive():
            stopped = self._stop_all()
        if purge and self.config.state_dir.exists():
            shutil.rmtree(self.config.state_dir)
        return stopped

    def _stop_all(self) -> list[str]:
        stopped = [name for name in ("kube-proxy", "kubelet") if self.supervisor.stop(name)]
        # the containers go before containerd, so its shims have nothing left to wait for
        killed = real_node.kill_containers(self.config)
        if killed:
            stopped.append(f"{killed} container process(es)")
        stopped += [name for name in STOP_ORDER if self.supervisor.stop(name)]
        stopped += [name for name in self.supervisor.known_names() if self.supervisor.stop(name)]
        # belt and braces: a cluster binary still running with files of this state directory (its pid
        # file lost, or a child that left its group) is ours too
        strays = processes.strays(self.config.state_dir, build.cache_dir() / "bin")
        if strays:
            processes.terminate_pids(strays, grace_seconds=10.0)
            stopped.append(f"{len(strays)} stray process(es)")
        kube_proxy = build.binary_path("kube-proxy")
        stopped += real_node.teardown(self.config, kube_proxy if self.config.real_node else None)
        return stopped

    def status(self) -> dict[str, Any]:
        names = [
            name
            for name in reversed(STOP_ORDER)
            if self.config.real_node or name not in real_node.PROCESS_NAMES
        ]
        running = {name: self.supervisor.pid(name) for name in names}
        report: dict[str, Any] = {
            "state_dir": str(self.config.state_dir),
            "kubeconfig": str(self.config.admin_kubeconfig),
            "server": self.config.server_url,
            "processes": running,
        }
        if running["kube-apiserver"] is not None and self.apiserver_ready():
            version = self._apiserver().get_json("/version") or {}
            report["apiserver"] = f"ready ({version.get('gitVersion', '?')})"
            report["ready_nodes"] = self.ready_nodes()
            report["metrics_api"] = "available" if self.metrics_api_available() else "unavailable"
        else:
            report["apiserver"] = "not running"
        return report


def versions() -> dict[str, str]:
    """Every pinned upstream component and its version (kubectl is whatever build.kubectl() finds)."""
    return {component.module: component.version for component in components.ALL}
