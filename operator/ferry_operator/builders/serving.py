"""The serving Deployment: a storage init container fetches the model, the runtime container serves it."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from ferry_operator import kinds
from ferry_operator.builders import auth, sizing
from ferry_operator.builders.artifact_store import DRIFT_REFERENCE_FILE
from ferry_operator.builders.common import Manifest, digest, metadata, with_input_hash
from ferry_operator.builders.inputs import BuildInputs

MODEL_DIR = "/mnt/models"
PVC_ROOT = "/mnt/pvc"
HTTP_PORT = 8080
GRPC_PORT = 8081
# /metrics on a port of its own (as Triton's 8002), only with spec.serving.network: a NetworkPolicy can then
# admit the scraper to the metrics without admitting it to inference. Otherwise /metrics is on HTTP_PORT.
METRICS_PORT = 8082
# Non-root UID/GID of the ferry images (numeric, so the kubelet can check runAsNonRoot without /etc/passwd).
RUNTIME_UID = 65532
# After the pod is marked terminating, keep serving this long so every endpoint watcher (kube-proxy,
# ingress, service meshes) removes it before the runtime stops accepting requests.
PRE_STOP_SLEEP_SECONDS = 5
# The runtime drains in-flight requests for up to 25 s after SIGTERM (FERRY_RUNTIME_DRAIN_GRACE_SECONDS);
# the grace period covers the pre-stop sleep, the drain and a margin before the kubelet sends SIGKILL.
TERMINATION_GRACE_SECONDS = 40
# Loading and warming a large model can take minutes; liveness must not kill a pod that is still loading.
STARTUP_PROBE_PERIOD_SECONDS = 2
STARTUP_PROBE_FAILURES = 300


def restricted_security_context() -> dict[str, Any]:
    """A container securityContext that meets the Pod Security Standard "restricted"."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUNTIME_UID,
        "runAsGroup": RUNTIME_UID,
        # The fetched model in the emptyDir must be readable by the runtime container's group.
        "fsGroup": RUNTIME_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pvc_claims(uri: str) -> list[str]:
    """PersistentVolumeClaims a URI reads from (pvc://CLAIM/PATH), mounted at /mnt/pvc/CLAIM."""
    parts = urlsplit(uri)
    return [parts.netloc] if parts.scheme == "pvc" and parts.netloc else []


def container_resources(inputs: BuildInputs) -> dict[str, Any]:
    serving = inputs.spec.serving
    requests = dict(serving.resources.requests or {})
    limits = dict(serving.resources.limits or {})
    if "memory" not in requests:
        requests["memory"] = sizing.memory_request(inputs)
    download = sizing.download_volume(inputs)
    # A limit without a request makes the API server default the request to it.
    if download is not None and "ephemeral-storage" not in requests | limits:
        requests["ephemeral-storage"] = download
    if serving.gpu:
        # Extended resources must be requested and limited alike; the limit is what the scheduler counts.
        limits["nvidia.com/gpu"] = serving.gpu
        requests["nvidia.com/gpu"] = serving.gpu
    resources: dict[str, Any] = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    return resources


TLS_DIR = "/var/run/ferry/tls"
TLS_VOLUME = "tls"
# Read by the runtime's group only: the pod's fsGroup owns the files (as the auth tokens').
TLS_FILE_MODE = 0o440


def separate_metrics_port(inputs: BuildInputs) -> bool:
    """Whether the pods serve /metrics on METRICS_PORT (named `metrics`) instead of HTTP_PORT: with a
    NetworkPolicy (so the scraper alone is admitted there), and with TLS (the scraper reads plain text)."""
    serving = inputs.spec.serving
    return serving.network is not None or serving.tls is not None


def metrics_port(inputs: BuildInputs) -> tuple[str, int]:
    """The container port (name, number) that serves /metrics."""
    return ("metrics", METRICS_PORT) if separate_metrics_port(inputs) else ("http", HTTP_PORT)


