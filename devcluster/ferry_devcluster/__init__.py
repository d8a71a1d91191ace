"""devcluster: a real local Kubernetes control plane (etcd, kube-apiserver, controller manager,
scheduler) with kwok fake nodes and metrics-server, built from upstream Go modules.

Standard library only, so `devcluster/devcluster` runs with or without the project's venv.
"""

__version__ = "0.1.0"
