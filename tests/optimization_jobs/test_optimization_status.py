"""status.optimization and status.model are nested objects written with JSON merge patches: a field the new
status lacks must be removed on the server, or a new key's status would carry the previous key's report
and artifact (and the resolver would take them for the new key's result)."""

from __future__ import annotations

from ferry_operator.reconcile import status

PASSED = {
    "job": "digits-opt-82c3239acd",
    "key": "82c3239acd" + "0" * 54,
    "artifact": {"uri": "pvc://a/ml/digits/82c3/model.onnx", "sha256": "f" * 64, "sizeBytes": 21855},
    "report": {"passed": True, "chosen": "optimized", "reason": "ok", "candidates": []},
}
NEXT = {"job": "digits-opt-e035f8b906", "key": "e035f8b906" + "0" * 54}


def merge(target: object, patch: object) -> object:
    """RFC 7386, as the API server applies it."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


def test_a_new_keys_status_drops_the_previous_report_and_artifact() -> None:
    current = {"phase": "Ready", "optimization": PASSED}
    desired = {"phase": "Optimizing", "optimization": NEXT}
    patch = status.diff(current, desired)
    assert patch is not None
    assert patch["optimization"]["artifact"] is None
    assert patch["optimization"]["report"] is None
    on_server = merge(current, patch)
    assert on_server == {**current, **desired}
    # The operator's memory of what it wrote matches what the server holds, so nothing is written twice.
    assert status.applied(current, patch) == on_server
    assert status.diff(on_server, desired) is None


def test_a_served_model_without_a_digest_drops_the_old_digest() -> None:
    current = {"model": {"format": "onnx", "uri": "pvc://a/m.onnx", "digest": "sha256:" + "f" * 64}}
    desired = {"model": {"format": "onnx", "uri": "pvc://models/m.onnx"}}
    patch = status.diff(current, desired)
    assert patch == {"model": {"digest": None, "uri": "pvc://models/m.onnx"}}
    assert merge(current, patch) == desired


def test_removing_optimization_removes_the_whole_field() -> None:
    patch = status.diff({"optimization": PASSED}, {"optimization": None})
    assert patch == {"optimization": None}
    assert status.applied({"optimization": PASSED}, patch) == {}
