"""The status the operator writes: composed from the verdicts and observations, and diffed against what
the object carries so that an unchanged status is never written."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ferry_operator.api.models import ConditionType
from ferry_operator.reconcile import conditions
from ferry_operator.reconcile.conditions import Observation, Verdict

# Status fields this module composes; a field here that the composed status lacks is removed.
OWNED_FIELDS = frozenset(
    {
        "observedGeneration",
        "phase",
        "conditions",
        "replicas",
        "readyReplicas",
        "selector",
        "url",
        "model",
        "revision",
        "lastReadyRevision",
        "rollback",
    }
)


def compose(
    previous: Mapping[str, Any],
    obs: Observation,
    verdicts: Mapping[ConditionType, Verdict],
    *,
    now: str,
    url: str,
    selector: str,
    model: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The full status for `obs`. `extra` carries fields other integrations own (e.g. optimization)."""
    deployment = obs.deployment
    status: dict[str, Any] = {
        "observedGeneration": obs.generation,
        "phase": conditions.phase(verdicts),
        "conditions": conditions.merge(previous.get("conditions") or [], verdicts, now, obs.generation),
        "replicas": deployment.replicas if deployment is not None else 0,
        "readyReplicas": deployment.ready_replicas if deployment is not None else 0,
        "selector": selector,
        "url": url,
        "model": dict(model),
    }
    revision = revisions(previous, obs.desired_revision)
    if revision:
        status["revision"] = revision
    status.update(extra or {})
    return status


def revisions(previous: Mapping[str, Any], desired: str | None) -> dict[str, str]:
    """status.revision: `previous` is the last revision that was Ready before `current` replaced it."""
    before = previous.get("revision") or {}
    current = before.get("current")
    if desired is None or desired == current:
        return dict(before)
    was_ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in previous.get("conditions") or []
    )
    earlier = current if current and was_ready else before.get("previous")
    if earlier == desired:
        # Back to the previous revision (a rollback): what preceded it is no longer known.
        earlier = None
    return {"current": desired, **({"previous": earlier} if earlier else {})}


def diff(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any] | None:
    """A JSON merge patch turning `current` into `desired` (None when they are equal); owned fields
    missing from `desired` are removed (null), fields owned by others are left alone."""
    patch = {
        field: _merge_patch(current.get(field), desired.get(field))
        for field in sorted(OWNED_FIELDS | set(desired))
        if current.get(field) != desired.get(field)
    }
    return patch or None


def _merge_patch(old: Any, new: Any) -> Any:
    """The RFC 7386 patch from `old` to `new`. The server merges nested objects key by key, so a key that
    `new` lacks must be sent as null, or it would survive (a digest or report of an earlier artifact)."""
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return new
    return {
        key: _merge_patch(old.get(key), new[key]) if key in new else None
        for key in sorted(set(old) | set(new))
        if key not in new or old.get(key) != new[key]
    }


def applied(current: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """`current` with a merge patch applied (what the server will hold)."""
    result: dict[str, Any] = _apply(current, patch)
    return result


def _apply(target: Any, patch: Any) -> Any:
    if not isinstance(patch, Mapping):
        return patch
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _apply(result.get(key), value)
    return result