def runtime_env(inputs: BuildInputs) -> list[dict[str, str]]:
    """FERRY_RUNTIME_* settings of the runtime container (names from ferry_runtime.settings)."""
    serving = inputs.spec.serving
    env = {
        "FERRY_RUNTIME_MODEL_DIR": MODEL_DIR,
        "FERRY_RUNTIME_MODEL_NAME": inputs.owner.name,
        "FERRY_RUNTIME_HTTP_PORT": str(HTTP_PORT),
        "FERRY_RUNTIME_GRPC_PORT": str(GRPC_PORT),
        "FERRY_RUNTIME_MAX_BATCH_SIZE": str(serving.batching.max_batch_size),
        "FERRY_RUNTIME_MAX_BATCH_DELAY_MS": f"{serving.batching.max_delay_ms:g}",
        "FERRY_RUNTIME_MAX_QUEUE_SIZE": str(serving.batching.max_queue_size),
    }
    if separate_metrics_port(inputs):
        # /metrics only there; the HTTP port answers it with 404. Unset (the runtime's 0): on the HTTP port,
        # and the pod template of a ModelDeployment without network stays what it was (no new revision).
        env["FERRY_RUNTIME_METRICS_PORT"] = str(METRICS_PORT)
    if serving.tls is not None:
        env["FERRY_RUNTIME_TLS_DIR"] = TLS_DIR
    if serving.threads is not None:
        env["FERRY_RUNTIME_INTRA_OP_THREADS"] = str(serving.threads)
    if inputs.artifact.format == "onnx-genai":
        env["FERRY_RUNTIME_MAX_SEQUENCES"] = str(serving.generation.max_sequences)
        env["FERRY_RUNTIME_MAX_WAITING_SEQUENCES"] = str(serving.generation.max_waiting)
        budget = sizing.kv_cache_budget(inputs)
        if budget is not None:
            env["FERRY_RUNTIME_KV_CACHE_BYTES"] = str(budget)
    env |= auth.runtime_env(inputs)
    return [{"name": name, "value": value} for name, value in env.items()]


