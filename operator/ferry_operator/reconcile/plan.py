"""Which children to apply and which to prune: a pure comparison of desired manifests with observations."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from ferry_operator import kinds
from ferry_operator.builders.common import Manifest, input_hash
from ferry_operator.reconcile.observe import ChildSnapshot


@dataclasses.dataclass(frozen=True)
class AppliedRecord:
    """What the API server returned for the operator's last apply of a child (kept in memory)."""

    uid: str
    input_hash: str | None
    generation: int
    resource_version: str


@dataclasses.dataclass(frozen=True)
class Plan:
    apply: tuple[tuple[kinds.Kind, Manifest], ...]
    prune: tuple[ChildSnapshot, ...]

    @property
    def empty(self) -> bool:
        return not self.apply and not self.prune


def needs_apply(want: str | None, seen: ChildSnapshot | None, record: AppliedRecord | None) -> bool:
    """Whether a child must be (re)applied.

    Missing: yes. Otherwise the input hash decides, with two refinements from the record of our own last
    apply: a watch event older than that apply is not evidence of change (the cache lags the write), and a
    spec generation newer than the one the apply produced means someone edited the child by hand, which
    the annotation alone would not show.
    """
    if seen is None:
        return True
    if record is None or record.uid != seen.uid or record.input_hash != want:
        return seen.input_hash != want
    if older(seen.resource_version, record.resource_version):
        return False
    if seen.input_hash != want:
        return True
    return bool(seen.generation and record.generation and seen.generation > record.generation)


def plan(
    desired: Mapping[kinds.Kind, Manifest],
    observed: Mapping[kinds.Kind, ChildSnapshot],
    applied: Mapping[kinds.Kind, AppliedRecord],
    keep: frozenset[kinds.Kind] = frozenset(),
) -> Plan:
    """Apply what is missing or changed; prune what is observed and not desired, except kinds in `keep`."""
    to_apply = tuple(
        (kind, desired[kind])
        for kind in kinds.CHILD_KINDS
        if kind in desired and needs_apply(input_hash(desired[kind]), observed.get(kind), applied.get(kind))
    )
    to_prune = tuple(
        observed[kind]
        for kind in kinds.CHILD_KINDS
        if kind in observed and kind not in desired and kind not in keep
    )
    return Plan(apply=to_apply, prune=to_prune)


def older(resource_version: str, than: str) -> bool:
    # resourceVersions are opaque strings by contract; every API server in practice uses etcd's revision.
    # When they are not integers, assume nothing (not older), which only costs a redundant apply.
    try:
        return int(resource_version) < int(than)
    except ValueError:
        return False
