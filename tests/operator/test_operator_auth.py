"""spec.serving.auth: the builders (golden files and the properties the runtime and the API server rely on),
the operator's refusal without a token-reviewer role, and the reconcile's handling of the one child the
garbage collector cannot remove (the TokenReview ClusterRoleBinding) against an in-memory API server:
Ferry's finalizer first, the binding pruned when the mode changes, deleted before the object may go, and
swept when its ModelDeployment is gone.

Update the golden files after an intended change with FERRY_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_cases import spec_with

from ferry_operator import builders, kinds
from ferry_operator.api import models
from ferry_operator.builders import inputs as build_inputs
from ferry_operator.builders import serving as serving_builder
from ferry_operator.config import OperatorConfig
from ferry_operator.informer import View
from ferry_operator.kube import ApiError, KubeClient
from ferry_operator.reconcile import observe, policy
from ferry_operator.reconcile.controller import Controller, Indices

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("FERRY_UPDATE_GOLDEN") == "1"
ROLE = "ferry-system-ferry-token-reviewer"
DEFAULTS = build_inputs.ServingDefaults(runtime_image="ferry-runtime:0.1.0", token_reviewer_role=ROLE)
OWNER = build_inputs.Owner(name="digits", namespace="ml", uid="11111111-2222-3333-4444-555555555555")

BEARER = {"mode": "bearer", "secretName": "digits-tokens"}
KUBERNETES = {
    "mode": "kubernetes",
    "allowedServiceAccounts": ["frontend", "batch/scorer"],
    "audiences": ["ferry", "https://kubernetes.default.svc"],
}
CASES = {"auth-bearer": BEARER, "auth-kubernetes": KUBERNETES}


def build(
    auth_spec: Mapping[str, Any] | None, defaults: build_inputs.ServingDefaults = DEFAULTS
) -> build_inputs.BuildInputs:
    serving = {"auth": dict(auth_spec)} if auth_spec is not None else {}
    parsed = models.ModelDeploymentSpec.model_validate(spec_with(serving=serving))
    return build_inputs.BuildInputs(
        owner=OWNER,
        spec=parsed,
        artifact=build_inputs.ServedArtifact(uri=parsed.model.uri, format=parsed.model.format),
        defaults=defaults,
    )


def pod(auth_spec: Mapping[str, Any] | None) -> dict[str, Any]:
    template = builders.desired_children(build(auth_spec))[kinds.DEPLOYMENT]["spec"]["template"]
    return template["spec"]  # type: ignore[no-any-return]


def runtime_env(auth_spec: Mapping[str, Any] | None) -> dict[str, str]:
    (runtime,) = pod(auth_spec)["containers"]
    return {e["name"]: e["value"] for e in runtime["env"]}


# --- builders ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_children_match_golden_files(case: str) -> None:
    children = builders.desired_children(build(CASES[case]))
    rendered = yaml.safe_dump_all(list(children.values()), sort_keys=False, width=110)
    golden = GOLDEN / f"{case}.yaml"
    if UPDATE:
        golden.write_text(rendered)
    assert golden.exists(), f"no golden file {golden}: run with FERRY_UPDATE_GOLDEN=1"
    assert rendered == golden.read_text(), f"{golden.name} differs: review, then FERRY_UPDATE_GOLDEN=1"


def test_mode_none_leaves_the_pods_as_they_were_before_auth_existed() -> None:
    # An operator upgrade must not roll out every ModelDeployment: none is the runtime's default, so it is
    # not written, and the pods keep no token and the namespace's default account.
    plain = builders.desired_children(build(None))
    explicit = builders.desired_children(build({"mode": "none"}))
    assert plain == explicit
    assert set(plain) == {kinds.SERVICE, kinds.DEPLOYMENT, kinds.POD_DISRUPTION_BUDGET}
    spec = pod(None)
    assert spec["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in spec
    assert not [name for name in runtime_env(None) if name.startswith("FERRY_RUNTIME_AUTH")]


def test_bearer_mounts_the_whole_secret_read_only_in_the_runtime_container_only() -> None:
    spec = pod(BEARER)
    (volume,) = [v for v in spec["volumes"] if "secret" in v]
    assert volume == {"name": "auth-tokens", "secret": {"secretName": "digits-tokens", "defaultMode": 0o440}}
    (runtime,) = spec["containers"]
    (mount,) = [m for m in runtime["volumeMounts"] if m["name"] == "auth-tokens"]
    # No subPath: a subPath mount never sees the Secret change, and rotation is editing the Secret.
    assert mount == {"name": "auth-tokens", "mountPath": "/var/run/ferry/auth-tokens", "readOnly": True}
    for init in spec["initContainers"]:
        assert "auth-tokens" not in {m["name"] for m in init["volumeMounts"]}, init["name"]
    env = runtime_env(BEARER)
    assert (env["FERRY_RUNTIME_AUTH"], env["FERRY_RUNTIME_AUTH_TOKEN_DIR"]) == ("bearer", mount["mountPath"])
    assert "FERRY_RUNTIME_AUTH_ALLOWED_SERVICE_ACCOUNTS" not in env
    # The runtime reads the tokens; it talks to no Kubernetes API, so it has no token of its own.
    assert spec["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in spec
    assert "serviceAccount" not in spec
    assert set(builders.desired_children(build(BEARER))) == {
        kinds.SERVICE,
        kinds.DEPLOYMENT,
        kinds.POD_DISRUPTION_BUDGET,
    }


def test_kubernetes_mode_pods_run_as_their_own_account_with_its_token() -> None:
    spec = pod(KUBERNETES)
    assert spec["serviceAccountName"] == "digits-model"
    # Both names (test_operator_auth_cluster.py shows why: leaving the mode must remove both).
    assert spec["serviceAccount"] == "digits-model"
    assert spec["automountServiceAccountToken"] is True
    env = runtime_env(KUBERNETES)
    assert env["FERRY_RUNTIME_AUTH"] == "kubernetes"
    # A bare name is the ModelDeployment's namespace's: the runtime compares NAMESPACE/NAME as is.
    assert env["FERRY_RUNTIME_AUTH_ALLOWED_SERVICE_ACCOUNTS"] == "ml/frontend,batch/scorer"
    assert env["FERRY_RUNTIME_AUTH_AUDIENCES"] == "ferry,https://kubernetes.default.svc"
    assert "FERRY_RUNTIME_AUTH_TOKEN_DIR" not in env
    assert not [v for v in spec["volumes"] if "secret" in v]
    # Without allowedServiceAccounts (or with an empty list) any authenticated token is accepted: the
    # runtime is told nothing to filter by.
    for open_to_all in ({"mode": "kubernetes"}, {"mode": "kubernetes", "allowedServiceAccounts": []}):
        assert set(runtime_env(open_to_all)) >= {"FERRY_RUNTIME_AUTH"}
        assert "FERRY_RUNTIME_AUTH_ALLOWED_SERVICE_ACCOUNTS" not in runtime_env(open_to_all)


def test_kubernetes_mode_adds_an_owned_service_account_and_a_labelled_cluster_role_binding() -> None:
    children = builders.desired_children(build(KUBERNETES))
    account = children[kinds.SERVICE_ACCOUNT]
    assert (
        account["metadata"]["name"]
        == kinds.child_name(kinds.SERVICE_ACCOUNT, "ml", "digits")
        == "digits-model"
    )
    assert account["metadata"]["namespace"] == "ml"
    (reference,) = account["metadata"]["ownerReferences"]
    assert (reference["kind"], reference["uid"], reference["controller"]) == (
        "ModelDeployment",
        OWNER.uid,
        True,
    )
    # The account itself mounts nothing by default; only the serving pods opt in.
    assert account["automountServiceAccountToken"] is False

    binding = children[kinds.CLUSTER_ROLE_BINDING]
    meta = binding["metadata"]
    assert (
        meta["name"]
        == kinds.child_name(kinds.CLUSTER_ROLE_BINDING, "ml", "digits")
        == "ferry:tokenreview:ml:digits"
    )
    # Cluster-scoped: no namespace, and no owner reference (a namespaced owner is never resolved for it);
    # the labels say whose it is, and the operator deletes it.
    assert "namespace" not in meta
    assert "ownerReferences" not in meta
    assert observe.labelled_owner_key(binding) == ("ml", "digits")
    assert observe.labelled_namespace(binding) == "ml"
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": ROLE,
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "digits-model", "namespace": "ml"}]
    for child in (account, binding):
        assert len(child["metadata"]["annotations"][kinds.INPUT_HASH_ANNOTATION]) == 16
        assert child["metadata"]["labels"][kinds.MANAGED_BY_LABEL] == "ferry"


def test_auth_shapes_the_revision() -> None:
    revisions = {
        serving_builder.revision(builders.desired_children(build(spec))[kinds.DEPLOYMENT]["spec"]["template"])
        for spec in (None, BEARER, {**BEARER, "secretName": "other"}, KUBERNETES, {"mode": "kubernetes"})
    }
    assert len(revisions) == 5


def test_binding_names_are_distinct_for_distinct_model_deployments() -> None:
    # With '-' between the parts, a-b/c and a/b-c would share one binding and fight over it.
    assert kinds.token_review_binding_name("a-b", "c") != kinds.token_review_binding_name("a", "b-c")
    longest = kinds.token_review_binding_name("n" * 63, "m" * 63)
    assert len(longest) <= 253


def test_no_binding_without_a_role_and_the_operator_refuses_the_mode() -> None:
    unconfigured = build_inputs.ServingDefaults(runtime_image="ferry-runtime:0.1.0")
    assert kinds.CLUSTER_ROLE_BINDING not in builders.desired_children(build(KUBERNETES, unconfigured))
    spec = models.ModelDeploymentSpec.model_validate(spec_with(serving={"auth": KUBERNETES}))
    (refused,) = policy.refusals(spec, OperatorConfig())
    assert refused.startswith(
        "spec.serving.auth.mode: kubernetes needs the operator's token-reviewer ClusterRole"
    )
    assert "FERRY_OPERATOR_TOKEN_REVIEWER_ROLE" in refused
    assert policy.refusals(spec, OperatorConfig(token_reviewer_role=ROLE)) == []
    bearer = models.ModelDeploymentSpec.model_validate(spec_with(serving={"auth": BEARER}))
    assert policy.refusals(bearer, OperatorConfig()) == []


@pytest.mark.parametrize(
    "auth_spec",
    [
        {"mode": "none"},
        BEARER,
        KUBERNETES,
        {"mode": "kubernetes", "allowedServiceAccounts": ["team-a/app.v2", "a"], "audiences": ["vault"]},
    ],
)
def test_valid_auth_specs_parse(auth_spec: dict[str, Any]) -> None:
    parsed = models.ModelDeploymentSpec.model_validate(spec_with(serving={"auth": auth_spec}))
    assert parsed.serving.auth.mode == auth_spec["mode"]


# --- the reconcile -----------------------------------------------------------------------------------------


class ApiServer(KubeClient):
    """The requests of a reconcile, answered as the API server would, with what it stores fed to the
    views (the watch): children applied and deleted, a ModelDeployment's finalizers and deletion."""

    def __init__(self, model_deployments: View[Any], children: Mapping[kinds.Kind, View[Any]]) -> None:
        super().__init__()
        self.model_deployments = model_deployments
        self.children = children
        self.bodies: dict[str, dict[str, Any]] = {}  # by uid: children, and the ModelDeployment
        self.log: list[tuple[str, str, str]] = []  # (method, resource, name)
        self._versions = itertools.count(100)
        # ModelDeployment name -> uid
        self.md_uids: dict[str, str] = {}

    def add_model_deployment(self, name: str, spec: Mapping[str, Any]) -> None:
        uid = f"md-uid-{name}"
        self.md_uids[name] = uid
        body = {
            "metadata": {
                "name": name,
                "namespace": "ml",
                "uid": uid,
                "generation": 1,
                "resourceVersion": "1",
            },
            "spec": dict(spec),
        }
        self._store(uid, body)

    def edit_spec(self, name: str, spec: Mapping[str, Any]) -> None:
        body = self.bodies[self.md_uids[name]]
        body["spec"] = dict(spec)
        body["metadata"]["generation"] += 1
        self._store(body["metadata"]["uid"], body)

    def delete_model_deployment(self, name: str) -> None:
        """kubectl delete: with finalizers, marked for deletion; without, gone (its namespaced children are
        the garbage collector's)."""
        uid = self.md_uids[name]
        body = self.bodies[uid]
        if body["metadata"].get("finalizers"):
            body["metadata"]["deletionTimestamp"] = "2026-12-06T00:00:00Z"
            self._store(uid, body)
        else:
            self._gone(uid)

    def md(self, name: str) -> dict[str, Any] | None:
        return self.bodies.get(self.md_uids[name])

    def objects(self, kind: kinds.Kind) -> list[dict[str, Any]]:
        return [b for b in self.bodies.values() if b.get("kind") == kind.kind]

    def _store(self, uid: str, body: dict[str, Any]) -> None:
        body["metadata"]["resourceVersion"] = str(next(self._versions))
        self.bodies[uid] = body
        view = self.model_deployments if "kind" not in body else self.children[kinds.Kind(*_kind_of(body))]
        view.put(uid, body)

    def _gone(self, uid: str) -> None:
        body = self.bodies.pop(uid)
        if "kind" not in body:
            self.model_deployments.drop(uid)
            # The garbage collector: namespaced children owned by it go too.
            for child_uid, child in list(self.bodies.items()):
                if any(r["uid"] == uid for r in child["metadata"].get("ownerReferences", [])):
                    self._gone(child_uid)
        else:
            self.children[kinds.Kind(*_kind_of(body))].drop(uid)

    async def request(
        self,
        method: str,
        path: str,
        *,
        resource: str,
        body: Any = None,
        params: Mapping[str, str] | None = None,  # noqa: ARG002 - the client's signature
        content_type: str = "application/json",  # noqa: ARG002
    ) -> dict[str, Any]:
        name = path.rsplit("/", 1)[-1]
        self.log.append((method, resource, name))
        if method == "GET":  # discovery: no monitoring API here
            return {"resources": []}
        if resource in {"modeldeployments/status", "events"}:
            return {"metadata": {"resourceVersion": str(next(self._versions))}}
        if resource == "modeldeployments":
            return self._patch_finalizers(name, body)
        if method == "DELETE":
            uid = next(
                (u for u, b in self.bodies.items() if b.get("kind") and b["metadata"]["name"] == name), None
            )
            if uid is None:
                raise ApiError(404, "Not Found", f"{name} not found", method, path)
            assert body["preconditions"]["uid"] == uid
            self._gone(uid)
            return {}
        assert method == "PATCH", (method, path)
        existing = next(
            (
                u
                for u, b in self.bodies.items()
                if b.get("kind") == body["kind"] and b["metadata"]["name"] == name
            ),
            None,
        )
        uid = existing or f"uid-{next(self._versions)}"
        stored = {**body, "metadata": {**body["metadata"], "uid": uid}}
        self._store(uid, stored)
        return stored

    def _patch_finalizers(self, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        md = self.md(name)
        if md is None:
            raise ApiError(404, "Not Found", "gone", "PATCH", name)
        meta = md["metadata"]
        if patch["metadata"]["resourceVersion"] != meta["resourceVersion"]:
            raise ApiError(409, "Conflict", "the object has been modified", "PATCH", name)
        meta["finalizers"] = list(patch["metadata"]["finalizers"])
        if meta.get("deletionTimestamp") and not meta["finalizers"]:
            self._gone(meta["uid"])
            return md
        self._store(meta["uid"], md)
        return md


def _kind_of(body: Mapping[str, Any]) -> tuple[str, str, str, str, bool]:
    kind = next(k for k in kinds.CHILD_KINDS if k.kind == body["kind"])
    return kind.group, kind.version, kind.kind, kind.plural, kind.namespaced


class Cluster:
    def __init__(self) -> None:
        self.model_deployments = View(observe.model_deployment_entry, lambda _key: None)
        self.children = {
            kind: View(functools.partial(observe.child_entry, kind), lambda _key: None)
            for kind in kinds.CHILD_KINDS
        }
        self.pods = View(observe.pod_entry, lambda _key: None)
        self.api = ApiServer(self.model_deployments, self.children)
        self.controller = Controller(OperatorConfig(workers=1, token_reviewer_role=ROLE), self.api)
        self.controller.bind(Indices(self.model_deployments, self.children, self.pods))

    def reconcile(self, name: str = "digits") -> str:
        return asyncio.run(self.controller.reconcile(("ml", name)))

    def bindings(self) -> list[str]:
        return [b["metadata"]["name"] for b in self.api.objects(kinds.CLUSTER_ROLE_BINDING)]

    def finalizers(self, name: str = "digits") -> list[str]:
        md = self.api.md(name)
        assert md is not None
        return list(md["metadata"].get("finalizers", []))


def spec(auth_spec: Mapping[str, Any]) -> dict[str, Any]:
    return spec_with(serving={"auth": dict(auth_spec)})


def test_the_finalizer_comes_before_the_binding_and_the_account_before_the_pods() -> None:
    cluster = Cluster()
    cluster.api.add_model_deployment("digits", spec(KUBERNETES))
    assert cluster.reconcile() == "applied"
    writes = [(method, resource) for method, resource, _ in cluster.api.log if method != "GET"]
    # A crash after the binding's creation must not leave an object that can go without the operator.
    assert writes.index(("PATCH", "modeldeployments")) < writes.index(("PATCH", "clusterrolebindings"))
    # A pod naming a missing service account is refused: the account is there first.
    assert writes.index(("PATCH", "serviceaccounts")) < writes.index(("PATCH", "deployments"))
    assert cluster.finalizers() == [kinds.FINALIZER]
    assert cluster.bindings() == ["ferry:tokenreview:ml:digits"]
    assert [a["metadata"]["name"] for a in cluster.api.objects(kinds.SERVICE_ACCOUNT)] == ["digits-model"]
    # Converged: nothing more to write (the status aside).
    cluster.api.log.clear()
    cluster.reconcile()
    assert {resource for _, resource, _ in cluster.api.log} <= {"modeldeployments/status", "events"}


def test_leaving_kubernetes_mode_prunes_the_binding_and_the_account_then_the_finalizer() -> None:
    cluster = Cluster()
    cluster.api.add_model_deployment("digits", spec(KUBERNETES))
    cluster.reconcile()
    cluster.api.edit_spec("digits", spec(BEARER))
    assert cluster.reconcile() == "applied"
    assert cluster.bindings() == []
    assert cluster.api.objects(kinds.SERVICE_ACCOUNT) == []
    assert cluster.finalizers() == []
    deployment = next(iter(cluster.api.objects(kinds.DEPLOYMENT)))
    pod_spec = deployment["spec"]["template"]["spec"]
    assert pod_spec["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in pod_spec


def test_a_deleted_model_deployment_goes_only_after_its_binding() -> None:
    cluster = Cluster()
    cluster.api.add_model_deployment("digits", spec(KUBERNETES))
    cluster.reconcile()
    cluster.api.delete_model_deployment("digits")
    assert cluster.api.md("digits") is not None, "the finalizer holds it"
    cluster.api.log.clear()
    assert cluster.reconcile() == "gone"
    assert [(m, r) for m, r, _ in cluster.api.log] == [
        ("DELETE", "clusterrolebindings"),
        ("PATCH", "modeldeployments"),
    ]
    assert cluster.bindings() == []
    assert cluster.api.md("digits") is None
    # And everything else went with it (owner references).
    assert [b for b in cluster.api.bodies.values() if b.get("kind")] == []
    assert cluster.reconcile() == "gone"
    assert len(cluster.controller.finalizers) == 0


def test_a_binding_whose_model_deployment_is_gone_is_swept() -> None:
    # Its finalizer removed by hand (or the object deleted while this operator did not manage bindings):
    # the watch still holds the binding under the gone object's key, and the next reconcile deletes it.
    cluster = Cluster()
    cluster.api.add_model_deployment("digits", spec(KUBERNETES))
    cluster.reconcile()
    md = cluster.api.md("digits")
    assert md is not None
    md["metadata"]["finalizers"] = []
    cluster.api.delete_model_deployment("digits")
    assert cluster.bindings() == ["ferry:tokenreview:ml:digits"]
    assert cluster.reconcile() == "gone"
    assert cluster.bindings() == []


def test_a_stale_view_of_the_finalizers_is_not_written_twice() -> None:
    # The watch has not delivered our finalizer yet: the reconcile after it must not add it again (which
    # would 409 on the old resourceVersion and retry forever until the watch catches up).
    cluster = Cluster()
    cluster.api.add_model_deployment("digits", spec(KUBERNETES))
    stale = next(iter(cluster.model_deployments[("ml", "digits")]))
    cluster.reconcile()
    cluster.model_deployments._by_key[("ml", "digits")] = {"md-uid-digits": stale}
    cluster.api.log.clear()
    cluster.reconcile()
    assert ("PATCH", "modeldeployments") not in [(m, r) for m, r, _ in cluster.api.log]


def test_a_changed_token_reviewer_role_replaces_the_binding() -> None:
    # roleRef is immutable: the API server refuses the apply, so the binding is deleted and created again.
    cluster = Cluster()
    cluster.api.add_model_deployment("digits", spec(KUBERNETES))
    cluster.reconcile()
    (old,) = cluster.api.objects(kinds.CLUSTER_ROLE_BINDING)
    original_request = cluster.api.request

    async def refuse_role_changes(method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        body = kwargs.get("body") or {}
        if method == "PATCH" and body.get("kind") == "ClusterRoleBinding":
            current = [
                b
                for b in cluster.api.objects(kinds.CLUSTER_ROLE_BINDING)
                if b["metadata"]["name"] == path.rsplit("/", 1)[-1]
            ]
            if current and current[0]["roleRef"] != body["roleRef"]:
                raise ApiError(
                    422, "Unprocessable Entity", "roleRef: Invalid value: cannot change roleRef", method, path
                )
        return await original_request(method, path, **kwargs)

    cluster.api.request = refuse_role_changes  # type: ignore[method-assign]
    cluster.controller.defaults = build_inputs.ServingDefaults(
        runtime_image=cluster.controller.defaults.runtime_image, token_reviewer_role="another-reviewer"
    )
    cluster.api.edit_spec("digits", spec({**KUBERNETES, "audiences": ["other"]}))
    assert cluster.reconcile() == "applied"
    (new,) = cluster.api.objects(kinds.CLUSTER_ROLE_BINDING)
    assert new["roleRef"]["name"] == "another-reviewer"
    assert new["metadata"]["uid"] != old["metadata"]["uid"]


def _serving_pod(cluster: Cluster, name: str, revision: str) -> None:
    cluster.pods.put(
        f"pod-{name}",
        {
            "metadata": {
                "name": name,
                "namespace": "ml",
                "uid": f"pod-{name}",
                "labels": {kinds.MODEL_DEPLOYMENT_LABEL: "digits", kinds.MANAGED_BY_LABEL: kinds.MANAGED_BY},
                "annotations": {kinds.REVISION_ANNOTATION: revision},
            },
            "status": {"containerStatuses": [{"name": "runtime", "ready": True}]},
        },
    )


def test_the_old_pods_keep_their_account_and_binding_until_the_rollout_replaced_them() -> None:
    # kubernetes -> bearer: until the new pods are Ready the old ones serve, and they check tokens with
    # their account's TokenReview grant (and a deleted account's tokens stop working at once).
    cluster = Cluster()
    cluster.api.add_model_deployment("digits", spec(KUBERNETES))
    cluster.reconcile()
    old_revision = cluster.controller._desired[("ml", "digits")].revision
    assert old_revision is not None
    _serving_pod(cluster, "digits-old", old_revision)
    cluster.api.edit_spec("digits", spec(BEARER))
    cluster.reconcile()
    new_revision = cluster.controller._desired[("ml", "digits")].revision
    assert new_revision not in (None, old_revision)
    assert cluster.bindings() == ["ferry:tokenreview:ml:digits"]
    assert len(cluster.api.objects(kinds.SERVICE_ACCOUNT)) == 1
    assert cluster.finalizers() == [kinds.FINALIZER]
    # The rollout is done: only new pods.
    cluster.pods.drop("pod-digits-old")
    _serving_pod(cluster, "digits-new", str(new_revision))
    cluster.reconcile()
    assert cluster.bindings() == []
    assert cluster.api.objects(kinds.SERVICE_ACCOUNT) == []
    assert cluster.finalizers() == []


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_runtime_reads_what_the_pods_are_given(case: str) -> None:
    # The contract with ferry_runtime.settings: the serving container's args and FERRY_RUNTIME_* env,
    # exactly as built, load into the runtime's own settings (its validation included).
    from ferry_runtime.settings import load_settings

    (runtime,) = pod(CASES[case])["containers"]
    settings = load_settings(runtime["args"], {e["name"]: e["value"] for e in runtime["env"]})
    assert settings.auth == CASES[case]["mode"]
    if case == "auth-bearer":
        (mount,) = [m for m in runtime["volumeMounts"] if m["name"] == "auth-tokens"]
        assert str(settings.auth_token_dir) == mount["mountPath"]
    else:
        assert settings.auth_allowed_service_accounts == ("ml/frontend", "batch/scorer")
        assert settings.auth_audiences == ("ferry", "https://kubernetes.default.svc")
        # The runtime's defaults are the token and CA the pod's service account mounts.
        assert settings.auth_api_token_file is None
        assert settings.auth_api_server == ""