def _fetch_mounts(inputs: BuildInputs) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {"name": "models", "mountPath": MODEL_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    mounts += [
        {"name": _pvc_volume(claim), "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": True}
        for claim in pvc_claims(inputs.artifact.uri)
    ]
    return mounts


def _fetch_environment(inputs: BuildInputs) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": "FERRY_PVC_ROOT", "value": PVC_ROOT}]
    store = inputs.defaults.artifact_store
    if store.holds(inputs.artifact.uri):
        # An optimized artifact: read with the store's credentials, as the optimization Job wrote it.
        env += store.s3_environment()
    return env


def fetch_container(inputs: BuildInputs, image: str) -> dict[str, Any]:
    artifact = inputs.artifact
    args = [artifact.uri, MODEL_DIR]
    if artifact.sha256:
        args += ["--sha256", artifact.sha256]
    container: dict[str, Any] = {
        "name": "fetch-model",
        "image": image,
        "imagePullPolicy": inputs.defaults.image_pull_policy,
        "command": ["ferry-fetch"],
        "args": args,
        "env": _fetch_environment(inputs),
        # Same resources as the runtime: an init container's requests do not add to the pod's (the pod
        # reserves the larger of the two), and a large download needs memory as much as serving does.
        "resources": container_resources(inputs),
        "securityContext": restricted_security_context(),
        "volumeMounts": _fetch_mounts(inputs),
        # The fetcher's last words (e.g. "digest mismatch") become the pod's termination message, which
        # the operator shows in the ModelResolved condition.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if inputs.spec.model.credentials_secret and not inputs.defaults.artifact_store.holds(artifact.uri):
        container["envFrom"] = [{"secretRef": {"name": inputs.spec.model.credentials_secret}}]
    return container


# ferry-optimize writes reference.json only when it was given data, and an artifact rolled back to may
# predate it: a missing reference leaves the runtime serving without drift metrics (it treats the file as
# optional), so its fetch must not keep the pod from starting.
_OPTIONAL_FETCH = (
    'ferry-fetch "$1" "$2" || echo "no drift reference at $1: the runtime serves without drift metrics" >&2'
)


def fetch_drift_reference_container(inputs: BuildInputs, image: str) -> dict[str, Any] | None:
    """Fetches the optimizer's drift reference beside an optimized model; None for other artifacts
    (generative folders have none: drift statistics are of tensor inputs)."""
    if inputs.artifact.format != "onnx":
        return None
    reference = inputs.defaults.artifact_store.drift_reference(inputs.artifact.uri)
    if reference is None:
        return None
    return {
        "name": "fetch-drift-reference",
        "image": image,
        "imagePullPolicy": inputs.defaults.image_pull_policy,
        "command": ["sh", "-c", _OPTIONAL_FETCH, "fetch-drift-reference"],
        "args": [reference, f"{MODEL_DIR}/{DRIFT_REFERENCE_FILE}"],
        "env": _fetch_environment(inputs),
        "resources": container_resources(inputs),
        "securityContext": restricted_security_context(),
        "volumeMounts": _fetch_mounts(inputs),
    }


def runtime_container(inputs: BuildInputs, image: str) -> dict[str, Any]:
    # The kubelet's HTTPS probes do not verify the certificate: they only need the port to speak TLS.
    scheme = {"scheme": "HTTPS"} if inputs.spec.serving.tls is not None else {}

    def probe(path: str, period: int, failures: int) -> dict[str, Any]:
        return {
            "httpGet": {"path": path, "port": "http", **scheme},
            "periodSeconds": period,
            "failureThreshold": failures,
            "timeoutSeconds": 5,
        }

    ports = [
        {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
        {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
    ]
    if separate_metrics_port(inputs):
        ports.append({"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"})
    return {
        "name": "runtime",
        "image": image,
        "imagePullPolicy": inputs.defaults.image_pull_policy,
        "command": ["ferry-runtime"],
        "args": ["--model-dir", MODEL_DIR, "--model-name", inputs.owner.name],
        "env": runtime_env(inputs),
        "ports": ports,
        # Ready: the model is loaded and warmed up; the Service sends traffic only then.
        "readinessProbe": probe("/v2/health/ready", 5, 3),
        # Live: the process answers at all; restarts a wedged server.
        "livenessProbe": probe("/v2/health/live", 10, 3),
        "startupProbe": probe("/v2/health/live", STARTUP_PROBE_PERIOD_SECONDS, STARTUP_PROBE_FAILURES),
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SLEEP_SECONDS}}},
        "resources": container_resources(inputs),
        "securityContext": restricted_security_context(),
        "volumeMounts": [
            {"name": "models", "mountPath": MODEL_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            *auth.runtime_mounts(inputs),
            *(
                [{"name": TLS_VOLUME, "mountPath": TLS_DIR, "readOnly": True}]
                if inputs.spec.serving.tls is not None
                else []
            ),
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def pod_template(inputs: BuildInputs) -> dict[str, Any]:
    serving = inputs.spec.serving
    image = serving.image or inputs.defaults.runtime_image
    download = sizing.download_volume(inputs)
    volumes: list[dict[str, Any]] = [
        {"name": "models", "emptyDir": {} if download is None else {"sizeLimit": download}},
        {"name": "tmp", "emptyDir": {}},
    ]
    volumes += [
        {"name": _pvc_volume(claim), "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        for claim in pvc_claims(inputs.artifact.uri)
    ]
    volumes += auth.volumes(inputs)
    if serving.tls is not None:
        # The whole Secret, never a subPath: a subPath mount would not see cert-manager's renewals.
        volumes.append(
            {
                "name": TLS_VOLUME,
                "secret": {"secretName": serving.tls.secret_name, "defaultMode": TLS_FILE_MODE},
            }
        )
    spec: dict[str, Any] = {
        # The runtime talks to the Kubernetes API only to check callers' tokens (auth mode kubernetes).
        **auth.pod_identity(inputs),
        # With hundreds of models in a namespace, service links would put thousands of variables in every pod.
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "securityContext": pod_security_context(),
        "initContainers": [
            container
            for container in (fetch_container(inputs, image), fetch_drift_reference_container(inputs, image))
            if container is not None
        ],
        "containers": [runtime_container(inputs, image)],
        "volumes": volumes,
    }
    if inputs.defaults.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": name} for name in inputs.defaults.image_pull_secrets]
    if serving.node_selector:
        spec["nodeSelector"] = dict(serving.node_selector)
    if serving.tolerations:
        spec["tolerations"] = [
            toleration.model_dump(by_alias=True, exclude_none=True) for toleration in serving.tolerations
        ]
    if serving.affinity:
        spec["affinity"] = serving.affinity
    return {
        "metadata": {
            "labels": kinds.child_labels(inputs.owner.name),
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(metrics_port(inputs)[1]),
                "prometheus.io/path": "/metrics",
            },
        },
        "spec": spec,
    }


def revision(template: dict[str, Any]) -> str:
    """The serving revision: a digest of the pod template, so equal pods mean an equal revision."""
    return digest(template, length=10)


def deployment(inputs: BuildInputs, replicas: int | None) -> Manifest:
    """The serving Deployment. `replicas` None leaves the count to a HorizontalPodAutoscaler."""
    template = pod_template(inputs)
    current_revision = revision(template)
    template["metadata"]["annotations"][kinds.REVISION_ANNOTATION] = current_revision
    spec: dict[str, Any] = {} if replicas is None else {"replicas": replicas}
    spec |= {
        "selector": {"matchLabels": kinds.selector_labels(inputs.owner.name)},
        "progressDeadlineSeconds": inputs.spec.rollout.progress_deadline_seconds,
        # A rollback goes to an earlier ReplicaSet; a few are enough.
        "revisionHistoryLimit": 3,
        # Capacity never drops during a rollout: a new pod must be ready before an old one goes.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
        "template": template,
    }
    manifest: Manifest = {
        "apiVersion": kinds.DEPLOYMENT.api_version,
        "kind": kinds.DEPLOYMENT.kind,
        "metadata": metadata(inputs.owner, {kinds.REVISION_ANNOTATION: current_revision}),
        "spec": spec,
    }
    return with_input_hash(manifest)


def _pvc_volume(claim: str) -> str:
    # Volume names are DNS labels; the claim name is one already, the prefix keeps it apart from ours.
    return f"pvc-{claim}"[:63]
