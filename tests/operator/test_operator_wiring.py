"""The kopf wiring: what the handler module registers, and the settings that depend on it."""

from __future__ import annotations

import kopf

from ferry_operator import handlers, wiring
from ferry_operator.config import OperatorConfig


def test_only_index_and_event_handlers_so_no_diff_base_is_needed() -> None:
    # wiring.NoDiffBase skips kopf's per-event deep copy of every body, which only change handlers
    # (on.create/on.update/on.field/on.resume) read. Registering one needs kopf's stock storage back.
    registry = kopf.get_default_registry()
    assert handlers.modeldeployment_event is not None  # the module is imported and registered
    assert registry._indexing.get_all_handlers()
    assert registry._watching.get_all_handlers()
    assert not registry._changing.get_all_handlers()
    assert not registry._spawning.get_all_handlers()
    settings = wiring.operator_settings(OperatorConfig())
    assert isinstance(settings.persistence.diffbase_storage, wiring.NoDiffBase)
    assert settings.persistence.diffbase_storage.build(body=kopf.Body({"spec": {"a": 1}})) == {}


def test_the_crd_filter_passes_only_the_monitoring_crds() -> None:
    assert wiring.is_monitoring_crd(name="servicemonitors.monitoring.coreos.com")
    assert wiring.is_monitoring_crd(name="prometheusrules.monitoring.coreos.com")
    assert not wiring.is_monitoring_crd(name="modeldeployments.ferry.dev")
