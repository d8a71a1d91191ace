"""Cross-field rules: each written once, enforced twice.

A rule carries its CEL expression (the API server refuses a bad object with it) and the same predicate in
Python (the operator, the tests and local tools refuse the same object before it reaches a cluster). The
CRD generator copies every rule into `x-kubernetes-validations`; `ApiModel` runs every `holds` check after
pydantic validated the fields. A unit test feeds the same invalid specs to both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class CelRule:
    # The CEL expression, evaluated by the API server with `self` bound to the object the rule sits on.
    cel: str
    # What a person reads when the rule fails: names the field, what is expected and how to fix it.
    message: str
    # The same predicate in Python, over the validated pydantic model the rule sits on.
    holds: Callable[[Any], bool]
    # The field the API server blames (a path relative to the object the rule sits on, e.g. ".maxReplicas");
    # None blames the object itself.
    field_path: str | None = None

    def as_validation(self) -> dict[str, str]:
        """The `x-kubernetes-validations` entry for this rule."""
        validation = {"rule": self.cel, "message": self.message}
        if self.field_path is not None:
            validation["fieldPath"] = self.field_path
        return validation
