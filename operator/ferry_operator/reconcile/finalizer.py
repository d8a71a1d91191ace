"""Ferry's finalizer on a ModelDeployment: present while it owns a child the garbage collector cannot
remove (a cluster-scoped ClusterRoleBinding, spec.serving.auth mode kubernetes), so a deleted object waits
for the operator to delete that child first.

Writes carry the resourceVersion they were made against (another controller's finalizers are never
overwritten), and the last write is remembered until the watch delivers it, so two reconciles in a row
never write from a stale view.
"""

from __future__ import annotations

from ferry_operator import kinds
from ferry_operator.kube import KubeClient
from ferry_operator.reconcile import plan
from ferry_operator.reconcile.observe import ModelDeploymentSnapshot, OwnerKey


class FinalizerKeeper:
    def __init__(self, client: KubeClient) -> None:
        self._client = client
        # Our last finalizer write per object (resourceVersion, finalizers), until the watch delivers it.
        self._written: dict[OwnerKey, tuple[str, tuple[str, ...]]] = {}

    async def set(self, md: ModelDeploymentSnapshot, *, present: bool) -> bool:
        """Add or remove Ferry's finalizer; whether a write was needed."""
        finalizers = self.current(md)
        if (kinds.FINALIZER in finalizers) == present:
            return False
        if present:
            wanted = (*finalizers, kinds.FINALIZER)
        else:
            wanted = tuple(f for f in finalizers if f != kinds.FINALIZER)
        version = self._written[md.key][0] if md.key in self._written else md.resource_version
        response = await self._client.set_finalizers(md.namespace, md.name, wanted, version)
        self._written[md.key] = (str(response.get("metadata", {}).get("resourceVersion", "")), wanted)
        return True

    def current(self, md: ModelDeploymentSnapshot) -> tuple[str, ...]:
        """The finalizers as the server holds them: our last write when the watch has not delivered it."""
        written = self._written.get(md.key)
        if written is not None and plan.older(md.resource_version, written[0]):
            return written[1]
        self._written.pop(md.key, None)
        return md.finalizers

    def forget(self, key: OwnerKey) -> None:
        self._written.pop(key, None)

    def __len__(self) -> int:
        """Objects whose last write the watch has not delivered yet (per-object state, for the tests)."""
        return len(self._written)
