"""The level-based reconcile loop: observe, apply the difference, prune, report.

Watch events (from the informers and kopf handlers) only enqueue the owning ModelDeployment's key; workers
take keys from the queue and reconcile from what the watch caches hold at that moment, so the result never
depends on which event arrived or in what order, and an operator restarted at any point converges to the
same children.

The Controller orders one reconcile: resolve the artifact, build the desired children, decide what to
serve (rollout.py), plan against what is observed (plan.py); applier.py applies the plan and reporter.py
writes the status, events and metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from ferry_operator import builders, informer, kinds, kube, metrics
from ferry_operator.api import models
from ferry_operator.builders.artifact_store import ArtifactStore
from ferry_operator.builders.common import Manifest
from ferry_operator.builders.inputs import BuildInputs, Owner, ServedArtifact, ServingDefaults
from ferry_operator.builders.serving import deployment as deployment_manifest
from ferry_operator.config import OperatorConfig
from ferry_operator.informer import Informer
from ferry_operator.kube import ApiError, KubeClient
from ferry_operator.reconcile import conditions, plan, policy, rollout
from ferry_operator.reconcile.applier import ChildApplier
from ferry_operator.reconcile.artifacts import ArtifactResolver, Resolution, ServeAsIs
from ferry_operator.reconcile.conditions import ApplyFailure, Observation
from ferry_operator.reconcile.finalizer import FinalizerKeeper
from ferry_operator.reconcile.observe import (
    ChildSnapshot,
    ModelDeploymentSnapshot,
    OwnerKey,
    PodSnapshot,
)
from ferry_operator.reconcile.reporter import StatusReporter, utc_now
from ferry_operator.reconcile.workqueue import WorkQueue

logger = logging.getLogger("ferry_operator.reconcile")


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
            metrics_from=config.serving_metrics_from,
            artifact_store=ArtifactStore(
                config.artifact_store,
                config.artifact_s3_endpoint,
                config.artifact_s3_region,
                config.artifact_credentials_secret,
            ),
            token_reviewer_role=config.token_reviewer_role,
        )
        # Applying the plan and reporting the result each have their home; the controller orders them.
        self.applier = ChildApplier(client, self.rediscover_monitoring)
        self.reporter = StatusReporter(client, config.cluster_domain)
        self._desired: dict[OwnerKey, _Desired] = {}
        self.finalizers = FinalizerKeeper(client)
        # The uid of the ModelDeployment under each key, so its resolver state goes when it does.
        self._uids: dict[OwnerKey, str] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._optional_caches: list[Informer] = []

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
            # The garbage collector removes the namespaced children; cluster-scoped ones are the
            # operator's to delete. Normally that happened before (the finalizer); this catches one whose
            # finalizer was removed by hand, or a binding left while the operator was not running.
            if await self._delete_cluster_children(key):
                return "retry"
            self._forget(key)
            return "gone"
        if md.deleting:
            return await self._finalize(md)
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
            return await self.reporter.report_invalid_spec(md, self.reporter.unreadable(error))
        refused = policy.refusals(spec, self.config)
        if refused:
            return await self.reporter.report_invalid_spec(md, "; ".join(refused))

        resolution = await self.resolver.resolve(md, spec)
        desired = self._desired_children(md, spec, resolution)
        observed = self.applier.observed_children(key, self.indices.children)
        pods = tuple(self.indices.pods.get(key, ()))
        serving = self._serving(md, spec, desired, resolution, observed, pods)
        failures: list[ApplyFailure] = []
        outcome = "noop"
        created_deployment = False
        if desired.inputs is not None:
            # Pods of an earlier revision still run (a rollout, or a rollback, is under way): what they
            # need stays until they are gone, whatever the spec now says.
            replacing = any(pod.revision not in (None, serving.revision) for pod in pods)
            keep = kinds.POD_DEPENDENCY_KINDS if replacing else frozenset()
            the_plan = plan.plan(serving.children, observed, self.applier.applied(key), keep)
            if not the_plan.empty:
                outcome = "applied"
            created_deployment = kinds.DEPLOYMENT not in observed and any(
                kind == kinds.DEPLOYMENT for kind, _ in the_plan.apply
            )
            if _cluster_scoped(serving.children) and await self.finalizers.set(md, present=True):
                outcome = "applied"
            failures = await self.applier.execute(key, desired.inputs, the_plan, observed)
        # Nothing left that only the operator can delete: the object may go without waiting for it.
        unfinalized = not _cluster_scoped(serving.children) and not _cluster_scoped(observed)
        if unfinalized and await self.finalizers.set(md, present=False):
            outcome = "applied"
        if created_deployment and not failures and not self.reporter.current(md):
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
        written = await self.reporter.write(
            md,
            obs,
            verdicts,
            artifact=serving.artifact,
            rolled_back=decision.rolled_back,
            resolver_status=resolution.status,
        )
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
        current = self.reporter.current(md)
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
        # The restored pods keep what they need (their service account and its TokenReview grant) even
        # when the current spec no longer asks for it.
        children = {
            **desired.children,
            **builders.pod_dependencies(restored_inputs),
            kinds.DEPLOYMENT: restored,
        }
        return _Serving(children, revision, last_ready.artifact, decision)

    async def _finalize(self, md: ModelDeploymentSnapshot) -> str:
        """A ModelDeployment being deleted: delete its cluster-scoped children, then let it go."""
        if await self._delete_cluster_children(md.key):
            return "retry"
        await self.finalizers.set(md, present=False)
        return "gone"

    async def _delete_cluster_children(self, key: OwnerKey) -> list[ApplyFailure]:
        assert self.indices is not None
        observed = self.applier.observed_children(key, self.indices.children)
        cluster_scoped = [child for kind, child in observed.items() if not kind.namespaced]
        failures = await self.applier.delete(key, cluster_scoped, observed)
        for failure in failures:
            logger.warning(
                "cannot delete %s %s of %s/%s: %s", failure.kind, failure.name, *key, failure.message
            )
        return failures

    def _forget(self, key: OwnerKey) -> None:
        """Release everything kept for a ModelDeployment that is gone (memory must not grow with every
        ModelDeployment ever deleted)."""
        uid = self._uids.pop(key, None)
        if uid is not None:
            self.resolver.forget(uid)
        self._desired.pop(key, None)
        self.finalizers.forget(key)
        self.applier.forget(key)
        self.reporter.forget(key)


def _cluster_scoped(children: Iterable[kinds.Kind]) -> bool:
    return any(not kind.namespaced for kind in children)


def _single(values: Iterable[Any] | None) -> Any:
    for value in values or ():
        return value
    return None


def _required_ready(spec: models.ModelDeploymentSpec) -> int:
    serving = spec.serving
    if serving.autoscaling is not None:
        return serving.autoscaling.min_replicas
    return serving.replicas if serving.replicas is not None else 1
