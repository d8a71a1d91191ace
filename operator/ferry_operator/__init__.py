"""Ferry's Kubernetes operator: the ModelDeployment API, pure child builders and the kopf reconcile.

This package must never import ML libraries (onnxruntime, tensorflow): the operator image stays small and
the optimization work happens in Jobs. import-linter enforces that.
"""

__version__ = "0.1.0"
