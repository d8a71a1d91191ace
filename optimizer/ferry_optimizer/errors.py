"""The optimizer's error protocol: what went wrong, and whether the user can fix it.

`InputError` is bad input (a spec field, a flag, a model or data file the pipeline cannot use): the message
names the field or flag, what was expected and what was given; the CLI exits 2 and does not retry.
`StepError` is a step that could not be carried out on a valid input (a converter or quantizer failure):
the candidate it was building is rejected with the message as its reason.
"""

from __future__ import annotations


class OptimizerError(Exception):
    """Base of every error the optimizer reports to its user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InputError(OptimizerError):
    """A spec field, flag, model or data file is not usable; the message says which and what to change."""

    def __init__(self, where: str, expected: str, given: object) -> None:
        super().__init__(f"{where}: expected {expected}, got {given!r}")
        self.where = where
        self.expected = expected
        self.given = given


class StepError(OptimizerError):
    """A pipeline step failed on a valid input; the candidate it was building is rejected."""
