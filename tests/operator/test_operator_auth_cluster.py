"""spec.serving.auth against the real API server (kwok's fake nodes run the pods): the ServiceAccount, the
TokenReview ClusterRoleBinding and the pod template of mode kubernetes, what the API server makes of them
(the pods get a projected token, the account may create TokenReviews and nothing else), the switch to
bearer, and a deletion that leaves nothing behind, the cluster-scoped binding included."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_cases import spec_with

from conftest import Cluster, OperatorProcess, wait_for
from ferry_devcluster.testing import Kube

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("model_pvc")]

SMALL = {"requests": {"cpu": "10m", "memory": "16Mi"}}


@pytest.fixture
def token_reviewer(kube: Kube, namespace: str) -> Iterator[str]:
    """The chart's token-reviewer ClusterRole (charts/ferry/templates/rbac.yaml), named for this test."""
    name = f"{namespace}-token-reviewer"
    kube.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name},
            "rules": [
                {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}
            ],
        }
    )
    yield name
    kube.kubectl("delete", "clusterrole", name, "--ignore-not-found", check=False)


@pytest.fixture
def auth_operator(
    crd_installed: Kube, namespace: str, token_reviewer: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[OperatorProcess]:
    process = OperatorProcess(
        crd_installed, namespace, tmp_path / "operator.log", FERRY_OPERATOR_TOKEN_REVIEWER_ROLE=token_reviewer
    ).start()
    try:
        wait_for("the operator's health endpoint", process.healthy, timeout=60)
        yield process
    finally:
        process.stop()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            sys.stderr.write(f"\n--- ferry-operator log ---\n{process.log()[-20000:]}\n")


def spec(auth: dict[str, Any]) -> dict[str, Any]:
    return spec_with(serving={"resources": SMALL, "auth": auth})


def binding(kube: Kube, namespace: str, name: str = "digits") -> dict[str, Any] | None:
    result = kube.kubectl(
        "get",
        "clusterrolebinding",
        f"ferry:tokenreview:{namespace}:{name}",
        "-o",
        "json",
        "--ignore-not-found",
    )
    return json.loads(result.stdout) if result.stdout.strip() else None


def bindings_of(kube: Kube, namespace: str) -> list[str]:
    listing = kube.kubectl_json(
        "get", "clusterrolebindings", "-l", f"ferry.dev/modeldeployment-namespace={namespace}"
    )
    return [item["metadata"]["name"] for item in listing["items"]]


def pod_spec(cluster: Cluster) -> dict[str, Any]:
    deployment = cluster.get("deployment", "digits")
    assert deployment is not None
    return dict(deployment["spec"]["template"]["spec"])


def env_of(spec: dict[str, Any]) -> dict[str, str]:
    (runtime,) = [c for c in spec["containers"] if c["name"] == "runtime"]
    return {e["name"]: e["value"] for e in runtime["env"]}


def can_i(kube: Kube, namespace: str, account: str, *what: str) -> bool:
    result = kube.kubectl(
        "auth", "can-i", *what, f"--as=system:serviceaccount:{namespace}:{account}", check=False
    )
    return result.stdout.strip() == "yes"


@pytest.mark.usefixtures("auth_operator")
def test_kubernetes_mode_then_bearer_then_deletion_leaves_nothing(
    cluster: Cluster, kube: Kube, namespace: str, token_reviewer: str
) -> None:
    cluster.apply_md("digits", spec({"mode": "kubernetes", "allowedServiceAccounts": ["frontend"]}))
    md = wait_for("digits Ready", lambda: cluster.ready("digits"))
    assert md["metadata"]["finalizers"] == ["ferry.dev/finalizer"]

    account = cluster.get("serviceaccount", "digits-model")
    assert account is not None
    assert account["automountServiceAccountToken"] is False
    (owner,) = account["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"]) == ("ModelDeployment", md["metadata"]["uid"])

    granted = binding(kube, namespace)
    assert granted is not None
    assert granted["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": token_reviewer,
    }
    assert granted["subjects"] == [{"kind": "ServiceAccount", "name": "digits-model", "namespace": namespace}]
    assert granted["metadata"]["labels"]["ferry.dev/modeldeployment"] == "digits"
    assert "ownerReferences" not in granted["metadata"]

    template = pod_spec(cluster)
    assert (template["serviceAccountName"], template["automountServiceAccountToken"]) == (
        "digits-model",
        True,
    )
    assert env_of(template)["FERRY_RUNTIME_AUTH"] == "kubernetes"
    assert env_of(template)["FERRY_RUNTIME_AUTH_ALLOWED_SERVICE_ACCOUNTS"] == f"{namespace}/frontend"
    # The API server's service-account admission gave the real pods their projected token.
    (pod,) = cluster.items("pods", "ferry.dev/modeldeployment=digits")
    assert pod["spec"]["serviceAccountName"] == "digits-model"
    projected = [v for v in pod["spec"]["volumes"] if "projected" in v]
    assert any("serviceAccountToken" in s for v in projected for s in v["projected"]["sources"]), projected

    # What the runtime will do with the grant: review a client's token, as the pods' account. It may do
    # that and nothing else; the namespace's default account may not.
    assert can_i(kube, namespace, "digits-model", "create", "tokenreviews.authentication.k8s.io")
    assert not can_i(kube, namespace, "digits-model", "get", "pods")
    assert not can_i(kube, namespace, "default", "create", "tokenreviews.authentication.k8s.io")
    cluster.kubectl("create", "serviceaccount", "frontend")
    client_token = cluster.kubectl("create", "token", "frontend", "--audience=ferry").stdout.strip()
    review = json.loads(
        kube.kubectl(
            "create",
            "--raw",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            f"--as=system:serviceaccount:{namespace}:digits-model",
            "-f",
            "-",
            stdin=json.dumps(
                {
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenReview",
                    "spec": {"token": client_token, "audiences": ["ferry"]},
                }
            ),
        ).stdout
    )
    assert review["status"]["authenticated"] is True
    assert review["status"]["user"]["username"] == f"system:serviceaccount:{namespace}:frontend"

    # bearer: the binding and the account go once the old pods are replaced, and so does the finalizer.
    cluster.kubectl("create", "secret", "generic", "digits-tokens", "--from-literal=v1=s3cret")
    cluster.apply_md("digits", spec({"mode": "bearer", "secretName": "digits-tokens"}))
    wait_for("generation 2 Ready", lambda: cluster.ready("digits", generation=2))
    wait_for("the binding pruned", lambda: binding(kube, namespace) is None)
    wait_for("the account pruned", lambda: cluster.get("serviceaccount", "digits-model") is None)
    wait_for(
        "the finalizer removed",
        lambda: not (cluster.get("modeldeployment", "digits") or {})["metadata"].get("finalizers"),
    )
    template = pod_spec(cluster)
    assert template["automountServiceAccountToken"] is False
    # Server-side apply removed both names (the API server would have copied a leftover deprecated
    # serviceAccount back into serviceAccountName, and new pods would name the pruned account).
    assert "serviceAccountName" not in template
    assert "serviceAccount" not in template
    (volume,) = [v for v in template["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == "digits-tokens"

    # kubernetes again, then deleted: the operator removes the binding before the object may go.
    cluster.apply_md("digits", spec({"mode": "kubernetes"}))
    wait_for("the binding again", lambda: binding(kube, namespace))
    cluster.kubectl("delete", "modeldeployment", "digits", "--wait=true", "--timeout=60s")
    assert binding(kube, namespace) is None, "the ModelDeployment went before its binding"
    assert bindings_of(kube, namespace) == []
    wait_for("the account garbage-collected", lambda: cluster.get("serviceaccount", "digits-model") is None)
    wait_for(
        "the pods gone", lambda: not cluster.items("pods", "ferry.dev/modeldeployment=digits"), timeout=90
    )


@pytest.mark.usefixtures("auth_operator")
def test_a_rollback_into_kubernetes_mode_brings_its_account_and_binding_back(
    cluster: Cluster, kube: Kube, namespace: str
) -> None:
    # kubernetes -> bearer with a model whose pods can never be scheduled (a missing claim): the deadline
    # passes and the Ready revision, of mode kubernetes, serves again, so its pods need their account and
    # its TokenReview grant though the spec now says bearer.
    def broken_or_good(auth: dict[str, Any], uri: str) -> dict[str, Any]:
        return spec_with(
            model={"uri": uri},
            serving={"resources": SMALL, "auth": auth},
            rollout={"progressDeadlineSeconds": 10},
        )

    cluster.apply_md("digits", broken_or_good({"mode": "kubernetes"}, "pvc://models/digits/v1.onnx"))
    ready = wait_for("digits Ready", lambda: cluster.ready("digits"))
    good_revision = ready["status"]["revision"]["current"]
    cluster.kubectl("create", "secret", "generic", "digits-tokens", "--from-literal=v1=s3cret")
    cluster.apply_md(
        "digits",
        broken_or_good(
            {"mode": "bearer", "secretName": "digits-tokens"}, "pvc://no-such-claim/digits/v2.onnx"
        ),
    )
    wait_for(
        "the rollback",
        lambda: ((cluster.get("modeldeployment", "digits") or {}).get("status") or {}).get("rollback"),
        timeout=120,
    )
    template = pod_spec(cluster)
    assert template["serviceAccountName"] == "digits-model"
    assert cluster.get("serviceaccount", "digits-model") is not None
    assert binding(kube, namespace) is not None
    wait_for(
        "only the Ready revision's pods",
        lambda: (
            (pods := cluster.items("pods", "ferry.dev/modeldeployment=digits"))
            and all(p["metadata"]["annotations"]["ferry.dev/revision"] == good_revision for p in pods)
        ),
    )
    # Still there once the broken pods are gone: the rolled-back pods keep needing them.
    assert binding(kube, namespace) is not None
    assert (cluster.get("modeldeployment", "digits") or {})["metadata"]["finalizers"] == [
        "ferry.dev/finalizer"
    ]


@pytest.mark.usefixtures("crd_installed")
def test_a_binding_left_by_a_stopped_operator_is_deleted_when_it_starts(
    cluster: Cluster, kube: Kube, namespace: str, token_reviewer: str, tmp_path: Path
) -> None:
    # The finalizer removed by hand while the operator was away (the documented way out when it is
    # uninstalled): its binding outlives the ModelDeployment until an operator sees it.
    def start() -> OperatorProcess:
        process = OperatorProcess(
            kube,
            namespace,
            tmp_path / "operator.log",
            FERRY_OPERATOR_TOKEN_REVIEWER_ROLE=token_reviewer,
        ).start()
        wait_for("the operator's health endpoint", process.healthy, timeout=60)
        return process

    operator = start()
    try:
        cluster.apply_md("digits", spec({"mode": "kubernetes"}))
        wait_for("digits Ready", lambda: cluster.ready("digits"))
        assert binding(kube, namespace) is not None
    finally:
        operator.stop()
    cluster.kubectl(
        "patch", "modeldeployment", "digits", "--type=merge", "-p", '{"metadata":{"finalizers":null}}'
    )
    cluster.kubectl("delete", "modeldeployment", "digits", "--wait=true", "--timeout=30s")
    assert binding(kube, namespace) is not None
    operator = start()
    try:
        wait_for("the orphaned binding deleted", lambda: binding(kube, namespace) is None, timeout=60)
    finally:
        operator.stop()


@pytest.mark.usefixtures("crd_installed")
@pytest.mark.parametrize(
    "auth",
    [
        {"mode": "none"},
        {"mode": "bearer", "secretName": "tokens"},
        {
            "mode": "kubernetes",
            "allowedServiceAccounts": ["team-a/app.v2", "frontend"],
            "audiences": ["ferry"],
        },
        {"mode": "kubernetes", "allowedServiceAccounts": []},
    ],
    ids=["none", "bearer", "kubernetes", "kubernetes-any"],
)
def test_valid_auth_specs_are_accepted_and_default_to_none(cluster: Cluster, auth: dict[str, Any]) -> None:
    for given, expected in ((auth, auth), (None, {"mode": "none"})):
        serving = {"auth": given} if given is not None else {}
        manifest = {
            "apiVersion": "ferry.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "digits"},
            "spec": spec_with(serving=serving),
        }
        created = json.loads(
            cluster.kubectl(
                "create", "--dry-run=server", "-o", "json", "-f", "-", stdin=json.dumps(manifest)
            ).stdout
        )
        assert created["spec"]["serving"]["auth"] == expected
