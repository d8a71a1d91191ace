"""What every child shares: metadata with owner reference and labels, and the input hash."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ferry_operator import kinds
from ferry_operator.api import models
from ferry_operator.builders.inputs import Owner

Manifest = dict[str, Any]


def digest(value: Any, length: int = 16) -> str:
    """A short, stable content digest of a JSON-able value (key order does not matter)."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]


def owner_reference(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": models.API_VERSION,
        "kind": models.KIND,
        "name": owner.name,
        "uid": owner.uid,
        # controller: one object manages this child; blockOwnerDeletion: foreground deletion of the
        # ModelDeployment waits for the child to go.
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(
    owner: Owner, annotations: dict[str, str] | None = None, name: str | None = None
) -> dict[str, Any]:
    """A namespaced child's metadata; `name` defaults to the owner's (kinds.child_name)."""
    meta: dict[str, Any] = {
        "name": owner.name if name is None else name,
        "namespace": owner.namespace,
        "labels": kinds.child_labels(owner.name),
        "ownerReferences": [owner_reference(owner)],
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def with_input_hash(manifest: Manifest) -> Manifest:
    """The manifest with its input-hash annotation: a digest of everything else in it."""
    annotations = manifest["metadata"].setdefault("annotations", {})
    annotations.pop(kinds.INPUT_HASH_ANNOTATION, None)
    annotations[kinds.INPUT_HASH_ANNOTATION] = digest(manifest)
    return manifest


def input_hash(manifest: Manifest) -> str | None:
    annotations = manifest.get("metadata", {}).get("annotations") or {}
    value = annotations.get(kinds.INPUT_HASH_ANNOTATION)
    return str(value) if value is not None else None
