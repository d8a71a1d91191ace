"""ServiceMonitor: created when the monitoring.coreos.com CRDs exist (auto), pruned when disabled."""

from __future__ import annotations

from pathlib import Path

import pytest
from operator_cases import spec_with

from conftest import Cluster, OperatorProcess, wait_for
from ferry_devcluster import monitoring
from ferry_devcluster.testing import Kube

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("model_pvc")]

SMALL = {"requests": {"cpu": "10m", "memory": "16Mi"}}


@pytest.mark.usefixtures("monitoring_crds")
def test_service_monitor_follows_the_crds_and_the_spec(
    crd_installed: Kube, cluster: Cluster, tmp_path: Path
) -> None:
    operator = OperatorProcess(crd_installed, cluster.namespace, tmp_path / "operator.log").start()
    try:
        wait_for("the operator's health endpoint", operator.healthy, timeout=60)
        cluster.apply_md("digits", spec_with(serving={"resources": SMALL}))
        monitor = wait_for("the ServiceMonitor", lambda: cluster.get("servicemonitor", "digits"))
        assert monitor["spec"]["selector"] == {"matchLabels": {"ferry.dev/modeldeployment": "digits"}}
        assert monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s"}]
        assert monitor["metadata"]["ownerReferences"][0]["name"] == "digits"
        wait_for("digits Ready", lambda: cluster.ready("digits"))
        cluster.apply_md(
            "digits", spec_with(serving={"resources": SMALL}, monitoring={"serviceMonitor": "disabled"})
        )
        wait_for("the ServiceMonitor pruned", lambda: cluster.get("servicemonitor", "digits") is None)
        wait_for("digits Ready", lambda: cluster.ready("digits", generation=2))
    finally:
        operator.stop()


@pytest.mark.usefixtures("monitoring_crds")
def test_prometheus_rule_and_an_operator_that_outlives_the_monitoring_crds(
    crd_installed: Kube, cluster: Cluster, tmp_path: Path
) -> None:
    operator = OperatorProcess(crd_installed, cluster.namespace, tmp_path / "operator.log").start()
    try:
        wait_for("the operator's health endpoint", operator.healthy, timeout=60)
        cluster.apply_md("digits", spec_with(serving={"resources": SMALL}))
        rule = wait_for("the PrometheusRule", lambda: cluster.get("prometheusrule", "digits"))
        assert rule["metadata"]["ownerReferences"][0]["name"] == "digits"
        alerts = {r.get("alert") for group in rule["spec"]["groups"] for r in group["rules"]}
        assert {
            "FerryModelNoReadyReplicas",
            "FerryModelRolloutStuck",
            "FerryModelOptimizationFailed",
        } <= alerts
        wait_for("digits Ready", lambda: cluster.ready("digits"))

        # The CRDs go away while the operator runs (and their objects with them): a spec change is still
        # rolled out, and `auto` monitoring is simply not wanted any more, not a failure.
        monitoring.uninstall(crd_installed.kubeconfig)
        cluster.apply_md("digits", spec_with(serving={"resources": SMALL, "replicas": 2}))
        md = wait_for("generation 2 Ready without the CRDs", lambda: cluster.ready("digits", generation=2))
        deployed = next(c for c in md["status"]["conditions"] if c["type"] == "Deployed")
        assert deployed["status"] == "True", deployed
        assert operator.process is not None
        assert operator.process.poll() is None, operator.log()[-5000:]
        assert operator.healthy()

        # They come back: the operator notices (a CRD event) and creates both children again.
        monitoring.install(crd_installed.kubeconfig)
        wait_for("the ServiceMonitor again", lambda: cluster.get("servicemonitor", "digits"))
        wait_for("the PrometheusRule again", lambda: cluster.get("prometheusrule", "digits"))
        wait_for("digits Ready", lambda: cluster.ready("digits", generation=2))
        assert operator.healthy()
    finally:
        operator.stop()
