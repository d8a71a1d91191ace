"""Deciding what to apply and prune, the work queue, and the operator's configuration."""

from __future__ import annotations

import asyncio

import pytest

from ferry_operator import config, kinds
from ferry_operator.reconcile import plan
from ferry_operator.reconcile.observe import ChildSnapshot
from ferry_operator.reconcile.workqueue import WorkQueue


def seen(
    kind: kinds.Kind = kinds.DEPLOYMENT,
    input_hash: str | None = "h1",
    generation: int = 1,
    rv: str = "100",
    uid: str = "u1",
) -> ChildSnapshot:
    return ChildSnapshot(kind, "digits", uid, generation, rv, input_hash)


def manifest(input_hash: str) -> dict[str, object]:
    return {"metadata": {"name": "digits", "annotations": {kinds.INPUT_HASH_ANNOTATION: input_hash}}}


def test_missing_children_are_applied_and_unwanted_ones_pruned() -> None:
    hpa = seen(kinds.HORIZONTAL_POD_AUTOSCALER)
    result = plan.plan(
        {kinds.SERVICE: manifest("s"), kinds.DEPLOYMENT: manifest("h1")},
        {kinds.DEPLOYMENT: seen(), kinds.HORIZONTAL_POD_AUTOSCALER: hpa},
        {},
    )
    assert [kind for kind, _ in result.apply] == [kinds.SERVICE]
    assert result.prune == (hpa,)


def test_unchanged_hash_is_skipped() -> None:
    assert plan.plan({kinds.DEPLOYMENT: manifest("h1")}, {kinds.DEPLOYMENT: seen()}, {}).empty


def test_changed_hash_is_applied() -> None:
    assert plan.needs_apply("h2", seen(input_hash="h1"), None)


def test_a_lagging_watch_does_not_trigger_a_second_apply() -> None:
    record = plan.AppliedRecord(uid="u1", input_hash="h2", generation=2, resource_version="200")
    assert not plan.needs_apply("h2", seen(input_hash="h1", rv="150"), record)


def test_a_hand_edit_of_the_spec_is_reverted() -> None:
    record = plan.AppliedRecord(uid="u1", input_hash="h1", generation=2, resource_version="200")
    assert plan.needs_apply("h1", seen(input_hash="h1", generation=3, rv="250"), record)
    assert not plan.needs_apply("h1", seen(input_hash="h1", generation=2, rv="260"), record)


def test_a_recreated_child_is_judged_on_its_own() -> None:
    record = plan.AppliedRecord(uid="old", input_hash="h1", generation=5, resource_version="900")
    assert plan.needs_apply("h1", seen(uid="new", input_hash=None, rv="950"), record)
    assert plan.needs_apply("h1", None, record)


def test_work_queue_collapses_bursts_and_requeues_changes_during_work() -> None:
    async def scenario() -> list[str]:
        queue: WorkQueue[str] = WorkQueue()
        for _ in range(5):
            queue.add("a")
        queue.add("b")
        assert len(queue) == 2
        first = await queue.get()
        queue.add(first)  # changed while being reconciled: once more afterwards, not concurrently
        assert len(queue) == 1
        queue.done(first)
        return [await queue.get(), await queue.get()]

    assert asyncio.run(scenario()) == ["b", "a"]


def test_retry_backs_off_exponentially() -> None:
    async def scenario() -> list[float]:
        queue: WorkQueue[str] = WorkQueue(base_delay=0.01, max_delay=0.04)
        delays = [queue.retry("a") for _ in range(4)]
        queue.forget("a")
        delays.append(queue.retry("a"))
        return delays

    assert asyncio.run(scenario()) == [0.01, 0.02, 0.04, 0.04, 0.01]


def test_config_defaults_and_parsing() -> None:
    parsed = config.from_env(
        {
            "FERRY_OPERATOR_RUNTIME_IMAGE": "registry/ferry-runtime:1",
            "FERRY_OPERATOR_IMAGE_PULL_SECRETS": "a, b,",
            "FERRY_OPERATOR_OPTIMIZER_RESOURCES": '{"limits": {"memory": "4Gi"}}',
            "FERRY_OPERATOR_LOG_LEVEL": "debug",
            "FERRY_OPERATOR_METRICS_PORT": "0",
            "UNRELATED": "x",
        }
    )
    assert parsed.runtime_image == "registry/ferry-runtime:1"
    assert parsed.image_pull_secrets == ("a", "b")
    assert parsed.optimizer_resources == {"limits": {"memory": "4Gi"}}
    assert (parsed.log_level, parsed.metrics_port, parsed.workers) == ("DEBUG", 0, 64)
    assert config.from_env({}).runtime_image.startswith("ferry-runtime:")


def test_config_errors_name_the_variable_and_the_value() -> None:
    with pytest.raises(config.ConfigError, match=r"FERRY_OPERATOR_METRICS_PORT='http'.*integer"):
        config.from_env({"FERRY_OPERATOR_METRICS_PORT": "http"})
    with pytest.raises(config.ConfigError, match=r"FERRY_OPERATOR_LOG_FORMAT='xml'.*'text' or 'json'"):
        config.from_env({"FERRY_OPERATOR_LOG_FORMAT": "xml"})
    with pytest.raises(config.ConfigError, match=r"unknown setting.*FERRY_OPERATOR_RUNTIME_IMAGES"):
        config.from_env({"FERRY_OPERATOR_RUNTIME_IMAGES": "x"})
    with pytest.raises(config.ConfigError, match="FERRY_OPERATOR_OPTIMIZER_RESOURCES"):
        config.from_env({"FERRY_OPERATOR_OPTIMIZER_RESOURCES": "{not json"})


def test_serving_metrics_from_is_a_list_of_valid_peers_and_never_empty() -> None:
    monitoring = '[{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]'
    (peer,) = config.from_env({"FERRY_OPERATOR_SERVING_METRICS_FROM": monitoring}).serving_metrics_from
    assert peer.namespace_selector is not None
    assert peer.namespace_selector.match_labels == {"kubernetes.io/metadata.name": "monitoring"}
    (default,) = config.from_env({}).serving_metrics_from
    assert default.model_dump(by_alias=True, exclude_none=True) == {"namespaceSelector": {}}
    # Empty would make a rule without peers, which admits everyone.
    for empty in ("", "[]"):
        with pytest.raises(config.ConfigError, match=r"SERVING_METRICS_FROM.*at least one peer"):
            config.from_env({"FERRY_OPERATOR_SERVING_METRICS_FROM": empty})
    with pytest.raises(config.ConfigError, match=r"SERVING_METRICS_FROM.*JSON list of NetworkPolicy peers"):
        config.from_env({"FERRY_OPERATOR_SERVING_METRICS_FROM": "monitoring"})
    with pytest.raises(config.ConfigError, match=r"SERVING_METRICS_FROM.*no bits set after the prefix"):
        config.from_env({"FERRY_OPERATOR_SERVING_METRICS_FROM": '[{"ipBlock": {"cidr": "10.1.0.0/8"}}]'})
