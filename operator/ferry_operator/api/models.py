"""The ModelDeployment API (ferry.dev/v1alpha1) as typed models: the single source of the CRD.

Every field's docstring becomes its description in the CRD (and so in `kubectl explain` and docs/api.md);
defaults, enums and bounds become schema defaults, enums and minimum/maximum; each model's `cel_rules`
become `x-kubernetes-validations`. `python scripts/generate.py` regenerates crds/ and docs/api.md from here.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import AliasGenerator, BaseModel, ConfigDict, Field, GetJsonSchemaHandler, model_validator
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from ferry_operator.api.rules import CelRule

GROUP = "ferry.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAMES = ("md",)

# One regular expression for every URI the API accepts; the message below explains it to people.
URI_PATTERN = r"^(pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/.+|s3://[a-z0-9][-a-z0-9.]*[a-z0-9]/.+|https?://[^/]+/.+|file:///.+)$"
URI_HELP = "pvc://CLAIM/PATH, s3://BUCKET/KEY, http(s)://HOST/PATH or file:///PATH (development clusters)"

# Text-generation formats: served with the OpenAI-compatible API once they are an onnxruntime-genai folder
# (huggingface always goes through an optimization Job that builds one).
GENERATIVE_FORMATS = ("onnx-genai", "huggingface")

# Requests of a serving container when spec.serving.resources is not given. Memory is not defaulted in the
# schema: the operator sizes it (builders/sizing.py), from the served model for a generative one.
DEFAULT_REQUESTS: dict[str, int | str] = {"cpu": "500m"}

# A Kubernetes quantity ("500m", "2Gi", 4): the API server checks the syntax when the Deployment is applied.
Quantity = Annotated[
    int | str,
    Field(json_schema_extra={"x-kubernetes-int-or-string": True}),
]
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DnsSubdomain = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]


def _uri_rule(field: str) -> CelRule:
    return CelRule(
        cel=f"self.{field}.matches('{URI_PATTERN}')",
        message=f"{field} must be one of {URI_HELP}",
        field_path=f".{field}",
        holds=lambda model: _matches(URI_PATTERN, getattr(model, field)),
    )


def _matches(pattern: str, value: str) -> bool:
    return re.search(pattern, value) is not None


class ApiModel(BaseModel):
    """Common configuration: camelCase on the wire, snake_case in Python, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=AliasGenerator(alias=to_camel),
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
        # Descriptions come from docstrings; a title per field would only add noise to the schema.
        json_schema_mode_override="validation",
    )

    # Cross-field rules on this object, each with its CEL and its Python form (see rules.py).
    cel_rules: ClassVar[tuple[CelRule, ...]] = ()

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(core_schema)
        if cls.cel_rules:
            definition = handler.resolve_ref_schema(json_schema)
            definition["x-kubernetes-validations"] = [rule.as_validation() for rule in cls.cel_rules]
        return json_schema

    @model_validator(mode="after")
    def _check_cel_rules(self) -> Self:
        for rule in type(self).cel_rules:
            if not rule.holds(self):
                raise ValueError(rule.message)
        return self


# --- spec.model -------------------------------------------------------------------------------------------


class ModelSource(ApiModel):
    """The trained model to serve: where it is and what format it is in."""

    uri: str = Field(min_length=1, max_length=2048)
    """Where the model is: pvc://CLAIM/PATH (a PersistentVolumeClaim in this namespace), s3://BUCKET/KEY,
    http(s)://HOST/PATH or file:///PATH (development only: refused unless the operator runs with
    allowFileUris). A URI ending in "/" is a directory (a TensorFlow SavedModel, or a model with
    external data files)."""

    format: Literal["onnx", "tensorflow", "keras", "tflite", "onnx-genai", "huggingface"]
    """The model's format: onnx, tensorflow (a SavedModel directory), keras (a .keras or .h5 file),
    tflite, or a text-generation model served with the OpenAI-compatible API (docs/generative.md):
    onnx-genai (an onnxruntime-genai folder with genai_config.json, the decoder's ONNX files and the
    tokenizer) or huggingface (a Hugging Face causal-LM folder: config.json, *.safetensors, the
    tokenizer files; built into an onnxruntime-genai folder by the optimization Job). Models not in
    ONNX are converted by an optimization Job before they are served."""

    credentials_secret: DnsSubdomain | None = None
    """Name of a Secret in this namespace whose keys are exposed to the model fetcher as environment
    variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL for s3://). The
    operator never reads it; only the serving and optimization pods mount it."""

    sha256: Annotated[str, Field(pattern=r"^[a-f0-9]{64}$")] | None = None
    """Expected digest of the model (64 lowercase hex digits): of a file, its SHA-256; of a directory
    (uri ending in "/"), the SHA-256 of its manifest, the sorted lines "<file sha256>  ./<path>" that
    `find . -type f | sort | xargs sha256sum | sha256sum` prints in it. The fetcher and the optimization
    Job refuse a model with another digest, so a changed or corrupted model is never served, and the
    optimization's content key covers the model's bytes (without it, only its URI)."""

    cel_rules = (
        _uri_rule("uri"),
        CelRule(
            cel="self.format != 'tensorflow' || self.uri.endsWith('/')",
            message="a tensorflow SavedModel is a directory: uri must end with '/'",
            field_path=".uri",
            holds=lambda m: m.format != "tensorflow" or m.uri.endswith("/"),
        ),
        CelRule(
            cel="self.format != 'onnx-genai' || self.uri.endsWith('/')",
            message="an onnx-genai model is a folder (genai_config.json, the ONNX files, the tokenizer): uri "
            "must end with '/'",
            field_path=".uri",
            holds=lambda m: m.format != "onnx-genai" or m.uri.endswith("/"),
        ),
        CelRule(
            cel="self.format != 'huggingface' || self.uri.endsWith('/')",
            message="a huggingface model is a folder (config.json, *.safetensors, the tokenizer files): uri "
            "must end with '/'",
            field_path=".uri",
            holds=lambda m: m.format != "huggingface" or m.uri.endswith("/"),
        ),
    )


# --- spec.optimize ----------------------------------------------------------------------------------------


