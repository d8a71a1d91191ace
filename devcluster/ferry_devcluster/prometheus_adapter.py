"""prometheus-adapter on the host: the custom metrics API (custom.metrics.k8s.io) over a Prometheus, so an
HPA scales a Deployment on a serving metric (in-flight requests or requests per second per pod).

Like metrics-server it runs as a host process behind an aggregated APIService whose Service is an
ExternalName for the loopback address: the API server runs without --enable-aggregator-routing, so it
dials a Service's ClusterIP, which nothing answers without kube-proxy on the host (fake-node clusters),
while an ExternalName's host is dialled directly on clusters with and without the real node. Its client
identity is the ServiceAccount that prometheus-adapter's own deploy/manifests bind, so their RBAC
applies unchanged (list pods and namespaces, delegated authentication and authorization).

The rules map the runtime's series (docs/metrics.md) to per-pod metrics through the `namespace` and
`pod` target labels that a ServiceMonitor scrape adds; their names are the operator's defaults for
spec.serving.autoscaling.metric (concurrency_metric and rps_metric in ferry_operator.config).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ferry_devcluster import build, components, kube, kubeconfig, pki
from ferry_devcluster.config import LOOPBACK, ClusterConfig
from ferry_devcluster.processes import ProcessSpec, Supervisor

PROCESS_NAME = "prometheus-adapter"
API_GROUP = "custom.metrics.k8s.io"
API_VERSION = "v1beta1"
APISERVICE_NAME = f"{API_VERSION}.{API_GROUP}"
NAMESPACE = "kube-system"
SERVICE_NAME = "prometheus-adapter"
# The subject prometheus-adapter's deploy/manifests bind; the namespace need not exist for RBAC.
IDENTITY = "system:serviceaccount:monitoring:prometheus-adapter"
# The upstream RBAC applied as is. Its other manifests are for the resource metrics API
# (metrics.k8s.io), which metrics-server serves here.
UPSTREAM_MANIFESTS: tuple[str, ...] = (
    "deploy/manifests/cluster-role.yaml",
    "deploy/manifests/cluster-role-binding.yaml",
    "deploy/manifests/cluster-role-binding-delegator.yaml",
    "deploy/manifests/role-binding-auth-reader.yaml",
)
# How often the adapter lists the series it can serve: a new serving pod's metric appears within this.
RELIST_INTERVAL = "15s"
# How far back a series may have its last sample and still be listed; several scrape intervals of
# prometheus-operator's default 30 s, so a series is not dropped between two scrapes.
MAX_AGE = "2m"
# The window of the requests-per-second rate: four samples at a 30 s scrape interval.
RATE_WINDOW = "2m"
CONCURRENCY_METRIC = "ferry_requests_in_flight"
RPS_METRIC = "ferry_requests_per_second"
QUEUE_METRIC = "ferry_generation_waiting_sequences"
READY_TIMEOUT_SECONDS = 90.0


class AdapterError(RuntimeError):
    """prometheus-adapter could not be started or did not become available (the message says why)."""


def _pod_resources() -> dict[str, Any]:
    # the target labels a ServiceMonitor scrape gives every series: the pod it came from
    return {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}}


def rules() -> dict[str, Any]:
    """The adapter's configuration (its --config file): one custom metric per rule, per pod."""
    return {
        "rules": [
            {
                "seriesQuery": f'{CONCURRENCY_METRIC}{{namespace!="",pod!=""}}',
                "resources": _pod_resources(),
                "name": {"matches": f"^{CONCURRENCY_METRIC}$", "as": CONCURRENCY_METRIC},
                # one series per served model in a pod; a pod serves one model
                "metricsQuery": "sum by (<<.GroupBy>>) (<<.Series>>{<<.LabelMatchers>>})",
            },
            {
                "seriesQuery": f'{QUEUE_METRIC}{{namespace!="",pod!=""}}',
                "resources": _pod_resources(),
                "name": {"matches": f"^{QUEUE_METRIC}$", "as": QUEUE_METRIC},
                "metricsQuery": "sum by (<<.GroupBy>>) (<<.Series>>{<<.LabelMatchers>>})",
            },
            {
                "seriesQuery": 'ferry_requests_total{namespace!="",pod!=""}',
                "resources": _pod_resources(),
                "name": {"matches": "^ferry_requests_total$", "as": RPS_METRIC},
                # every protocol and status code: a request costs capacity whatever its answer
                "metricsQuery": (
                    f"sum by (<<.GroupBy>>) (rate(<<.Series>>{{<<.LabelMatchers>>}}[{RATE_WINDOW}]))"
                ),
            },
        ]
    }


