"""The typed API: defaults, bounds and every cross-field rule, as the operator and local tools see them."""

from __future__ import annotations

from typing import Any

import pytest
from operator_cases import INVALID_SPECS, VALID_SPEC, InvalidSpec, spec_with
from pydantic import ValidationError

from ferry_operator.api import models


def parse(spec: dict[str, Any]) -> models.ModelDeploymentSpec:
    return models.ModelDeploymentSpec.model_validate(spec)


def test_minimal_spec_gets_the_documented_defaults() -> None:
    spec = parse(VALID_SPEC)
    assert spec.serving.replicas is None
    assert spec.serving.batching == models.Batching(max_batch_size=32, max_delay_ms=0, max_queue_size=256)
    assert spec.serving.resources.requests == models.DEFAULT_REQUESTS
    assert spec.rollout == models.Rollout(auto_rollback=True, progress_deadline_seconds=600)
    assert spec.monitoring.service_monitor == "auto"
    assert spec.optimize is None


def test_optimize_defaults_match_the_optimizer_contract() -> None:
    optimize = parse(spec_with(optimize={})).optimize
    assert optimize is not None
    assert (optimize.graph, optimize.quantize, optimize.export) == ("extended", "none", ["onnx"])
    assert optimize.prune is None
    assert optimize.distill is None
    assert optimize.validate_ is None


def test_camel_case_round_trip() -> None:
    raw = spec_with(
        model={
            "uri": "s3://models/m.keras",
            "format": "keras",
            "credentialsSecret": "s3-creds",
            "sha256": "0" * 64,
        },
        optimize={
            "quantize": "static",
            "prune": {"sparsity": 0.5, "method": "structured", "epochs": 2},
            "distill": {"student": {"widthFactor": 0.25, "depth": 2}, "epochs": 3, "temperature": 4.0},
            "training": {"learningRate": 0.01, "schedule": "exponential", "l2": 0.001, "batchSize": 64},
            "export": ["onnx"],
            "data": {"uri": "s3://bucket/data.npz", "samples": 100},
            "validate": {"metric": "cosine", "maxDrop": 0.02},
        },
        serving={"autoscaling": {"minReplicas": 2, "maxReplicas": 5, "metric": "rps", "target": 20}},
    )
    spec = parse(raw)
    assert spec.optimize is not None
    assert spec.optimize.validate_ == models.Validate(metric="cosine", max_drop=0.02)
    dumped = spec.model_dump(by_alias=True, exclude_none=True)
    assert dumped["optimize"]["validate"] == {"metric": "cosine", "maxDrop": 0.02}
    assert dumped["optimize"]["distill"]["student"] == {"widthFactor": 0.25, "depth": 2}
    assert parse(dumped) == spec


def test_max_abs_error_may_exceed_one() -> None:
    spec = parse(
        spec_with(
            optimize={"data": {"uri": "file:///d.npz"}, "validate": {"metric": "maxAbsError", "maxDrop": 5}}
        )
    )
    assert spec.optimize is not None
    assert spec.optimize.validate_ is not None
    assert spec.optimize.validate_.max_drop == 5


def test_unknown_fields_are_refused_with_their_name() -> None:
    with pytest.raises(ValidationError, match="replicaz"):
        parse(spec_with(serving={"replicaz": 2}))


@pytest.mark.parametrize("case", list(INVALID_SPECS), ids=lambda c: c.id)
def test_every_invalid_spec_is_refused_naming_the_field(case: InvalidSpec) -> None:
    with pytest.raises(ValidationError) as raised:
        parse(case.spec)
    errors = raised.value.errors()
    assert len(errors) == 1, errors
    # List items as the API server names them: allowFrom[0], not allowFrom.0.
    location = "spec" + "".join(
        f"[{part}]" if isinstance(part, int) else f".{part}" for part in errors[0]["loc"]
    )
    # Bounds and enums are blamed on the field itself; cross-field rules on the object that holds them,
    # with the field named in the message.
    leaf = case.field.rsplit(".", 1)[-1]
    assert case.field.startswith(location.removesuffix("."))
    assert location == case.field or leaf in errors[0]["msg"], (location, errors[0]["msg"])


def test_network_peers_parse_and_round_trip_in_the_kubernetes_shape() -> None:
    peers = [
        {"podSelector": {}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16", "10.2.3.4/32"]}},
        {"ipBlock": {"cidr": "fd00::/8", "except": ["fd00:1::/32"]}},
        {"podSelector": {"matchExpressions": [{"key": "example.com/tier", "operator": "Exists"}]}},
    ]
    spec = parse(spec_with(serving={"network": {"allowFrom": peers}}))
    assert spec.serving.network is not None
    dumped = spec.model_dump(by_alias=True, exclude_none=True)["serving"]["network"]
    assert dumped == {"allowFrom": peers}


@pytest.mark.parametrize(
    ("cidr", "valid"),
    [
        ("10.0.0.0/8", True),
        ("0.0.0.0/0", True),
        ("fd00::/8", True),
        ("10.0.0.1/8", False),  # host bits: cidr(x) != cidr(x).masked()
        ("10.0.0.0", False),  # no prefix length (CEL's isCIDR needs one)
        ("10.0.0.0/255.0.0.0", False),  # a netmask: Python would read it, Go's netip does not
        ("010.0.0.0/8", False),  # leading zeros
        ("10.0.0.0/08", False),
        ("::ffff:10.0.0.0/104", False),  # IPv4-mapped IPv6: refused by CEL's isCIDR
        ("fe80::%eth0/64", False),  # a zone
    ],
)
def test_cidr_rules_read_addresses_as_the_api_servers_cel_does(cidr: str, valid: bool) -> None:
    accepted = True
    try:
        parse(spec_with(serving={"network": {"allowFrom": [{"ipBlock": {"cidr": cidr}}]}}))
    except ValidationError:
        accepted = False
    assert accepted == valid
