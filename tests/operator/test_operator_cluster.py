"""The operator against the real local cluster: apply -> Ready, rollouts, scaling, self-healing, deletion.

The operator runs as a subprocess (`ferry-operator --namespace NS`); kwok makes the serving pods Ready; the
API server, the Deployment/ReplicaSet controllers, the HPA controller and the garbage collector are real.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from operator_cases import spec_with
from prometheus_client.parser import text_string_to_metric_families

from conftest import Cluster, OperatorProcess, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("operator", "model_pvc")]

SMALL = {"requests": {"cpu": "10m", "memory": "16Mi"}}


def serving(**fields: Any) -> dict[str, Any]:
    return {"resources": SMALL, **fields}


def children(cluster: Cluster, name: str) -> dict[str, list[dict[str, Any]]]:
    selector = f"ferry.dev/modeldeployment={name}"
    return {
        kind: cluster.items(kind, selector)
        for kind in ("deployments", "services", "poddisruptionbudgets", "horizontalpodautoscalers")
    }


def test_apply_to_ready_with_owned_children_url_and_one_event_per_transition(cluster: Cluster) -> None:
    cluster.apply_md("digits", spec_with(serving=serving(replicas=2)))
    md = wait_for("digits Ready", lambda: cluster.ready("digits"))
    status = md["status"]
    assert status["url"] == f"http://digits.{cluster.namespace}.svc.cluster.local:8080/v2/models/digits"
    assert (status["replicas"], status["readyReplicas"]) == (2, 2)
    assert status["selector"] == "ferry.dev/modeldeployment=digits"
    assert status["model"] == {"format": "onnx", "uri": "pvc://models/digits/model.onnx"}
    conditions = {c["type"]: c for c in status["conditions"]}
    assert {t: conditions[t]["status"] for t in conditions} == {
        "ModelResolved": "True",
        "Deployed": "True",
        "Ready": "True",
        "Progressing": "False",
        "Degraded": "False",
    }
    found = children(cluster, "digits")
    assert [
        len(found[k]) for k in ("deployments", "services", "poddisruptionbudgets", "horizontalpodautoscalers")
    ] == [1, 1, 1, 0]
    for items in found.values():
        for child in items:
            (owner,) = child["metadata"]["ownerReferences"]
            assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
                "ModelDeployment",
                "digits",
                md["metadata"]["uid"],
                True,
            )
            assert child["metadata"]["annotations"]["ferry.dev/input-hash"]
    # Reconciles keep happening (pod and Deployment status events) but status and events only change on
    # transitions: one Ready event, however many reconciles ran.
    ready_events = [e for e in cluster.events("digits") if e["reason"] == "Serving"]
    assert len(ready_events) == 1, ready_events
    assert ready_events[0]["count"] == 1
    # kubectl get shows the printer columns.
    table = cluster.kubectl("get", "md", "digits").stdout
    assert table.split()[:6] == ["NAME", "READY", "PHASE", "REPLICAS", "URL", "AGE"]
    assert "True" in table
    assert "Ready" in table


def test_spec_change_rolls_out_a_new_revision_and_status_follows(cluster: Cluster) -> None:
    cluster.apply_md("digits", spec_with(serving=serving(replicas=1)))
    first = wait_for("digits Ready", lambda: cluster.ready("digits"))
    first_revision = first["status"]["revision"]["current"]
    cluster.apply_md(
        "digits", spec_with(serving=serving(replicas=1, batching={"maxBatchSize": 8, "maxDelayMs": 2}))
    )
    second = wait_for("generation 2 Ready", lambda: cluster.ready("digits", generation=2))
    assert second["status"]["revision"]["current"] != first_revision
    assert second["status"]["revision"]["previous"] == first_revision
    deployment = cluster.get("deployment", "digits")
    assert deployment is not None
    env = {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert (env["FERRY_RUNTIME_MAX_BATCH_SIZE"], env["FERRY_RUNTIME_MAX_BATCH_DELAY_MS"]) == ("8", "2")
    assert (
        deployment["spec"]["template"]["metadata"]["annotations"]["ferry.dev/revision"]
        == second["status"]["revision"]["current"]
    )
    # The rollout went through a transition the status reported (not only the end state).
    reasons = [e["reason"] for e in cluster.events("digits")]
    assert reasons.count("Serving") == 2, reasons


def test_kubectl_scale_goes_through_the_scale_subresource(cluster: Cluster) -> None:
    cluster.apply_md("digits", spec_with(serving=serving()))
    wait_for("digits Ready", lambda: cluster.ready("digits"))
    cluster.kubectl("scale", "modeldeployment/digits", "--replicas=3")
    md = wait_for("3 replicas Ready", lambda: cluster.ready("digits", generation=2))
    assert (md["spec"]["serving"]["replicas"], md["status"]["replicas"], md["status"]["readyReplicas"]) == (
        3,
        3,
        3,
    )
    deployment = cluster.get("deployment", "digits")
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 3
    scale = json.loads(
        cluster.kubectl(
            "get",
            "--raw",
            f"/apis/ferry.dev/v1alpha1/namespaces/{cluster.namespace}/modeldeployments/digits/scale",
        ).stdout
    )
    assert scale["spec"]["replicas"] == 3
    assert scale["status"] == {"replicas": 3, "selector": "ferry.dev/modeldeployment=digits"}


def test_autoscaling_owns_the_replica_count(cluster: Cluster) -> None:
    cluster.apply_md("digits", spec_with(serving=serving(replicas=3)))
    wait_for("digits Ready", lambda: cluster.ready("digits"))
    cluster.apply_md("digits", spec_with(serving=serving(autoscaling={"minReplicas": 2, "maxReplicas": 5})))
    wait_for("the HPA", lambda: cluster.get("hpa", "digits"))
    wait_for("generation 2 Ready", lambda: cluster.ready("digits", generation=2))
    deployment = json.loads(
        cluster.kubectl("get", "deployment", "digits", "-o", "json", "--show-managed-fields").stdout
    )
    # Handing spec.replicas to the autoscaler kept the count (server-side apply would otherwise have
    # dropped the field and the Deployment to 1 replica).
    assert deployment["spec"]["replicas"] == 3
    managers = {
        e["manager"]
        for e in deployment["metadata"]["managedFields"]
        if "f:replicas" in json.dumps(e.get("fieldsV1", {}))
    }
    assert "ferry-operator" not in managers
    # kubectl scale is refused while autoscaling is on, with the reason.
    refused = cluster.kubectl("scale", "modeldeployment/digits", "--replicas=4", check=False)
    assert refused.returncode != 0
    assert "spec.serving.replicas" in refused.stderr
    assert "HorizontalPodAutoscaler owns" in refused.stderr
    # Autoscaling removed: the HPA is pruned, the operator owns the count again.
    cluster.apply_md("digits", spec_with(serving=serving(replicas=2)))
    wait_for("the HPA pruned", lambda: cluster.get("hpa", "digits") is None)
    wait_for("2 replicas Ready", lambda: cluster.ready("digits", generation=3))


def test_children_deleted_or_edited_by_hand_come_back(cluster: Cluster) -> None:
    cluster.apply_md("digits", spec_with(serving=serving()))
    wait_for("digits Ready", lambda: cluster.ready("digits"))
    before = {kind: cluster.get(kind, "digits") for kind in ("service", "deployment", "pdb")}
    for kind in before:
        cluster.kubectl("delete", kind, "digits", "--wait=true")
    for kind, old in before.items():
        assert old is not None
        again = wait_for(f"{kind} recreated", lambda kind=kind: cluster.get(kind, "digits"))
        assert again["metadata"]["uid"] != old["metadata"]["uid"]
    wait_for("digits Ready again", lambda: cluster.ready("digits"))
    # A hand edit of a field Ferry sets is reverted.
    cluster.kubectl(
        "patch",
        "deployment",
        "digits",
        "--type=json",
        "-p",
        json.dumps(
            [{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "evil:latest"}]
        ),
    )
    wait_for(
        "the image reverted",
        lambda: (
            (cluster.get("deployment", "digits") or {})
            .get("spec", {})
            .get("template", {})
            .get("spec", {})
            .get("containers", [{}])[0]
            .get("image")
            == "ferry-runtime:test"
        ),
    )


def test_delete_removes_every_child(cluster: Cluster) -> None:
    cluster.apply_md("digits", spec_with(serving=serving(autoscaling={"maxReplicas": 3})))
    wait_for("digits Ready", lambda: cluster.ready("digits"))
    assert all(children(cluster, "digits").values())
    cluster.kubectl("delete", "modeldeployment", "digits", "--wait=true", "--timeout=60s")
    wait_for("children garbage-collected", lambda: not any(children(cluster, "digits").values()), timeout=90)
    wait_for(
        "serving pods gone", lambda: not cluster.items("pods", "ferry.dev/modeldeployment=digits"), timeout=90
    )


def test_a_refused_child_is_reported_with_the_servers_message(cluster: Cluster) -> None:
    cluster.apply_md(
        "digits", spec_with(serving=serving(resources={"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}))
    )
    deployed = wait_for(
        "Deployed=False",
        lambda: (c := cluster.condition("digits", "Deployed")) and c["status"] == "False" and c,
    )
    assert deployed["reason"] == "ApplyFailed"
    assert "must be less than or equal to cpu limit" in deployed["message"]
    md = cluster.get("modeldeployment", "digits")
    assert md is not None
    assert md["status"]["phase"] == "Failed"
    # Fixing the spec recovers.
    cluster.apply_md("digits", spec_with(serving=serving()))
    wait_for("Ready after the fix", lambda: cluster.ready("digits"))


def test_non_onnx_model_without_optimization_says_what_to_do(cluster: Cluster) -> None:
    cluster.apply_md("digits", spec_with(model={"uri": "pvc://models/digits.keras", "format": "keras"}))
    resolved = wait_for(
        "ModelResolved=False",
        lambda: (c := cluster.condition("digits", "ModelResolved")) and c["status"] == "False" and c,
    )
    assert resolved["reason"] == "ConversionRequired"
    assert "format: onnx" in resolved["message"]
    assert not cluster.get("deployment", "digits")


def test_operator_metrics_count_reconciles_and_api_requests(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    cluster.apply_md("digits", spec_with(serving=serving()))
    wait_for("digits Ready", lambda: cluster.ready("digits"))
    text = operator.metrics()
    # Server-side apply answers 201 when it creates the object.
    assert 'ferry_operator_api_requests_total{code="201",resource="deployments",verb="PATCH"} 1.0' in text
    assert 'ferry_operator_modeldeployments{phase="Ready"} 1.0' in text
    # per ModelDeployment, with the object's namespace (the dashboard's Replicas panel)
    replicas = {
        sample.labels["state"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "ferry_operator_modeldeployment_replicas"
        for sample in family.samples
        if sample.labels["namespace"] == cluster.namespace and sample.labels["modeldeployment"] == "digits"
    }
    assert replicas == {"desired": 1.0, "ready": 1.0}
    assert "ferry_operator_reconcile_duration_seconds_bucket" in text


def test_a_missing_claim_is_reported_with_the_schedulers_message(cluster: Cluster) -> None:
    cluster.apply_md(
        "digits", spec_with(model={"uri": "pvc://no-such-claim/digits/model.onnx"}, serving=serving())
    )
    degraded = wait_for(
        "Degraded=True",
        lambda: (c := cluster.condition("digits", "Degraded")) and c["status"] == "True" and c,
    )
    assert degraded["reason"] == "Unschedulable"
    assert 'persistentvolumeclaim "no-such-claim" not found' in degraded["message"]
