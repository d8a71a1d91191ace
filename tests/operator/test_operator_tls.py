"""spec.serving.tls: what the serving pods are given to serve TLS (the Secret, mounted whole; the runtime's
setting; HTTPS probes), and where /metrics goes then (a plain-text port of its own, which the Service, the
ServiceMonitor and the scrape annotation name). The runtime's TLS itself is tested in
tests/runtime/test_tls.py and on the real node in the e2e.

Update the golden file after an intended change with FERRY_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from operator_cases import spec_with

from ferry_operator import builders, kinds
from ferry_operator.api import models
from ferry_operator.builders import inputs as build_inputs
from ferry_operator.builders import serving as serving_builder

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("FERRY_UPDATE_GOLDEN") == "1"
DEFAULTS = build_inputs.ServingDefaults(runtime_image="ferry-runtime:0.1.0")
OWNER = build_inputs.Owner(name="digits", namespace="ml", uid="11111111-2222-3333-4444-555555555555")
TLS = {"secretName": "digits-tls"}


def children(serving: dict[str, Any]) -> dict[kinds.Kind, Any]:
    parsed = models.ModelDeploymentSpec.model_validate(spec_with(serving=serving))
    inputs = build_inputs.BuildInputs(
        owner=OWNER,
        spec=parsed,
        artifact=build_inputs.ServedArtifact(uri=parsed.model.uri, format=parsed.model.format),
        defaults=DEFAULTS,
    )
    return builders.desired_children(inputs)


def test_children_match_the_golden_file() -> None:
    rendered = yaml.safe_dump_all(list(children({"tls": TLS}).values()), sort_keys=False, width=110)
    golden = GOLDEN / "tls.yaml"
    if UPDATE:
        golden.write_text(rendered)
    assert rendered == golden.read_text()


def test_the_secret_is_mounted_whole_and_read_by_the_runtime() -> None:
    pod = children({"tls": TLS})[kinds.DEPLOYMENT]["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == serving_builder.TLS_VOLUME]
    assert volume["secret"] == {"secretName": "digits-tls", "defaultMode": 0o440}
    (runtime,) = pod["containers"]
    (mount,) = [m for m in runtime["volumeMounts"] if m["name"] == serving_builder.TLS_VOLUME]
    assert mount == {"name": "tls", "mountPath": serving_builder.TLS_DIR, "readOnly": True}  # no subPath
    env = {e["name"]: e["value"] for e in runtime["env"]}
    assert env["FERRY_RUNTIME_TLS_DIR"] == serving_builder.TLS_DIR
    # The runtime reads its settings from these names (ferry_runtime.settings: FERRY_RUNTIME_ + field).
    assert env["FERRY_RUNTIME_METRICS_PORT"] == str(serving_builder.METRICS_PORT)
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert runtime[probe]["httpGet"]["scheme"] == "HTTPS", probe
    # Only the runtime serves TLS: the fetch containers never see the key.
    for init in pod["initContainers"]:
        assert all(m["name"] != serving_builder.TLS_VOLUME for m in init.get("volumeMounts", []))


def test_metrics_move_to_a_plain_text_port_the_service_names() -> None:
    built = children({"tls": TLS})
    service = built[kinds.SERVICE]["spec"]["ports"]
    assert {p["name"]: p["appProtocol"] for p in service} == {
        "http": "https",
        "grpc": "https",
        "metrics": "http",
    }
    template = built[kinds.DEPLOYMENT]["spec"]["template"]
    assert template["metadata"]["annotations"]["prometheus.io/port"] == str(serving_builder.METRICS_PORT)


def test_without_tls_nothing_changes() -> None:
    plain = children({})
    pod = plain[kinds.DEPLOYMENT]["spec"]["template"]["spec"]
    (runtime,) = pod["containers"]
    assert "scheme" not in runtime["readinessProbe"]["httpGet"]
    assert all(v["name"] != serving_builder.TLS_VOLUME for v in pod["volumes"])
    assert "FERRY_RUNTIME_TLS_DIR" not in {e["name"] for e in runtime["env"]}


def test_the_runtime_accepts_the_settings_the_builder_writes(tmp_path: Path) -> None:
    from ferry_runtime.settings import load_settings

    (runtime,) = children({"tls": TLS})[kinds.DEPLOYMENT]["spec"]["template"]["spec"]["containers"]
    environ = {e["name"]: e["value"] for e in runtime["env"]}
    environ["FERRY_RUNTIME_MODEL_DIR"] = str(tmp_path)
    settings = load_settings([], environ)
    assert str(settings.tls_dir) == serving_builder.TLS_DIR
    assert settings.metrics_port == serving_builder.METRICS_PORT
