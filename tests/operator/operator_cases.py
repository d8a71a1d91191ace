"""ModelDeployment specs shared by the unit tests (pydantic) and the cluster tests (the API server).

Each invalid spec breaks exactly one rule of the API; both the operator's models and the API server must
refuse it, and the API server's message must name `field`.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

VALID_SPEC: dict[str, Any] = {"model": {"uri": "pvc://models/digits/model.onnx", "format": "onnx"}}


def spec_with(**sections: Any) -> dict[str, Any]:
    """VALID_SPEC with the given top-level sections replaced (model is merged, not replaced)."""
    spec = copy.deepcopy(VALID_SPEC)
    for key, value in sections.items():
        if key == "model":
            spec["model"] = {**spec["model"], **value}
        else:
            spec[key] = value
    return spec


DATA = {"uri": "pvc://models/digits/data.npz"}


@dataclasses.dataclass(frozen=True)
class InvalidSpec:
    id: str
    spec: dict[str, Any]
    # The field the API server must name in its message.
    field: str
    # A fragment of the message (the rule's message, or the schema's wording for bounds and enums).
    fragment: str


# Pruning and distillation edit Keras layers: their cases use a Keras source.
KERAS_MODEL = {"uri": "pvc://models/m.keras", "format": "keras"}
HUGGINGFACE_MODEL = {"uri": "pvc://models/llm/", "format": "huggingface"}

INVALID_SPECS: tuple[InvalidSpec, ...] = (
    InvalidSpec(
        "prune-not-keras",
        spec_with(optimize={"prune": {"sparsity": 0.5}}),
        "spec.optimize.prune",
        "it needs model.format keras",
    ),
    InvalidSpec(
        "distill-not-keras",
        spec_with(
            model={"uri": "s3://models/saved/", "format": "tensorflow"},
            optimize={"distill": {}, "data": DATA},
        ),
        "spec.optimize.distill",
        "it needs model.format keras",
    ),
    InvalidSpec(
        "tflite-int8-from-tflite",
        spec_with(
            model={"uri": "pvc://models/m.tflite", "format": "tflite"},
            optimize={"export": ["onnx", "tflite-int8"], "data": DATA},
        ),
        "spec.optimize.export",
        "a tflite source cannot be",
    ),
    InvalidSpec(
        "uri-scheme", spec_with(model={"uri": "ftp://host/model.onnx"}), "spec.model.uri", "uri must be"
    ),
    InvalidSpec("format-enum", spec_with(model={"format": "pytorch"}), "spec.model.format", "pytorch"),
    InvalidSpec(
        "savedmodel-not-dir",
        spec_with(model={"uri": "s3://bucket/model", "format": "tensorflow"}),
        "spec.model.uri",
        "must end with '/'",
    ),
    InvalidSpec("sha256-malformed", spec_with(model={"sha256": "abc"}), "spec.model.sha256", "should match"),
    InvalidSpec(
        "credentials-secret-name",
        spec_with(model={"credentialsSecret": "Bad_Name"}),
        "spec.model.credentialsSecret",
        "should match",
    ),
    InvalidSpec(
        "static-quantize-without-data",
        spec_with(optimize={"quantize": "static"}),
        "spec.optimize.quantize",
        "needs calibration samples",
    ),
    InvalidSpec(
        "distill-without-data",
        spec_with(model=KERAS_MODEL, optimize={"distill": {"epochs": 2}}),
        "spec.optimize.distill",
        "set optimize.data",
    ),
    InvalidSpec(
        "sparsity-too-high",
        spec_with(model=KERAS_MODEL, optimize={"prune": {"sparsity": 0.99}}),
        "spec.optimize.prune.sparsity",
        "0.95",
    ),
    InvalidSpec(
        "export-without-onnx",
        spec_with(model={"uri": "pvc://models/m.keras", "format": "keras"}, optimize={"export": ["tflite"]}),
        "spec.optimize.export",
        "must include onnx",
    ),
    InvalidSpec(
        "tflite-from-onnx",
        spec_with(optimize={"export": ["onnx", "tflite"]}),
        "spec.optimize.export",
        "TensorFlow Lite export needs",
    ),
    InvalidSpec(
        "max-drop-above-one",
        spec_with(optimize={"data": DATA, "validate": {"metric": "accuracy", "maxDrop": 2}}),
        "spec.optimize.validate.maxDrop",
        "between 0 and 1",
    ),
    InvalidSpec(
        "distill-temperature-zero",
        spec_with(model=KERAS_MODEL, optimize={"data": DATA, "distill": {"temperature": 0}}),
        "spec.optimize.distill.temperature",
        "greater than 0",
    ),
    InvalidSpec(
        "min-above-max",
        spec_with(serving={"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}),
        "spec.serving.autoscaling.minReplicas",
        "must not be greater than maxReplicas",
    ),
    InvalidSpec(
        "replicas-with-autoscaling",
        spec_with(serving={"replicas": 3, "autoscaling": {"maxReplicas": 4}}),
        "spec.serving.replicas",
        "HorizontalPodAutoscaler owns the replica count",
    ),
    InvalidSpec(
        "negative-replicas",
        spec_with(serving={"replicas": -1}),
        "spec.serving.replicas",
        "greater than or equal to 0",
    ),
    InvalidSpec(
        "gpu-twice",
        spec_with(serving={"gpu": 1, "resources": {"limits": {"nvidia.com/gpu": 1}}}),
        "spec.serving.gpu",
        "set GPUs with serving.gpu",
    ),
    InvalidSpec(
        "queue-smaller-than-batch",
        spec_with(serving={"batching": {"maxBatchSize": 64, "maxQueueSize": 8}}),
        "spec.serving.batching.maxQueueSize",
        "at least one full batch",
    ),
    InvalidSpec(
        "autoscaling-metric-enum",
        spec_with(serving={"autoscaling": {"maxReplicas": 3, "metric": "memory"}}),
        "spec.serving.autoscaling.metric",
        "memory",
    ),
    InvalidSpec(
        "scale-down-stabilization-too-long",
        spec_with(
            serving={"autoscaling": {"maxReplicas": 3, "scaleDown": {"stabilizationWindowSeconds": 7200}}}
        ),
        "spec.serving.autoscaling.scaleDown.stabilizationWindowSeconds",
        "less than or equal to 3600",
    ),
    InvalidSpec(
        "progress-deadline-too-short",
        spec_with(rollout={"progressDeadlineSeconds": 5}),
        "spec.rollout.progressDeadlineSeconds",
        "greater than or equal to 10",
    ),
    InvalidSpec(
        "service-monitor-enum",
        spec_with(monitoring={"serviceMonitor": "yes"}),
        "spec.monitoring.serviceMonitor",
        "yes",
    ),
    InvalidSpec("model-missing", {"serving": {"replicas": 1}}, "spec.model", "Required"),
    InvalidSpec(
        "genai-not-a-folder",
        spec_with(model={"uri": "pvc://models/llm/model.onnx", "format": "onnx-genai"}),
        "spec.model.uri",
        "an onnx-genai model is a folder",
    ),
    InvalidSpec(
        "huggingface-not-a-folder",
        spec_with(model={"uri": "pvc://models/llm/model.safetensors", "format": "huggingface"}),
        "spec.model.uri",
        "a huggingface model is a folder",
    ),
    InvalidSpec(
        "huggingface-tensor-quantization",
        spec_with(model=HUGGINGFACE_MODEL, optimize={"quantize": "fp16"}),
        "spec.optimize",
        "quantize int4, int8 or none only",
    ),
    InvalidSpec(
        "huggingface-pruned",
        spec_with(
            model=HUGGINGFACE_MODEL,
            optimize={"quantize": "int4", "prune": {"sparsity": 0.5}},
        ),
        "spec.optimize",
        "no dynamic/static/fp16, prune",
    ),
    InvalidSpec(
        "huggingface-gated-on-accuracy",
        spec_with(
            model=HUGGINGFACE_MODEL,
            optimize={"quantize": "int8", "validate": {"maxDrop": 0.01}},
        ),
        "spec.optimize.validate.metric",
        "perplexity and agreement are for generative models",
    ),
    InvalidSpec(
        "genai-tensor-quantization",
        spec_with(
            model={"uri": "pvc://models/llm/", "format": "onnx-genai"}, optimize={"quantize": "dynamic"}
        ),
        "spec.optimize",
        "quantize int4, int8 or none only",
    ),
    InvalidSpec(
        "genai-pruned",
        spec_with(
            model={"uri": "pvc://models/llm/", "format": "onnx-genai"},
            optimize={"quantize": "int4", "prune": {"sparsity": 0.5}},
        ),
        "spec.optimize",
        "no dynamic/static/fp16, prune",
    ),
    InvalidSpec(
        "int4-on-a-tensor-model",
        spec_with(optimize={"quantize": "int4"}),
        "spec.optimize.quantize",
        "for generative models",
    ),
    InvalidSpec(
        "perplexity-on-a-tensor-model",
        spec_with(optimize={"validate": {"metric": "perplexity"}}),
        "spec.optimize.validate.metric",
        "perplexity and agreement are for generative models",
    ),
    InvalidSpec(
        "accuracy-on-a-generative-model",
        spec_with(
            model={"uri": "pvc://models/llm/", "format": "onnx-genai"},
            optimize={"quantize": "int4", "validate": {"maxDrop": 0.1}},
        ),
        "spec.optimize.validate.metric",
        "perplexity and agreement are for generative models",
    ),
    InvalidSpec(
        "perplexity-with-max-drop",
        spec_with(
            model={"uri": "pvc://models/llm/", "format": "onnx-genai"},
            optimize={"quantize": "int4", "validate": {"metric": "perplexity", "maxDrop": 0.1}},
        ),
        "spec.optimize.validate.maxDrop",
        "gated by maxIncrease",
    ),
    InvalidSpec(
        "weight-only-without-int4",
        spec_with(
            model={"uri": "pvc://models/llm/", "format": "onnx-genai"},
            optimize={"weightOnly": {"blockSize": 64}},
        ),
        "spec.optimize.weightOnly",
        "needs quantize int4 or int8",
    ),
    InvalidSpec(
        "weight-only-block-size",
        spec_with(
            model={"uri": "pvc://models/llm/", "format": "onnx-genai"},
            optimize={"quantize": "int4", "weightOnly": {"blockSize": 48}},
        ),
        "spec.optimize.weightOnly.blockSize",
        "48",
    ),
    InvalidSpec(
        "network-peer-empty",
        spec_with(serving={"network": {"allowFrom": [{}]}}),
        "spec.serving.network.allowFrom[0]",
        "a peer must set podSelector, namespaceSelector (or both) or ipBlock",
    ),
    InvalidSpec(
        "network-ip-block-with-selector",
        spec_with(
            serving={"network": {"allowFrom": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}}
        ),
        "spec.serving.network.allowFrom[0].ipBlock",
        "ipBlock cannot be combined with podSelector or namespaceSelector",
    ),
    InvalidSpec(
        "network-cidr-host-bits",
        spec_with(serving={"network": {"metricsFrom": [{"ipBlock": {"cidr": "10.1.2.3/8"}}]}}),
        "spec.serving.network.metricsFrom[0].ipBlock.cidr",
        "no bits set after the prefix",
    ),
    InvalidSpec(
        "network-cidr-not-a-cidr",
        spec_with(serving={"network": {"allowFrom": [{"ipBlock": {"cidr": "10.0.0.0"}}]}}),
        "spec.serving.network.allowFrom[0].ipBlock.cidr",
        "cidr must be a network in CIDR notation",
    ),
    InvalidSpec(
        "network-except-outside-cidr",
        spec_with(
            serving={
                "network": {"allowFrom": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["192.168.0.0/16"]}}]}
            }
        ),
        "spec.serving.network.allowFrom[0].ipBlock.except",
        "inside cidr with a longer prefix",
    ),
    InvalidSpec(
        "network-except-the-whole-cidr",
        spec_with(
            serving={
                "network": {"allowFrom": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/8"]}}]}
            }
        ),
        "spec.serving.network.allowFrom[0].ipBlock.except",
        "inside cidr with a longer prefix",
    ),
    InvalidSpec(
        "network-selector-operator-enum",
        spec_with(
            serving={
                "network": {
                    "allowFrom": [
                        {"podSelector": {"matchExpressions": [{"key": "app", "operator": "Equals"}]}}
                    ]
                }
            }
        ),
        "spec.serving.network.allowFrom[0].podSelector.matchExpressions[0].operator",
        "Equals",
    ),
    InvalidSpec(
        "network-selector-in-without-values",
        spec_with(
            serving={
                "network": {
                    "allowFrom": [
                        {"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "In"}]}}
                    ]
                }
            }
        ),
        "spec.serving.network.allowFrom[0].namespaceSelector.matchExpressions[0].values",
        "at least one value for operator In and NotIn",
    ),
    InvalidSpec(
        "network-selector-bad-label-key",
        spec_with(serving={"network": {"allowFrom": [{"podSelector": {"matchLabels": {"-app": "x"}}}]}}),
        "spec.serving.network.allowFrom[0].podSelector.matchLabels",
        "every matchLabels key must be a label key",
    ),
    InvalidSpec(
        "network-selector-bad-label-value",
        spec_with(
            serving={
                "network": {
                    "allowFrom": [
                        {
                            "podSelector": {
                                "matchExpressions": [
                                    {"key": "app", "operator": "In", "values": ["not a value"]}
                                ]
                            }
                        }
                    ]
                }
            }
        ),
        "spec.serving.network.allowFrom[0].podSelector.matchExpressions[0].values[0]",
        "should match",
    ),
    InvalidSpec(
        "network-unknown-field",
        spec_with(serving={"network": {"allowFrom": [{"podSelectr": {}}]}}),
        "spec.serving.network.allowFrom[0].podSelectr",
        "unknown field",
    ),
    InvalidSpec(
        "genai-no-sequences",
        spec_with(serving={"generation": {"maxSequences": 0}}),
        "spec.serving.generation.maxSequences",
        "greater than or equal to 1",
    ),
    *(
        InvalidSpec(
            f"auth-{case_id}", spec_with(serving={"auth": auth}), f"spec.serving.auth.{field}", fragment
        )
        for case_id, auth, field, fragment in (
            ("bearer-without-secret", {"mode": "bearer"}, "secretName", "mode bearer needs secretName"),
            ("secret-without-bearer", {"mode": "kubernetes", "secretName": "t"}, "secretName", "bearer only"),
            ("secret-default-mode", {"secretName": "tokens"}, "secretName", "for mode bearer only"),
            (
                "accounts-with-bearer",
                {"mode": "bearer", "secretName": "t", "allowedServiceAccounts": ["app"]},
                "allowedServiceAccounts",
                "for mode kubernetes only",
            ),
            ("audiences-without-kubernetes", {"audiences": ["x"]}, "audiences", "for mode kubernetes only"),
            ("mode-enum", {"mode": "oauth"}, "mode", "oauth"),
            (
                "account-malformed",
                {"mode": "kubernetes", "allowedServiceAccounts": ["Team/App"]},
                "allowedServiceAccounts[0]",
                "should match",
            ),
            (
                "account-two-slashes",
                {"mode": "kubernetes", "allowedServiceAccounts": ["a/b/c"]},
                "allowedServiceAccounts[0]",
                "should match",
            ),
            (
                "audience-with-comma",
                {"mode": "kubernetes", "audiences": ["a,b"]},
                "audiences[0]",
                "should match",
            ),
            (
                "secret-name-malformed",
                {"mode": "bearer", "secretName": "Tokens_1"},
                "secretName",
                "should match",
            ),
        )
    ),
    InvalidSpec(
        "tls-without-secret", spec_with(serving={"tls": {}}), "spec.serving.tls.secretName", "Required"
    ),
    InvalidSpec(
        "tls-secret-malformed",
        spec_with(serving={"tls": {"secretName": "Certs_1"}}),
        "spec.serving.tls.secretName",
        "should match",
    ),
)
