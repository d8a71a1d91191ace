"""An operator killed (SIGKILL) at random points while it reconciles creates no duplicate child and, once
running again, converges every ModelDeployment."""

from __future__ import annotations

import json
import random
import time

import pytest
from operator_cases import spec_with

from conftest import Cluster, OperatorProcess, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("model_pvc")]

MODELS = 5
KILLS = 20
SMALL = {"requests": {"cpu": "10m", "memory": "16Mi"}}


def test_sigkill_during_reconcile_leaves_no_duplicates_and_converges(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    rng = random.Random(5)  # reproducible kill points
    names = [f"m{index}" for index in range(MODELS)]
    for kill in range(KILLS):
        if operator.process is None or operator.process.poll() is not None:
            operator.start()
            wait_for("the operator up", operator.healthy, timeout=60, interval=0.05)
        # Change every spec while the operator runs, so each kill lands in some reconcile: creating
        # children, rolling out a new revision, switching autoscaling on and off (HPA create/prune,
        # replica handover), or writing status.
        items = []
        for index, name in enumerate(names):
            autoscale = (kill + index) % 3 == 0
            fields = (
                {"autoscaling": {"minReplicas": 1, "maxReplicas": 3}}
                if autoscale
                else {"replicas": 1 + kill % 2}
            )
            spec = spec_with(serving={"resources": SMALL, "batching": {"maxBatchSize": 1 + kill}, **fields})
            items.append(
                {
                    "apiVersion": "ferry.dev/v1alpha1",
                    "kind": "ModelDeployment",
                    "metadata": {"name": name},
                    "spec": spec,
                }
            )
        cluster.kubectl(
            "apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        )
        time.sleep(rng.uniform(0.0, 1.0))
        operator.kill()

    operator.start()
    for name in names:
        wait_for(f"{name} converged", lambda name=name: cluster.ready(name), timeout=180)
    for name in names:
        md = cluster.get("modeldeployment", name)
        assert md is not None
        selector = f"ferry.dev/modeldeployment={name}"
        autoscaled = "autoscaling" in md["spec"]["serving"]
        counts = {
            kind: len(cluster.items(kind, selector))
            for kind in ("deployments", "services", "poddisruptionbudgets", "horizontalpodautoscalers")
        }
        assert counts == {
            "deployments": 1,
            "services": 1,
            "poddisruptionbudgets": 1,
            "horizontalpodautoscalers": int(autoscaled),
        }, (name, counts)
        deployment = cluster.get("deployment", name)
        assert deployment is not None
        assert (
            deployment["spec"]["template"]["metadata"]["annotations"]["ferry.dev/revision"]
            == md["status"]["revision"]["current"]
        )
        # One ReplicaSet serves; older ones are scaled to zero (no stray pods of old revisions).
        live = [rs for rs in cluster.items("replicasets", selector) if rs["spec"].get("replicas")]
        assert len(live) == 1, [rs["metadata"]["name"] for rs in live]
