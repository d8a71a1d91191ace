"""What the operator refuses in a spec the API server accepted: rules that depend on the operator's
configuration (the CRD's CEL rules cannot see it)."""

from __future__ import annotations

from ferry_operator.api import models
from ferry_operator.config import OperatorConfig


def refusals(spec: models.ModelDeploymentSpec, config: OperatorConfig) -> list[str]:
    """One message per refused field, naming it, what is accepted and what was given; empty: accepted."""
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
