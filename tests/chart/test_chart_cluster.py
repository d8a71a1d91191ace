"""The chart against the real API server: every scenario passes server-side validation, and a release
installs, tests, upgrades and uninstalls cleanly, with the operator running under the chart's own RBAC."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from chart_cases import CHART, SCENARIOS, Render

from ferry_devcluster.testing import Kube

pytestmark = pytest.mark.cluster
ROOT = CHART.parents[1]


@pytest.fixture
def monitoring_crds(kube: Kube) -> Iterator[None]:
    # The monitoring scenario renders a ServiceMonitor, which the server validates only if its CRD exists;
    # removed afterwards because other tests depend on the CRDs being absent.
    devcluster = ROOT / "devcluster" / "devcluster"
    env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig)}
    subprocess.run([str(devcluster), "monitoring-crds", "install"], check=True, env=env, capture_output=True)
    yield
    subprocess.run(
        [str(devcluster), "monitoring-crds", "uninstall"], check=True, env=env, capture_output=True
    )


@pytest.mark.usefixtures("monitoring_crds")
@pytest.mark.parametrize("values", [None, *SCENARIOS], ids=lambda v: v.name if v else "default")
def test_rendered_manifests_pass_server_side_validation(
    kube: Kube, namespace: str, render: Render, values: Path | None
) -> None:
    objects = render(values, namespace=namespace) if values else render(namespace=namespace)
    # CRDs first: a dry run cannot validate objects of a kind the server does not know yet.
    crds = [o for o in objects if o["kind"] == "CustomResourceDefinition"]
    if crds:
        kube.apply(yaml.safe_dump_all(crds))
    rest = [o for o in objects if o["kind"] != "CustomResourceDefinition"]
    for needed in {o["metadata"].get("namespace") for o in rest} - {None, namespace}:
        kube.kubectl("create", "namespace", needed, check=False)
    result = kube.kubectl("apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump_all(rest), check=False)
    assert result.returncode == 0, result.stderr


def _token_kubeconfig(kube: Kube, namespace: str, service_account: str, path: Path) -> Path:
    """A kubeconfig that authenticates as the chart's ServiceAccount, so the operator has exactly its RBAC."""
    token = kube.kubectl("create", "token", service_account, "-n", namespace, "--duration=1h").stdout.strip()
    admin = yaml.safe_load(kube.kubeconfig.read_text())
    cluster = admin["clusters"][0]
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster],
                "users": [{"name": service_account, "user": {"token": token}}],
                "contexts": [
                    {"name": "sa", "context": {"cluster": cluster["name"], "user": service_account}}
                ],
                "current-context": "sa",
            }
        )
    )
    return path


