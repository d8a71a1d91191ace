"""The Helm chart: lint, values schema, Pod Security "restricted", least-privilege RBAC, and (on the local
cluster) every rendered manifest accepted by the real API server and a full install/upgrade/uninstall."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_cases import CHART, SCENARIOS, Render, RenderError

GOLDEN_RBAC = Path(__file__).parent / "golden" / "rbac.yaml"
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "Pod"}


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "Pod":
        return dict(obj["spec"])
    return dict(obj["spec"]["template"]["spec"])


@pytest.mark.parametrize("values", [None, *SCENARIOS], ids=lambda v: v.name if v else "default")
def test_helm_lint(helm: Path, values: Path | None) -> None:
    command = [str(helm), "lint", "--strict", str(CHART)] + (["--values", str(values)] if values else [])
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("values", [None, *SCENARIOS], ids=lambda v: v.name if v else "default")
def test_every_pod_meets_the_restricted_pod_security_standard(render: Render, values: Path | None) -> None:
    objects = render(values) if values else render()
    pods = [obj for obj in objects if obj["kind"] in POD_KINDS]
    overrides = yaml.safe_load(values.read_text()) if values else {}
    operator_in_cluster = overrides.get("operator", {}).get("enabled", True)
    assert bool(pods) == operator_in_cluster, "the operator pod must exist exactly when operator.enabled"
    for obj in pods:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        spec = _pod_spec(obj)
        pod_sc = spec.get("securityContext", {})
        for forbidden in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(forbidden), f"{where}: {forbidden}"
        assert not [v for v in spec.get("volumes", []) if "hostPath" in v], f"{where}: hostPath volume"
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        for container in spec.get("initContainers", []) + spec["containers"]:
            sc = container.get("securityContext", {})
            name = f"{where} container {container['name']}"
            assert sc.get("allowPrivilegeEscalation") is False, name
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], name
            assert not sc.get("capabilities", {}).get("add"), name
            assert not sc.get("privileged"), name
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, name
            assert sc.get("runAsUser", pod_sc.get("runAsUser", 1)) != 0, name
            assert "limits" in container.get("resources", {}), f"{name}: no resource limits"


def _rbac(objects: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    return {
        f"{obj['kind']}/{obj['metadata'].get('namespace', '-')}/{obj['metadata']['name']}": obj["rules"]
        for obj in objects
        if obj["kind"] in ("Role", "ClusterRole")
    }


def test_rbac_matches_the_reviewed_golden_list(render: Render) -> None:
    # A new permission must be a deliberate, reviewed change to tests/chart/golden/rbac.yaml.
    rbac = {"default": _rbac(render())}
    for values in SCENARIOS:
        rbac[values.name] = _rbac(render(values))
    assert rbac == yaml.safe_load(GOLDEN_RBAC.read_text())


def test_rbac_has_no_wildcards_and_no_secret_access(render: Render) -> None:
    for values in [None, *SCENARIOS]:
        for name, rules in _rbac(render(values) if values else render()).items():
            for rule in rules:
                flat = rule.get("apiGroups", []) + rule["resources"] + rule["verbs"]
                assert "*" not in flat, f"{name}: wildcard in {rule}"
                assert "secrets" not in rule["resources"], f"{name}: the operator never reads Secrets"


def test_namespaced_install_grants_nothing_cluster_wide_but_discovery_and_token_review(
    render: Render,
) -> None:
    objects = render(CHART / "ci" / "namespaced-values.yaml")
    roles = {(o["kind"], o["metadata"].get("namespace")) for o in objects if o["kind"].endswith("Role")}
    assert roles == {("ClusterRole", None), ("Role", "team-a"), ("Role", "team-b")}
    cluster_roles = [o for o in objects if o["kind"] == "ClusterRole"]
    # TokenReview is cluster-scoped: binding it for auth mode kubernetes needs cluster-scoped RBAC even here.
    assert {r for role in cluster_roles for rule in role["rules"] for r in rule["resources"]} == {
        "customresourcedefinitions",
        "namespaces",
        "clusterrolebindings",
        "clusterroles",
        "tokenreviews",
    }
    assert "serviceaccounts" in {
        r for o in objects if o["kind"] == "Role" for rule in o["rules"] for r in rule["resources"]
    }
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "--namespace=team-a",
        "--namespace=team-b",
    ]


@pytest.mark.parametrize("values", [None, *SCENARIOS], ids=lambda v: v.name if v else "default")
def test_the_operator_may_bind_the_token_reviewer_role_and_no_other(
    render: Render, values: Path | None
) -> None:
    objects = render(values) if values else render()
    reviewer = "ferry-system-ferry-token-reviewer"
    (role,) = [o for o in objects if o["kind"] == "ClusterRole" and o["metadata"]["name"] == reviewer]
    assert role["rules"] == [
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}
    ]
    bind_rules = [
        rule
        for o in objects
        if o["kind"] in ("ClusterRole", "Role")
        for rule in o["rules"]
        if "bind" in rule["verbs"] or "escalate" in rule["verbs"]
    ]
    assert bind_rules == [
        {
            "apiGroups": ["rbac.authorization.k8s.io"],
            "resources": ["clusterroles"],
            "resourceNames": [reviewer],
            "verbs": ["bind"],
        }
    ]
    # The chart never grants the role itself: only the operator's per-ModelDeployment bindings do.
    assert not [o for o in objects if o["kind"].endswith("Binding") and o["roleRef"]["name"] == reviewer]
    # And the operator is told its name (it refuses auth mode kubernetes without it).
    for deployment in [o for o in objects if o["kind"] == "Deployment"]:
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["FERRY_OPERATOR_TOKEN_REVIEWER_ROLE"] == reviewer


def test_crds_are_templated_and_kept_on_uninstall(render: Render) -> None:
    (crd,) = [o for o in render() if o["kind"] == "CustomResourceDefinition"]
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert (
        crd["spec"]
        == yaml.safe_load((CHART.parents[1] / "crds" / "ferry.dev_modeldeployments.yaml").read_text())["spec"]
    )
    assert not [
        o for o in render(set_values=["crds.enabled=false"]) if o["kind"] == "CustomResourceDefinition"
    ]


def test_operator_is_a_single_instance_that_never_overlaps_on_upgrade(render: Render) -> None:
    (deployment,) = [o for o in render() if o["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FERRY_OPERATOR_RUNTIME_IMAGE"] == "ferry-runtime:0.1.0"
    assert env["FERRY_OPERATOR_ARTIFACT_STORE"] == "pvc://ferry-artifacts/"
    assert json.loads(env["FERRY_OPERATOR_OPTIMIZER_RESOURCES"])["limits"]["memory"] == "4Gi"


def test_the_scraper_is_the_default_metrics_peer_of_model_networkpolicies(render: Render) -> None:
    def operator_setting(objects: list[dict[str, Any]]) -> Any:
        (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
        env = {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        return json.loads(env["FERRY_OPERATOR_SERVING_METRICS_FROM"])

    monitoring = render(CHART / "ci" / "monitoring-values.yaml")
    # (the other NetworkPolicy is the `helm test` pod's deny-all)
    (policy,) = [o for o in monitoring if o["kind"] == "NetworkPolicy" and o["spec"].get("ingress")]
    # One value says where Prometheus runs: the operator's own policy and the ModelDeployments' default.
    assert operator_setting(monitoring) == policy["spec"]["ingress"][0]["from"]
    assert operator_setting(monitoring) == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    assert operator_setting(render()) == [{"namespaceSelector": {}}]
    # Passed on when the operator's own policy is off (external-crds-values.yaml turns it off).
    assert operator_setting(render(CHART / "ci" / "external-crds-values.yaml")) == [{"namespaceSelector": {}}]


def test_operator_settings_are_ones_the_operator_accepts(render: Render) -> None:
    from ferry_operator import config

    for values in [None, *SCENARIOS]:
        objects = render(values) if values else render()
        for deployment in [o for o in objects if o["kind"] == "Deployment"]:
            env = {
                e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
            }
            config.from_env(env)  # raises naming the variable on any mismatch between chart and operator


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("operatr.logLevel=INFO", "operatr"),
        ("operator.logFormat=xml", "logFormat"),
        ("artifactStore.type=nfs", "type"),
        ("operator.metricsPort=80", "metricsPort"),
    ],
)
def test_values_schema_refuses_typos_and_bad_values(render: Render, setting: str, message: str) -> None:
    with pytest.raises(RenderError, match=message):
        render(set_values=[setting])
