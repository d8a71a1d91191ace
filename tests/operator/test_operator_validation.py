"""Invalid specs are refused by the API server itself, with a message that names the field."""

from __future__ import annotations

import json
from typing import Any

import pytest
from operator_cases import INVALID_SPECS, VALID_SPEC, InvalidSpec

from conftest import Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("crd_installed")]


def dry_run_create(cluster: Cluster, name: str, spec: dict[str, Any]) -> tuple[int, str]:
    manifest = {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": spec,
    }
    result = cluster.kubectl("create", "--dry-run=server", "-f", "-", stdin=json.dumps(manifest), check=False)
    return result.returncode, result.stderr


@pytest.mark.parametrize("case", INVALID_SPECS, ids=lambda case: case.id)
def test_invalid_spec_is_refused_naming_the_field(cluster: Cluster, case: InvalidSpec) -> None:
    code, message = dry_run_create(cluster, "digits", case.spec)
    assert code != 0, f"{case.id} was accepted"
    assert case.field in message, message
    assert case.fragment in message, message


def test_invalid_name_is_refused(cluster: Cluster) -> None:
    code, message = dry_run_create(cluster, "1digits", VALID_SPEC)
    assert code != 0
    assert "metadata.name" in message
    assert "DNS-1035" in message


def test_valid_spec_is_accepted_with_schema_defaults(cluster: Cluster) -> None:
    manifest = {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "digits"},
        "spec": VALID_SPEC,
    }
    created = json.loads(
        cluster.kubectl(
            "create", "--dry-run=server", "-o", "json", "-f", "-", stdin=json.dumps(manifest)
        ).stdout
    )
    spec = created["spec"]
    assert spec["serving"]["batching"] == {"maxBatchSize": 32, "maxDelayMs": 0, "maxQueueSize": 256}
    assert spec["rollout"] == {"autoRollback": True, "progressDeadlineSeconds": 600}
    assert spec["monitoring"] == {"serviceMonitor": "auto", "prometheusRule": "auto"}
    assert "replicas" not in spec["serving"]


def test_kubectl_explain_reads_the_descriptions(cluster: Cluster) -> None:
    explained = cluster.kubectl("explain", "modeldeployment.spec.serving.autoscaling").stdout
    assert "HorizontalPodAutoscaler owns the replica count" in explained
    assert "minReplicas" in explained
    assert "Fewest replicas" in explained