class Prune(ApiModel):
    """Weight pruning: zero out a fraction of the weights, then fine-tune when data is given."""

    sparsity: float = Field(ge=0.0, le=0.95)
    """Fraction of the weights set to zero, from 0.0 to 0.95."""

    method: Literal["magnitude", "structured"] = "magnitude"
    """magnitude removes the smallest individual weights; structured removes whole channels (faster on
    CPUs, usually a larger accuracy drop)."""

    epochs: int = Field(default=1, ge=0, le=1000)
    """Fine-tuning epochs after pruning (only when optimize.data is given); 0 disables fine-tuning."""


class Student(ApiModel):
    """The smaller network trained to imitate the given model."""

    width_factor: float = Field(default=0.5, ge=0.1, le=1.0)
    """Width of each student layer as a fraction of the teacher's, from 0.1 to 1.0."""

    depth: int | None = Field(default=None, ge=1, le=1000)
    """Number of hidden layers of the student; unset keeps the teacher's depth."""


class Distill(ApiModel):
    """Knowledge distillation: train a smaller student on the given model's outputs (needs data)."""

    student: Student = Field(default_factory=Student, json_schema_extra={"default": {}})
    """Shape of the student network."""

    epochs: int = Field(default=3, ge=1, le=1000)
    """Training epochs of the student."""

    temperature: float = Field(default=2.0, gt=0.0, le=100.0)
    """Softmax temperature applied to the teacher's logits; higher values transfer more of the teacher's
    uncertainty."""


class Training(ApiModel):
    """Optimizer settings used by every step that trains (pruning fine-tune, distillation)."""

    learning_rate: float = Field(default=0.001, gt=0.0, le=1.0)
    """Initial learning rate."""

    schedule: Literal["constant", "cosine", "exponential"] = "cosine"
    """How the learning rate changes over the epochs."""

    l2: float = Field(default=0.0, ge=0.0, le=1.0)
    """L2 weight regularization factor."""

    batch_size: int = Field(default=32, ge=1, le=65536)
    """Samples per training step."""


class OptimizeData(ApiModel):
    """Samples for calibration, fine-tuning and the accuracy gate."""

    uri: str = Field(min_length=1, max_length=2048)
    """Where the samples are (same schemes as spec.model.uri): an .npz file with an array `x` (or one array
    per model input name) and optionally `y` labels."""

    samples: int = Field(default=512, ge=1, le=10_000_000)
    """How many samples to use at most."""

    cel_rules = (_uri_rule("uri"),)


class Validate(ApiModel):
    """The quality gate: a candidate that loses more than maxDrop (or, for perplexity, whose perplexity
    grows by more than maxIncrease) is not rolled out."""

    metric: Literal["accuracy", "cosine", "maxAbsError", "perplexity", "agreement"] = "accuracy"
    """Tensor models: accuracy (needs labels `y` in the data), cosine (output similarity with the original
    model) or maxAbsError (largest absolute output difference). Generative models: perplexity on the
    text in optimize.data, or agreement (greedy tokens equal to the original model's on built-in
    prompts, when no text is given)."""

    max_drop: float | None = Field(default=None, ge=0.0)
    """Largest accepted loss: accuracy, cosine or agreement points (0 to 1) below the original model, or
    the largest accepted absolute error for maxAbsError; unset: 0.01. Not for perplexity."""

    max_increase: float | None = Field(default=None, gt=0.0, le=10.0)
    """perplexity only: largest accepted relative increase over the original model's (0.05: 5% higher);
    unset: 0.05."""

    cel_rules = (
        CelRule(
            cel=(
                "!has(self.maxDrop) || (has(self.metric) && self.metric == 'maxAbsError') || "
                "self.maxDrop <= 1.0"
            ),
            message="maxDrop must be between 0 and 1 for the accuracy, cosine and agreement metrics",
            field_path=".maxDrop",
            holds=lambda m: m.metric == "maxAbsError" or m.max_drop is None or m.max_drop <= 1.0,
        ),
        CelRule(
            cel="!has(self.maxDrop) || !has(self.metric) || self.metric != 'perplexity'",
            message="perplexity is gated by maxIncrease (lower is better), not maxDrop",
            field_path=".maxDrop",
            holds=lambda m: m.max_drop is None or m.metric != "perplexity",
        ),
        CelRule(
            cel="!has(self.maxIncrease) || (has(self.metric) && self.metric == 'perplexity')",
            message="maxIncrease is the budget of metric: perplexity; other metrics use maxDrop",
            field_path=".maxIncrease",
            holds=lambda m: m.max_increase is None or m.metric == "perplexity",
        ),
    )


ExportFormat = Literal["onnx", "tflite", "tflite-int8"]


def _only_onnx() -> list[ExportFormat]:
    return ["onnx"]


class WeightOnly(ApiModel):
    """How int4/int8 weight-only quantization is done (ONNX Runtime's MatMulNBits)."""

    block_size: Literal[16, 32, 64, 128, 256] = 32
    """Weights per quantization scale: smaller blocks are more accurate and slightly larger."""

    accuracy_level: int = Field(default=4, ge=1, le=4)
    """The precision MatMulNBits computes in: 1 fp32, 2 fp16, 3 bf16, 4 int8 activations (fastest on
    CPU)."""