def _wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def test_install_test_upgrade_uninstall(kube: Kube, namespace: str, tmp_path: Path) -> None:
    release = "ferry"
    # The CRD may already exist (applied with kubectl by other tests, as users who start without Helm do):
    # adopting it is the documented path (docs/operations.md), and the keep policy leaves it behind.
    if kube.kubectl("get", "crd", "modeldeployments.ferry.dev", check=False).returncode == 0:
        kube.kubectl(
            "label", "crd", "modeldeployments.ferry.dev", "app.kubernetes.io/managed-by=Helm", "--overwrite"
        )
        kube.kubectl(
            "annotate",
            "crd",
            "modeldeployments.ferry.dev",
            f"meta.helm.sh/release-name={release}",
            f"meta.helm.sh/release-namespace={namespace}",
            "--overwrite",
        )
    # No --wait: helm would wait for the artifact claim to bind, and the fake-node cluster has no
    # storage provisioner (the real-node e2e has one). The operator Deployment must roll out.
    try:
        kube.helm(
            "install",
            release,
            str(CHART),
            "-n",
            namespace,
            "--set",
            f"operator.watchNamespaces={{{namespace}}}",
        )
        kube.kubectl("rollout", "status", f"deployment/{release}", "-n", namespace, "--timeout=120s")

        # The operator runs on this host (its pod sits on a fake node), authenticated as the chart's
        # ServiceAccount: if the chart's RBAC misses a permission, the ModelDeployment never gets Ready.
        kubeconfig = _token_kubeconfig(kube, namespace, release, tmp_path / "sa.kubeconfig")
        installed = kube.kubectl_json("get", "deployment", release, "-n", namespace)
        (container,) = installed["spec"]["template"]["spec"]["containers"]
        token_reviewer = next(
            e["value"] for e in container["env"] if e["name"] == "FERRY_OPERATOR_TOKEN_REVIEWER_ROLE"
        )
        log = (tmp_path / "operator.log").open("w")
        operator = subprocess.Popen(
            [sys.executable, "-m", "ferry_operator.cli", "--namespace", namespace],
            env={
                **os.environ,
                "KUBECONFIG": str(kubeconfig),
                "FERRY_OPERATOR_METRICS_PORT": "0",
                "FERRY_OPERATOR_TOKEN_REVIEWER_ROLE": token_reviewer,
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            # the claim the model URI names (kwok's volume stages bind it)
            kube.apply(
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "metadata": {"name": "models", "namespace": namespace},
                    "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}}},
                }
            )
            # Auth mode kubernetes: the chart's RBAC must let the operator create the pods' ServiceAccount
            # and bind the chart's token-reviewer role to it (the escalation check wants `bind`).
            kube.apply(
                {
                    "apiVersion": "ferry.dev/v1alpha1",
                    "kind": "ModelDeployment",
                    "metadata": {"name": "digits", "namespace": namespace},
                    # network: the NetworkPolicy child is applied under the chart's RBAC too.
                    "spec": {
                        "model": {"uri": "pvc://models/digits/", "format": "onnx"},
                        "serving": {"auth": {"mode": "kubernetes"}, "network": {}},
                    },
                }
            )
            result = kube.kubectl(
                "wait",
                "--for=condition=Ready",
                "modeldeployment/digits",
                "-n",
                namespace,
                "--timeout=90s",
                check=False,
            )
            assert result.returncode == 0, result.stderr + (tmp_path / "operator.log").read_text()[-3000:]
            policy = kube.kubectl_json("get", "networkpolicy", "digits", "-n", namespace)
            assert policy["metadata"]["ownerReferences"][0]["name"] == "digits"
            binding = kube.kubectl_json("get", "clusterrolebinding", f"ferry:tokenreview:{namespace}:digits")
            assert binding["roleRef"]["name"] == token_reviewer
            # Deleted under the chart's RBAC too: the binding goes before the ModelDeployment does.
            kube.kubectl(
                "delete", "modeldeployment", "digits", "-n", namespace, "--wait=true", "--timeout=60s"
            )
            gone = kube.kubectl(
                "get", "clusterrolebinding", f"ferry:tokenreview:{namespace}:digits", "--ignore-not-found"
            )
            assert gone.stdout.strip() == ""
        finally:
            operator.terminate()
            operator.wait(timeout=30)

        kube.helm(
            "upgrade",
            release,
            str(CHART),
            "-n",
            namespace,
            "--reuse-values",
            "--set",
            "operator.logLevel=DEBUG",
        )
        kube.kubectl("rollout", "status", f"deployment/{release}", "-n", namespace, "--timeout=120s")
        deployment = kube.kubectl_json("get", "deployment", release, "-n", namespace)
        env = {
            e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        }
        assert env["FERRY_OPERATOR_LOG_LEVEL"] == "DEBUG"

        kube.helm("uninstall", release, "-n", namespace, "--wait")
        leftovers = kube.kubectl_json(
            "get",
            "all,serviceaccount,role,rolebinding,networkpolicy",
            "-n",
            namespace,
            "-l",
            "app.kubernetes.io/instance=ferry",
        )["items"]
        assert leftovers == []
        cluster_scoped = json.loads(
            kube.kubectl(
                "get",
                "clusterrole,clusterrolebinding",
                "-l",
                "app.kubernetes.io/instance=ferry",
                "-o",
                "json",
            ).stdout
        )["items"]
        mine = [
            o["metadata"]["name"]
            for o in cluster_scoped
            if o["metadata"].get("annotations", {}).get("meta.helm.sh/release-namespace") == namespace
        ]
        assert mine == []
        # The CRD stays (keep policy) and so does the artifact claim: both hold what users cannot rebuild.
        kube.kubectl("get", "crd", "modeldeployments.ferry.dev")
    finally:
        # a failed run must not leave cluster-scoped objects that break the next install
        kube.helm("uninstall", release, "-n", namespace, "--ignore-not-found", check=False)
