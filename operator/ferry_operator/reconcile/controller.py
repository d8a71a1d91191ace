"""The level-based reconcile loop: observe, apply the difference, prune, report.

Watch events (from the informers and kopf handlers) only enqueue the owning ModelDeployment's key; workers
take keys from the queue and reconcile from what the watch caches hold at that moment, so the result never
depends on which event arrived or in what order, and an operator restarted at any point converges to the
same children.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from ferry_operator import builders, informer, kinds, kube, metrics
from ferry_operator.api import models
from ferry_operator.builders import monitoring
from ferry_operator.builders.artifact_store import ArtifactStore
from ferry_operator.builders.common import Manifest
from ferry_operator.builders.inputs import BuildInputs, Owner, ServedArtifact, ServingDefaults
from ferry_operator.builders.network import url as service_url
from ferry_operator.builders.serving import deployment as deployment_manifest
from ferry_operator.config import OperatorConfig
from ferry_operator.informer import Informer
from ferry_operator.kube import ApiError, KubeClient
from ferry_operator.reconcile import conditions, plan, rollout, status
from ferry_operator.reconcile.artifacts import ArtifactResolver, Resolution, ServeAsIs
from ferry_operator.reconcile.conditions import ApplyFailure, Observation
from ferry_operator.reconcile.observe import (
    ChildSnapshot,
    ModelDeploymentSnapshot,
    OwnerKey,
    PodSnapshot,
    child_snapshot,
)
from ferry_operator.reconcile.workqueue import WorkQueue

logger = logging.getLogger("ferry_operator.reconcile")

# Phases whose arrival is worth a Warning event.
WARNING_PHASES = frozenset({"Degraded", "Failed"})


@dataclasses.dataclass
class Indices:
    """The watch caches (informer views; kopf indices for the monitoring kinds), keyed by owning
    ModelDeployment."""

    model_deployments: Mapping[OwnerKey, Iterable[ModelDeploymentSnapshot]]
    children: Mapping[kinds.Kind, Mapping[OwnerKey, Iterable[ChildSnapshot]]]
    pods: Mapping[OwnerKey, Iterable[PodSnapshot]]


@dataclasses.dataclass(frozen=True)
class _Desired:
    """Builder output for one generation of one ModelDeployment (rebuilt only when an input changes)."""

    cache_key: tuple[Any, ...]
    inputs: BuildInputs | None
    children: Mapping[kinds.Kind, Manifest]
    revision: str | None


@dataclasses.dataclass(frozen=True)
class _Serving:
    """The children to apply and what they serve, after the rollback decision."""

    children: Mapping[kinds.Kind, Manifest]
    # The revision the Deployment is given (the last Ready one while rolled back).
    revision: str | None
    artifact: ServedArtifact | None
    decision: rollout.Decision


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Controller:
    """Reconciles ModelDeployments. One instance per operator process."""

    def __init__(
        self,
        config: OperatorConfig,
        client: KubeClient,
        resolver: ArtifactResolver | None = None,
    ) -> None:
        self.config = config
        self.client = client
        self.resolver: ArtifactResolver = resolver or ServeAsIs()
        self.queue: WorkQueue[OwnerKey] = WorkQueue()
        self.indices: Indices | None = None
        # The monitoring.coreos.com kinds the API server serves now (for `auto` monitoring children).
        self.monitoring_kinds: frozenset[kinds.Kind] = frozenset()
        self._rediscover = asyncio.Event()
        self.defaults = ServingDefaults(
            runtime_image=config.runtime_image,
            image_pull_policy=config.runtime_image_pull_policy,
            image_pull_secrets=config.image_pull_secrets,
            cluster_domain=config.cluster_domain,
            concurrency_metric=config.concurrency_metric,
            rps_metric=config.rps_metric,
            queue_metric=config.queue_metric,
            artifact_store=ArtifactStore(
                config.artifact_store,
                config.artifact_s3_endpoint,
                config.artifact_s3_region,
                config.artifact_credentials_secret,
            ),
        )
        # In-memory knowledge that the watch may not reflect yet (it lags our own writes).
        self._applied: dict[OwnerKey, dict[kinds.Kind, plan.AppliedRecord]] = {}
        self._written_status: dict[OwnerKey, tuple[str, dict[str, Any]]] = {}
        self._desired: dict[OwnerKey, _Desired] = {}
        self._phases: dict[OwnerKey, str] = {}
        # Children deleted by a prune, by owner, until the watch shows them gone (see _execute).
        self._deleted_uids: dict[OwnerKey, set[str]] = {}
        # The uid of the ModelDeployment under each key, so its resolver state goes when it does.
        self._uids: dict[OwnerKey, str] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._optional_caches: list[Informer] = []
        self._instance = socket.gethostname()

    # --- lifecycle ----------------------------------------------------------------------------------------

    def bind(self, indices: Indices) -> None:
        self.indices = indices

    def start(self, caches: Sequence[Informer] = ()) -> None:
        """Run the informers and the workers; the workers wait for every informer's first list (a reconcile
        on a partial cache would take existing children for missing ones)."""
        if caches:
            self._tasks.append(asyncio.create_task(informer.run_all(caches), name="ferry-watch-caches"))
        self._optional_caches = [cache for cache in caches if cache.optional]
        synced = asyncio.ensure_future(informer.wait_synced(caches))
        for number in range(self.config.workers):
            self._tasks.append(
                asyncio.create_task(self._worker(synced), name=f"ferry-reconcile-worker-{number}")
            )
        self._tasks.append(asyncio.create_task(self._resync(), name="ferry-resync"))
        self._tasks.append(
            asyncio.create_task(self._discover_monitoring(), name="ferry-monitoring-discovery")
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def healthy(self) -> tuple[bool, str]:
        dead = [task for task in self._tasks if task.done()]
        if dead:
            reasons = [
                f"{task.get_name()} ({'cancelled' if task.cancelled() else task.exception()})"
                for task in dead
            ]
            return False, f"stopped: {', '.join(reasons)}"
        return True, f"ok: {len(self.queue)} queued"

    def enqueue(self, key: OwnerKey | None) -> None:
        if key is not None:
            self.queue.add(key)
            metrics.QUEUE_DEPTH.set(len(self.queue))

    async def _worker(self, synced: asyncio.Future[None]) -> None:
        await asyncio.shield(synced)
        while True:
            key = await self.queue.get()
            started = time.perf_counter()
            outcome = "error"
            try:
                outcome = await self.reconcile(key)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if kube.temporary(error):
                    # A write (status included) or read the server or network refused for now (409, 429,
                    # 5xx, a reset): retried like a failed apply, not logged or counted as an error.
                    outcome = "retry"
                    retry_after = error.retry_after if isinstance(error, ApiError) else 0.0
                    delay = self.queue.retry(key, at_least=retry_after)
                    logger.warning(
                        "reconcile of %s/%s met a temporary failure (retry in %.1f s): %s",
                        *key,
                        delay,
                        error,
                    )
                else:
                    delay = self.queue.retry(key)
                    logger.error(
                        "reconcile of %s/%s failed (retry in %.1f s): %s", *key, delay, error, exc_info=True
                    )
            else:
                if outcome == "retry":
                    delay = self.queue.retry(key)
                    logger.info("reconcile of %s/%s will retry in %.1f s", *key, delay)
                else:
                    self.queue.forget(key)
            finally:
                self.queue.done(key)
                metrics.QUEUE_DEPTH.set(len(self.queue))
                metrics.RECONCILES.labels(outcome=outcome).inc()
                metrics.RECONCILE_SECONDS.labels(outcome=outcome).observe(time.perf_counter() - started)

    async def _resync(self) -> None:
        # Level-based safety net: whatever events were missed, every object is looked at periodically.
        while True:
            await asyncio.sleep(self.config.resync_seconds)
            if self.indices is not None:
                for key in list(self.indices.model_deployments):
                    self.enqueue(key)

    def rediscover_monitoring(self) -> None:
        """Look at the monitoring API again now: a monitoring CRD was added or removed, or a request for one
        of its kinds answered 404 (the CRDs went away since the last look). The optional informers (the
        monitoring kinds') list again too."""
        self._rediscover.set()
        for cache in self._optional_caches:
            cache.wake()

    async def _discover_monitoring(self) -> None:
        # Periodic as a safety net; woken at once by rediscover_monitoring().
        group_version = kinds.SERVICE_MONITOR.api_version
        while True:
            self._rediscover.clear()
            try:
                served = await self.client.served_resources(group_version)
            except (ApiError, OSError, TimeoutError) as error:
                logger.warning("cannot tell whether %s is installed: %s", group_version, error)
            else:
                available = frozenset(kind for kind in kinds.MONITORING_KINDS if kind.plural in served)
                if available != self.monitoring_kinds:
                    logger.info(
                        "%s serves: %s",
                        group_version,
                        ", ".join(sorted(kind.kind for kind in available)) or "nothing (CRDs not installed)",
                    )
                    self.monitoring_kinds = available
                    if self.indices is not None:
                        for key in list(self.indices.model_deployments):
                            self.enqueue(key)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._rediscover.wait(), self.config.monitoring_discovery_seconds)

    # --- one reconcile ------------------------------------------------------------------------------------

    async def reconcile(self, key: OwnerKey) -> str:
        """Bring one ModelDeployment's children and status in line with its spec. Returns the outcome:
        noop, applied, status, retry (a temporary failure) or gone."""
        assert self.indices is not None, "reconcile before the watch caches were bound"
        md = _single(self.indices.model_deployments.get(key))
        if md is None:
            self._forget(key)
            return "gone"
        previous_uid = self._uids.get(key)
        if previous_uid != md.uid:
            if previous_uid is not None:
                # Deleted and created again under the same name between two reconciles.
                self.resolver.forget(previous_uid)
            self._uids[key] = md.uid
        try:
            spec = models.ModelDeploymentSpec.model_validate(md.spec)
        except ValidationError as error:
            # The API server validated the spec with the same rules; this only happens with a CRD older
            # than the operator (or the other way round).
            return await self._report_invalid_spec(md, error)

        resolution = await self.resolver.resolve(md, spec)
        desired = self._desired_children(md, spec, resolution)
        observed = self._observed_children(key)
        pods = tuple(self.indices.pods.get(key, ()))
        serving = self._serving(md, spec, desired, resolution, observed, pods)
        failures: list[ApplyFailure] = []
        outcome = "noop"
        created_deployment = False
        if desired.inputs is not None:
            the_plan = plan.plan(serving.children, observed, self._applied.get(key, {}))
            if not the_plan.empty:
                outcome = "applied"
            created_deployment = kinds.DEPLOYMENT not in observed and any(
                kind == kinds.DEPLOYMENT for kind, _ in the_plan.apply
            )
            failures = await self._execute(key, desired.inputs, the_plan, observed)
            if created_deployment and not failures and not self._current_status(md):
                # A brand-new object whose children were just created: its first status would only say
                # "Deploying" and be replaced within a second, when the new Deployment's watch event
                # (which always follows its creation) reconciles it again. At scale, not writing it halves
                # the first reconcile of every object and saves a write and a watch event per object.
                return outcome
        decision = serving.decision
        obs = Observation(
            name=md.name,
            generation=md.generation,
            model_uri=serving.artifact.uri if serving.artifact else spec.model.uri,
            artifact=resolution.resolution,
            apply_failures=tuple(failures),
            deployment=observed[kinds.DEPLOYMENT].deployment if kinds.DEPLOYMENT in observed else None,
            desired_revision=serving.revision,
            required_ready=_required_ready(spec),
            progress_deadline_seconds=spec.rollout.progress_deadline_seconds,
            pods=pods,
            rolled_back=decision.rolled_back if decision.action != "follow" else None,
            rollout_failure=decision.failure,
            kept_because=decision.kept_because,
            optimized=resolution.optimized,
        )
        verdicts = conditions.evaluate(obs)
        written = await self._write_status(md, obs, verdicts, resolution, serving)
        if written and outcome == "noop":
            outcome = "status"
        if any(not failure.permanent for failure in failures):
            return "retry"
        return outcome

    def _desired_children(
        self, md: ModelDeploymentSnapshot, spec: models.ModelDeploymentSpec, resolution: Resolution
    ) -> _Desired:
        cache_key = (md.uid, md.generation, self.monitoring_kinds, resolution.artifact)
        cached = self._desired.get(md.key)
        if cached is not None and cached.cache_key == cache_key:
            return cached
        if resolution.artifact is None:
            desired = _Desired(cache_key, None, {}, None)
        else:
            inputs = BuildInputs(
                owner=Owner(md.name, md.namespace, md.uid),
                spec=spec,
                artifact=resolution.artifact,
                defaults=self.defaults,
                monitoring_kinds=self.monitoring_kinds,
            )
            children = builders.desired_children(inputs)
            template = children[kinds.DEPLOYMENT]["spec"]["template"]
            desired = _Desired(
                cache_key, inputs, children, template["metadata"]["annotations"][kinds.REVISION_ANNOTATION]
            )
        self._desired[md.key] = desired
        return desired

    def _serving(  # noqa: PLR0917 - the reconcile's intermediate values, each used once
        self,
        md: ModelDeploymentSnapshot,
        spec: models.ModelDeploymentSpec,
        desired: _Desired,
        resolution: Resolution,
        observed: Mapping[kinds.Kind, ChildSnapshot],
        pods: tuple[PodSnapshot, ...],
    ) -> _Serving:
        """What to serve: the spec's revision, or the last Ready one when its rollout failed (rollout.py)."""
        current = self._current_status(md)
        if desired.inputs is None or desired.revision is None:
            # Nothing deployable now (an optimization runs): the Deployment is left as it is, and a
            # rollback of this generation stays on record.
            kept = rollout.rolled_back_from_status(current)
            if kept is not None and kept.generation != md.generation:
                kept = None
            return _Serving(
                desired.children, desired.revision, resolution.artifact, rollout.Decision("follow", kept)
            )
        last_ready = rollout.last_ready_from_status(current)
        deployment = observed[kinds.DEPLOYMENT].deployment if kinds.DEPLOYMENT in observed else None
        decision = rollout.decide(
            rollout.Situation(
                generation=md.generation,
                desired_revision=desired.revision,
                auto_rollback=spec.rollout.auto_rollback,
                progress_deadline_seconds=spec.rollout.progress_deadline_seconds,
                deployment=deployment,
                pods=pods,
                last_ready=last_ready,
                rolled_back=rollout.rolled_back_from_status(current),
                now=utc_now(),
            )
        )
        if decision.action == "follow" or last_ready is None:
            return _Serving(desired.children, desired.revision, resolution.artifact, decision)
        # The last Ready revision's pods, at the replica count the current spec asks for (scale is not part
        # of a revision, and the autoscaler, if any, is the current spec's).
        restored_inputs = dataclasses.replace(
            desired.inputs, spec=last_ready.spec, artifact=last_ready.artifact
        )
        restored = deployment_manifest(restored_inputs, builders.desired_replicas(desired.inputs))
        revision = str(restored["spec"]["template"]["metadata"]["annotations"][kinds.REVISION_ANNOTATION])
        if decision.action == "roll-back":
            assert decision.rolled_back is not None
            metrics.ROLLBACKS.labels(reason=decision.rolled_back.reason).inc()
            logger.warning(
                "rolling %s/%s back from revision %s to %s: %s",
                md.namespace,
                md.name,
                desired.revision,
                revision,
                decision.rolled_back.message,
            )
        return _Serving(
            {**desired.children, kinds.DEPLOYMENT: restored}, revision, last_ready.artifact, decision
        )

    def _observed_children(self, key: OwnerKey) -> dict[kinds.Kind, ChildSnapshot]:
        assert self.indices is not None
        observed = {}
        deleted = self._deleted_uids.get(key, set())
        seen: set[str] = set()
        for kind, index in self.indices.children.items():
            children = tuple(index.get(key, ()))
            seen.update(child.uid for child in children)
            # Fixed names: a second object of a kind would be someone else's copy, not ours to manage.
            child = _single(children)
            if child is not None and child.name == key[1] and child.uid not in deleted:
                observed[kind] = child
        if deleted:
            # A deletion the watch has shown needs no remembering any more.
            deleted &= seen
            if not deleted:
                del self._deleted_uids[key]
        return observed

    async def _execute(
        self,
        key: OwnerKey,
        inputs: BuildInputs,
        the_plan: plan.Plan,
        observed: dict[kinds.Kind, ChildSnapshot],
    ) -> list[ApplyFailure]:
        failures: list[ApplyFailure] = []
        # Independent children go together (one round trip instead of three for a new object); those
        # that refer to the Deployment (the autoscaler, the monitoring objects) after it.
        first = [(kind, manifest) for kind, manifest in the_plan.apply if kind in kinds.FIRST_WAVE]
        later = [(kind, manifest) for kind, manifest in the_plan.apply if kind not in kinds.FIRST_WAVE]
        for wave in (first, later):
            results = await asyncio.gather(
                *(self._apply_child(key, inputs, kind, manifest, observed) for kind, manifest in wave)
            )
            failures += [failure for failure in results if failure is not None]
        for child in the_plan.prune:
            try:
                await self.client.delete(child.kind, key[0], child.name, child.uid)
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
            body = await self.client.apply(kind, manifest, kinds.FIELD_MANAGER)
        except ApiError as error:
            if error.status == 404 and kind in kinds.MONITORING_KINDS:
                # The CRD is gone (or not there yet); discovery decides again, and for `auto` the
                # child is then simply not wanted.
                self.rediscover_monitoring()
                if monitoring.mode(kind, inputs) == "auto":
                    return None
            return ApplyFailure(
                kind.kind, manifest["metadata"]["name"], _describe(kind, error), error.permanent
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

    async def _write_status(
        self,
        md: ModelDeploymentSnapshot,
        obs: Observation,
        verdicts: dict[models.ConditionType, conditions.Verdict],
        resolution: Resolution,
        serving: _Serving,
    ) -> bool:
        current = self._current_status(md)
        artifact = serving.artifact
        model_info: dict[str, Any] = {}
        if artifact is not None:
            model_info = {"format": artifact.format, "uri": artifact.uri}
            if artifact.sha256:
                model_info["digest"] = f"sha256:{artifact.sha256}"
            # What the memory request was sized from: a later reconcile (and a rollback) sizes the same.
            for field, value in (
                ("sizeBytes", artifact.size_bytes),
                ("kvCacheBytesPerToken", artifact.kv_cache_bytes_per_token),
                ("contextLength", artifact.context_length),
            ):
                if value is not None:
                    model_info[field] = value
        url = service_url(md.name, md.namespace, self.defaults.cluster_domain)
        new = status.compose(
            current,
            obs,
            verdicts,
            now=utc_now(),
            url=url,
            selector=kinds.selector_string(md.name),
            model=model_info,
            extra={
                **resolution.status,
                "rollback": serving.decision.rolled_back.as_status()
                if serving.decision.rolled_back
                else None,
                "lastReadyRevision": rollout.last_ready_status(
                    current.get("lastReadyRevision"),
                    ready=verdicts["Ready"].status == "True",
                    revision=obs.desired_revision,
                    generation=md.generation,
                    spec=md.spec,
                    model=model_info,
                ),
            },
        )
        self._track_phase(md.key, new["phase"])
        self._track_replicas(md.key, new["replicas"], new["readyReplicas"])
        self._track_rollout(md.key, verdicts["Progressing"])
        patch = status.diff(current, new)
        if patch is None:
            return False
        response = await self.client.patch_status(md.namespace, md.name, patch)
        written = status.applied(current, patch)
        self._written_status[md.key] = (str(response.get("metadata", {}).get("resourceVersion", "")), written)
        if _worth_an_event(current.get("phase"), new["phase"]):
            await self._post_phase_event(md, new, verdicts)
        return True

    def _current_status(self, md: ModelDeploymentSnapshot) -> Mapping[str, Any]:
        """The status as the server holds it: our last write when the watch has not delivered it yet."""
        remembered = self._written_status.get(md.key)
        if remembered is not None and plan.older(md.resource_version, remembered[0]):
            return remembered[1]
        return md.status

    async def _post_phase_event(
        self,
        md: ModelDeploymentSnapshot,
        new: Mapping[str, Any],
        verdicts: Mapping[models.ConditionType, conditions.Verdict],
    ) -> None:
        reason, message = _explain_phase(new["phase"], verdicts)
        now = utc_now()
        event = {
            "metadata": {"generateName": f"{md.name}.", "namespace": md.namespace},
            "involvedObject": {
                "apiVersion": models.API_VERSION,
                "kind": models.KIND,
                "name": md.name,
                "namespace": md.namespace,
                "uid": md.uid,
            },
            "type": "Warning" if new["phase"] in WARNING_PHASES else "Normal",
            "reason": reason,
            "message": f"{new['phase']}: {message}"[:1024],
            "source": {"component": "ferry-operator"},
            "reportingComponent": "ferry.dev/operator",
            "reportingInstance": self._instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.client.create_event(md.namespace, event)
        except ApiError as error:
            # An event is informational; the status already says the same.
            logger.warning("cannot post event for %s/%s: %s", md.namespace, md.name, error)

    async def _report_invalid_spec(self, md: ModelDeploymentSnapshot, error: ValidationError) -> str:
        message = "; ".join(
            f"spec.{'.'.join(str(p) for p in problem['loc'])}: {problem['msg']}" for problem in error.errors()
        )
        verdict = conditions.Verdict("False", "InvalidSpec", f"the operator cannot read the spec: {message}")
        current = self._current_status(md)
        new = {
            "observedGeneration": md.generation,
            "phase": "Failed",
            "conditions": conditions.merge(
                current.get("conditions") or [], {"Ready": verdict}, utc_now(), md.generation
            ),
        }
        patch = status.diff(current, {**dict(current), **new})
        if patch:
            await self.client.patch_status(md.namespace, md.name, patch)
        return "status" if patch else "noop"

    def _track_phase(self, key: OwnerKey, phase: str) -> None:
        old = self._phases.get(key)
        if old == phase:
            return
        if old is not None:
            metrics.MODEL_DEPLOYMENTS.labels(phase=old).dec()
        metrics.MODEL_DEPLOYMENTS.labels(phase=phase).inc()
        self._phases[key] = phase

    def _track_replicas(self, key: OwnerKey, desired: int, ready: int) -> None:
        namespace, name = key
        metrics.MODEL_DEPLOYMENT_REPLICAS.labels(namespace, name, "desired").set(desired)
        metrics.MODEL_DEPLOYMENT_REPLICAS.labels(namespace, name, "ready").set(ready)

    def _track_rollout(self, key: OwnerKey, progressing: conditions.Verdict) -> None:
        # The alert on a stuck rollout reads this rather than kube-state-metrics' Deployment conditions.
        stuck = progressing.status == "False" and progressing.reason == "ProgressDeadlineExceeded"
        metrics.MODEL_DEPLOYMENT_ROLLOUT_STUCK.labels(*key).set(1 if stuck else 0)

    def _forget(self, key: OwnerKey) -> None:
        """Release everything kept for a ModelDeployment that is gone (memory must not grow with every
        ModelDeployment ever deleted)."""
        uid = self._uids.pop(key, None)
        if uid is not None:
            self.resolver.forget(uid)
        self._deleted_uids.pop(key, None)
        self._desired.pop(key, None)
        self._written_status.pop(key, None)
        self._applied.pop(key, None)
        old = self._phases.pop(key, None)
        if old is not None:
            metrics.MODEL_DEPLOYMENTS.labels(phase=old).dec()
        for state in ("desired", "ready"):
            with contextlib.suppress(KeyError):
                metrics.MODEL_DEPLOYMENT_REPLICAS.remove(*key, state)
        with contextlib.suppress(KeyError):
            metrics.MODEL_DEPLOYMENT_ROLLOUT_STUCK.remove(*key)


def _worth_an_event(old: str | None, new: str) -> bool:
    """A phase transition a person wants in `kubectl describe`. The first phase of a new object (Pending or
    Deploying) is not one: the object was just created, and at scale that event would be one more API
    write per object for nothing; its first Ready, an optimization starting or a warning is."""
    if old == new:
        return False
    return old is not None or new not in ("Pending", "Deploying")


def _single(values: Iterable[Any] | None) -> Any:
    for value in values or ():
        return value
    return None


def _required_ready(spec: models.ModelDeploymentSpec) -> int:
    serving = spec.serving
    if serving.autoscaling is not None:
        return serving.autoscaling.min_replicas
    return serving.replicas if serving.replicas is not None else 1


def _describe(kind: kinds.Kind, error: ApiError) -> str:
    if error.status == 404 and kind in kinds.MONITORING_KINDS:
        field = "serviceMonitor" if kind == kinds.SERVICE_MONITOR else "prometheusRule"
        return (
            f"the {kind.kind} CRD ({kind.api_version}) is not installed; install the Prometheus "
            f"Operator CRDs or set spec.monitoring.{field} to auto or disabled"
        )
    return f"{error.status} {error.reason}: {error.message}"


def _explain_phase(
    phase: str, verdicts: Mapping[models.ConditionType, conditions.Verdict]
) -> tuple[str, str]:
    """The condition that best explains a phase: its reason and message become the event's."""
    order: tuple[models.ConditionType, ...]
    if phase in ("Failed", "Degraded"):
        candidates: tuple[models.ConditionType, ...] = ("ModelResolved", "Optimized", "Deployed", "Degraded")
        failing = [t for t in candidates if t in verdicts]
        for condition_type in failing:
            verdict = verdicts[condition_type]
            if (condition_type == "Degraded") == (verdict.status == "True") and verdict.status != "Unknown":
                return verdict.reason, verdict.message
        order = ("Ready",)
    elif phase == "Optimizing":
        order = ("Optimized",)
    else:
        order = ("Ready", "Progressing")
    for condition_type in order:
        if condition_type in verdicts:
            return verdicts[condition_type].reason, verdicts[condition_type].message
    return phase, phase