class Optimize(ApiModel):
    """How to optimize the model before serving it. Absent: the model is served as it is (a model not in
    ONNX is still converted)."""

    graph: Literal["disabled", "basic", "extended", "all"] = "extended"
    """ONNX Runtime offline graph optimization level applied to the served model."""

    quantize: Literal["none", "dynamic", "static", "fp16", "int4", "int8"] = "none"
    """Quantization. Tensor models: dynamic (int8 weights, activations quantized at run time), static
    (int8 weights and activations; needs data for calibration) or fp16 (half-precision weights).
    Generative models: int4 or int8 weight-only quantization (MatMulNBits; int4 also tries int8, the
    fallback when int4 fails the gate). none: no quantization."""

    weight_only: WeightOnly | None = None
    """Block size and accuracy level of int4/int8 weight-only quantization; unset: blockSize 32,
    accuracyLevel 4."""

    prune: Prune | None = None
    """Weight pruning; absent: no pruning."""

    distill: Distill | None = None
    """Distillation into a smaller student network; absent: no distillation. Needs data."""

    training: Training = Field(default_factory=Training, json_schema_extra={"default": {}})
    """Settings of the steps that train (pruning fine-tune, distillation)."""

    export: Annotated[
        list[ExportFormat],
        Field(min_length=1, max_length=3, json_schema_extra={"x-kubernetes-list-type": "set"}),
    ] = Field(default_factory=_only_onnx, json_schema_extra={"default": ["onnx"]})
    """Artifacts to produce. onnx is always needed (it is what is served); tflite and tflite-int8 also
    export TensorFlow Lite files for edge devices."""

    data: OptimizeData | None = None
    """Samples for static quantization, fine-tuning, distillation and the accuracy gate."""

    validate_: Validate | None = Field(default=None, alias="validate")
    """The accuracy gate; absent: every candidate that converts is accepted."""

    cel_rules = (
        CelRule(
            cel="!has(self.quantize) || self.quantize != 'static' || has(self.data)",
            message="quantize: static needs calibration samples: set optimize.data",
            field_path=".quantize",
            holds=lambda m: m.quantize != "static" or m.data is not None,
        ),
        CelRule(
            cel="!has(self.weightOnly) || (has(self.quantize) && self.quantize in ['int4', 'int8'])",
            message="weightOnly sets int4/int8 weight-only quantization: it needs quantize int4 or int8",
            field_path=".weightOnly",
            holds=lambda m: m.weight_only is None or m.quantize in ("int4", "int8"),
        ),
        CelRule(
            cel="!has(self.distill) || has(self.data)",
            message="distill trains a student on samples: set optimize.data",
            field_path=".distill",
            holds=lambda m: m.distill is None or m.data is not None,
        ),
        CelRule(
            cel="!has(self.export) || !('tflite-int8' in self.export) || has(self.data)",
            message="export tflite-int8 needs representative samples: set optimize.data",
            field_path=".export",
            holds=lambda m: "tflite-int8" not in m.export or m.data is not None,
        ),
        CelRule(
            cel="!has(self.export) || 'onnx' in self.export",
            message="export must include onnx: the serving runtime serves the ONNX artifact",
            field_path=".export",
            holds=lambda m: "onnx" in m.export,
        ),
    )


# --- spec.serving -----------------------------------------------------------------------------------------


class ScalingDirection(ApiModel):
    """How the autoscaler changes the replica count in one direction (a subset of the
    HorizontalPodAutoscaler's spec.behavior.scaleUp/scaleDown)."""

    stabilization_window_seconds: int | None = Field(default=None, ge=0, le=3600)
    """The autoscaler acts on the most cautious recommendation of this many past seconds (the highest when
    scaling down, the lowest when scaling up), so a brief dip or spike does not resize the serving pods;
    unset: the Kubernetes default, 300 for scaleDown and 0 for scaleUp."""


class Autoscaling(ApiModel):
    """Horizontal autoscaling. When set, the HorizontalPodAutoscaler owns the replica count: serving.replicas
    must not be set and `kubectl scale` is refused (change min/maxReplicas instead)."""

    min_replicas: int = Field(default=1, ge=1, le=1000)
    """Fewest replicas the autoscaler keeps (at least 1)."""

    max_replicas: int = Field(ge=1, le=1000)
    """Most replicas the autoscaler may create."""

    metric: Literal["cpu", "concurrency", "rps", "queue"] = "cpu"
    """What the autoscaler tracks per pod: cpu (utilization of the CPU request, in percent), concurrency
    (in-flight requests), rps (requests per second) or queue (generative models: requests waiting for a
    sequence slot, the signal that a pod's continuous batch is full). concurrency, rps and queue are custom
    pod metrics served by a metrics adapter (e.g. prometheus-adapter) from the runtime's Prometheus
    metrics."""

    target: int | None = Field(default=None, ge=1, le=100_000)
    """Target value per pod for the metric; unset: 70 (% CPU), 8 (in-flight requests), 50 (requests per
    second) or 2 (waiting requests)."""

    scale_up: ScalingDirection | None = None
    """How fast replicas are added (the HorizontalPodAutoscaler's behavior.scaleUp); unset: the Kubernetes
    default."""

    scale_down: ScalingDirection | None = None
    """How fast replicas are removed (the HorizontalPodAutoscaler's behavior.scaleDown); unset: the
    Kubernetes default, which waits 5 minutes of lower load before removing any."""

    cel_rules = (
        CelRule(
            cel="!has(self.minReplicas) || self.minReplicas <= self.maxReplicas",
            message="minReplicas must not be greater than maxReplicas",
            field_path=".minReplicas",
            holds=lambda m: m.min_replicas <= m.max_replicas,
        ),
    )


class Batching(ApiModel):
    """Dynamic batching in the runtime: requests that arrive together run as one batch."""

    max_batch_size: int = Field(default=32, ge=1, le=4096)
    """Most rows combined into one model call; 1 disables batching."""

    max_delay_ms: float = Field(default=0.0, ge=0.0, le=10_000.0)
    """How long a request may wait for others to join its batch, in milliseconds; 0 batches only what is
    already queued (no added latency)."""

    max_queue_size: int = Field(default=256, ge=1, le=1_000_000)
    """Requests waiting beyond this are refused with 503 and Retry-After instead of queueing without
    bound."""

    cel_rules = (
        CelRule(
            cel=(
                "!has(self.maxQueueSize) || !has(self.maxBatchSize) || self.maxQueueSize >= self.maxBatchSize"
            ),
            message="maxQueueSize must hold at least one full batch (>= maxBatchSize)",
            field_path=".maxQueueSize",
            holds=lambda m: m.max_queue_size >= m.max_batch_size,
        ),
    )


class ResourceRequirements(ApiModel):
    """CPU and memory for each serving container, as in a Pod's resources."""

    requests: dict[str, Quantity] | None = None
    """Resources the scheduler reserves, e.g. {cpu: 500m, memory: 1Gi}. The cpu autoscaling metric is a
    percentage of the CPU request. Without a memory request the operator sets one: for a generative model
    served from an optimization Job, its weights plus a full KV cache (maxSequences sequences of the
    model's context length) plus the runtime's own 256Mi (docs/generative.md, "Memory"); for a tensor
    model whose size the Job reported, that size + 10% + 256Mi, at least 512Mi; 512Mi otherwise. Capped
    at limits.memory when that is set. Without an ephemeral-storage request or limit,
    a model whose size an optimization Job reported gets one for its download volume (the size + 5% +
    64Mi, also that emptyDir's sizeLimit)."""

    limits: dict[str, Quantity] | None = None
    """Upper bounds, e.g. {memory: 2Gi}. Use serving.gpu for GPUs."""


