"""The child builders, pinned by golden files, and the properties every child must have.

Update the golden files after an intended change with FERRY_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_cases import spec_with

from ferry_operator import builders, kinds
from ferry_operator.api import models
from ferry_operator.builders import inputs as build_inputs
from ferry_operator.builders import network
from ferry_operator.builders.common import input_hash
from ferry_operator.reconcile import plan
from ferry_operator.reconcile.observe import ChildSnapshot

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("FERRY_UPDATE_GOLDEN") == "1"
DEFAULTS = build_inputs.ServingDefaults(runtime_image="ferry-runtime:0.1.0", image_pull_secrets=("regcred",))
OWNER = build_inputs.Owner(name="digits", namespace="ml", uid="11111111-2222-3333-4444-555555555555")

CASES: dict[str, dict[str, Any]] = {
    "minimal": spec_with(),
    "full": spec_with(
        model={
            "uri": "s3://models/digits/model.onnx",
            "credentialsSecret": "s3-creds",
            "sha256": "ab" * 32,
        },
        serving={
            "autoscaling": {
                "minReplicas": 2,
                "maxReplicas": 8,
                "metric": "cpu",
                "target": 60,
                "scaleUp": {"stabilizationWindowSeconds": 15},
                "scaleDown": {"stabilizationWindowSeconds": 120},
            },
            "batching": {"maxBatchSize": 16, "maxDelayMs": 2.5, "maxQueueSize": 512},
            "resources": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "8Gi"}},
            "gpu": 1,
            "nodeSelector": {"node.kubernetes.io/instance-type": "g5.xlarge"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": {
                "podAntiAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "weight": 100,
                            "podAffinityTerm": {
                                "topologyKey": "kubernetes.io/hostname",
                                "labelSelector": {"matchLabels": {"ferry.dev/modeldeployment": "digits"}},
                            },
                        }
                    ]
                }
            },
            "image": "registry.example/ferry-runtime:custom",
            "threads": 4,
        },
        rollout={"progressDeadlineSeconds": 300},
        monitoring={"serviceMonitor": "enabled"},
    ),
    "concurrency-autoscaling": spec_with(
        serving={"autoscaling": {"minReplicas": 1, "maxReplicas": 20, "metric": "concurrency"}},
        monitoring={"serviceMonitor": "disabled"},
    ),
    # A NetworkPolicy with every kind of peer: an ingress controller's pods, a namespace, addresses.
    "network": spec_with(
        serving={
            "replicas": 2,
            "network": {
                "allowFrom": [
                    {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}
                        },
                        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "ingress-nginx"}},
                    },
                    {
                        "namespaceSelector": {
                            "matchExpressions": [
                                {"key": "team", "operator": "In", "values": ["search", "ads"]}
                            ]
                        }
                    },
                    {"ipBlock": {"cidr": "10.20.0.0/16", "except": ["10.20.99.0/24"]}},
                ],
                "metricsFrom": [
                    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
                ],
            },
        },
    ),
    # network: {} -> the defaults: inference from the own namespace, metrics from the operator's default.
    "network-defaults": spec_with(serving={"network": {}}),
    # A generative model scaled on its waiting requests (the continuous batch is full).
    "queue-autoscaling": spec_with(
        model={"uri": "pvc://models/llm/", "format": "onnx-genai"},
        serving={
            "autoscaling": {"minReplicas": 1, "maxReplicas": 8, "metric": "queue"},
            "generation": {"maxSequences": 4, "maxWaiting": 32},
        },
        monitoring={"serviceMonitor": "disabled"},
    ),
}


def build(spec: dict[str, Any], service_monitor_available: bool = True) -> build_inputs.BuildInputs:
    """Inputs for `spec`; `service_monitor_available`: the monitoring.coreos.com CRDs are installed."""
    parsed = models.ModelDeploymentSpec.model_validate(spec)
    return build_inputs.BuildInputs(
        owner=OWNER,
        spec=parsed,
        artifact=build_inputs.ServedArtifact(
            uri=parsed.model.uri, sha256=parsed.model.sha256, format=parsed.model.format
        ),
        defaults=DEFAULTS,
        monitoring_kinds=frozenset(kinds.MONITORING_KINDS) if service_monitor_available else frozenset(),
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_children_match_golden_files(case: str) -> None:
    children = builders.desired_children(build(CASES[case]))
    rendered = yaml.safe_dump_all(list(children.values()), sort_keys=False, width=110)
    golden = GOLDEN / f"{case}.yaml"
    if UPDATE:
        golden.write_text(rendered)
    assert golden.exists(), f"no golden file {golden}: run with FERRY_UPDATE_GOLDEN=1"
    assert rendered == golden.read_text(), f"{golden.name} differs: review, then FERRY_UPDATE_GOLDEN=1"


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_child_is_owned_labelled_and_hashed(case: str) -> None:
    for manifest in builders.desired_children(build(CASES[case])).values():
        meta = manifest["metadata"]
        assert meta["name"] == OWNER.name
        assert meta["namespace"] == OWNER.namespace
        (reference,) = meta["ownerReferences"]
        assert reference == {
            "apiVersion": "ferry.dev/v1alpha1",
            "kind": "ModelDeployment",
            "name": OWNER.name,
            "uid": OWNER.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
        assert meta["labels"][kinds.MANAGED_BY_LABEL] == "ferry"
        assert meta["labels"][kinds.MODEL_DEPLOYMENT_LABEL] == OWNER.name
        assert meta["labels"][kinds.NAME_LABEL]
        assert len(meta["annotations"][kinds.INPUT_HASH_ANNOTATION]) == 16


def pod_spec(spec: dict[str, Any]) -> dict[str, Any]:
    deployment = builders.desired_children(build(spec))[kinds.DEPLOYMENT]
    return deployment["spec"]["template"]["spec"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("case", sorted(CASES))
def test_pods_meet_pod_security_restricted(case: str) -> None:
    pod = pod_spec(CASES[case])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not pod.get("hostNetwork")
    assert not pod.get("hostPID")
    assert not pod.get("hostIPC")
    for container in pod["initContainers"] + pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["runAsNonRoot"] is True
        assert context["readOnlyRootFilesystem"] is True
    for volume in pod["volumes"]:
        # Restricted allows only these volume types.
        assert set(volume) - {"name"} <= {
            "emptyDir",
            "persistentVolumeClaim",
            "configMap",
            "secret",
            "projected",
        }


def test_pvc_model_is_mounted_read_only_for_the_fetcher_only() -> None:
    pod = pod_spec(spec_with(model={"uri": "pvc://model-store/digits/model.onnx"}))
    (fetch,) = pod["initContainers"]
    assert fetch["args"] == ["pvc://model-store/digits/model.onnx", "/mnt/models"]
    assert {"name": "pvc-model-store", "mountPath": "/mnt/pvc/model-store", "readOnly": True} in fetch[
        "volumeMounts"
    ]
    assert {
        "name": "pvc-model-store",
        "persistentVolumeClaim": {"claimName": "model-store", "readOnly": True},
    } in pod["volumes"]
    (runtime,) = pod["containers"]
    assert [m["name"] for m in runtime["volumeMounts"]] == ["models", "tmp"]


def test_autoscaling_leaves_replicas_to_the_autoscaler() -> None:
    manual = builders.desired_children(build(spec_with(serving={"replicas": 3})))
    assert manual[kinds.DEPLOYMENT]["spec"]["replicas"] == 3
    assert kinds.HORIZONTAL_POD_AUTOSCALER not in manual
    scaled = builders.desired_children(build(CASES["full"]))
    assert "replicas" not in scaled[kinds.DEPLOYMENT]["spec"]
    hpa = scaled[kinds.HORIZONTAL_POD_AUTOSCALER]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "digits"}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 8)


def test_service_monitor_follows_the_mode_and_the_crd() -> None:
    auto = CASES["minimal"]
    assert kinds.SERVICE_MONITOR in builders.desired_children(build(auto, service_monitor_available=True))
    assert kinds.SERVICE_MONITOR not in builders.desired_children(
        build(auto, service_monitor_available=False)
    )
    enabled = spec_with(monitoring={"serviceMonitor": "enabled"})
    assert kinds.SERVICE_MONITOR in builders.desired_children(build(enabled, service_monitor_available=False))
    disabled = spec_with(monitoring={"serviceMonitor": "disabled"})
    assert kinds.SERVICE_MONITOR not in builders.desired_children(
        build(disabled, service_monitor_available=True)
    )


def test_prometheus_rule_follows_the_mode_and_the_crd_with_owner_and_alerts() -> None:
    auto = CASES["minimal"]
    rule = builders.desired_children(build(auto))[kinds.PROMETHEUS_RULE]
    assert rule["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
    assert rule["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "ferry"
    alert_names = {r.get("alert") for group in rule["spec"]["groups"] for r in group["rules"]}
    assert {"FerryModelNoReadyReplicas", "FerryModelRolloutStuck"} <= alert_names
    assert kinds.PROMETHEUS_RULE not in builders.desired_children(
        build(auto, service_monitor_available=False)
    )
    enabled = spec_with(monitoring={"prometheusRule": "enabled"})
    assert kinds.PROMETHEUS_RULE in builders.desired_children(build(enabled, service_monitor_available=False))
    disabled = spec_with(monitoring={"prometheusRule": "disabled"})
    assert kinds.PROMETHEUS_RULE not in builders.desired_children(build(disabled))


def test_hash_and_revision_change_only_with_their_inputs() -> None:
    def annotations(spec: dict[str, Any]) -> tuple[str, str, str]:
        children = builders.desired_children(build(spec))
        deployment = children[kinds.DEPLOYMENT]["metadata"]["annotations"]
        service = children[kinds.SERVICE]["metadata"]["annotations"]
        return (
            deployment[kinds.INPUT_HASH_ANNOTATION],
            deployment[kinds.REVISION_ANNOTATION],
            service[kinds.INPUT_HASH_ANNOTATION],
        )

    base = annotations(spec_with(serving={"replicas": 1}))
    assert annotations(spec_with(serving={"replicas": 1})) == base
    scaled = annotations(spec_with(serving={"replicas": 4}))
    # Scaling changes the Deployment (apply it) but not the pods (no new revision, no rollout).
    assert scaled[0] != base[0]
    assert scaled[1] == base[1]
    assert scaled[2] == base[2]
    batched = annotations(spec_with(serving={"replicas": 1, "batching": {"maxBatchSize": 8}}))
    assert batched[1] != base[1]
    assert batched[2] == base[2]


def test_url_names_the_service_and_the_model() -> None:
    assert network.url(OWNER.name, OWNER.namespace, DEFAULTS.cluster_domain) == (
        "http://digits.ml.svc.cluster.local:8080/v2/models/digits"
    )


def test_without_network_there_is_no_policy_and_metrics_stay_on_the_http_port() -> None:
    children = builders.desired_children(build(CASES["minimal"]))
    assert kinds.NETWORK_POLICY not in children
    pod = children[kinds.DEPLOYMENT]["spec"]["template"]
    (runtime,) = pod["spec"]["containers"]
    assert [port["name"] for port in runtime["ports"]] == ["http", "grpc"]
    assert "FERRY_RUNTIME_METRICS_PORT" not in {env["name"] for env in runtime["env"]}
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "8080"
    assert [port["name"] for port in children[kinds.SERVICE]["spec"]["ports"]] == ["http", "grpc"]
    assert children[kinds.SERVICE_MONITOR]["spec"]["endpoints"][0]["port"] == "http"


def test_network_moves_metrics_to_their_own_port_everywhere_it_is_named() -> None:
    children = builders.desired_children(build(CASES["network-defaults"]))
    pod = children[kinds.DEPLOYMENT]["spec"]["template"]
    (runtime,) = pod["spec"]["containers"]
    assert {"name": "metrics", "containerPort": 8082, "protocol": "TCP"} in runtime["ports"]
    assert {"name": "FERRY_RUNTIME_METRICS_PORT", "value": "8082"} in runtime["env"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "8082"
    # Probes stay on the HTTP port: the kubelet calls them from the node, which NetworkPolicies admit.
    assert runtime["readinessProbe"]["httpGet"]["port"] == "http"
    service_ports = {port["name"]: port for port in children[kinds.SERVICE]["spec"]["ports"]}
    assert (service_ports["metrics"]["port"], service_ports["metrics"]["targetPort"]) == (8082, "metrics")
    assert children[kinds.SERVICE_MONITOR]["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s"}
    ]


def policy_rules(spec: dict[str, Any], defaults: build_inputs.ServingDefaults = DEFAULTS) -> list[Any]:
    parsed = build(spec)
    inputs = build_inputs.BuildInputs(parsed.owner, parsed.spec, parsed.artifact, defaults)
    policy = network.network_policy(inputs)
    assert policy is not None
    assert policy["spec"]["podSelector"] == {"matchLabels": kinds.selector_labels(OWNER.name)}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    inference, scrape = policy["spec"]["ingress"]
    assert inference["ports"] == [{"port": "http", "protocol": "TCP"}, {"port": "grpc", "protocol": "TCP"}]
    assert scrape["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    return [inference["from"], scrape["from"]]


def test_policy_defaults_admit_the_own_namespace_and_the_operators_scraper() -> None:
    # The built-in default scraper: any pod of any namespace (Ferry cannot know where Prometheus runs).
    assert policy_rules(spec_with(serving={"network": {}})) == [
        [{"podSelector": {}}],
        [{"namespaceSelector": {}}],
    ]
    # Empty lists mean the defaults too: a NetworkPolicy rule with an empty `from` would admit everyone.
    assert policy_rules(spec_with(serving={"network": {"allowFrom": [], "metricsFrom": []}})) == [
        [{"podSelector": {}}],
        [{"namespaceSelector": {}}],
    ]
    monitoring = models.NetworkPolicyPeer.model_validate(
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    )
    configured = build_inputs.ServingDefaults(runtime_image="ferry-runtime:0.1.0", metrics_from=(monitoring,))
    assert policy_rules(spec_with(serving={"network": {}}), configured)[1] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    # The ModelDeployment's own metricsFrom wins over the operator's.
    own = {"metricsFrom": [{"podSelector": {"matchLabels": {"app": "prometheus"}}}]}
    assert policy_rules(spec_with(serving={"network": own}), configured)[1] == [
        {"podSelector": {"matchLabels": {"app": "prometheus"}}}
    ]


def test_removing_network_prunes_the_policy_and_reapplies_what_named_the_metrics_port() -> None:
    with_network = builders.desired_children(build(CASES["network-defaults"]))
    observed = {
        kind: ChildSnapshot(kind, OWNER.name, f"uid-{kind.plural}", 1, "100", input_hash(manifest))
        for kind, manifest in with_network.items()
    }
    without = builders.desired_children(build(spec_with(serving={})))
    result = plan.plan(without, observed, {})
    assert [child.kind for child in result.prune] == [kinds.NETWORK_POLICY]
    # The pods, the Service and the ServiceMonitor go back to /metrics on the HTTP port.
    assert {kind for kind, _ in result.apply} == {kinds.DEPLOYMENT, kinds.SERVICE, kinds.SERVICE_MONITOR}
