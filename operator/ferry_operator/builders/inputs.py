"""Everything a child manifest is built from, so a builder is a pure function of one value."""

from __future__ import annotations

import dataclasses

from ferry_operator import kinds
from ferry_operator.api import models
from ferry_operator.builders.artifact_store import ArtifactStore


@dataclasses.dataclass(frozen=True)
class Owner:
    """The ModelDeployment that owns the children (their owner reference points at it)."""

    # metadata.name: also the fixed name of every child.
    name: str
    # metadata.namespace: children live beside their owner.
    namespace: str
    # metadata.uid: owner references name the exact object, so a recreated namespace-mate is not adopted.
    uid: str


@dataclasses.dataclass(frozen=True)
class ServedArtifact:
    """What the serving pods fetch and load. Today spec.model for ONNX models; the seam where the
    optimization integration substitutes the optimized (or converted) artifact."""

    # Where ferry-fetch downloads the model directory or file from.
    uri: str
    # Digest ferry-fetch verifies, when known.
    sha256: str | None = None
    # The format the runtime loads: onnx, or onnx-genai (a text-generation folder); also status.model.
    format: str = "onnx"
    # Bytes of the model (a folder: all its files), when known (an optimization Job measured it).
    size_bytes: int | None = None
    # A generative model's KV cache per token of one sequence and its context length, when known: the
    # memory request is sized from them (builders/sizing.py).
    kv_cache_bytes_per_token: int | None = None
    context_length: int | None = None


@dataclasses.dataclass(frozen=True)
class ServingDefaults:
    """Operator-wide settings that shape the children (from the operator's config)."""

    # ferry-runtime image the serving pods run unless spec.serving.image overrides it.
    runtime_image: str
    # imagePullPolicy of the serving and fetch containers.
    image_pull_policy: str = "IfNotPresent"
    # Secrets the serving pods pull images with.
    image_pull_secrets: tuple[str, ...] = ()
    # DNS suffix of Services, for status.url.
    cluster_domain: str = "cluster.local"
    # Custom pod metric (served by a metrics adapter) the autoscaler tracks for metric: concurrency.
    concurrency_metric: str = "ferry_requests_in_flight"
    # Custom pod metric the autoscaler tracks for metric: rps.
    rps_metric: str = "ferry_requests_per_second"
    # Custom pod metric the autoscaler tracks for metric: queue (a generative model's waiting requests).
    queue_metric: str = "ferry_generation_waiting_sequences"
    # Where optimized artifacts live: the fetch containers of pods serving one get its S3 credentials, and
    # its drift reference (reference.json beside model.onnx) is fetched too.
    artifact_store: ArtifactStore = dataclasses.field(default_factory=ArtifactStore)
    # The ClusterRole (create tokenreviews) bound to the serving pods of auth mode kubernetes; empty: not
    # configured, and such a ModelDeployment is refused (reconcile/policy.py).
    token_reviewer_role: str = ""
    # Who may scrape the metrics port of a ModelDeployment whose spec.serving.network names no metricsFrom
    # (where Prometheus runs).
    metrics_from: tuple[models.NetworkPolicyPeer, ...] = models.DEFAULT_METRICS_FROM


@dataclasses.dataclass(frozen=True)
class BuildInputs:
    """One ModelDeployment's desired state, resolved: the only input of the builders."""

    owner: Owner
    spec: models.ModelDeploymentSpec
    artifact: ServedArtifact
    defaults: ServingDefaults
    # The monitoring.coreos.com kinds the API server serves (for serviceMonitor/prometheusRule: auto).
    monitoring_kinds: frozenset[kinds.Kind] = frozenset()