class Toleration(ApiModel):
    """A toleration, as in a Pod's spec.tolerations."""

    key: str | None = None
    """Taint key the toleration applies to; empty with operator Exists matches all taints."""

    operator: Literal["Exists", "Equal"] | None = None
    """Exists or Equal (the default)."""

    value: str | None = None
    """Taint value the toleration matches (with operator Equal)."""

    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches all effects."""

    toleration_seconds: int | None = None
    """How long a NoExecute taint is tolerated before eviction; unset: forever."""


class Generation(ApiModel):
    """The generative runtime's continuous batch: how many sequences run at once, how many may wait."""

    max_sequences: int = Field(default=16, ge=1, le=1024)
    """Sequences generated together in one pod's running batch (KV-cache slots); a request beyond them
    waits. Like vLLM's --max-num-seqs."""

    max_waiting: int = Field(default=64, ge=1, le=100_000)
    """Requests that may wait for a slot; beyond them a request gets 503 with Retry-After (scale out on
    serving.autoscaling.metric: queue before that happens)."""


# A service account as allowedServiceAccounts names it: NAMESPACE/NAME, or a bare NAME in the
# ModelDeployment's namespace (a namespace is a DNS label, a service account name a DNS subdomain).
SERVICE_ACCOUNT_PATTERN = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?/)?[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
ServiceAccountRef = Annotated[
    str, Field(min_length=1, max_length=63 + 1 + 253, pattern=SERVICE_ACCOUNT_PATTERN)
]
# The runtime is given the audiences comma-separated: an audience cannot hold a comma or white space.
Audience = Annotated[str, Field(min_length=1, max_length=1024, pattern=r"^[^,\s]+$")]


class Auth(ApiModel):
    """Who may call the model's inference and feedback endpoints: a client sends `Authorization: Bearer
    TOKEN`, and the serving pods check the token."""

    mode: Literal["none", "bearer", "kubernetes"] = "none"
    """none: no authentication. bearer: the token must be the value of one of secretName's keys.
    kubernetes: a Kubernetes service account token (a projected token, or one from `kubectl create
    token`), checked by the serving pods with the API server's TokenReview API, from the service
    accounts in allowedServiceAccounts when that is set."""

    secret_name: DnsSubdomain | None = None
    """bearer only (and required): a Secret in this namespace; every key holds one accepted token, so
    two keys let an old and a new token overlap while clients move over. Rotate by editing the Secret:
    the kubelet updates the mounted copy within a minute or two and the serving pods follow it, with no
    restart. The operator never reads it; the serving pods mount it."""

    allowed_service_accounts: (
        Annotated[
            list[ServiceAccountRef],
            Field(max_length=256, json_schema_extra={"x-kubernetes-list-type": "set"}),
        ]
        | None
    ) = None
    """kubernetes only: the service accounts whose tokens are accepted, as NAMESPACE/NAME or a bare NAME
    (in this ModelDeployment's namespace); unset or empty: any token the API server authenticates."""

    audiences: (
        Annotated[list[Audience], Field(max_length=16, json_schema_extra={"x-kubernetes-list-type": "set"})]
        | None
    ) = None
    """kubernetes only: the audiences a token must be issued for (TokenReview's spec.audiences, e.g. the
    audience a client's projected token names); unset: the API server's own audience."""

    cel_rules = (
        CelRule(
            cel="!has(self.mode) || self.mode != 'bearer' || has(self.secretName)",
            message="mode bearer needs secretName: the Secret whose keys are the accepted tokens",
            field_path=".secretName",
            holds=lambda m: m.mode != "bearer" or m.secret_name is not None,
        ),
        CelRule(
            cel="!has(self.secretName) || (has(self.mode) && self.mode == 'bearer')",
            message="secretName is for mode bearer only",
            field_path=".secretName",
            holds=lambda m: m.secret_name is None or m.mode == "bearer",
        ),
        CelRule(
            cel="!has(self.allowedServiceAccounts) || (has(self.mode) && self.mode == 'kubernetes')",
            message="allowedServiceAccounts is for mode kubernetes only",
            field_path=".allowedServiceAccounts",
            holds=lambda m: m.allowed_service_accounts is None or m.mode == "kubernetes",
        ),
        CelRule(
            cel="!has(self.audiences) || (has(self.mode) && self.mode == 'kubernetes')",
            message="audiences is for mode kubernetes only",
            field_path=".audiences",
            holds=lambda m: m.audiences is None or m.mode == "kubernetes",
        ),
    )


# --- spec.serving.network: Kubernetes NetworkPolicy peers, typed so the API server checks them at apply ---

# A label key: an optional DNS-subdomain prefix and "/", then a name of at most 63 characters. ("[.]", not
# "\.": the pattern is also a CEL string literal, where "\." is an invalid escape.)
LABEL_KEY_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_KEY_HELP = (
    "a label key (an optional DNS-subdomain prefix and '/', then at most 63 letters, digits, '-', '_' or "
    "'.', beginning and ending with a letter or digit)"
)
LabelKey = Annotated[str, Field(min_length=1, max_length=317, pattern=LABEL_KEY_PATTERN)]
LabelValue = Annotated[str, Field(max_length=63, pattern=r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")]
# Long enough for any IPv6 CIDR ("ffff:...:255.255.255.255/128" is 49 characters).
Cidr = Annotated[str, Field(min_length=1, max_length=64)]


def _cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """`text` as the API server's CEL isCIDR/cidr() read it (Go's netip.ParsePrefix: an address, "/" and a
    decimal prefix length without leading zeros; no zone, no IPv4-mapped IPv6 address), or None."""
    if not re.fullmatch(r"[0-9A-Fa-f:.]+/(0|[1-9][0-9]{0,2})", text):
        return None
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    if isinstance(network, ipaddress.IPv6Network) and network.network_address.ipv4_mapped is not None:
        return None
    return network


def _is_network_address(text: str) -> bool:
    """A CIDR with no bits set after the prefix: cidr(x) == cidr(x).masked() in CEL."""
    network = _cidr(text)
    return (
        network is not None
        and ipaddress.ip_address(text.split("/", maxsplit=1)[0]) == network.network_address
    )


def _strictly_inside(inner: str, outer: str) -> bool:
    """`inner` is a CIDR inside `outer` with a longer prefix (what the API server requires of except); an
    address of the other IP family is in no network."""
    small, large = _cidr(inner), _cidr(outer)
    if small is None or large is None:
        return False
    return small.prefixlen > large.prefixlen and small.network_address in large


class LabelSelectorRequirement(ApiModel):
    """One matchExpressions entry, as in a Kubernetes label selector."""

    key: LabelKey
    """The label key the requirement applies to."""

    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    """In or NotIn the values, or the label Exists or DoesNotExist."""

    values: Annotated[list[LabelValue], Field(max_length=64)] | None = None
    """Label values: at least one for In and NotIn, none for Exists and DoesNotExist."""

    cel_rules = (
        CelRule(
            cel="(self.operator in ['In', 'NotIn']) == (has(self.values) && size(self.values) > 0)",
            message="values must list at least one value for operator In and NotIn, and none for Exists and "
            "DoesNotExist",
            field_path=".values",
            holds=lambda m: (m.operator in ("In", "NotIn")) == bool(m.values),
        ),
    )


class LabelSelector(ApiModel):
    """A Kubernetes label selector; empty ({}) selects everything."""

    match_labels: Annotated[dict[str, LabelValue], Field(max_length=64)] | None = None
    """Labels an object must carry, key: value."""

    match_expressions: Annotated[list[LabelSelectorRequirement], Field(max_length=32)] | None = None
    """Requirements an object's labels must meet, all of them."""

    cel_rules = (
        CelRule(
            cel=f"!has(self.matchLabels) || self.matchLabels.all(k, k.matches('{LABEL_KEY_PATTERN}'))",
            message=f"every matchLabels key must be {LABEL_KEY_HELP}",
            field_path=".matchLabels",
            holds=lambda m: all(_matches(LABEL_KEY_PATTERN, key) for key in m.match_labels or {}),
        ),
    )


class IPBlock(ApiModel):
    """Addresses by CIDR, as in a NetworkPolicy peer's ipBlock: for clients outside the cluster's pod
    network (pod IPs are better selected by label, as they change)."""

    cidr: Cidr
    """The network, e.g. 10.0.0.0/8 or fd00::/8 (no bits set after the prefix)."""

    except_: Annotated[list[Cidr], Field(max_length=32)] | None = Field(default=None, alias="except")
    """Networks inside cidr that are not admitted, each with a longer prefix than cidr."""

    cel_rules = (
        CelRule(
            cel="isCIDR(self.cidr) && cidr(self.cidr) == cidr(self.cidr).masked()",
            message="cidr must be a network in CIDR notation with no bits set after the prefix, e.g. "
            "10.0.0.0/8 or fd00::/8",
            field_path=".cidr",
            holds=lambda m: _is_network_address(m.cidr),
        ),
        CelRule(
            cel=(
                "!has(self.except) || !isCIDR(self.cidr) || self.except.all(e, isCIDR(e) && "
                "cidr(self.cidr).containsCIDR(cidr(e)) && "
                "cidr(e).prefixLength() > cidr(self.cidr).prefixLength())"
            ),
            message="every except entry must be a CIDR inside cidr with a longer prefix",
            field_path=".except",
            holds=lambda m: (
                _cidr(m.cidr) is None or all(_strictly_inside(e, m.cidr) for e in m.except_ or ())
            ),
        ),
    )


class NetworkPolicyPeer(ApiModel):
    """Who may connect, as in a Kubernetes NetworkPolicy peer: pods by label (podSelector; in this
    namespace unless namespaceSelector is also given), every pod of the namespaces a namespaceSelector
    selects, both (the selected pods of the selected namespaces), or addresses (ipBlock, alone)."""

    pod_selector: LabelSelector | None = None
    """Pods admitted, by label; {} is every pod. Alone: pods of the ModelDeployment's namespace; with
    namespaceSelector: pods of the namespaces it selects."""

    namespace_selector: LabelSelector | None = None
    """Namespaces whose pods are admitted, by the namespace's labels ({} is every namespace; one namespace:
    {matchLabels: {kubernetes.io/metadata.name: NAME}})."""

    ip_block: IPBlock | None = None
    """Addresses admitted, by CIDR; not together with podSelector or namespaceSelector."""

    cel_rules = (
        CelRule(
            cel="has(self.podSelector) || has(self.namespaceSelector) || has(self.ipBlock)",
            message="a peer must set podSelector, namespaceSelector (or both) or ipBlock",
            holds=lambda m: (
                m.pod_selector is not None or m.namespace_selector is not None or m.ip_block is not None
            ),
        ),
        CelRule(
            cel="!has(self.ipBlock) || !(has(self.podSelector) || has(self.namespaceSelector))",
            message="ipBlock cannot be combined with podSelector or namespaceSelector in one peer: give each "
            "its own entry",
            field_path=".ipBlock",
            holds=lambda m: m.ip_block is None or (m.pod_selector is None and m.namespace_selector is None),
        ),
    )


# Who may scrape a metrics port when neither the ModelDeployment nor the operator's configuration
# (FERRY_OPERATOR_SERVING_METRICS_FROM, Helm networkPolicy.metricsFrom) says: every pod in every namespace,
# as the chart's own NetworkPolicy admits to the operator's metrics port by default. Ferry cannot know
# where Prometheus runs; the metrics carry no request data, and the inference ports stay closed.
DEFAULT_METRICS_FROM: tuple[NetworkPolicyPeer, ...] = (NetworkPolicyPeer(namespace_selector=LabelSelector()),)


class Network(ApiModel):
    """Who may reach the serving pods (a NetworkPolicy, ingress only)."""

    allow_from: Annotated[list[NetworkPolicyPeer], Field(max_length=32)] | None = None
    """Who may call the inference ports (http 8080, grpc 8081). Absent or empty: pods of the
    ModelDeployment's own namespace only. A client outside the cluster reaches the pods through an
    ingress controller or gateway: admit that one's pods (namespaceSelector and podSelector)."""

    metrics_from: Annotated[list[NetworkPolicyPeer], Field(max_length=32)] | None = None
    """Who may scrape the metrics port (8082): where Prometheus runs. Absent or empty: the operator's
    default (FERRY_OPERATOR_SERVING_METRICS_FROM, which the Helm chart sets from networkPolicy.metricsFrom;
    unset: every pod in every namespace, [{namespaceSelector: {}}])."""


class Tls(ApiModel):
    """TLS on the serving pods' REST and gRPC ports."""

    secret_name: DnsSubdomain
    """A Secret of type kubernetes.io/tls in this namespace (tls.crt, tls.key), as cert-manager's
    Certificate writes it: the serving pods serve it on both ports and load a renewed one within seconds
    of the kubelet updating the mounted copy, without a restart. The operator never reads it."""


class Serving(ApiModel):
    """How the model is served: replicas, autoscaling, batching and pod placement."""

    network: Network | None = None
    """A NetworkPolicy for the serving pods (ingress only; egress stays open): the inference ports admit
    only allowFrom, and /metrics moves to a port of its own (8082, named metrics, which the Service, the
    ServiceMonitor and the prometheus.io/port annotation then name) that admits only metricsFrom. Health
    probes come from the kubelet on the pod's node, which NetworkPolicy implementations always admit. It
    is enforced only where the cluster's network plugin implements NetworkPolicy. Absent: no
    NetworkPolicy, and /metrics stays on the HTTP port (8080)."""

    replicas: int | None = Field(default=None, ge=0, le=1000)
    """Number of serving pods (unset: 1). `kubectl scale modeldeployment/NAME` sets this field. Must not be
    set together with autoscaling, which then owns the replica count."""

    autoscaling: Autoscaling | None = None
    """Horizontal autoscaling; absent: a fixed number of replicas. When set, the HorizontalPodAutoscaler
    owns the replica count: serving.replicas must not be set and `kubectl scale` is refused (change
    minReplicas/maxReplicas instead)."""

    batching: Batching = Field(default_factory=Batching, json_schema_extra={"default": {}})
    """Dynamic batching in the runtime."""

    resources: ResourceRequirements = Field(
        default_factory=lambda: ResourceRequirements(requests=dict(DEFAULT_REQUESTS)),
        json_schema_extra={"default": {"requests": dict(DEFAULT_REQUESTS)}},
    )
    """CPU and memory of each serving pod's runtime container."""

    gpu: int = Field(default=0, ge=0, le=16)
    """GPUs per pod (nvidia.com/gpu); 0 serves on CPU."""

    node_selector: dict[str, str] | None = None
    """Node labels the serving pods must match."""

    tolerations: list[Toleration] | None = None
    """Taints the serving pods tolerate."""

    affinity: (
        Annotated[dict[str, Any], Field(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})]
        | None
    ) = None
    """Pod affinity and anti-affinity, as in a Pod's spec.affinity."""

    image: str | None = Field(default=None, min_length=1, max_length=1024)
    """Serving image override; unset: the operator's configured ferry-runtime image."""

    threads: int | None = Field(default=None, ge=1, le=1024)
    """ONNX Runtime intra-op threads per pod; unset: derived by the runtime from its CPU allowance."""

    generation: Generation = Field(default_factory=Generation, json_schema_extra={"default": {}})
    """Continuous batching of a text-generation model (model.format onnx-genai or huggingface); ignored
    otherwise."""

    tls: Tls | None = None
    """TLS on the REST and gRPC ports from a kubernetes.io/tls Secret (docs/security.md); absent: plain
    text. With TLS, /metrics moves to a plain-text port of its own (8082, named metrics), so the scraper
    needs no client TLS settings; a NetworkPolicy (serving.network) is what admits only the scraper there."""

    auth: Auth = Field(default_factory=Auth, json_schema_extra={"default": {}})
    """Authentication of inference and feedback requests: none (default), bearer tokens from a Secret, or
    Kubernetes service account tokens (docs/security.md, "ModelDeployment authentication")."""

    cel_rules = (
        CelRule(
            cel="!(has(self.replicas) && has(self.autoscaling))",
            message=(
                "replicas must not be set together with autoscaling: the HorizontalPodAutoscaler owns the "
                "replica count (change autoscaling.minReplicas/maxReplicas, or remove autoscaling to scale "
                "by hand)"
            ),
            field_path=".replicas",
            holds=lambda m: not (m.replicas is not None and m.autoscaling is not None),
        ),
        CelRule(
            cel=(
                "!has(self.gpu) || self.gpu == 0 || !has(self.resources) || !has(self.resources.limits) || "
                "!('nvidia.com/gpu' in self.resources.limits)"
            ),
            message="set GPUs with serving.gpu, not with resources.limits['nvidia.com/gpu']",
            field_path=".gpu",
            holds=lambda m: (
                m.gpu == 0 or m.resources.limits is None or "nvidia.com/gpu" not in m.resources.limits
            ),
        ),
    )


# --- spec.rollout, spec.monitoring ------------------------------------------------------------------------


class Rollout(ApiModel):
    """How a new revision replaces the current one."""

    auto_rollback: bool = True
    """Return to the last Ready revision when a new revision's rollout fails: it misses
    progressDeadlineSeconds, or one of its pods crash-loops or fails to fetch the model 3 times. The
    failed spec is not tried again until the spec changes (any new generation is a new attempt). false:
    the failed rollout is left in place and the status says why."""

    progress_deadline_seconds: int = Field(default=600, ge=10, le=86_400)
    """How long a rollout may take before it is declared failed (the Deployment's
    progressDeadlineSeconds)."""


class Monitoring(ApiModel):
    """Prometheus integration."""

    service_monitor: Literal["auto", "enabled", "disabled"] = "auto"
    """Create a ServiceMonitor for the serving pods: auto creates one when the monitoring.coreos.com CRDs
    exist, enabled requires them, disabled never creates one. Pods carry prometheus.io scrape annotations
    either way."""

    prometheus_rule: Literal["auto", "enabled", "disabled"] = "auto"
    """Create a PrometheusRule with the model's alerts (no ready replicas, error ratio, latency SLO burn,
    rollout stuck, optimization failed, accuracy drop, input drift; docs/runbooks.md): auto creates one
    when the monitoring.coreos.com CRDs exist, enabled requires them, disabled never creates one."""


# --- the object -------------------------------------------------------------------------------------------


class ModelDeploymentSpec(ApiModel):
    """The desired state: which model, how to optimize it and how to serve it."""

    model: ModelSource
    """The trained model to serve."""

    optimize: Optimize | None = None
    """Optimization before serving; absent: serve the model as it is (non-ONNX models are converted)."""

    serving: Serving = Field(default_factory=Serving, json_schema_extra={"default": {}})
    """Serving replicas, autoscaling, batching, resources and placement."""

    rollout: Rollout = Field(default_factory=Rollout, json_schema_extra={"default": {}})
    """Rollout deadline and automatic rollback."""

    monitoring: Monitoring = Field(default_factory=Monitoring, json_schema_extra={"default": {}})
    """Prometheus integration."""

    cel_rules = (
        CelRule(
            cel=(
                "!has(self.optimize) || !(self.model.format in ['onnx-genai', 'huggingface']) || "
                "((!has(self.optimize.quantize) || self.optimize.quantize in ['none', 'int4', 'int8']) && "
                "!has(self.optimize.prune) && !has(self.optimize.distill) && "
                "(!has(self.optimize.export) || self.optimize.export == ['onnx']))"
            ),
            message="a generative model (model.format onnx-genai or huggingface) is optimized by quantize "
            "int4, int8 or none only: no dynamic/static/fp16, prune, distill or TensorFlow Lite export",
            field_path=".optimize",
            holds=lambda m: (
                m.optimize is None
                or m.model.format not in GENERATIVE_FORMATS
                or (
                    m.optimize.quantize in ("none", "int4", "int8")
                    and m.optimize.prune is None
                    and m.optimize.distill is None
                    and list(m.optimize.export) == ["onnx"]
                )
            ),
        ),
        CelRule(
            cel=(
                "!has(self.optimize) || !has(self.optimize.quantize) || "
                "!(self.optimize.quantize in ['int4', 'int8']) || "
                "self.model.format in ['onnx-genai', 'huggingface']"
            ),
            message="quantize int4/int8 (weight-only) is for generative models (model.format onnx-genai or "
            "huggingface); a tensor model uses dynamic, static or fp16",
            field_path=".optimize.quantize",
            holds=lambda m: (
                m.optimize is None
                or m.optimize.quantize not in ("int4", "int8")
                or m.model.format in GENERATIVE_FORMATS
            ),
        ),
        CelRule(
            cel=(
                "!has(self.optimize) || !has(self.optimize.validate) || "
                "((has(self.optimize.validate.metric) && "
                "self.optimize.validate.metric in ['perplexity', 'agreement']) == "
                "(self.model.format in ['onnx-genai', 'huggingface']))"
            ),
            message="validate.metric perplexity and agreement are for generative models (model.format "
            "onnx-genai or huggingface); accuracy, cosine and maxAbsError for tensor models",
            field_path=".optimize.validate.metric",
            holds=lambda m: (
                m.optimize is None
                or m.optimize.validate_ is None
                or (m.optimize.validate_.metric in ("perplexity", "agreement"))
                == (m.model.format in GENERATIVE_FORMATS)
            ),
        ),
        CelRule(
            cel=(
                "!has(self.optimize) || !has(self.optimize.export) || "
                "!self.optimize.export.exists(e, e.startsWith('tflite')) || "
                "self.model.format in ['tensorflow', 'keras', 'tflite']"
            ),
            message="TensorFlow Lite export needs a tensorflow, keras or tflite source model (model.format)",
            field_path=".optimize.export",
            holds=lambda m: (
                m.optimize is None
                or not any(e.startswith("tflite") for e in m.optimize.export)
                or m.model.format in ("tensorflow", "keras", "tflite")
            ),
        ),
        # The optimizer refuses these too (pipeline.check_request); here the API server refuses them at
        # apply time, naming the field, instead of a Job failing minutes later.
        CelRule(
            cel="!has(self.optimize) || !has(self.optimize.prune) || self.model.format == 'keras'",
            message="prune edits Keras layers: it needs model.format keras",
            field_path=".optimize.prune",
            holds=lambda m: m.optimize is None or m.optimize.prune is None or m.model.format == "keras",
        ),
        CelRule(
            cel="!has(self.optimize) || !has(self.optimize.distill) || self.model.format == 'keras'",
            message="distill derives the student from the model's Keras layers: it needs model.format keras",
            field_path=".optimize.distill",
            holds=lambda m: m.optimize is None or m.optimize.distill is None or m.model.format == "keras",
        ),
        CelRule(
            cel=(
                "!has(self.optimize) || !has(self.optimize.export) || "
                "!('tflite-int8' in self.optimize.export) || self.model.format != 'tflite'"
            ),
            message="export tflite-int8 re-quantizes the model, which a tflite source cannot be: export onnx "
            "or tflite",
            field_path=".optimize.export",
            holds=lambda m: (
                m.optimize is None or "tflite-int8" not in m.optimize.export or m.model.format != "tflite"
            ),
        ),
    )


# --- status -----------------------------------------------------------------------------------------------

ConditionType = Literal["ModelResolved", "Optimized", "Deployed", "Ready", "Progressing", "Degraded"]
ConditionStatus = Literal["True", "False", "Unknown"]
Phase = Literal["Pending", "Optimizing", "Deploying", "Ready", "Degraded", "Failed"]


class Condition(ApiModel):
    """One aspect of the observed state, in the standard Kubernetes condition shape."""

    type: ConditionType
    """ModelResolved, Optimized, Deployed, Ready, Progressing or Degraded."""

    status: ConditionStatus
    """True, False or Unknown."""

    reason: str = Field(min_length=1, max_length=1024)
    """A one-word CamelCase cause, for tools and alerts."""

    message: str = Field(default="", max_length=32_768)
    """What happened and what to do about it, for people."""

    last_transition_time: str
    """When the status last changed (RFC 3339); unchanged while only the reason or message changes."""

    observed_generation: int | None = Field(default=None, ge=0)
    """The metadata.generation this condition was computed for."""


class ModelInfo(ApiModel):
    """The model being served."""

    format: str | None = None
    """Format of the served artifact."""

    digest: str | None = None
    """Content digest of the served artifact (sha256:HEX) when known."""

    size_bytes: int | None = Field(default=None, ge=0)
    """Size of the served artifact in bytes when known."""

    kv_cache_bytes_per_token: int | None = Field(default=None, ge=0)
    """A generative model's KV cache per token of one sequence, when known (the memory request is sized
    from it)."""

    context_length: int | None = Field(default=None, ge=1)
    """A generative model's context length in tokens, when known."""

    uri: str | None = None
    """Where the serving pods fetch the artifact from."""


class Revision(ApiModel):
    """Serving revisions: a revision is a digest of everything that shapes the serving pods."""

    current: str | None = None
    """The revision the serving Deployment runs or rolls out now."""

    previous: str | None = None
    """The last revision that was fully rolled out before the current one (the rollback target)."""


class LastReadyRevision(ApiModel):
    """The newest revision that was Ready: what an automatic rollback returns to."""

    revision: str = Field(min_length=1)
    """The revision (digest of the serving pod template)."""

    generation: int = Field(ge=0)
    """The spec generation that was Ready with this revision."""

    model: ModelInfo
    """The artifact that revision serves."""

    spec: Annotated[dict[str, Any], Field(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})]
    """The spec that generation had, as the API server held it: a rollback rebuilds the serving Deployment
    from it, so it returns to exactly the pods that were Ready."""


class Rollback(ApiModel):
    """An automatic rollback: the spec's revision failed to roll out, so the last Ready revision serves
    again. Kept while the spec is unchanged; the next spec generation is a new attempt."""

    generation: int = Field(ge=0)
    """The spec generation whose rollout failed."""

    failed_revision: str
    """The revision that failed to roll out."""

    revision: str
    """The revision rolled back to."""

    reason: str
    """Why the rollout failed: ProgressDeadlineExceeded, CrashLoopBackOff or FetchFailed."""

    message: str = Field(max_length=32_768)
    """What failed, with the failing pod's own message."""

    time: str
    """When the operator rolled back (RFC 3339)."""


class Artifact(ApiModel):
    """An optimized model in the artifact store."""

    uri: str
    """Where the artifact is."""

    sha256: str
    """SHA-256 of the artifact's model file."""

    size_bytes: int = Field(ge=0)
    """Size of the artifact's model file in bytes (a generative model: all files of its folder)."""

    kv_cache_bytes_per_token: int | None = Field(default=None, ge=0)
    """A generative model's KV cache per token of one sequence, across its layers (float32 keys and
    values, as the runtime holds them)."""

    context_length: int | None = Field(default=None, ge=1)
    """A generative model's context length in tokens (its longest prompt + output)."""


class MetricResult(ApiModel):
    """The accuracy gate's measurement."""

    name: str
    """The metric (accuracy, cosine or maxAbsError)."""

    baseline: float
    """The metric of the original model."""

    value: float
    """The metric of the chosen candidate."""


class Candidate(ApiModel):
    """One optimized candidate the optimizer measured."""

    name: str
    """Which steps produced it."""

    passed: bool
    """Whether it passed the accuracy gate."""

    size_bytes: int = Field(ge=0)
    """Model file size in bytes."""

    latency_ms: float
    """Median single-request latency in milliseconds."""

    metric: float
    """The gate's metric for this candidate."""


class OptimizationReport(ApiModel):
    """The optimizer's summary (its termination message); the full report.json is in the artifact store."""

    passed: bool | None = None
    """Whether a candidate passed the accuracy gate."""

    chosen: str | None = None
    """The candidate that is served."""

    reason: str | None = None
    """Why that candidate was chosen, or why none was."""

    metric: MetricResult | None = None
    """The gate's measurement of the chosen candidate."""

    candidates: list[Candidate] | None = None
    """Every candidate with size, latency and metric."""


class OptimizationStatus(ApiModel):
    """The latest optimization: the Job that ran it and what it reported."""

    job: str | None = None
    """Name of the optimization Job."""

    key: str | None = None
    """Content key of the optimization (digest of source model, optimize spec and optimizer version)."""

    step: str | None = None
    """The step the Job is running now (while the phase is Optimizing)."""

    artifact: Artifact | None = None
    """The optimized artifact that is served."""

    report: OptimizationReport | None = None
    """The optimizer's summary: the gate's verdict and every candidate."""


class ModelDeploymentStatus(ApiModel):
    """The observed state, written by the operator."""

    observed_generation: int | None = Field(default=None, ge=0)
    """The metadata.generation the status was computed for."""

    phase: Phase | None = None
    """Summary: Pending, Optimizing, Deploying, Ready, Degraded or Failed. The conditions say why."""

    conditions: (
        Annotated[
            list[Condition],
            Field(
                json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
            ),
        ]
        | None
    ) = None
    """ModelResolved, Optimized, Deployed, Ready, Progressing and Degraded, each with a reason and a message
    a person can act on."""

    replicas: int | None = Field(default=None, ge=0)
    """Serving pods that exist (the scale subresource reports this)."""

    ready_replicas: int | None = Field(default=None, ge=0)
    """Serving pods that are ready to take requests."""

    selector: str | None = None
    """Label selector of the serving pods (the scale subresource reports this, so an autoscaler can target
    the ModelDeployment)."""

    url: str | None = None
    """In-cluster URL of the model over the Open Inference Protocol v2 (REST)."""

    model: ModelInfo | None = None
    """The model being served."""

    revision: Revision | None = None
    """The current and previous serving revisions."""

    optimization: OptimizationStatus | None = None
    """The latest optimization, when spec.optimize is set."""

    last_ready_revision: LastReadyRevision | None = None
    """The newest revision that was Ready, and what it was built from (the rollback target)."""

    rollback: Rollback | None = None
    """The automatic rollback in effect for this spec generation, if its rollout failed."""