def certificate_specs() -> tuple[pki.CertificateSpec, ...]:
    return (
        pki.CertificateSpec(
            name="prometheus-adapter",
            common_name=IDENTITY,
            organizations=("system:serviceaccounts", "system:serviceaccounts:monitoring"),
            client=True,
        ),
        # the aggregator verifies the backend as <service>.<namespace>.svc
        pki.CertificateSpec(
            name="prometheus-adapter-serving",
            common_name=SERVICE_NAME,
            dns_names=(f"{SERVICE_NAME}.{NAMESPACE}.svc", "localhost"),
            ip_addresses=(LOOPBACK,),
            server=True,
        ),
    )


def rules_path(config: ClusterConfig) -> Path:
    # JSON is YAML: the adapter reads it as its YAML config
    return config.config_dir / "prometheus-adapter.json"


def process(config: ClusterConfig, binary: Path, prometheus_url: str) -> ProcessSpec:
    pki_dir = config.pki_dir
    identity = kubeconfig.path_for(config, PROCESS_NAME)
    return ProcessSpec(
        name=PROCESS_NAME,
        argv=(
            str(binary),
            f"--prometheus-url={prometheus_url}",
            f"--config={rules_path(config)}",
            f"--metrics-relist-interval={RELIST_INTERVAL}",
            f"--metrics-max-age={MAX_AGE}",
            f"--lister-kubeconfig={identity}",
            f"--authentication-kubeconfig={identity}",
            f"--authorization-kubeconfig={identity}",
            f"--bind-address={LOOPBACK}",
            f"--secure-port={config.port(PROCESS_NAME)}",
            f"--tls-cert-file={pki_dir / 'prometheus-adapter-serving.crt'}",
            f"--tls-private-key-file={pki_dir / 'prometheus-adapter-serving.key'}",
        ),
    )


def cluster_objects(config: ClusterConfig, ca_bundle_b64: str) -> list[dict[str, Any]]:
    """The Service the APIService names (an ExternalName for the host process) and the APIService,
    verified by the cluster CA."""
    port = config.port(PROCESS_NAME)
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": SERVICE_NAME, "namespace": NAMESPACE, "labels": {"app": SERVICE_NAME}},
        "spec": {
            "type": "ExternalName",
            "externalName": LOOPBACK,
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        },
    }
    apiservice = {
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": {"name": APISERVICE_NAME, "labels": {"app": SERVICE_NAME}},
        "spec": {
            "group": API_GROUP,
            "version": API_VERSION,
            "groupPriorityMinimum": 100,
            "versionPriority": 100,
            "insecureSkipTLSVerify": False,
            "caBundle": ca_bundle_b64,
            "service": {"name": SERVICE_NAME, "namespace": NAMESPACE, "port": port},
        },
    }
    return [service, apiservice]


def module_dir() -> Path:
    adapter = components.PROMETHEUS_ADAPTER
    return build.module_source_dir(adapter.module, adapter.version, adapter.module_dir)


def _upstream_manifests() -> list[Path]:
    source = module_dir()
    paths = [source / relative for relative in UPSTREAM_MANIFESTS]
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"prometheus-adapter module has no {path}; update UPSTREAM_MANIFESTS")
    return paths


def available(config: ClusterConfig) -> bool:
    """The APIService is Available (the API server reached the adapter and trusts it)."""
    apiservice = kube.ApiClient.for_apiserver(config).get_json(
        f"/apis/apiregistration.k8s.io/v1/apiservices/{APISERVICE_NAME}"
    )
    conditions = (apiservice or {}).get("status", {}).get("conditions", [])
    return any(c.get("type") == "Available" and c.get("status") == "True" for c in conditions)


def _command_file(config: ClusterConfig) -> Path:
    return config.run_dir / f"{PROCESS_NAME}.command"


