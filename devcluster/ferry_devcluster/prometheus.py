"""A real Prometheus on the host that scrapes what the cluster's ServiceMonitors describe.

prometheus-operator turns ServiceMonitors into a scrape configuration inside the cluster; here the same
translation is done by `scrape_configuration` (a pure function of the ServiceMonitor objects), and
Debian's `prometheus` binary runs on the host beside the other devcluster processes. The relabelings
implement the ServiceMonitor's namespace selector, label selector, port, path, scheme and interval the way
prometheus-operator's generated configuration does, with the same target labels (namespace, service, pod,
container, endpoint, job).

Debian builds Prometheus without Kubernetes service discovery (`kubernetes_sd_configs` is rejected), so
a small discovery process (`prometheus-discovery`, supervised like the cluster's other processes) lists
Services, Endpoints and Pods every few seconds and writes them to a file_sd file with exactly the
`__meta_kubernetes_*` labels that Kubernetes discovery (role `endpoints`) would give them: the
relabelings are the ones a Kubernetes-discovering Prometheus would run. Pod IPs are reachable from the
host on the real node's CNI bridge, so the serving pods are scraped directly, as an in-cluster Prometheus
would. `devcluster prometheus up` (again after ServiceMonitors change) regenerates the configuration and
reloads the running server (`/-/reload`); docs/devcluster.md says why this instead of prometheus-operator.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ferry_devcluster import kube
from ferry_devcluster.config import LOOPBACK, ClusterConfig
from ferry_devcluster.processes import ProcessSpec, Supervisor

PROCESS_NAME = "prometheus"
DISCOVERY_PROCESS_NAME = "prometheus-discovery"
DISCOVERY_INTERVAL_SECONDS = 3.0
# prometheus-operator's default when a ServiceMonitor endpoint names no interval
DEFAULT_INTERVAL = "30s"
READY_TIMEOUT_SECONDS = 60.0


class PrometheusError(RuntimeError):
    """Prometheus could not be configured, started or reloaded (the message says which and why)."""


def sanitize_label_name(name: str) -> str:
    """Kubernetes label name -> the suffix of its `__meta_kubernetes_*_label_` meta label (as Prometheus's
    service discovery writes it: every character outside [a-zA-Z0-9_] becomes `_`)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _selector_relabelings(selector: Mapping[str, Any], meta_prefix: str, where: str) -> list[dict[str, Any]]:
    """`keep` rules that pass only targets whose object labels match a Kubernetes label selector."""
    rules: list[dict[str, Any]] = []
    for key, value in sorted((selector.get("matchLabels") or {}).items()):
        name = sanitize_label_name(key)
        rules.append(
            {
                "action": "keep",
                "source_labels": [f"{meta_prefix}_label_{name}", f"{meta_prefix}_labelpresent_{name}"],
                "regex": f"({re.escape(str(value))});true",
            }
        )
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression.get("key"), expression.get("operator")
        name = sanitize_label_name(str(key))
        values = "|".join(re.escape(str(v)) for v in expression.get("values") or [])
        label, present = f"{meta_prefix}_label_{name}", f"{meta_prefix}_labelpresent_{name}"
        if operator == "In":
            rules.append({"action": "keep", "source_labels": [label, present], "regex": f"({values});true"})
        elif operator == "NotIn":
            rules.append({"action": "drop", "source_labels": [label, present], "regex": f"({values});true"})
        elif operator == "Exists":
            rules.append({"action": "keep", "source_labels": [present], "regex": "true"})
        elif operator == "DoesNotExist":
            rules.append({"action": "drop", "source_labels": [present], "regex": "true"})
        else:
            raise PrometheusError(
                f"{where}: selector.matchExpressions[].operator must be In, NotIn, Exists or "
                f"DoesNotExist, got {operator!r}"
            )
    return rules


