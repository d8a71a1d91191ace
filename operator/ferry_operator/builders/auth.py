"""spec.serving.auth: what the serving pods are given to check a caller's token, and, for mode kubernetes,
their own service account and its permission to ask the API server about a token (TokenReview).

The runtime checks the tokens itself (FERRY_RUNTIME_AUTH*, ferry_runtime's settings); the operator only
wires it up. It never reads the bearer tokens: the Secret is mounted into the pods as a whole volume (a
subPath mount would never see the Secret change, and rotation is editing the Secret).
"""

from __future__ import annotations

from typing import Any

from ferry_operator import kinds
from ferry_operator.builders.common import Manifest, metadata, with_input_hash
from ferry_operator.builders.inputs import BuildInputs

TOKEN_DIR = "/var/run/ferry/auth-tokens"
TOKEN_VOLUME = "auth-tokens"
# Read by the runtime's group only: the pod's fsGroup (serving.pod_security_context) owns the files.
TOKEN_FILE_MODE = 0o440


def runtime_env(inputs: BuildInputs) -> dict[str, str]:
    """The runtime's FERRY_RUNTIME_AUTH* settings; none for mode none (the runtime's default), so a
    ModelDeployment without auth keeps the pod template, and the revision, it had before auth existed."""
    auth = inputs.spec.serving.auth
    if auth.mode == "none":
        return {}
    env: dict[str, str] = {"FERRY_RUNTIME_AUTH": auth.mode}
    if auth.mode == "bearer":
        env["FERRY_RUNTIME_AUTH_TOKEN_DIR"] = TOKEN_DIR
    if auth.allowed_service_accounts:
        env["FERRY_RUNTIME_AUTH_ALLOWED_SERVICE_ACCOUNTS"] = ",".join(
            qualified_service_account(account, inputs.owner.namespace)
            for account in auth.allowed_service_accounts
        )
    if auth.audiences:
        env["FERRY_RUNTIME_AUTH_AUDIENCES"] = ",".join(auth.audiences)
    return env


def qualified_service_account(account: str, namespace: str) -> str:
    """NAMESPACE/NAME for an allowedServiceAccounts entry (a bare NAME is in the ModelDeployment's
    namespace), so the runtime compares it with a TokenReview's user as is."""
    return account if "/" in account else f"{namespace}/{account}"


def volumes(inputs: BuildInputs) -> list[dict[str, Any]]:
    auth = inputs.spec.serving.auth
    if auth.mode != "bearer":
        return []
    return [
        {"name": TOKEN_VOLUME, "secret": {"secretName": auth.secret_name, "defaultMode": TOKEN_FILE_MODE}}
    ]


def runtime_mounts(inputs: BuildInputs) -> list[dict[str, Any]]:
    """The token Secret in the runtime container only (the fetch containers never need it)."""
    if inputs.spec.serving.auth.mode != "bearer":
        return []
    return [{"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True}]


def pod_identity(inputs: BuildInputs) -> dict[str, Any]:
    """The pod spec's service-account fields. Only mode kubernetes talks to the API server (TokenReview,
    with the pod's own projected token, at KUBERNETES_SERVICE_HOST/PORT, which the kubelet sets even
    with enableServiceLinks false); every other pod mounts no token at all."""
    if inputs.spec.serving.auth.mode != "kubernetes":
        return {"automountServiceAccountToken": False}
    account = kinds.service_account_name(inputs.owner.name)
    return {
        "serviceAccountName": account,
        # The deprecated alias too, so the operator's server-side apply owns both: the API server copies
        # one into the other, and a mode change that drops only serviceAccountName would get it back from
        # the unowned alias (pods naming a pruned account, which cannot be created).
        "serviceAccount": account,
        "automountServiceAccountToken": True,
    }


def service_account(inputs: BuildInputs) -> Manifest | None:
    """The serving pods' own service account (mode kubernetes), so the TokenReview permission is theirs
    alone and not every pod's that runs as the namespace's default account."""
    if inputs.spec.serving.auth.mode != "kubernetes":
        return None
    owner = inputs.owner
    return with_input_hash(
        {
            "apiVersion": kinds.SERVICE_ACCOUNT.api_version,
            "kind": kinds.SERVICE_ACCOUNT.kind,
            "metadata": metadata(owner, name=kinds.service_account_name(owner.name)),
            # Pods opt in (pod_identity); any other pod that names this account gets no token by default.
            "automountServiceAccountToken": False,
        }
    )


def token_review_binding(inputs: BuildInputs) -> Manifest | None:
    """Binds the chart's token-reviewer ClusterRole (create tokenreviews, nothing else) to the serving
    pods' service account. TokenReview is cluster-scoped, so only a ClusterRoleBinding grants it; a
    cluster-scoped object cannot be owned by a namespaced one, so labels name the ModelDeployment and the
    operator deletes the binding itself (reconcile/controller.py)."""
    role = inputs.defaults.token_reviewer_role
    if inputs.spec.serving.auth.mode != "kubernetes" or not role:
        return None
    owner = inputs.owner
    return with_input_hash(
        {
            "apiVersion": kinds.CLUSTER_ROLE_BINDING.api_version,
            "kind": kinds.CLUSTER_ROLE_BINDING.kind,
            "metadata": {
                "name": kinds.token_review_binding_name(owner.namespace, owner.name),
                "labels": {
                    **kinds.child_labels(owner.name),
                    kinds.MODEL_DEPLOYMENT_NAMESPACE_LABEL: owner.namespace,
                },
            },
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [
                {
                    "kind": "ServiceAccount",
                    "name": kinds.service_account_name(owner.name),
                    "namespace": owner.namespace,
                }
            ],
        }
    )
