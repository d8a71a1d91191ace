"""The optimization Job: one `ferry-optimize` run for one content key.

Pure, like the other builders: the same inputs give a byte-identical manifest. The Job's name comes from
the content key, so whoever creates it twice (a restarted operator, two reconciles racing the watch) gets
409 AlreadyExists instead of a second run. The optimize spec reaches the container as a file through the
downward API (a pod annotation projected to /etc/ferry/spec.json): no ConfigMap to create, own and clean
up, and the spec the Job ran is recorded on the Job itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from ferry_operator import content_key, kinds
from ferry_operator.api import models
from ferry_operator.builders.artifact_store import ArtifactStore
from ferry_operator.builders.common import Manifest, owner_reference, with_input_hash
from ferry_operator.builders.inputs import Owner
from ferry_operator.builders.serving import (
    PVC_ROOT,
    pod_security_context,
    pvc_claims,
    restricted_security_context,
)

CONTAINER_NAME = "optimize"
SPEC_DIR = "/etc/ferry"
SPEC_FILE = f"{SPEC_DIR}/spec.json"
SPEC_ANNOTATION = f"{models.GROUP}/optimize-spec"
COMPONENT_LABEL = "app.kubernetes.io/component"
COMPONENT = "optimizer"
# ferry-optimize's exit status for bad input (a flag, the spec, the model or data file): rerunning the same
# pod cannot succeed, so the Job fails at once instead of using up its retries.
EXIT_BAD_INPUT = 2
# One retry for what a rerun can fix (an evicted node, an out-of-memory kill on a busy node).
BACKOFF_LIMIT = 1
# Used when the operator's configuration names no resources: TensorFlow conversion and fine-tuning need
# memory, and Pod Security aside, a Job without limits can starve its node.
DEFAULT_RESOURCES: Mapping[str, Any] = {
    "requests": {"cpu": "1", "memory": "2Gi"},
    "limits": {"memory": "4Gi"},
}
# Job names become the pods' job-name label, so they must fit a label value.
MAX_NAME = 63
KEY_PREFIX_LENGTH = 10


@dataclasses.dataclass(frozen=True)
class OptimizerDefaults:
    """Operator-wide settings of optimization Jobs (from the operator's config)."""

    image: str
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = ()
    # A container's resources (requests/limits); empty: DEFAULT_RESOURCES.
    resources: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    ttl_seconds: int = 86_400
    deadline_seconds: int = 21_600
    # pvc://CLAIM/[PREFIX/] or s3://BUCKET/[PREFIX/]: where artifact directories are written.
    artifact_store: str = ""
    artifact_s3_endpoint: str = ""
    artifact_s3_region: str = ""
    # Secret (in the ModelDeployment's namespace) with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY of the store.
    artifact_credentials_secret: str = ""

    @property
    def store(self) -> ArtifactStore:
        return ArtifactStore(
            self.artifact_store,
            self.artifact_s3_endpoint,
            self.artifact_s3_region,
            self.artifact_credentials_secret,
        )


@dataclasses.dataclass(frozen=True)
class OptimizationInputs:
    """Everything one optimization Job is built from."""

    owner: Owner
    spec: models.ModelDeploymentSpec
    # The content key (content_key.content_key): names the Job and the artifact directory.
    key: str
    defaults: OptimizerDefaults


def job_name(model_deployment: str, key: str) -> str:
    """`<name>-opt-<key[:10]>`, at most 63 characters; a long name is cut and made unique again with a
    digest of the whole name, so two long ModelDeployment names never share Jobs."""
    suffix = f"-opt-{key[:KEY_PREFIX_LENGTH]}"
    room = MAX_NAME - len(suffix)
    stem = model_deployment
    if len(stem) > room:
        tag = hashlib.sha256(stem.encode()).hexdigest()[:7]
        stem = f"{stem[: room - len(tag) - 1].rstrip('-.')}-{tag}"
    return stem + suffix


def artifact_directory(store: str, namespace: str, model_deployment: str, key: str) -> str:
    """The artifact directory of one key: `<store>/<namespace>/<name>/<key>/` (a directory URI)."""
    return f"{store.rstrip('/')}/{namespace}/{model_deployment}/{key}/"


def spec_document(spec: models.ModelDeploymentSpec) -> str:
    """The normalized optimize spec as ferry-optimize reads it (the same dictionary the key digests)."""
    return json.dumps(content_key.normalized_optimize(spec.optimize), sort_keys=True, separators=(",", ":"))


def job_labels(model_deployment: str) -> dict[str, str]:
    return {**kinds.child_labels(model_deployment), COMPONENT_LABEL: COMPONENT}


def pod_labels(model_deployment: str) -> dict[str, str]:
    """The Job pods' labels. Not the ModelDeployment label: that one selects serving pods (Service, PDB,
    the serving pod index), and an optimization pod must never count as one."""
    labels = job_labels(model_deployment)
    del labels[kinds.MODEL_DEPLOYMENT_LABEL]
    labels[kinds.OPTIMIZATION_OF_LABEL] = model_deployment
    return labels


def arguments(inputs: OptimizationInputs) -> list[str]:
    spec = inputs.spec
    args = ["--model", spec.model.uri, "--format", spec.model.format, "--spec", SPEC_FILE]
    if spec.model.sha256 is not None:
        # The content key is made from it: the Job refuses a model at the URI with other content.
        args += ["--model-sha256", spec.model.sha256]
    if spec.optimize is not None and spec.optimize.data is not None:
        args += ["--data", spec.optimize.data.uri]
    output = artifact_directory(
        inputs.defaults.artifact_store, inputs.owner.namespace, inputs.owner.name, inputs.key
    )
    return [*args, "--output", output, "--key", inputs.key]


def _claims(inputs: OptimizationInputs) -> list[tuple[str, bool]]:
    """(claim, read-only) of every PVC the Job reads or writes, each once, in a stable order."""
    spec = inputs.spec
    uris = [spec.model.uri]
    if spec.optimize is not None and spec.optimize.data is not None:
        uris.append(spec.optimize.data.uri)
    writable = set(pvc_claims(inputs.defaults.artifact_store))
    claims: list[tuple[str, bool]] = []
    for claim in [c for uri in uris for c in pvc_claims(uri)] + sorted(writable):
        if claim not in [name for name, _ in claims]:
            claims.append((claim, claim not in writable))
    return claims


def _environment(inputs: OptimizationInputs) -> list[dict[str, Any]]:
    defaults = inputs.defaults
    env: list[dict[str, Any]] = [
        {"name": "FERRY_PVC_ROOT", "value": PVC_ROOT},
        # Keras and TensorFlow write caches under $HOME; the root filesystem is read-only.
        {"name": "HOME", "value": "/tmp"},
        # Progress lines reach the pod's log (and `kubectl logs job/NAME`) as they happen.
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    return env + defaults.store.s3_environment()


def container(inputs: OptimizationInputs) -> dict[str, Any]:
    defaults = inputs.defaults
    mounts: list[dict[str, Any]] = [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "spec", "mountPath": SPEC_DIR, "readOnly": True},
    ]
    mounts += [
        {"name": _pvc_volume(claim), "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": read_only}
        for claim, read_only in _claims(inputs)
    ]
    result: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": defaults.image,
        "imagePullPolicy": defaults.image_pull_policy,
        "command": ["ferry-optimize"],
        "args": arguments(inputs),
        "env": _environment(inputs),
        "resources": dict(defaults.resources) or dict(DEFAULT_RESOURCES),
        "securityContext": restricted_security_context(),
        "volumeMounts": mounts,
        # ferry-optimize writes its JSON summary to /dev/termination-log; when it dies before that (killed
        # for memory, a crash in a native library) the log's tail stands in for it.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if inputs.spec.model.credentials_secret:
        # The same keys the serving fetcher gets (AWS_* for s3://).
        result["envFrom"] = [{"secretRef": {"name": inputs.spec.model.credentials_secret}}]
    return result


def pod_template(inputs: OptimizationInputs) -> dict[str, Any]:
    defaults = inputs.defaults
    volumes: list[dict[str, Any]] = [
        {"name": "tmp", "emptyDir": {}},
        {
            "name": "spec",
            "downwardAPI": {
                "items": [
                    {
                        "path": SPEC_FILE.removeprefix(SPEC_DIR + "/"),
                        "fieldRef": {"fieldPath": f"metadata.annotations['{SPEC_ANNOTATION}']"},
                    }
                ]
            },
        },
    ]
    volumes += [
        {"name": _pvc_volume(claim), "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}}
        for claim, read_only in _claims(inputs)
    ]
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # ferry-optimize never talks to the Kubernetes API.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "containers": [container(inputs)],
        "volumes": volumes,
    }
    if defaults.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": name} for name in defaults.image_pull_secrets]
    return {
        "metadata": {
            "labels": pod_labels(inputs.owner.name),
            "annotations": {SPEC_ANNOTATION: spec_document(inputs.spec)},
        },
        "spec": spec,
    }


def job(inputs: OptimizationInputs) -> Manifest:
    """The optimization Job of `inputs.key`, owned by the ModelDeployment."""
    owner = inputs.owner
    defaults = inputs.defaults
    manifest: Manifest = {
        "apiVersion": kinds.JOB.api_version,
        "kind": kinds.JOB.kind,
        "metadata": {
            "name": job_name(owner.name, inputs.key),
            "namespace": owner.namespace,
            "labels": job_labels(owner.name),
            "annotations": {kinds.OPTIMIZATION_KEY_ANNOTATION: inputs.key},
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": {
            "backoffLimit": BACKOFF_LIMIT,
            "activeDeadlineSeconds": defaults.deadline_seconds,
            # The report stays in the artifact store and in status.optimization after the Job is gone.
            "ttlSecondsAfterFinished": defaults.ttl_seconds,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": CONTAINER_NAME,
                            "operator": "In",
                            "values": [EXIT_BAD_INPUT],
                        },
                    },
                    # A pod lost to a node drain or preemption is not the optimizer's failure.
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                ]
            },
            "template": pod_template(inputs),
        },
    }
    return with_input_hash(manifest)


def _pvc_volume(claim: str) -> str:
    return f"pvc-{claim}"[:63]
