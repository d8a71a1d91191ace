"""Operator scale benchmark: N ModelDeployments on kwok fake nodes, against the real local control plane.

    python bench/operator_scale.py [--count 500] [--singles 15] [--kubeconfig PATH]

Prints the time from the first create to all N Ready, the API requests made per object (the operator's
own count, and the API server's apiserver_request_total delta by resource and verb), the operator's peak
memory (VmHWM, i.e. its ru_maxrss) and CPU time, and the median apply->Ready latency of single objects next
to a baseline measured in the same run: the same Service, Deployment and PodDisruptionBudget the operator
builds, created directly, to Available. The ratio is the operator's overhead over what the cluster itself
needs for the same objects. The bulk baseline runs first in a namespace of its own, deleted before the
ModelDeployments are created, so each phase starts from the same cluster; every phase also prints the CPU
seconds each process spent (the cluster is CPU-bound on 2 cores, so that is where the time goes).

Targets (SPEC.md): 500 to Ready in <= 60 s on 2 cores; single apply->Ready <= 2 s median. Pods are tiny
(10m CPU); the run needs about 550 pod slots: `devcluster/devcluster up --nodes 10` gives 1100 (110 pods
per fake node).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import os
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import kubernetes

from ferry_operator import __version__, builders, kinds
from ferry_operator.api import models
from ferry_operator.builders import inputs as build_inputs

ROOT = Path(__file__).resolve().parents[1]
CRD = ROOT / "crds" / "ferry.dev_modeldeployments.yaml"
GROUP, VERSION, PLURAL = "ferry.dev", "v1alpha1", "modeldeployments"
SMALL = {"requests": {"cpu": "10m", "memory": "16Mi"}}
# A user's `kubectl apply` of many ModelDeployments: a few concurrent clients.
MD_CLIENTS = 8
# The baseline creates the children as concurrently as the operator does (its default 64 workers, each
# object's three children one after another here), so that the cluster, not the benchmark's client, sets the
# baseline's pace: with 8 clients the API server's serialised ClusterIP allocation of each Service held the
# baseline back and flattered the ratio.
BASELINE_CLIENTS = 64


def kubeconfig_path(given: str | None) -> str:
    if given:
        return given
    if os.environ.get("KUBECONFIG"):
        return os.environ["KUBECONFIG"].split(os.pathsep)[0]
    out = subprocess.run(
        [str(ROOT / "devcluster" / "devcluster"), "kubeconfig"], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def kubectl(kubeconfig: str, *args: str, stdin: str | None = None) -> str:
    kubectl_bin = Path(sys.executable).parent / "kubectl"
    result = subprocess.run(
        [str(kubectl_bin), "--kubeconfig", kubeconfig, *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args[:3])} failed: {result.stderr.strip()}")
    return result.stdout


def md_manifest(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": "pvc://models/digits/model.onnx", "format": "onnx"},
            "serving": {"replicas": 1, "resources": SMALL},
            "monitoring": {"serviceMonitor": "disabled", "prometheusRule": "disabled"},
        },
    }


def bare_children(name: str, namespace: str) -> list[dict[str, Any]]:
    """What the operator builds for md_manifest(name) (Service, Deployment, PodDisruptionBudget), without
    owner and without Ferry's labels (so the operator does not watch them): the same objects created by
    hand, which is what the cluster alone needs to serve the same pods."""
    spec = models.ModelDeploymentSpec.model_validate(md_manifest(name)["spec"])
    inputs = build_inputs.BuildInputs(
        owner=build_inputs.Owner(name, namespace, "00000000-0000-0000-0000-000000000000"),
        spec=spec,
        artifact=build_inputs.ServedArtifact(uri=spec.model.uri),
        defaults=build_inputs.ServingDefaults(runtime_image=f"ferry-runtime:{__version__}"),
    )
    labels = {"bench": "baseline", "instance": name}
    children = builders.desired_children(inputs)
    for manifest in children.values():
        manifest["metadata"] = {"name": name, "namespace": namespace, "labels": labels}
    children[kinds.SERVICE]["spec"]["selector"] = labels
    children[kinds.POD_DISRUPTION_BUDGET]["spec"]["selector"] = {"matchLabels": labels}
    deployment = children[kinds.DEPLOYMENT]
    deployment["spec"]["selector"] = {"matchLabels": labels}
    deployment["spec"]["template"]["metadata"]["labels"] = labels
    return [children[kind] for kind in (kinds.SERVICE, kinds.DEPLOYMENT, kinds.POD_DISRUPTION_BUDGET)]


def post(client: kubernetes.client.ApiClient, path: str, body: dict[str, Any]) -> None:
    """Create one object from a plain dict, without the client's typed (de)serialisation: both phases
    create through this, so neither pays more client CPU than the other on the same 2 cores."""
    method, url, headers, data, _ = client.param_serialize(
        "POST",
        path,
        header_params={"Content-Type": "application/json", "Accept": "application/json"},
        body=body,
        auth_settings=["BearerToken"],
    )
    response = client.call_api(method, url, header_params=headers, body=data)
    if response.status >= 300:
        raise SystemExit(f"POST {path}: {response.status} {response.read().decode(errors='replace')}")


def create_bare(client: kubernetes.client.ApiClient, name: str, namespace: str) -> None:
    bare_kinds = (kinds.SERVICE, kinds.DEPLOYMENT, kinds.POD_DISRUPTION_BUDGET)
    for kind, manifest in zip(bare_kinds, bare_children(name, namespace), strict=True):
        post(client, kind.path(namespace), manifest)


def create_md(client: kubernetes.client.ApiClient, name: str, namespace: str) -> None:
    post(client, kinds.MODEL_DEPLOYMENT.path(namespace), md_manifest(name))


def create_all(create: Any, names: list[str], clients: int) -> dict[str, float]:
    """Create every object with `clients` concurrent clients, as fast as the API server takes them
    (kubectl's client-side rate limit would make the benchmark measure kubectl);
    returns each creation time."""
    created_at: dict[str, float] = {}

    def one(name: str) -> None:
        create(name)
        created_at[name] = time.monotonic()

    with concurrent.futures.ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(one, names))
    return created_at


def apiserver_requests(kubeconfig: str) -> collections.Counter[tuple[str, str]]:
    """apiserver_request_total summed by (resource, verb)."""
    text = kubectl(kubeconfig, "get", "--raw", "/metrics")
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        value = float(line.rsplit(" ", 1)[1])
        resource = labels.get("resource", "") + (
            f"/{labels['subresource']}" if labels.get("subresource") else ""
        )
        counts[(resource, labels.get("verb", ""))] += int(value)
    return counts


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def operator_counters(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    totals: dict[str, float] = collections.defaultdict(float)
    for line in text.splitlines():
        for metric in ("ferry_operator_api_requests_total", "ferry_operator_reconcile_total"):
            if line.startswith(metric + "{"):
                totals[metric] += float(line.rsplit(" ", 1)[1])
    return totals


def proc_status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def cpu_seconds(pid: int) -> float:
    parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "metrics-server")


# The machine's own counters, next to the processes': the CPU time everything on the machine used, and
# the time the hypervisor gave our virtual CPUs to someone else (steal). A run on a contended host reads
# slower on both phases; these say how contended it was.
MACHINE = ("machine busy", "machine steal")


def machine_cpu() -> dict[str, float]:
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    hertz = os.sysconf("SC_CLK_TCK")
    return {"machine busy": (user + nice + system + irq + softirq) / hertz, "machine steal": steal / hertz}


def cluster_cpu(kubeconfig: str) -> dict[str, float]:
    """CPU seconds used so far by each process of the devcluster that owns `kubeconfig` (matched by its
    state directory on the command line), so a run shows which component the extra time goes to; plus
    the machine's counters (MACHINE)."""
    state_dir = str(Path(kubeconfig).resolve().parent.parent)
    totals: dict[str, float] = collections.defaultdict(float, machine_cpu())
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
            if state_dir.encode() not in b" ".join(args):
                continue
            program = Path(args[0].decode()).name
            component = next((c for c in COMPONENTS if program.startswith(c + "-")), None)
            if component is not None:
                totals[component] += cpu_seconds(int(proc.name))
        except OSError:  # the process ended while we looked
            continue
    return totals


def print_cpu(phase: str, before: dict[str, float], after: dict[str, float], extra: dict[str, float]) -> None:
    spent = {name: after.get(name, 0.0) - before.get(name, 0.0) for name in COMPONENTS} | extra
    parts = ", ".join(f"{name} {seconds:.1f}" for name, seconds in sorted(spent.items(), key=lambda i: -i[1]))
    print(f"  CPU seconds during {phase}: total {sum(spent.values()):.1f} = {parts}")
    machine = {name: after[name] - before[name] for name in MACHINE}
    print(
        f"  the whole machine meanwhile: {machine['machine busy']:.1f} CPU-seconds busy (other processes "
        f"{machine['machine busy'] - sum(spent.values()):.1f}), {machine['machine steal']:.1f} stolen by "
        "the hypervisor"
    )


class ReadyWatcher:
    """Watches objects in a namespace and records when each first satisfies `is_ready`."""

    def __init__(self, list_function: Any, namespace: str, is_ready: Any, **list_args: Any) -> None:
        self.ready_at: dict[str, float] = {}
        self._stop = threading.Event()
        self._condition = threading.Condition()
        self._thread = threading.Thread(
            target=self._run, args=(list_function, namespace, is_ready, list_args), daemon=True
        )
        self._thread.start()

    def _run(self, list_function: Any, namespace: str, is_ready: Any, list_args: dict[str, Any]) -> None:
        while not self._stop.is_set():
            watch = kubernetes.watch.Watch()
            try:
                for event in watch.stream(
                    list_function, namespace=namespace, timeout_seconds=30, deserialize=False, **list_args
                ):
                    obj = event["object"]
                    name = obj["metadata"]["name"]
                    if name not in self.ready_at and is_ready(obj):
                        with self._condition:
                            self.ready_at[name] = time.monotonic()
                            self._condition.notify_all()
                    if self._stop.is_set():
                        break
            except Exception as error:  # a dropped watch is resumed; the benchmark only records times
                print(f"  (watch restarted: {error})", file=sys.stderr)

    def wait(self, names: set[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._condition:
            while not names <= set(self.ready_at):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._condition.wait(remaining)
        return True

    def stop(self) -> None:
        self._stop.set()


def create_namespace(core: kubernetes.client.CoreV1Api, name: str) -> None:
    core.create_namespace({"metadata": {"name": name}})
    # The model store the specs' pvc://models/... URIs read from (kwok's volume stages bind it).
    core.create_namespaced_persistent_volume_claim(
        name,
        {
            "metadata": {"name": "models"},
            "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}}},
        },
    )


def wait_namespaces_gone(
    core: kubernetes.client.CoreV1Api, prefix: str, timeout: float, *, terminating_only: bool = False
) -> None:
    """Wait until no namespace named `prefix*` (only those being deleted, with `terminating_only`) exists:
    deleting one with hundreds of Deployments keeps the controllers busy for a while, and a phase measured
    meanwhile would pay for it."""
    deadline = time.monotonic() + timeout
    while any(
        ns.metadata.name.startswith(prefix) and (ns.metadata.deletion_timestamp or not terminating_only)
        for ns in core.list_namespace().items
    ):
        if time.monotonic() > deadline:
            raise SystemExit(f"namespaces {prefix}* still there after {timeout:.0f} s")
        time.sleep(1)


# A phase starts once the machine has used less than this many cores for QUIET_WINDOW seconds.
QUIET_CORES = 0.3
QUIET_WINDOW = 5.0


def wait_until_quiet(timeout: float) -> float:
    """Wait until the machine is idle and return how long that took. A namespace is gone once its objects
    are, but the controllers, scheduler and kwok may still be working through the deletion events (and
    other work may share the machine); a phase started meanwhile would be charged for it. In the runs so
    far the machine was idle within the first window, so this is a guard, not a correction."""
    started = time.monotonic()
    samples = [(started, machine_cpu()["machine busy"])]
    while True:
        time.sleep(1)
        now = time.monotonic()
        samples.append((now, machine_cpu()["machine busy"]))
        while samples[0][0] < now - QUIET_WINDOW - 0.5:
            samples.pop(0)
        (first_at, first), (last_at, last) = samples[0], samples[-1]
        if last_at - first_at >= QUIET_WINDOW and (last - first) / (last_at - first_at) < QUIET_CORES:
            return now - started
        if now - started > timeout:
            raise SystemExit(f"the machine did not quiet down (< {QUIET_CORES} cores) in {timeout:.0f} s")


def md_ready(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    if (
        status.get("observedGeneration") != obj["metadata"].get("generation")
        or status.get("phase") != "Ready"
    ):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def deployment_available(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    wanted = obj["spec"].get("replicas", 1)
    return (
        status.get("observedGeneration", 0) >= obj["metadata"].get("generation", 1)
        and status.get("updatedReplicas", 0) == wanted
        and status.get("availableReplicas", 0) >= wanted
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--count", type=int, default=500, help="ModelDeployments created at once (default 500)"
    )
    parser.add_argument(
        "--singles", type=int, default=15, help="single-object apply->Ready samples (default 15)"
    )
    parser.add_argument("--timeout", type=float, default=600, help="give up waiting after this many seconds")
    parser.add_argument("--kubeconfig", help="default: $KUBECONFIG, else the devcluster's")
    parser.add_argument("--keep", action="store_true", help="keep the namespace for inspection")
    parser.add_argument(
        "--profile", metavar="FILE", help="run the operator under cProfile and write its stats to FILE"
    )
    parser.add_argument(
        "--no-bulk-baseline",
        dest="bulk_baseline",
        action="store_false",
        help="skip the N bare Deployments measured first (halves the run; the pod slots needed too)",
    )
    args = parser.parse_args()
    kubeconfig = kubeconfig_path(args.kubeconfig)
    kubernetes.config.load_kube_config(config_file=kubeconfig)
    client_config = kubernetes.client.Configuration.get_default_copy()
    # one kept-alive connection per concurrent client (the default pool of 4 would reconnect per request)
    client_config.connection_pool_maxsize = BASELINE_CLIENTS
    kubernetes.client.Configuration.set_default(client_config)
    core = kubernetes.client.CoreV1Api()
    apps = kubernetes.client.AppsV1Api()
    api_client = kubernetes.client.ApiClient()
    custom = kubernetes.client.CustomObjectsApi()

    slots = sum(
        int(n.status.allocatable.get("pods", 0)) for n in core.list_node().items if not n.spec.unschedulable
    )
    needed = args.count + args.singles * 2 + 10
    if slots < needed:
        raise SystemExit(
            f"the cluster has {slots} pod slots, the run needs {needed}: "
            f"devcluster/devcluster up --nodes {needed // 110 + 1}"
        )
    kubectl(kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    kubectl(kubeconfig, "wait", "--for=condition=Established", "crd/modeldeployments.ferry.dev")
    wait_namespaces_gone(core, "bench-operator-", args.timeout, terminating_only=True)
    print(f"(waited {wait_until_quiet(args.timeout):.0f} s for an idle machine)")
    namespace = f"bench-operator-{secrets.token_hex(3)}"
    # The bulk baseline runs in its own namespace, deleted before the ModelDeployments are created: the
    # endpoints and disruption controllers match every pod event against every Service and PDB of its
    # namespace, so a phase that shared a namespace with the other's 500 objects would pay for them.
    baseline_namespace = f"{namespace}-baseline"
    create_namespace(core, namespace)
    port = free_port()
    log_path = ROOT / "out" / f"{namespace}-operator.log"
    log_path.parent.mkdir(exist_ok=True)
    env = {**os.environ, "KUBECONFIG": kubeconfig, "FERRY_OPERATOR_METRICS_PORT": str(port)}
    with log_path.open("wb") as log:
        command = [str(Path(sys.executable).parent / "ferry-operator"), "--namespace", namespace]
        if args.profile:
            command = [
                sys.executable,
                "-m",
                "cProfile",
                "-o",
                args.profile,
                "-m",
                "ferry_operator.cli",
                *command[1:],
            ]
        operator = subprocess.Popen(
            command,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                operator_counters(port)
                break
            except OSError:
                if time.monotonic() > deadline or operator.poll() is not None:
                    raise SystemExit(f"the operator did not start; see {log_path}") from None
                time.sleep(0.2)
        print(
            f"ferry operator scale benchmark: {args.count} ModelDeployments, namespace {namespace}, "
            f"{os.cpu_count()} CPUs"
        )

        # --- bulk baseline: the same pods as bare Deployments, no operator involved ---------------------
        baseline_all_ready = None
        if args.bulk_baseline:
            create_namespace(core, baseline_namespace)
            bulk_deployments = ReadyWatcher(
                apps.list_namespaced_deployment, baseline_namespace, deployment_available
            )
            before = apiserver_requests(kubeconfig)
            cluster_before, bench_before = cluster_cpu(kubeconfig), time.process_time()
            bare = [f"bare-{index:04d}" for index in range(args.count)]
            started = time.monotonic()
            create_all(lambda name: create_bare(api_client, name, baseline_namespace), bare, BASELINE_CLIENTS)
            if not bulk_deployments.wait(set(bare), args.timeout):
                raise SystemExit(f"bare Deployments not Available after {args.timeout:.0f} s")
            baseline_all_ready = max(bulk_deployments.ready_at[name] for name in bare) - started
            cluster_after, bench_after = cluster_cpu(kubeconfig), time.process_time()
            time.sleep(2)
            spent = sum((apiserver_requests(kubeconfig) - before).values())
            print(
                f"\nbaseline: {args.count} x (Service, Deployment, PDB) created directly, "
                f"all Available {baseline_all_ready:.1f} s "
                f"after the first create; API server requests {spent / args.count:.1f} per object"
            )
            print_cpu("the baseline", cluster_before, cluster_after, {"bench": bench_after - bench_before})
            bulk_deployments.stop()
            core.delete_namespace(baseline_namespace)
            wait_namespaces_gone(core, baseline_namespace, args.timeout)
            print(f"  (waited {wait_until_quiet(args.timeout):.0f} s for the cluster to finish deleting it)")

        # --- bulk --------------------------------------------------------------------------------------
        mds = ReadyWatcher(
            custom.list_namespaced_custom_object,
            namespace,
            md_ready,
            group=GROUP,
            version=VERSION,
            plural=PLURAL,
        )
        before_server = apiserver_requests(kubeconfig)
        before_operator = operator_counters(port)
        cpu_before = cpu_seconds(operator.pid)
        cluster_before, bench_before = cluster_cpu(kubeconfig), time.process_time()
        names = {f"bulk-{index:04d}" for index in range(args.count)}
        started = time.monotonic()
        created_at = create_all(
            lambda name: create_md(api_client, name, namespace), sorted(names), MD_CLIENTS
        )
        created = max(created_at.values()) - started
        if not mds.wait(names, args.timeout):
            missing = len(names - set(mds.ready_at))
            raise SystemExit(
                f"{missing} of {args.count} not Ready after {args.timeout:.0f} s; see {log_path}"
            )
        all_ready = max(mds.ready_at[name] for name in names) - started
        cluster_after, bench_after = cluster_cpu(kubeconfig), time.process_time()
        cpu_to_ready = cpu_seconds(operator.pid) - cpu_before
        per_object = sorted(mds.ready_at[name] - created_at[name] for name in names)
        time.sleep(2)  # let trailing status writes land before counting
        after_server = apiserver_requests(kubeconfig)
        after_operator = operator_counters(port)
        cpu_bulk = cpu_seconds(operator.pid) - cpu_before
        delta = after_server - before_server
        operator_requests = (
            after_operator["ferry_operator_api_requests_total"]
            - before_operator["ferry_operator_api_requests_total"]
        )
        reconciles = (
            after_operator["ferry_operator_reconcile_total"]
            - before_operator["ferry_operator_reconcile_total"]
        )
        md_patches = delta[(PLURAL, "PATCH")] + delta[(f"{PLURAL}/status", "PATCH")]

        print(
            f"\n{args.count} ModelDeployments: created in {created:.1f} s, "
            f"all Ready {all_ready:.1f} s after the first create"
        )
        print(
            f"  create->Ready per object: p50 {statistics.median(per_object):.1f} s, "
            f"p90 {per_object[int(len(per_object) * 0.9)]:.1f} s"
        )
        print(
            f"  operator API requests (its own client): {operator_requests:.0f} = "
            f"{operator_requests / args.count:.2f} per object"
        )
        print(
            f"  operator reconciles: {reconciles:.0f} = {reconciles / args.count:.1f} per object "
            "(no-op ones cost no request)"
        )
        print(
            "  PATCHes of modeldeployments (incl. status) seen by the API server: "
            f"{md_patches / args.count:.2f} per object"
        )
        print(
            "  API server requests, all clients (controllers, kwok, scheduler, bench): "
            f"{sum(delta.values()) / args.count:.1f} per object"
        )
        for (resource, verb), count in delta.most_common(12):
            print(f"    {resource or '-':<34} {verb:<8} {count:>7}  ({count / args.count:.2f}/object)")
        print_cpu(
            "create->all Ready",
            cluster_before,
            cluster_after,
            {"operator": cpu_to_ready, "bench": bench_after - bench_before},
        )
        status = proc_status(operator.pid)
        print(
            f"  operator CPU time {cpu_bulk:.1f} s; peak memory (VmHWM) {status['VmHWM']}, "
            f"now {status['VmRSS']}"
        )

        # --- singles and their baseline ------------------------------------------------------------------
        deployments = ReadyWatcher(
            apps.list_namespaced_deployment, namespace, deployment_available, label_selector="bench=baseline"
        )
        single_md: list[float] = []
        single_baseline: list[float] = []
        for index in range(args.singles):
            name = f"single-{index:03d}"
            t0 = time.monotonic()
            create_md(api_client, name, namespace)
            if not mds.wait({name}, 60):
                raise SystemExit(f"{name} not Ready in 60 s")
            single_md.append(mds.ready_at[name] - t0)
            base = f"baseline-{index:03d}"
            t0 = time.monotonic()
            create_bare(api_client, base, namespace)
            if not deployments.wait({base}, 60):
                raise SystemExit(f"{base} not Available in 60 s")
            single_baseline.append(deployments.ready_at[base] - t0)
        md_median = statistics.median(single_md)
        base_median = statistics.median(single_baseline)
        print(f"\nsingle object, median of {args.singles}: ModelDeployment apply->Ready {md_median:.2f} s")
        print(
            "  baseline (the same Service, Deployment and PDB created directly, to Available): "
            f"{base_median:.2f} s"
        )
        print(
            f"  ratio ModelDeployment / baseline: {md_median / base_median:.2f}x "
            f"(operator overhead {md_median - base_median:+.2f} s)"
        )
        status = proc_status(operator.pid)
        print(f"\noperator peak memory (VmHWM = ru_maxrss) over the whole run: {status['VmHWM']}")
        if baseline_all_ready is not None:
            print(
                "bulk ratio ModelDeployments / the same children created directly: "
                f"{all_ready / baseline_all_ready:.2f}x "
                f"({all_ready:.1f} s vs {baseline_all_ready:.1f} s)"
            )
        bulk_verdict = "met" if all_ready <= 60 else "MISSED"
        single_verdict = "met" if md_median <= 2 else "MISSED"
        print(f"targets: 500 Ready <= 60 s -> {all_ready:.1f} s for {args.count} ({bulk_verdict})")
        print(f"         single <= 2 s median -> {md_median:.2f} s ({single_verdict})")
        mds.stop()
        deployments.stop()
    finally:
        operator.send_signal(signal.SIGTERM)
        try:
            operator.wait(timeout=20)
        except subprocess.TimeoutExpired:
            operator.kill()
        if not args.keep:
            for name in (namespace, baseline_namespace):
                try:
                    core.delete_namespace(name)
                except kubernetes.client.ApiException as error:
                    if error.status != 404:
                        raise
            wait_namespaces_gone(core, namespace, args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
