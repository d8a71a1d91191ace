"""The monitoring.coreos.com CRDs (ServiceMonitor, PodMonitor, PrometheusRule), on demand.

Ferry creates a ServiceMonitor only when the API exists; tests need both a cluster with the CRDs and
one without, so they are installed and removed explicitly rather than with the cluster. The YAML is
prometheus-operator's own, read from its module at the pinned version.
"""

from __future__ import annotations

from pathlib import Path

from ferry_devcluster import build, components, kube

CRD_DIR = "example/prometheus-operator-crd"
# plural resource name -> the CRD's object name
CRDS: tuple[str, ...] = (
    "servicemonitors.monitoring.coreos.com",
    "podmonitors.monitoring.coreos.com",
    "prometheusrules.monitoring.coreos.com",
)


def crd_files() -> list[Path]:
    operator = components.PROMETHEUS_OPERATOR
    source = build.module_source_dir(operator.module, operator.version, operator.module_dir)
    files = []
    for crd in CRDS:
        plural, group = crd.split(".", 1)
        path = source / CRD_DIR / f"{group}_{plural}.yaml"
        if not path.exists():
            raise FileNotFoundError(f"prometheus-operator {operator.version} has no {CRD_DIR}/{path.name}")
        files.append(path)
    return files


def install(kubeconfig: Path) -> None:
    # server-side: the CRDs are too large for client-side apply's last-applied annotation
    kube.apply_files(kubeconfig, crd_files())
    kube.kubectl(
        kubeconfig, "wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{crd}" for crd in CRDS)
    )


def uninstall(kubeconfig: Path) -> None:
    kube.kubectl(kubeconfig, "delete", "crd", "--ignore-not-found", "--wait=true", *CRDS)


def installed(kubeconfig: Path) -> list[str]:
    result = kube.kubectl(kubeconfig, "get", "crd", "-o", "name", check=False)
    present = {
        line.removeprefix("customresourcedefinition.apiextensions.k8s.io/") for line in result.stdout.split()
    }
    return [crd for crd in CRDS if crd in present]
