"""ServiceMonitor: created when the monitoring.coreos.com CRDs exist (auto), pruned when disabled."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from operator_cases import spec_with

from conftest import Cluster, OperatorProcess, wait_for
from ferry_devcluster import monitoring
from ferry_devcluster.testing import Kube

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("model_pvc")]

SMALL = {"requests": {"cpu": "10m", "memory": "16Mi"}}


@pytest.fixture
def monitoring_crds(crd_installed: Kube) -> Iterator[None]:
    already = monitoring.installed(crd_installed.kubeconfig)
    monitoring.install(crd_installed.kubeconfig)
    yield
    if not already:
        monitoring.uninstall(crd_installed.kubeconfig)


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
