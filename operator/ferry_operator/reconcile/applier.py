"""Applying a reconcile's plan: server-side apply of the children, prunes, and the replica handover to an
autoscaler; with what the operator itself applied and deleted, which the watch shows only later.

One ChildApplier per operator process (the Controller's); its memory is per ModelDeployment and released
by `forget`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ferry_operator import kinds
from ferry_operator.builders import monitoring
from ferry_operator.builders.common import Manifest
from ferry_operator.builders.inputs import BuildInputs
from ferry_operator.kube import ApiError, KubeClient
from ferry_operator.reconcile import plan
from ferry_operator.reconcile.conditions import ApplyFailure
from ferry_operator.reconcile.observe import ChildSnapshot, OwnerKey, child_snapshot


class ChildApplier:
    """Applies and prunes the children of ModelDeployments."""

    def __init__(self, client: KubeClient, rediscover_monitoring: Callable[[], None]) -> None:
        self.client = client
        # Called when a monitoring kind answers 404: its CRD went away since discovery last looked.
        self._rediscover_monitoring = rediscover_monitoring
        # In-memory knowledge that the watch may not reflect yet (it lags our own writes).
        self._applied: dict[OwnerKey, dict[kinds.Kind, plan.AppliedRecord]] = {}
        # Children deleted by a prune, by owner, until the watch shows them gone (see execute).
        self._deleted_uids: dict[OwnerKey, set[str]] = {}

    def applied(self, key: OwnerKey) -> Mapping[kinds.Kind, plan.AppliedRecord]:
        """What this process last applied for `key`, by kind (the plan compares it with the watch)."""
        return self._applied.get(key, {})

    def observed_children(
        self, key: OwnerKey, children: Mapping[kinds.Kind, Mapping[OwnerKey, Iterable[ChildSnapshot]]]
    ) -> dict[kinds.Kind, ChildSnapshot]:
        """The children the watch caches hold for `key`, less those this process deleted already."""
        observed = {}
        deleted = self._deleted_uids.get(key, set())
        seen: set[str] = set()
        for kind, index in children.items():
            snapshots = tuple(index.get(key, ()))
            seen.update(child.uid for child in snapshots)
            # Fixed names: a second object of a kind would be someone else's copy, not ours to manage.
            child = next(iter(snapshots), None)
            if child is not None and child.name == kinds.child_name(kind, *key) and child.uid not in deleted:
                observed[kind] = child
        if deleted:
            # A deletion the watch has shown needs no remembering any more.
            deleted &= seen
            if not deleted:
                del self._deleted_uids[key]
        return observed

    async def execute(
        self,
        key: OwnerKey,
        inputs: BuildInputs,
        the_plan: plan.Plan,
        observed: dict[kinds.Kind, ChildSnapshot],
    ) -> list[ApplyFailure]:
        """Apply and prune what the plan says; `observed` is updated with the server's answers."""
        failures: list[ApplyFailure] = []
        # Independent children go together (one round trip instead of three for a new object), wave
        # after wave (kinds.WAVES: what the pods need, what refers to nothing, what refers to the
        # Deployment).
        for wave in kinds.WAVES:
            results = await asyncio.gather(
                *(
                    self._apply_child(key, inputs, kind, manifest, observed)
                    for kind, manifest in the_plan.apply
                    if kind in wave
                )
            )
            failures += [failure for failure in results if failure is not None]
        failures += await self.delete(key, the_plan.prune, observed)
        return failures

    async def delete(
        self, key: OwnerKey, children: Iterable[ChildSnapshot], observed: dict[kinds.Kind, ChildSnapshot]
    ) -> list[ApplyFailure]:
        """Delete exactly these children (by uid); `observed` is updated."""
        failures = []
        for child in children:
            try:
                await self.client.delete(
                    child.kind, key[0] if child.kind.namespaced else None, child.name, child.uid
                )
                # Gone (or already gone: a 404 counts). A watch cache that never saw the deletion (its
                # CRD was removed with the object) must not make every reconcile delete it again.
                self._deleted_uids.setdefault(key, set()).add(child.uid)
            except ApiError as error:
                failures.append(
                    ApplyFailure(child.kind.kind, child.name, f"cannot delete: {error.message}", False)
                )
                continue
            observed.pop(child.kind, None)
            self._applied.get(key, {}).pop(child.kind, None)
        return failures

    def forget(self, key: OwnerKey) -> None:
        """Release what is kept for a ModelDeployment that is gone."""
        self._deleted_uids.pop(key, None)
        self._applied.pop(key, None)

    async def _apply_child(
        self,
        key: OwnerKey,
        inputs: BuildInputs,
        kind: kinds.Kind,
        manifest: Manifest,
        observed: dict[kinds.Kind, ChildSnapshot],
    ) -> ApplyFailure | None:
        try:
            if kind == kinds.DEPLOYMENT:
                await self._hand_replicas_to_autoscaler(inputs, observed.get(kind))
            body = await self._apply_or_replace(key, kind, manifest, observed.get(kind))
        except ApiError as error:
            if error.status == 404 and kind in kinds.MONITORING_KINDS:
                # The CRD is gone (or not there yet); discovery decides again, and for `auto` the
                # child is then simply not wanted.
                self._rediscover_monitoring()
                if monitoring.mode(kind, inputs) == "auto":
                    return None
            return ApplyFailure(
                kind.kind, manifest["metadata"]["name"], describe(kind, error), error.permanent
            )
        except (OSError, TimeoutError) as error:
            why = str(error) or (
                "no answer in time" if isinstance(error, TimeoutError) else type(error).__name__
            )
            return ApplyFailure(kind.kind, manifest["metadata"]["name"], why, permanent=False)
        snapshot = child_snapshot(kind, body)
        observed[kind] = snapshot
        self._applied.setdefault(key, {})[kind] = plan.AppliedRecord(
            snapshot.uid, snapshot.input_hash, snapshot.generation, snapshot.resource_version
        )
        if kind == kinds.DEPLOYMENT:
            await self._set_initial_autoscaled_replicas(inputs, snapshot)
        return None

    async def _apply_or_replace(
        self, key: OwnerKey, kind: kinds.Kind, manifest: Manifest, seen: ChildSnapshot | None
    ) -> dict[str, Any]:
        """Server-side apply; a ClusterRoleBinding whose roleRef must change (the operator was given
        another token-reviewer role) is deleted and created again, since the API server refuses to
        change a binding's roleRef."""
        try:
            return await self.client.apply(kind, manifest, kinds.FIELD_MANAGER)
        except ApiError as error:
            immutable = (
                kind == kinds.CLUSTER_ROLE_BINDING and error.status == 422 and "roleRef" in error.message
            )
            if not immutable or seen is None:
                raise
            await self.client.delete(kind, None, seen.name, seen.uid)
            self._deleted_uids.setdefault(key, set()).add(seen.uid)
            return await self.client.apply(kind, manifest, kinds.FIELD_MANAGER)

    async def _hand_replicas_to_autoscaler(self, inputs: BuildInputs, seen: ChildSnapshot | None) -> None:
        """Before the operator stops stating spec.replicas (autoscaling turned on), another field manager
        takes the field over at its current value. Otherwise server-side apply would remove the field and
        the Deployment would drop to its default of one replica until the autoscaler reacts."""
        if inputs.spec.serving.autoscaling is None or seen is None or seen.deployment is None:
            return
        if not seen.deployment.replicas_owned_by_operator:
            return
        await self._apply_replicas(inputs, seen.deployment.spec_replicas or 1)

    async def _set_initial_autoscaled_replicas(self, inputs: BuildInputs, created: ChildSnapshot) -> None:
        """A new autoscaled Deployment starts at minReplicas rather than the API default of one."""
        autoscaling = inputs.spec.serving.autoscaling
        state = created.deployment
        if autoscaling is None or state is None or state.generation != 1 or autoscaling.min_replicas <= 1:
            return
        if state.spec_replicas is None or state.spec_replicas < autoscaling.min_replicas:
            await self._apply_replicas(inputs, autoscaling.min_replicas)

    async def _apply_replicas(self, inputs: BuildInputs, replicas: int) -> None:
        manifest = {
            "apiVersion": kinds.DEPLOYMENT.api_version,
            "kind": kinds.DEPLOYMENT.kind,
            "metadata": {"name": inputs.owner.name, "namespace": inputs.owner.namespace},
            "spec": {"replicas": replicas},
        }
        await self.client.apply(kinds.DEPLOYMENT, manifest, kinds.REPLICAS_HANDOVER_MANAGER)


def describe(kind: kinds.Kind, error: ApiError) -> str:
    """An apply failure as the Deployed condition tells it."""
    if error.status == 404 and kind in kinds.MONITORING_KINDS:
        field = "serviceMonitor" if kind == kinds.SERVICE_MONITOR else "prometheusRule"
        return (
            f"the {kind.kind} CRD ({kind.api_version}) is not installed; install the Prometheus "
            f"Operator CRDs or set spec.monitoring.{field} to auto or disabled"
        )
    return f"{error.status} {error.reason}: {error.message}"
