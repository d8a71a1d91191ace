"""The batcher on a real ONNX model: concatenation, splitting, isolation of a bad request, queue bound."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from ferry_runtime.batching import Batcher, classify_onnxruntime_error
from ferry_runtime.errors import InvalidInput, Unavailable
from ferry_runtime.metrics import BatchRecorder, Metrics
from ferry_runtime.onnx_model import OnnxModel, OnnxModelConfig
from runtime_models import DigitsModel


def make_batcher(digits: DigitsModel, metrics: Metrics, **options: float) -> Batcher:
    model = OnnxModel(OnnxModelConfig(path=digits.path, name="digits", version="1", intra_op_threads=1))
    model.load()
    batcher = Batcher(
        model,
        max_batch_size=int(options.get("max_batch_size", 64)),
        max_delay_seconds=options.get("max_delay_seconds", 0.2),
        max_queue_size=int(options.get("max_queue_size", 100)),
        workers=1,
        recorder=BatchRecorder(metrics, "digits"),
        classify_error=classify_onnxruntime_error("digits"),
    )
    batcher.start()
    return batcher


def test_requests_of_one_iteration_form_one_batch_and_get_their_own_rows(digits: DigitsModel) -> None:
    metrics = Metrics()
    batcher = make_batcher(digits, metrics)

    async def run() -> list[dict[str, np.ndarray]]:
        loop = asyncio.get_running_loop()
        sizes = [1, 3, 2, 5]
        offsets = np.cumsum([0, *sizes])
        futures = [
            batcher.submit({"input": digits.test_images[offsets[i] : offsets[i + 1]]}, loop)
            for i in range(len(sizes))
        ]
        return list(await asyncio.gather(*futures))

    results = asyncio.run(run())
    batcher.stop(5)
    labels = np.concatenate([result["label"] for result in results])
    np.testing.assert_array_equal(labels, digits.expected_labels[:11])
    assert [len(result["probabilities"]) for result in results] == [1, 3, 2, 5]
    assert metrics.batch_sizes["digits"].counts[2] == 1  # one batch of 4 requests (bucket le=4)


def test_a_bad_request_fails_alone(digits: DigitsModel) -> None:
    batcher = make_batcher(digits, Metrics())

    async def run() -> list[object]:
        loop = asyncio.get_running_loop()
        good = batcher.submit({"input": digits.test_images[:2]}, loop)
        # A float64 input passes no validation here (the data plane's job); ONNX Runtime refuses it.
        bad = batcher.submit({"input": digits.test_images[:2].astype(np.float64)}, loop)
        return list(await asyncio.gather(good, bad, return_exceptions=True))

    good, bad = asyncio.run(run())
    batcher.stop(5)
    assert isinstance(good, dict)
    np.testing.assert_array_equal(good["label"], digits.expected_labels[:2])
    assert isinstance(bad, InvalidInput)
    assert "model 'digits' rejected the input" in bad.message


def test_queue_bound(digits: DigitsModel) -> None:
    batcher = make_batcher(digits, Metrics(), max_queue_size=2, max_delay_seconds=1.0)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        held = [batcher.submit({"input": digits.test_images[:1]}, loop) for _ in range(2)]
        with pytest.raises(Unavailable, match="2 requests already queued"):
            batcher.submit({"input": digits.test_images[:1]}, loop)
        assert batcher.depth() == 2
        await asyncio.gather(*held)
        assert batcher.depth() == 0

    asyncio.run(run())
    batcher.stop(5)
