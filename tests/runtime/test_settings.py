"""Settings: flags win over FERRY_RUNTIME_* variables, which win over defaults; bad values are named."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ferry_runtime.settings import RuntimeSettings, load_settings, settings_table


def test_flags_win_over_environment_over_defaults() -> None:
    settings = load_settings(
        ["--model-name", "from-flag", "--http-port", "9000"],
        {
            "FERRY_RUNTIME_MODEL_NAME": "from-env",
            "FERRY_RUNTIME_MODEL_DIR": "/models",
            "FERRY_RUNTIME_GRPC_PORT": "9001",
            "FERRY_RUNTIME_EXECUTION_PROVIDERS": "CUDAExecutionProvider, CPUExecutionProvider",
            "FERRY_RUNTIME_MAX_BATCH_DELAY_MS": "2.5",
        },
    )
    assert settings.model_name == "from-flag"
    assert settings.model_dir == Path("/models")
    assert (settings.http_port, settings.grpc_port) == (9000, 9001)
    assert settings.execution_providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert settings.max_batch_delay_ms == 2.5
    assert settings.max_batch_size == 32


def test_required_and_invalid_values_are_named() -> None:
    with pytest.raises(ValueError, match=r"model_dir is required.*model_name is required"):
        load_settings([], {})
    with pytest.raises(ValueError, match="FERRY_RUNTIME_HTTP_PORT must be a int, got 'eighty'"):
        load_settings(["--model-dir", "/m", "--model-name", "m"], {"FERRY_RUNTIME_HTTP_PORT": "eighty"})
    with pytest.raises(ValueError, match="max_queue_size must be at least 1, got 0"):
        load_settings(["--model-dir", "/m", "--model-name", "m", "--max-queue-size", "0"], {})


def test_settings_table_documents_every_field() -> None:
    table = settings_table()
    for field in dataclasses.fields(RuntimeSettings):
        assert f"`--{field.name.replace('_', '-')}`" in table
        assert f"`FERRY_RUNTIME_{field.name.upper()}`" in table


def test_documentation_carries_the_current_settings_table() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "runtime.md").read_text()
    assert settings_table() in docs, "docs/runtime.md's settings table is stale: paste settings_table()"
