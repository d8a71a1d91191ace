"""The operator's configuration: one typed object from FERRY_OPERATOR_* environment variables, validated at
start. A wrong value stops the operator with the variable's name, what it expects and what it got; an
unknown FERRY_OPERATOR_* variable (a typo) stops it too instead of being ignored.

The Helm chart (charts/ferry/templates/deployment.yaml) sets these variables.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ferry_operator import __version__
from ferry_operator.api import models

ENV_PREFIX = "FERRY_OPERATOR_"


class ConfigError(ValueError):
    """The environment does not describe a valid configuration (the message names the variables)."""


class OperatorConfig(BaseModel):
    """Settings of one operator process. Each field is read from FERRY_OPERATOR_<FIELD NAME IN CAPITALS>."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    runtime_image: str = Field(default=f"ferry-runtime:{__version__}", min_length=1)
    """Image of the serving pods (ferry-runtime and ferry-fetch), unless a ModelDeployment overrides it."""

    runtime_image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    """imagePullPolicy of the serving pods."""

    optimizer_image: str = Field(default=f"ferry-optimizer:{__version__}", min_length=1)
    """Image of the optimization Jobs."""

    optimizer_image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    """imagePullPolicy of the optimization Jobs."""

    optimizer_resources: dict[str, Any] = Field(default_factory=dict)
    """Resources of each optimization Job pod (JSON, as a container's resources)."""

    job_ttl_seconds: int = Field(default=86_400, ge=0)
    """How long finished optimization Jobs are kept."""

    job_deadline_seconds: int = Field(default=21_600, ge=60)
    """How long one optimization Job may run before Kubernetes stops it (its activeDeadlineSeconds)."""

    artifact_store: str = ""
    """Where optimized artifacts are written (pvc://CLAIM/ or s3://BUCKET/)."""

    artifact_s3_endpoint: str = ""
    """S3 endpoint URL of the artifact store, when it is S3."""

    artifact_s3_region: str = ""
    """S3 region of the artifact store, when it is S3."""

    artifact_credentials_secret: str = ""
    """Secret with the artifact store's S3 credentials, mounted into optimization Jobs."""

    image_pull_secrets: tuple[str, ...] = ()
    """Comma-separated Secrets the serving and optimization pods pull images with."""

    namespaces: tuple[str, ...] = ()
    """Comma-separated namespaces to watch when the command line names none; empty: all namespaces."""

    log_format: Literal["text", "json"] = "text"
    """text for people, json (one object per line) for log pipelines."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Least severe log level written."""

    metrics_port: int = Field(default=8000, ge=0, le=65535)
    """Port of /metrics and /healthz; 0 disables the endpoint."""

    workers: int = Field(default=64, ge=1, le=1000)
    """ModelDeployments reconciled concurrently (each reconcile waits on the API most of its time; at scale
    a new object waits on the API server's serialised ClusterIP allocation of its Service)."""

    resync_seconds: float = Field(default=600.0, ge=10.0)
    """Every ModelDeployment is reconciled at least this often even when nothing is seen to change."""

    monitoring_discovery_seconds: float = Field(default=60.0, ge=5.0)
    """How often the operator checks whether the monitoring.coreos.com ServiceMonitor CRD exists."""

    watch_server_timeout_seconds: int = Field(default=300, ge=10)
    """Server-side timeout of one watch request (then kopf reconnects and resumes)."""

    watch_client_timeout_seconds: int = Field(default=330, ge=10)
    """Client-side timeout of one watch request; longer than the server's so the server ends it cleanly."""

    cluster_domain: str = "cluster.local"
    """DNS suffix of Services, for status.url."""

    concurrency_metric: str = "ferry_requests_in_flight"
    """Pods metric (from a custom metrics adapter) the autoscaler tracks for metric: concurrency."""

    rps_metric: str = "ferry_requests_per_second"
    """Pods metric the autoscaler tracks for metric: rps."""

    queue_metric: str = "ferry_generation_waiting_sequences"
    """Pods metric the autoscaler tracks for metric: queue (requests waiting for a generation slot)."""

    allow_file_uris: bool = False
    """Accept file:// model and data URIs: a development cluster, where the file is on the node that runs
    the pod. Otherwise a ModelDeployment that names one is Failed (reason InvalidSpec, naming the field)
    and gets no serving pods or optimization Job: on a shared cluster a file:// URI reads whatever the
    node's filesystem holds at that path."""

    token_reviewer_role: str = Field(default="", max_length=253, pattern=r"^[^/%]*$")
    """The ClusterRole (create tokenreviews) the operator binds to the serving pods of a ModelDeployment
    with auth mode kubernetes, one ClusterRoleBinding each; the Helm chart creates it and sets this.
    Empty: such a ModelDeployment is Failed (reason InvalidSpec), and the operator neither watches nor
    manages ClusterRoleBindings."""
    serving_metrics_from: tuple[models.NetworkPolicyPeer, ...] = models.DEFAULT_METRICS_FROM
    """Who may scrape the metrics port of a ModelDeployment whose spec.serving.network names no metricsFrom:
    where Prometheus runs, as JSON, a list of NetworkPolicy peers (the Helm chart sets it from
    networkPolicy.metricsFrom). Default: every pod in every namespace, [{"namespaceSelector": {}}]."""

    @field_validator("image_pull_secrets", "namespaces", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("optimizer_resources", mode="before")
    @classmethod
    def _parse_json(cls, value: Any) -> Any:
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value

    @field_validator("serving_metrics_from", mode="before")
    @classmethod
    def _parse_peers(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return json.loads(value) if value.strip() else []
            except json.JSONDecodeError as error:
                raise ValueError(f"must be a JSON list of NetworkPolicy peers ({error})") from None
        return value

    @field_validator("serving_metrics_from", mode="after")
    @classmethod
    def _some_peer(cls, value: tuple[models.NetworkPolicyPeer, ...]) -> tuple[models.NetworkPolicyPeer, ...]:
        if not value:
            # A NetworkPolicy rule without peers admits everyone: not what an empty list seems to say.
            raise ValueError('must name at least one peer, e.g. [{"namespaceSelector": {}}]')
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def from_env(environ: Mapping[str, str]) -> OperatorConfig:
    """The configuration the FERRY_OPERATOR_* variables in `environ` describe."""
    known = {env_name(field): field for field in OperatorConfig.model_fields}
    unknown = sorted(name for name in environ if name.startswith(ENV_PREFIX) and name not in known)
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}",
        )
    values = {field: environ[name] for name, field in known.items() if name in environ}
    try:
        return OperatorConfig.model_validate(values)
    except (ValidationError, json.JSONDecodeError) as error:
        raise ConfigError(_explain(error, values)) from None


def _explain(error: ValidationError | json.JSONDecodeError, values: Mapping[str, str]) -> str:
    if isinstance(error, json.JSONDecodeError):
        return f"{env_name('optimizer_resources')} must be JSON: {error}"
    problems = []
    for problem in error.errors():
        field = str(problem["loc"][0]) if problem["loc"] else ""
        given = values.get(field, "<unset>")
        problems.append(f"{env_name(field)}={given!r}: {problem['msg']}")
    return "invalid operator configuration: " + "; ".join(problems)
