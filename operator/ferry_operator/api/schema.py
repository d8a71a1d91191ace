"""Turn pydantic's JSON Schema of the API models into a Kubernetes structural OpenAPI v3 schema.

Kubernetes accepts a subset of OpenAPI v3 (a "structural" schema): every node has a type, no $ref, no
anyOf for optional fields, `exclusiveMinimum` is a boolean next to `minimum`, and defaults must be pruned
values. The conversion is mechanical, so the models stay the one place where the API is written; it also
refuses a field without a description, so `kubectl explain` never shows a blank line.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

Schema = dict[str, Any]

# JSON Schema keys that carry over unchanged into a structural schema, in the order they are written (the
# generated YAML reads top-down: what a field is, then its constraints, then its children).
_KEPT_KEYS = (
    "description",
    "type",
    "default",
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "pattern",
    "required",
    "x-kubernetes-validations",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "exclusiveMinimum",
    "exclusiveMaximum",
)


class SchemaError(ValueError):
    """A model cannot be expressed as a structural schema (names the JSON path)."""


def structural_schema(model: type[BaseModel]) -> Schema:
    """The structural OpenAPI v3 schema of `model`, with every property described."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    definitions: dict[str, Schema] = raw.pop("$defs", {})
    return _convert(raw, definitions, path=model.__name__)


def _convert(node: Schema, definitions: dict[str, Schema], path: str) -> Schema:
    node = _inline(node, definitions)
    if node.get("x-kubernetes-int-or-string"):
        node.pop("anyOf", None)
        node.pop("type", None)
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if "exclusiveMinimum" in node:
        node["minimum"] = node.pop("exclusiveMinimum")
        node["exclusiveMinimum"] = True
    if "exclusiveMaximum" in node:
        node["maximum"] = node.pop("exclusiveMaximum")
        node["exclusiveMaximum"] = True
    if node.get("default", ...) is None:
        del node["default"]
    if "description" in node:
        # Docstrings wrap at the source's line length; `kubectl explain` re-wraps to the terminal.
        node["description"] = " ".join(node["description"].split())
    unknown = set(node) - set(_KEPT_KEYS) - {"properties", "additionalProperties", "items", "title"}
    if unknown:
        raise SchemaError(f"{path}: JSON Schema keys {sorted(unknown)} have no structural equivalent")
    result: Schema = {key: node[key] for key in _KEPT_KEYS if key in node}
    if node.get("x-kubernetes-preserve-unknown-fields"):
        result["type"] = "object"
        return result
    if "type" not in result and not result.get("x-kubernetes-int-or-string"):
        raise SchemaError(f"{path}: no type (structural schemas need one on every node)")
    if "properties" in node:
        result["properties"] = {}
        for name, child in node["properties"].items():
            child_path = f"{path}.{name}"
            converted = _convert(child, definitions, child_path)
            if not converted.get("description"):
                raise SchemaError(f"{child_path}: no description (write a docstring under the field)")
            result["properties"][name] = converted
    additional = node.get("additionalProperties")
    if isinstance(additional, dict):
        result["additionalProperties"] = _convert(additional, definitions, f"{path}[*]")
    if "items" in node:
        result["items"] = _convert(node["items"], definitions, f"{path}[]")
    return result


def _inline(node: Schema, definitions: dict[str, Schema]) -> Schema:
    """Resolve $ref and drop the `null` branch of optional fields, keeping the field-level keys."""
    node = dict(node)
    any_of = node.get("anyOf")
    if any_of is not None and not node.get("x-kubernetes-int-or-string"):
        branches = [branch for branch in any_of if branch != {"type": "null"}]
        if len(branches) != 1:
            raise SchemaError(f"a union of several types cannot be structural: {any_of}")
        del node["anyOf"]
        node = {**_inline(branches[0], definitions), **node}
    ref = node.pop("$ref", None)
    if ref is not None:
        target = copy.deepcopy(definitions[ref.rsplit("/", 1)[-1]])
        # The field's own description says what the field means here; the class docstring is the fallback.
        node = {**_inline(target, definitions), **node}
    node.pop("title", None)
    return node