def up(config: ClusterConfig, prometheus_url: str) -> None:
    """Start the adapter against `prometheus_url` (or restart it when its command line or rules
    changed), register the APIService and wait until the API server serves custom.metrics.k8s.io."""
    if not config.admin_kubeconfig.exists():
        raise AdapterError(f"no cluster in {config.state_dir}; run `devcluster up` first")
    # the adapter itself starts without one and serves an empty API: say so now instead
    try:
        with urllib.request.urlopen(f"{prometheus_url.rstrip('/')}/-/ready", timeout=5) as reply:
            reply.read()
    except (urllib.error.URLError, OSError) as error:
        raise AdapterError(
            f"no Prometheus answers at {prometheus_url} ({error}); start one (`devcluster prometheus up`) "
            "or pass its URL with --prometheus"
        ) from None
    binary = build.ensure([PROCESS_NAME])[PROCESS_NAME]
    for certificate in certificate_specs():
        pki.issue(config, certificate)
    pki_dir = config.pki_dir
    identity = kubeconfig.path_for(config, PROCESS_NAME)
    identity.write_text(
        kubeconfig.render(
            config.server_url,
            pki_dir / "ca.crt",
            pki_dir / "prometheus-adapter.crt",
            pki_dir / "prometheus-adapter.key",
            user=PROCESS_NAME,
        )
    )
    identity.chmod(0o600)
    config.config_dir.mkdir(parents=True, exist_ok=True)
    rules_text = json.dumps(rules(), indent=2) + "\n"
    rules_path(config).write_text(rules_text)

    # Its RBAC first: at start the adapter reads the extension-apiserver-authentication ConfigMap in
    # kube-system and exits for good when the role binding that allows it is not there yet (seen in a
    # clean-clone CI run, where the adapter won the race against this apply).
    kube.apply_files(config.admin_kubeconfig, _upstream_manifests())
    _wait_until_it_may_read_the_authentication_config(config)
    spec = process(config, binary, prometheus_url)
    digest = hashlib.sha256(json.dumps([spec.argv, rules_text]).encode()).hexdigest()
    supervisor = Supervisor(config.run_dir, config.log_dir)
    command_file = _command_file(config)
    if supervisor.pid(PROCESS_NAME) is not None and (
        not command_file.exists() or command_file.read_text() != digest
    ):
        supervisor.stop(PROCESS_NAME)
    if supervisor.pid(PROCESS_NAME) is None:
        supervisor.start(spec)
        command_file.write_text(digest)

    ca_bundle = base64.b64encode((pki_dir / "ca.crt").read_bytes()).decode()
    kube.apply(config.admin_kubeconfig, cluster_objects(config, ca_bundle))

    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while not available(config):
        if supervisor.pid(PROCESS_NAME) is None:
            log = supervisor.log_file(PROCESS_NAME).read_text(errors="replace").splitlines()[-15:]
            raise AdapterError("prometheus-adapter exited; last lines of its log:\n" + "\n".join(log))
        if time.monotonic() > deadline:
            raise AdapterError(
                f"APIService {APISERVICE_NAME} not Available after {READY_TIMEOUT_SECONDS:.0f}s; see "
                f"{supervisor.log_file(PROCESS_NAME)} and `kubectl get apiservice {APISERVICE_NAME} -o yaml`"
            )
        time.sleep(0.5)


def _wait_until_it_may_read_the_authentication_config(config: ClusterConfig) -> None:
    """Until the API server's authorizer has the new role binding: asked as the adapter itself."""
    pki_dir = config.pki_dir
    client = kube.ApiClient(
        config.server_url,
        pki_dir / "ca.crt",
        pki_dir / "prometheus-adapter.crt",
        pki_dir / "prometheus-adapter.key",
    )
    path = "/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication"
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while (status := client.get(path)[0]) != 200:
        if time.monotonic() > deadline:
            raise AdapterError(
                f"{IDENTITY} still cannot read {path} (HTTP {status}) after its RBAC was applied"
            )
        time.sleep(0.2)


def unregister(config: ClusterConfig, check: bool = True) -> None:
    """Delete the APIService and its Service. An APIService whose backend is gone makes API discovery
    fail, and with it namespace deletion, so it never outlives the adapter."""
    for kind, name, namespace in (
        ("apiservice", APISERVICE_NAME, None),
        ("service", SERVICE_NAME, NAMESPACE),
    ):
        kube.kubectl(
            config.admin_kubeconfig,
            "delete",
            kind,
            name,
            *(["--namespace", namespace] if namespace else []),
            "--ignore-not-found",
            "--wait=false",
            check=check,
        )


def down(config: ClusterConfig) -> bool:
    """Unregister the API and stop the adapter. True if it was running."""
    if config.admin_kubeconfig.exists():
        # a stopped cluster cannot be asked; its next `up` unregisters (unregister_when_stopped)
        unregister(config, check=False)
    _command_file(config).unlink(missing_ok=True)
    return Supervisor(config.run_dir, config.log_dir).stop(PROCESS_NAME)


def unregister_when_stopped(config: ClusterConfig) -> None:
    """For `devcluster up`: a cluster restarted without its adapter must not keep the adapter's
    APIService (see `unregister`)."""
    if Supervisor(config.run_dir, config.log_dir).pid(PROCESS_NAME) is None:
        unregister(config)
