"""What the operator refuses in a spec the API server accepted: rules that depend on the operator's
configuration (the CRD's CEL rules cannot see it)."""

from __future__ import annotations

from ferry_operator.api import models
from ferry_operator.config import OperatorConfig


def refusals(spec: models.ModelDeploymentSpec, config: OperatorConfig) -> list[str]:
    """One message per refused field, naming it, what is accepted and what was given; empty: accepted."""
    return _file_uris(spec, config) + _token_review(spec, config)


def _token_review(spec: models.ModelDeploymentSpec, config: OperatorConfig) -> list[str]:
    if spec.serving.auth.mode != "kubernetes" or config.token_reviewer_role:
        return []
    return [
        "spec.serving.auth.mode: kubernetes needs the operator's token-reviewer ClusterRole, which this "
        "operator was not given (FERRY_OPERATOR_TOKEN_REVIEWER_ROLE is empty; the Helm chart sets it): "
        "install the operator with the chart, or use mode bearer or none"
    ]


def _file_uris(spec: models.ModelDeploymentSpec, config: OperatorConfig) -> list[str]:
    if config.allow_file_uris:
        return []
    uris = {"spec.model.uri": spec.model.uri}
    if spec.optimize is not None and spec.optimize.data is not None:
        uris["spec.optimize.data.uri"] = spec.optimize.data.uri
    return [
        f"{field}: file:// URIs are for development clusters (the operator runs with "
        f"FERRY_OPERATOR_ALLOW_FILE_URIS=false; Helm value operator.allowFileUris); use pvc://, s3:// or "
        f"http(s)://, got {uri}"
        for field, uri in uris.items()
        if uri.startswith("file://")
    ]