def _namespace_relabelings(monitor: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ServiceMonitor's own namespace unless its namespaceSelector says `any` or names others (what
    Kubernetes discovery's `namespaces` would scope; label-based namespace selection is not supported)."""
    selector = monitor.get("spec", {}).get("namespaceSelector") or {}
    if selector.get("any"):
        return []
    names = sorted(selector.get("matchNames") or [monitor["metadata"]["namespace"]])
    return [
        {
            "action": "keep",
            "source_labels": ["__meta_kubernetes_namespace"],
            "regex": "|".join(re.escape(name) for name in names),
        }
    ]


def _endpoint_job(
    monitor: Mapping[str, Any], index: int, endpoint: Mapping[str, Any], targets_file: Path
) -> dict[str, Any]:
    namespace, name = monitor["metadata"]["namespace"], monitor["metadata"]["name"]
    where = f"ServiceMonitor {namespace}/{name} spec.endpoints[{index}]"
    spec = monitor.get("spec", {})
    relabel = _namespace_relabelings(monitor) + _selector_relabelings(
        spec.get("selector") or {}, "__meta_kubernetes_service", f"ServiceMonitor {namespace}/{name}"
    )
    if endpoint.get("port"):
        relabel.append(
            {
                "action": "keep",
                "source_labels": ["__meta_kubernetes_endpoint_port_name"],
                "regex": re.escape(str(endpoint["port"])),
            }
        )
    elif endpoint.get("targetPort") is not None:
        target_port = endpoint["targetPort"]
        source = (
            "__meta_kubernetes_pod_container_port_number"
            if isinstance(target_port, int)
            else "__meta_kubernetes_pod_container_port_name"
        )
        relabel.append({"action": "keep", "source_labels": [source], "regex": re.escape(str(target_port))})
    else:
        raise PrometheusError(f"{where}: set port (a Service port name) or targetPort")
    # the target labels prometheus-operator gives every ServiceMonitor target
    relabel += [
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job"},
    ]
    job_label = spec.get("jobLabel")
    if job_label:
        relabel.append(
            {
                "source_labels": [f"__meta_kubernetes_service_label_{sanitize_label_name(job_label)}"],
                "regex": "(.+)",
                "target_label": "job",
            }
        )
    relabel.append(
        {"target_label": "endpoint", "replacement": str(endpoint.get("port") or endpoint.get("targetPort"))}
    )
    job: dict[str, Any] = {
        "job_name": f"serviceMonitor/{namespace}/{name}/{index}",
        "honor_labels": bool(endpoint.get("honorLabels", False)),
        "scrape_interval": endpoint.get("interval") or DEFAULT_INTERVAL,
        "metrics_path": endpoint.get("path") or "/metrics",
        "scheme": endpoint.get("scheme") or "http",
        "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "5s"}],
        "relabel_configs": relabel,
    }
    if endpoint.get("scrapeTimeout"):
        job["scrape_timeout"] = endpoint["scrapeTimeout"]
    if endpoint.get("params"):
        job["params"] = endpoint["params"]
    return job


def scrape_configuration(
    service_monitors: Sequence[Mapping[str, Any]],
    targets_file: Path,
    rule_files: Sequence[Path] = (),
    evaluation_interval: str = DEFAULT_INTERVAL,
) -> dict[str, Any]:
    """The Prometheus configuration that scrapes what `service_monitors` describe: one job per endpoint
    of each ServiceMonitor, ordered by namespace and name so the same objects give the same file.
    `targets_file` is where `endpoint_targets` are written (file_sd).

    JSON is YAML, so the dict is written with json.dumps (this package uses only the standard library).
    """
    jobs = []
    ordered = sorted(service_monitors, key=lambda m: (m["metadata"]["namespace"], m["metadata"]["name"]))
    for monitor in ordered:
        for index, endpoint in enumerate(monitor.get("spec", {}).get("endpoints") or []):
            jobs.append(_endpoint_job(monitor, index, endpoint, targets_file))
    return {
        "global": {"scrape_interval": DEFAULT_INTERVAL, "evaluation_interval": evaluation_interval},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": jobs,
    }


def rule_file_name(rule: Mapping[str, Any]) -> str:
    """One rule file per PrometheusRule, as prometheus-operator writes them (group names are unique only
    within one object)."""
    return f"{rule['metadata']['namespace']}-{rule['metadata']['name']}.json"


def rule_file(rule: Mapping[str, Any]) -> dict[str, Any]:
    """A Prometheus rule file from a PrometheusRule's spec.groups (the same shape)."""
    return {"groups": list(rule.get("spec", {}).get("groups") or [])}


def _object_labels(prefix: str, labels: Mapping[str, str]) -> dict[str, str]:
    meta = {}
    for key, value in labels.items():
        name = sanitize_label_name(key)
        meta[f"{prefix}_label_{name}"] = value
        meta[f"{prefix}_labelpresent_{name}"] = "true"
    return meta


def endpoint_targets(
    services: Sequence[Mapping[str, Any]],
    endpoints: Sequence[Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """file_sd target groups for every address and port of every Endpoints object, labelled as Prometheus's
    Kubernetes discovery (role `endpoints`) labels them, so the same relabelings apply."""
    services_by_key = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in services}
    pods_by_key = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in pods}
    groups = []
    for endpoint_object in endpoints:
        namespace, name = endpoint_object["metadata"]["namespace"], endpoint_object["metadata"]["name"]
        common = {
            "__meta_kubernetes_namespace": namespace,
            "__meta_kubernetes_endpoints_name": name,
            **_object_labels("__meta_kubernetes_endpoints", endpoint_object["metadata"].get("labels") or {}),
        }
        service = services_by_key.get((namespace, name))
        if service is not None:
            common["__meta_kubernetes_service_name"] = name
            common.update(
                _object_labels("__meta_kubernetes_service", service["metadata"].get("labels") or {})
            )
        for subset in endpoint_object.get("subsets") or []:
            addresses = [(a, "true") for a in subset.get("addresses") or []]
            addresses += [(a, "false") for a in subset.get("notReadyAddresses") or []]
            for address, ready in addresses:
                for port in subset.get("ports") or []:
                    labels = {
                        **common,
                        "__meta_kubernetes_endpoint_ready": ready,
                        "__meta_kubernetes_endpoint_port_name": port.get("name", ""),
                        "__meta_kubernetes_endpoint_port_protocol": port.get("protocol", "TCP"),
                        "__meta_kubernetes_endpoint_node_name": address.get("nodeName", ""),
                    }
                    reference = address.get("targetRef") or {}
                    pod = pods_by_key.get((namespace, reference.get("name", "")))
                    if reference.get("kind") == "Pod" and pod is not None:
                        labels.update(_pod_labels(pod, int(port["port"])))
                    groups.append({"targets": [f"{address['ip']}:{port['port']}"], "labels": labels})
    return sorted(groups, key=lambda g: (g["targets"][0], sorted(g["labels"].items())))


def _pod_labels(pod: Mapping[str, Any], port_number: int) -> dict[str, str]:
    labels = {
        "__meta_kubernetes_pod_name": pod["metadata"]["name"],
        "__meta_kubernetes_pod_ip": pod.get("status", {}).get("podIP", ""),
        "__meta_kubernetes_pod_node_name": pod.get("spec", {}).get("nodeName", ""),
        "__meta_kubernetes_pod_phase": pod.get("status", {}).get("phase", ""),
        "__meta_kubernetes_pod_uid": pod["metadata"].get("uid", ""),
        **_object_labels("__meta_kubernetes_pod", pod["metadata"].get("labels") or {}),
    }
    for container in pod.get("spec", {}).get("containers") or []:
        for container_port in container.get("ports") or []:
            if container_port.get("containerPort") == port_number:
                labels["__meta_kubernetes_pod_container_name"] = container["name"]
                labels["__meta_kubernetes_pod_container_port_name"] = container_port.get("name", "")
                labels["__meta_kubernetes_pod_container_port_number"] = str(port_number)
                labels["__meta_kubernetes_pod_container_port_protocol"] = container_port.get(
                    "protocol", "TCP"
                )
    return labels


# ------------------------------------------------------------------------------------ the process


def config_path(config: ClusterConfig) -> Path:
    return config.config_dir / "prometheus.yml"


def targets_path(config: ClusterConfig) -> Path:
    return config.state_dir / "prometheus" / "endpoints.json"


def url(config: ClusterConfig) -> str:
    return f"http://{LOOPBACK}:{config.port('prometheus')}"


def binary() -> Path:
    found = shutil.which("prometheus")
    if found is None:
        raise PrometheusError(
            "no `prometheus` binary on PATH; install Debian's prometheus package "
            "(scripts/install-system-deps.sh)"
        )
    return Path(found)


def process(config: ClusterConfig, prometheus_binary: Path) -> ProcessSpec:
    return ProcessSpec(
        name=PROCESS_NAME,
        argv=(
            str(prometheus_binary),
            f"--config.file={config_path(config)}",
            f"--storage.tsdb.path={config.state_dir / 'prometheus'}",
            f"--web.listen-address={LOOPBACK}:{config.port('prometheus')}",
            # `prometheus up` after ServiceMonitors change reloads the configuration in place
            "--web.enable-lifecycle",
            "--storage.tsdb.retention.time=1d",
        ),
    )


def discovery_process(config: ClusterConfig) -> ProcessSpec:
    return ProcessSpec(
        name=DISCOVERY_PROCESS_NAME,
        argv=(
            sys.executable,
            "-m",
            "ferry_devcluster",
            "--state-dir",
            str(config.state_dir),
            "prometheus",
            "discover",
        ),
        env={"PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )


def discover_once(client: kube.ApiClient, destination: Path) -> bool:
    """List Services, Endpoints and Pods and rewrite the targets file when they changed. True if the
    listing worked."""
    listed = [client.get_json(f"/api/v1/{kind}") for kind in ("services", "endpoints", "pods")]
    if any(item is None for item in listed):
        return False
    services, endpoints, pods = (item["items"] for item in listed if item is not None)
    text = json.dumps(endpoint_targets(services, endpoints, pods), indent=1, sort_keys=True) + "\n"
    if not destination.exists() or destination.read_text() != text:
        # file_sd watches the file: replace it whole, never let Prometheus read half of it
        partial = destination.with_suffix(".tmp")
        partial.write_text(text)
        partial.replace(destination)
    return True


def discover_forever(config: ClusterConfig) -> None:
    client = kube.ApiClient.for_apiserver(config)
    destination = targets_path(config)
    destination.parent.mkdir(parents=True, exist_ok=True)
    while True:
        discover_once(client, destination)
        time.sleep(DISCOVERY_INTERVAL_SECONDS)


def monitoring_objects(config: ClusterConfig, resource: str) -> list[dict[str, Any]]:
    """ServiceMonitors or PrometheusRules of every namespace."""
    result = kube.kubectl(
        config.admin_kubeconfig,
        "get",
        f"{resource}.monitoring.coreos.com",
        "-A",
        "-o",
        "json",
        check=False,
    )
    if result.returncode != 0:
        raise PrometheusError(
            f"cannot list {resource} (are the monitoring CRDs installed? `devcluster monitoring-crds "
            f"install`): {result.stderr.strip()}"
        )
    items: list[dict[str, Any]] = json.loads(result.stdout)["items"]
    return items


def _post(address: str) -> int:
    request = urllib.request.Request(address, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        raise PrometheusError(
            f"POST {address}: {error.code} {error.read().decode(errors='replace')}"
        ) from None


def _ready(config: ClusterConfig) -> bool:
    try:
        with urllib.request.urlopen(f"{url(config)}/-/ready", timeout=2) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def up(config: ClusterConfig) -> tuple[int, int]:
    """Write the configuration for the ServiceMonitors that exist now and start Prometheus, or reload
    it when it runs; PrometheusRules become rule files. Returns (ServiceMonitors, scrape jobs)."""
    monitors = monitoring_objects(config, "servicemonitors")
    rules_dir = config.config_dir / "prometheus-rules"
    shutil.rmtree(rules_dir, ignore_errors=True)
    rules_dir.mkdir(parents=True)
    rule_files = []
    for rule in monitoring_objects(config, "prometheusrules"):
        path = rules_dir / rule_file_name(rule)
        path.write_text(json.dumps(rule_file(rule), indent=2) + "\n")
        rule_files.append(path)
    generated = scrape_configuration(monitors, targets_path(config), rule_files)
    config.config_dir.mkdir(parents=True, exist_ok=True)
    config_path(config).write_text(json.dumps(generated, indent=2, sort_keys=True) + "\n")
    targets_path(config).parent.mkdir(parents=True, exist_ok=True)
    # the first targets before Prometheus reads the file, so a fresh start scrapes at once
    if not discover_once(kube.ApiClient.for_apiserver(config), targets_path(config)):
        raise PrometheusError(f"cannot list Services, Endpoints and Pods from {config.server_url}")
    supervisor = Supervisor(config.run_dir, config.log_dir)
    if supervisor.pid(DISCOVERY_PROCESS_NAME) is None:
        supervisor.start(discovery_process(config))
    if supervisor.pid(PROCESS_NAME) is None:
        supervisor.start(process(config, binary()))
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while not _ready(config):
        if supervisor.pid(PROCESS_NAME) is None:
            log = supervisor.log_file(PROCESS_NAME).read_text(errors="replace").splitlines()[-15:]
            raise PrometheusError("prometheus exited; last lines of its log:\n" + "\n".join(log))
        if time.monotonic() > deadline:
            raise PrometheusError(f"prometheus not ready after {READY_TIMEOUT_SECONDS:.0f}s at {url(config)}")
        time.sleep(0.3)
    # a server that was already running reads the new file now (a fresh one has just read it)
    _post(f"{url(config)}/-/reload")
    return len(monitors), len(generated["scrape_configs"])


def down(config: ClusterConfig) -> bool:
    supervisor = Supervisor(config.run_dir, config.log_dir)
    stopped = [supervisor.stop(name) for name in (PROCESS_NAME, DISCOVERY_PROCESS_NAME)]
    return any(stopped)
