"""spec.serving.network against the real API server: the NetworkPolicy child, the metrics port it moves to,
and the policy pruned when network is removed and garbage-collected with its ModelDeployment.

What is tested is the policy as the API server stores it, not its enforcement. Nothing here can enforce
one: kwok's fake nodes have no pod network at all, and the devcluster's real node wires pods with the CNI
bridge plugin, which implements no NetworkPolicy (that takes a policy agent such as Calico, Cilium or
kube-network-policies). So the rules are checked as rendered, and the API server's own validation of
the NetworkPolicy and of the peers in the CRD (tests/operator/test_operator_validation.py) is the proof
that the shapes are right.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from operator_cases import spec_with

from conftest import Cluster, OperatorProcess, wait_for
from ferry_devcluster.testing import Kube

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("model_pvc", "monitoring_crds")]

SMALL = {"requests": {"cpu": "10m", "memory": "16Mi"}}
MONITORING = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
GATEWAY = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "envoy"}},
}
OFFICE = {"ipBlock": {"cidr": "192.0.2.0/24", "except": ["192.0.2.128/25"]}}


def ports(service: dict[str, Any]) -> dict[str, tuple[int, Any]]:
    return {port["name"]: (port["port"], port["targetPort"]) for port in service["spec"]["ports"]}


def runtime_container(cluster: Cluster) -> dict[str, Any]:
    deployment = cluster.get("deployment", "digits")
    assert deployment is not None
    (runtime,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(runtime)


def test_network_policy_follows_the_spec_and_metrics_move_to_their_port(
    crd_installed: Kube, cluster: Cluster, tmp_path: Path
) -> None:
    # The operator's default scraper, as the chart sets it from networkPolicy.metricsFrom.
    operator = OperatorProcess(
        crd_installed,
        cluster.namespace,
        tmp_path / "operator.log",
        FERRY_OPERATOR_SERVING_METRICS_FROM=json.dumps([MONITORING]),
    ).start()
    try:
        wait_for("the operator's health endpoint", operator.healthy, timeout=60)
        cluster.apply_md(
            "digits", spec_with(serving={"resources": SMALL, "network": {"allowFrom": [GATEWAY, OFFICE]}})
        )
        md = wait_for("digits Ready", lambda: cluster.ready("digits"))
        policy = cluster.get("networkpolicy", "digits")
        assert policy is not None
        (owner,) = policy["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"], owner["controller"]) == (
            "ModelDeployment",
            md["metadata"]["uid"],
            True,
        )
        assert policy["spec"]["podSelector"] == {"matchLabels": {"ferry.dev/modeldeployment": "digits"}}
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        assert policy["spec"]["ingress"] == [
            {
                "ports": [{"port": "http", "protocol": "TCP"}, {"port": "grpc", "protocol": "TCP"}],
                "from": [GATEWAY, OFFICE],
            },
            # metricsFrom unset: the operator's configured scraper.
            {"ports": [{"port": "metrics", "protocol": "TCP"}], "from": [MONITORING]},
        ]
        # The pods serve /metrics on port 8082, and everything that points a scraper at them says so.
        runtime = runtime_container(cluster)
        assert {"name": "metrics", "containerPort": 8082, "protocol": "TCP"} in runtime["ports"]
        assert {"name": "FERRY_RUNTIME_METRICS_PORT", "value": "8082"} in runtime["env"]
        service = cluster.get("service", "digits")
        assert service is not None
        assert ports(service)["metrics"] == (8082, "metrics")
        monitor = wait_for("the ServiceMonitor", lambda: cluster.get("servicemonitor", "digits"))
        assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]

        # network removed: the policy is pruned and metrics go back to the HTTP port.
        cluster.apply_md("digits", spec_with(serving={"resources": SMALL}))
        wait_for("the NetworkPolicy pruned", lambda: cluster.get("networkpolicy", "digits") is None)
        wait_for("generation 2 Ready", lambda: cluster.ready("digits", generation=2))
        service = cluster.get("service", "digits")
        assert service is not None
        assert set(ports(service)) == {"http", "grpc"}
        assert [port["name"] for port in runtime_container(cluster)["ports"]] == ["http", "grpc"]
        monitor = wait_for(
            "the ServiceMonitor back on http",
            lambda: (
                (m := cluster.get("servicemonitor", "digits")) and m["spec"]["endpoints"][0]["port"] == "http"
            ),
        )

        # network again, with the defaults: the ModelDeployment's own namespace may call it; deleting the
        # ModelDeployment takes the policy with it (owner reference, the garbage collector).
        cluster.apply_md("digits", spec_with(serving={"resources": SMALL, "network": {}}))
        policy = wait_for("the NetworkPolicy again", lambda: cluster.get("networkpolicy", "digits"))
        assert policy["spec"]["ingress"][0]["from"] == [{"podSelector": {}}]
        cluster.kubectl("delete", "modeldeployment", "digits", "--wait=true", "--timeout=60s")
        wait_for(
            "the NetworkPolicy garbage-collected",
            lambda: cluster.get("networkpolicy", "digits") is None,
            timeout=90,
        )
    finally:
        operator.stop()
