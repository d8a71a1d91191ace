"""The reconcile worker's handling of failures: a temporary one (the API server or the network refusing
for now) is a quiet, counted retry that honours Retry-After; anything else is an error with a traceback."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import prometheus_client
import pytest

from ferry_operator import kube
from ferry_operator.config import OperatorConfig
from ferry_operator.kube import ApiError, KubeClient
from ferry_operator.reconcile.controller import Controller

KEY = ("ns", "md")


def _count(outcome: str) -> float:
    value = prometheus_client.REGISTRY.get_sample_value(
        "ferry_operator_reconcile_total", {"outcome": outcome}
    )
    return value or 0.0


def _run_once(failure: BaseException) -> tuple[list[str], float]:
    """Reconcile KEY with `failure` raised the first time; returns the outcomes seen and the delay the
    work queue scheduled the retry with."""

    async def scenario() -> tuple[list[str], float]:
        controller = Controller(OperatorConfig(workers=1), KubeClient())
        calls: list[str] = []
        delays: list[float] = []
        retry = controller.queue.retry

        def recording_retry(key: tuple[str, str], at_least: float = 0.0) -> float:
            delay = retry(key, at_least)
            delays.append(delay)
            return delay

        async def reconcile(_key: tuple[str, str]) -> str:
            calls.append("raised" if not calls else "noop")
            if len(calls) == 1:
                raise failure
            return "noop"

        controller.reconcile = reconcile  # type: ignore[method-assign]
        controller.queue.retry = recording_retry  # type: ignore[method-assign]
        controller.start()
        controller.enqueue(KEY)
        for _ in range(200):
            await asyncio.sleep(0.01)
            if len(calls) == 2 or (delays and delays[0] > 1):
                break
        await controller.stop()
        return calls, delays[0]

    return asyncio.run(scenario())


@pytest.mark.parametrize(
    "failure",
    [
        ApiError(409, "Conflict", "the object has been modified", "PATCH", "/status"),
        ApiError(503, "Service Unavailable", "", "PATCH", "/status"),
        ApiError(504, "Gateway Timeout", "", "PATCH", "/x"),
        aiohttp.ServerDisconnectedError(),
        ConnectionResetError(104, "Connection reset by peer"),
    ],
    ids=["409", "503", "504", "disconnected", "reset"],
)
def test_a_temporary_failure_is_a_quiet_retry_not_an_error(
    failure: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    assert kube.temporary(failure)
    errors_before, retries_before = _count("error"), _count("retry")
    with caplog.at_level(logging.INFO, logger="ferry_operator.reconcile"):
        calls, _ = _run_once(failure)
    assert calls == ["raised", "noop"]  # retried, and the retry succeeded
    assert (_count("error"), _count("retry")) == (errors_before, retries_before + 1)
    records = [r for r in caplog.records if "temporary failure" in r.getMessage()]
    assert len(records) == 1, caplog.text
    assert records[0].levelno == logging.WARNING
    assert records[0].exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_throttled_request_waits_as_long_as_the_server_asked() -> None:
    throttled = ApiError(429, "Too Many Requests", "", "PATCH", "/status", retry_after=7)
    calls, delay = _run_once(throttled)
    assert calls == ["raised"]  # not retried within the test: the queue waits the 7 s asked for
    assert delay == 7


def test_any_other_failure_is_an_error_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    bug = KeyError("spec")
    assert not kube.temporary(bug)
    assert not kube.temporary(ApiError(422, "Unprocessable Entity", "spec.x: bad", "PATCH", "/x"))
    errors_before = _count("error")
    with caplog.at_level(logging.INFO, logger="ferry_operator.reconcile"):
        calls, _ = _run_once(bug)
    assert calls == ["raised", "noop"]
    assert _count("error") == errors_before + 1
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.exc_info is not None


@pytest.mark.parametrize(
    ("header", "expected"),
    [("3", 3.0), (None, 0.0), ("Wed, 21 Oct 2026 07:28:00 GMT", 0.0), ("99999", 300.0)],
)
def test_retry_after_is_read_in_seconds_and_capped(header: str | None, expected: float) -> None:
    assert kube._retry_after(header) == expected
