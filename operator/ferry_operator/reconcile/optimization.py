"""Optimization Jobs: the ArtifactResolver that optimizes (and converts) models before they are served.

Three parts, so that every decision can be tested without a cluster:

* **observe**: small snapshots of the optimization Jobs and their pods, kept in the watch caches keyed by the
  owning ModelDeployment (`job_entry`, `job_pod_entry`), plus the parsed termination message (`Summary`);
* **decide** (`decide`): a pure function of what was observed -> what to serve, the Optimized condition,
  status.optimization, and whether a Job must be created;
* **apply** (`OptimizationResolver.resolve`): creates the Job (409 AlreadyExists means it already exists:
  the fixed, key-derived name makes creation idempotent) and schedules the few timed re-checks.

The content key (content_key.py) names the Job, so one key is optimized at most once: a running Job is
waited for, a finished one's result is reused, and once status.optimization records the result the Job is
no longer needed at all (its TTL removes it). A spec change gives a new key and a new Job; the previous
artifact keeps serving until the new one passes the gate, and a rejected or failed optimization never
replaces it. A failed Job is retried only when something in it changed (a corrected format, a new
credentials Secret name, other resources) or after it was deleted (by hand or by its TTL).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from pydantic import ValidationError

from ferry_operator import __version__, content_key, kinds, metrics
from ferry_operator.api import models
from ferry_operator.builders import artifact_store, optimization_job
from ferry_operator.builders.common import input_hash
from ferry_operator.builders.inputs import Owner, ServedArtifact
from ferry_operator.config import OperatorConfig
from ferry_operator.kube import ApiError, KubeClient
from ferry_operator.reconcile.artifacts import SERVED_AS_IS, Resolution, ServeAsIs
from ferry_operator.reconcile.conditions import ArtifactResolution, Verdict
from ferry_operator.reconcile.observe import ModelDeploymentSnapshot, OwnerKey, owner_key

logger = logging.getLogger("ferry_operator.optimization")

# A Job can be seen Complete before its pod's final status (with the termination message) reaches the
# pod watch: the two arrive on different streams. Within this many seconds a missing result is waited for.
RESULT_GRACE_SECONDS = 30.0
# How soon a Job that could not be created is tried again (quota, admission webhooks, RBAC being fixed).
CREATE_RETRY_SECONDS = 30.0
# How soon after deleting a failed Job that changed the replacement is created (the name must be free).
REPLACE_RETRY_SECONDS = 2.0
# Container waiting reasons worth showing while the Job waits (they do not clear up by themselves).
_PROBLEM_WAITING_REASONS = frozenset(
    {
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)

JobState = Literal["running", "succeeded", "failed"]


# --- observe ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class JobSnapshot:
    """An optimization Job, as the Job controller reports it."""

    name: str
    uid: str
    # The content key it runs (annotation; None on a Job Ferry did not build).
    key: str | None
    # ferry.dev/input-hash of the manifest it was created from.
    input_hash: str | None
    state: JobState
    # The Failed condition's reason and message (BackoffLimitExceeded, DeadlineExceeded, PodFailurePolicy).
    reason: str = ""
    message: str = ""
    # completionTime, or when the Job was marked Failed (RFC 3339).
    finished_at: str | None = None
    # status.startTime (RFC 3339).
    started_at: str | None = None


@dataclasses.dataclass(frozen=True)
class JobPodSnapshot:
    """A pod of an optimization Job: its outcome and, while it waits, what holds it up."""

    name: str
    # uid of the Job that controls it (a Job recreated under the same name has other pods).
    job_uid: str
    phase: str
    exit_code: int | None = None
    # The container's termination message (ferry-optimize's JSON summary, or the log tail on an error).
    message: str = ""
    finished_at: str | None = None
    # Why it cannot run yet (image pull, missing Secret, unschedulable), for the Optimizing message.
    problem: str | None = None


def job_snapshot(body: Mapping[str, Any]) -> JobSnapshot:
    meta = body.get("metadata", {})
    status = body.get("status") or {}
    annotations = meta.get("annotations") or {}
    conditions = {str(c.get("type")): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    state: JobState = "running"
    reason = message = ""
    finished_at = None
    if "Complete" in conditions:
        state = "succeeded"
        finished_at = status.get("completionTime") or conditions["Complete"].get("lastTransitionTime")
    elif "Failed" in conditions:
        state = "failed"
        failed = conditions["Failed"]
        reason = str(failed.get("reason") or "")
        message = str(failed.get("message") or "")
        finished_at = failed.get("lastTransitionTime")
    return JobSnapshot(
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        key=annotations.get(kinds.OPTIMIZATION_KEY_ANNOTATION),
        input_hash=annotations.get(kinds.INPUT_HASH_ANNOTATION),
        state=state,
        reason=reason,
        message=message,
        finished_at=finished_at,
        started_at=status.get("startTime"),
    )


def job_pod_owner_key(body: Mapping[str, Any]) -> OwnerKey | None:
    """The ModelDeployment an optimization pod works for (its optimization-of label)."""
    meta = body.get("metadata", {})
    labels = meta.get("labels") or {}
    name = labels.get(kinds.OPTIMIZATION_OF_LABEL)
    if not name or labels.get(kinds.MANAGED_BY_LABEL) != kinds.MANAGED_BY:
        return None
    return (str(meta.get("namespace", "")), str(name))


def job_pod_snapshot(body: Mapping[str, Any]) -> JobPodSnapshot:
    meta = body.get("metadata", {})
    status = body.get("status") or {}
    job_uid = ""
    for reference in meta.get("ownerReferences") or []:
        if reference.get("controller") and reference.get("kind") == kinds.JOB.kind:
            job_uid = str(reference.get("uid", ""))
    exit_code = None
    message = ""
    finished_at = None
    problem = None
    for container in status.get("containerStatuses") or []:
        if container.get("name") != optimization_job.CONTAINER_NAME:
            continue
        state = container.get("state") or {}
        terminated = state.get("terminated") or {}
        if terminated:
            exit_code = terminated.get("exitCode")
            message = str(terminated.get("message") or "")
            finished_at = terminated.get("finishedAt")
        waiting = state.get("waiting") or {}
        if waiting.get("reason") in _PROBLEM_WAITING_REASONS:
            problem = f"{waiting['reason']}: {str(waiting.get('message', '')).strip()}".rstrip(": ")
    for condition in status.get("conditions") or []:
        if (
            problem is None
            and condition.get("type") == "PodScheduled"
            and condition.get("reason") == "Unschedulable"
        ):
            problem = f"Unschedulable: {str(condition.get('message', '')).strip()}".rstrip(": ")
    return JobPodSnapshot(
        name=str(meta.get("name", "")),
        job_uid=job_uid,
        phase=str(status.get("phase") or "Pending"),
        exit_code=int(exit_code) if exit_code is not None else None,
        message=message,
        finished_at=finished_at,
        problem=problem,
    )


def job_entry(body: Mapping[str, Any]) -> tuple[OwnerKey, JobSnapshot] | None:
    """A watch cache entry: the Job under its ModelDeployment's key (None for other Jobs)."""
    key = owner_key(body)
    return None if key is None else (key, job_snapshot(body))


def job_pod_entry(body: Mapping[str, Any]) -> tuple[OwnerKey, JobPodSnapshot] | None:
    key = job_pod_owner_key(body)
    return None if key is None else (key, job_pod_snapshot(body))


@dataclasses.dataclass(frozen=True)
class Summary:
    """ferry-optimize's termination message (docs/optimizer.md), validated."""

    key: str
    report: models.OptimizationReport
    artifact: models.Artifact | None


def parse_summary(message: str) -> Summary:
    """The summary in a termination message; ValueError saying what is wrong with it otherwise."""
    if not message.strip():
        raise ValueError("the termination message is empty")
    try:
        raw = json.loads(message)
    except json.JSONDecodeError as error:
        raise ValueError(f"the termination message is not JSON ({error}): {_clip(message, 200)}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"the termination message is not a JSON object: {_clip(message, 200)}")
    missing = sorted({"passed", "reason", "key", "artifact", "candidates"} - set(raw))
    if missing:
        raise ValueError(f"the termination message lacks {', '.join(missing)}")
    try:
        report = models.OptimizationReport.model_validate(
            {field: raw.get(field) for field in ("passed", "chosen", "reason", "metric", "candidates")}
        )
        artifact = models.Artifact.model_validate(raw["artifact"]) if raw["artifact"] is not None else None
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in problem['loc'])}: {problem['msg']}" for problem in error.errors()
        )
        raise ValueError(f"the termination message does not match the summary schema: {problems}") from None
    return Summary(key=str(raw["key"]), report=report, artifact=artifact)


def recorded_result(status: Mapping[str, Any], key: str) -> Summary | None:
    """The result status.optimization records for `key`, if it records one."""
    try:
        optimization = models.OptimizationStatus.model_validate(status.get("optimization") or {})
    except ValidationError:
        return None
    report = optimization.report
    if optimization.key != key or report is None or report.passed is None:
        return None
    return Summary(key=key, report=report, artifact=optimization.artifact)


def served_from_status(status: Mapping[str, Any]) -> ServedArtifact | None:
    """What the serving pods run according to status.model (the last artifact the reconcile served)."""
    model = status.get("model") or {}
    uri = model.get("uri")
    served_format = str(model.get("format", "onnx"))
    if not uri or served_format not in SERVED_AS_IS:
        return None
    try:
        info = models.ModelInfo.model_validate(model)
    except ValidationError:
        info = models.ModelInfo()
    digest = str(model.get("digest") or "")
    return ServedArtifact(
        uri=str(uri),
        sha256=digest.removeprefix("sha256:") or None,
        format=served_format,
        size_bytes=info.size_bytes,
        kv_cache_bytes_per_token=info.kv_cache_bytes_per_token,
        context_length=info.context_length,
    )


def optimized_artifact(artifact: models.Artifact, source_format: str) -> ServedArtifact:
    """What serving pods run of a Job's artifact: an ONNX file, or, for a generative source, the
    onnxruntime-genai folder the Job wrote; each checked by its digest (a folder's manifest digest).
    A folder written by an optimizer before the model/ layout held report.json and tensorboard/ beside
    the model, which its digest leaves out: it is fetched unchecked, as it was then."""
    if source_format in models.GENERATIVE_FORMATS:
        return ServedArtifact(
            uri=artifact.uri,
            sha256=artifact.sha256 if artifact.uri.endswith(f"/{artifact_store.MODEL_FOLDER}") else None,
            format="onnx-genai",
            size_bytes=artifact.size_bytes,
            kv_cache_bytes_per_token=artifact.kv_cache_bytes_per_token,
            context_length=artifact.context_length,
        )
    return ServedArtifact(uri=artifact.uri, sha256=artifact.sha256, size_bytes=artifact.size_bytes)


# --- decide -----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Situation:
    """Everything the decision looks at, for one ModelDeployment at one moment."""

    key: str
    job_name: str
    # ferry.dev/input-hash of the Job the spec asks for now.
    desired_job_hash: str
    model_uri: str
    model_format: str
    # Every optimization Job and Job pod of the ModelDeployment (any key).
    jobs: tuple[JobSnapshot, ...]
    pods: tuple[JobPodSnapshot, ...]
    # The result known for `key` (status.optimization, or remembered since it was read from the pod).
    recorded: Summary | None
    # What serves now (kept while optimizing, and after a rejection or failure).
    previous: ServedArtifact | None
    now: datetime.datetime
    artifact_store: str


@dataclasses.dataclass(frozen=True)
class Decision:
    """What to serve and report, and what to do to the Job."""

    # create: create the Job; replace: delete `stale` (a failed Job built from other inputs), then create.
    action: Literal["none", "create", "replace"]
    artifact: ServedArtifact | None
    optimized: Verdict
    optimization: models.OptimizationStatus
    # A result read from the Job's pod now, to remember (status.optimization will record it too).
    result: Summary | None = None
    stale: JobSnapshot | None = None
    # Look again after this many seconds even if nothing changes (a grace period ends).
    recheck_after: float | None = None

    def resolution(self) -> Resolution:
        """The ArtifactResolver's answer for this decision."""
        if self.artifact is not None:
            resolved = ArtifactResolution(ready=True, message=f"serving {self.artifact.uri}")
        else:
            status: models.ConditionStatus = "Unknown" if self.optimized.status == "Unknown" else "False"
            resolved = ArtifactResolution(
                ready=False, status=status, reason=self.optimized.reason, message=self.optimized.message
            )
        status_fields = {
            "optimization": self.optimization.model_dump(by_alias=True, exclude_none=True, mode="json")
        }
        return Resolution(self.artifact, resolved, self.optimized, status_fields)


def decide(situation: Situation) -> Decision:
    """The pure core: from what was observed to what to serve, report and do."""
    s = situation
    job_status = models.OptimizationStatus(job=s.job_name, key=s.key)
    if not s.artifact_store:
        setting = (
            "the operator has no artifact store to write optimized models to: set "
            "FERRY_OPERATOR_ARTIFACT_STORE (the chart's artifactStore) to pvc://CLAIM/ or s3://BUCKET/"
        )
        verdict = Verdict("False", "NoArtifactStore", setting)
        if s.model_format not in SERVED_AS_IS:
            verdict = Verdict(
                "False",
                "ConversionRequired",
                f"spec.model.format is {s.model_format}: the runtime serves ONNX, so the model must be "
                f"converted by an optimization Job, but {setting}; or provide an ONNX model (format: onnx)",
            )
        return Decision("none", s.previous, verdict, models.OptimizationStatus(key=s.key))
    if s.recorded is not None:
        return _outcome(s, s.recorded, result=None)
    job = next((j for j in s.jobs if j.name == s.job_name), None)
    if job is None:
        return Decision(
            "create",
            s.previous,
            _optimizing(s, f"creating optimization Job {s.job_name}"),
            job_status,
        )
    if job.key != s.key:
        return Decision(
            "none",
            s.previous,
            Verdict(
                "False",
                "JobConflict",
                f"Job {job.name} exists but does not run content key {s.key} (it runs {job.key}); delete it "
                "and the operator creates the optimization Job",
            ),
            job_status,
        )
    pods = sorted((p for p in s.pods if p.job_uid == job.uid), key=lambda p: (p.finished_at or "", p.name))
    if job.state == "running":
        waiting = next((p for p in reversed(pods) if p.problem), None)
        detail = f"; pod {waiting.name}: {waiting.problem}" if waiting is not None else ""
        return Decision(
            "none",
            s.previous,
            _optimizing(s, f"optimization Job {job.name} is optimizing {s.model_uri}{detail}"),
            job_status,
        )
    if job.state == "failed":
        if job.input_hash != s.desired_job_hash:
            return Decision(
                "replace",
                s.previous,
                _optimizing(s, f"retrying: optimization Job {job.name} failed and its inputs changed since"),
                job_status,
                stale=job,
            )
        return Decision("none", s.previous, _job_failed(s, job, pods), job_status)
    finished = next((p for p in reversed(pods) if p.exit_code == 0), None)
    problem = "no pod of the Job reported success"
    if finished is not None:
        try:
            summary = parse_summary(finished.message)
        except ValueError as error:
            problem = f"pod {finished.name}: {error}"
        else:
            if summary.key == s.key:
                return _outcome(s, summary, result=summary)
            problem = f"pod {finished.name} reported content key {summary.key}, not {s.key}"
    waited = _seconds_since(job.finished_at, s.now)
    if waited < RESULT_GRACE_SECONDS:
        return Decision(
            "none",
            s.previous,
            _optimizing(s, f"optimization Job {job.name} finished; waiting for its result"),
            job_status,
            recheck_after=RESULT_GRACE_SECONDS - waited,
        )
    return Decision(
        "none",
        s.previous,
        Verdict(
            "False",
            "NoResult",
            f"optimization Job {job.name} succeeded but left no result: {problem}. ferry-optimize writes a "
            "JSON summary to the container's termination message; check that the optimizer image runs "
            f"ferry-optimize (`kubectl logs job/{job.name}`), then delete the Job to run it again",
        ),
        job_status,
    )


def _outcome(s: Situation, summary: Summary, result: Summary | None) -> Decision:
    report = summary.report
    status = models.OptimizationStatus(job=s.job_name, key=s.key, artifact=summary.artifact, report=report)
    reason = report.reason or ""
    if report.passed and summary.artifact is not None:
        artifact = optimized_artifact(summary.artifact, s.model_format)
        metric = report.metric
        measured = (
            f" ({metric.name} {metric.baseline:.4g} -> {metric.value:.4g})" if metric is not None else ""
        )
        verdict = Verdict(
            "True", "Passed", f"{report.chosen} passed{measured}; serving {summary.artifact.uri}: {reason}"
        )
        return Decision("none", artifact, verdict, status, result=result)
    if summary.artifact is not None:
        # No gate was asked for and every requested candidate failed to build: the optimizer still
        # converted the model, so it can be served as it is.
        artifact = optimized_artifact(summary.artifact, s.model_format)
        verdict = Verdict(
            "False",
            "CandidatesFailed",
            f"no optimized candidate could be built ({reason}); serving the converted model "
            f"{summary.artifact.uri}",
        )
        return Decision("none", artifact, verdict, status, result=result)
    keeps = (
        f"; {s.previous.uri} keeps serving"
        if s.previous is not None
        else "; nothing is served until a candidate passes (relax optimize.validate.maxDrop or change the "
        "optimize spec)"
    )
    verdict = Verdict("False", "GateRejected", f"no candidate passed the gate: {reason}{keeps}")
    return Decision("none", s.previous, verdict, status, result=result)


def _optimizing(s: Situation, message: str) -> Verdict:
    keeps = f"; {s.previous.uri} serves meanwhile" if s.previous is not None else ""
    return Verdict("Unknown", "Optimizing", message + keeps)


def _job_failed(s: Situation, job: JobSnapshot, pods: list[JobPodSnapshot]) -> Verdict:
    why = f"{job.reason}: {job.message}".strip(": ") or "the Job failed"
    last = next((p for p in reversed(pods) if p.message), None)
    if last is not None:
        try:
            why = f"{why}; {parse_summary(last.message).report.reason}"
        except ValueError:
            # FallbackToLogsOnError: the last lines of the log stand in for the summary.
            why = f"{why}; pod {last.name} said: {_clip(last.message.strip(), 1500)}"
    keeps = f"; {s.previous.uri} keeps serving" if s.previous is not None else ""
    return Verdict(
        "False",
        "JobFailed",
        f"optimization Job {job.name} failed: {why}{keeps}. Its log: `kubectl logs job/{job.name}`; fix the "
        "cause and change the spec, or delete the Job to run it again",
    )


def _seconds_since(timestamp: str | None, now: datetime.datetime) -> float:
    if not timestamp:
        return 0.0
    try:
        then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return max(0.0, (now - then).total_seconds())


def job_outcome(decision: Decision) -> str | None:
    """The metrics' outcome of a finished Job, read from the decision about it (None: not finished, or the
    result was already recorded in the status, i.e. counted when it was read)."""
    if decision.result is not None:
        report = decision.result.report
        if report.passed and decision.result.artifact is not None:
            return "passed"
        return "candidates_failed" if decision.result.artifact is not None else "gate_rejected"
    return {"JobFailed": "failed", "NoResult": "no_result"}.get(decision.optimized.reason)


def _duration(start: str, end: str) -> float:
    try:
        began = datetime.datetime.fromisoformat(start.replace("Z", "+00:00"))
        ended = datetime.datetime.fromisoformat(end.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return max(0.0, (ended - began).total_seconds())


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else "..." + text[-limit:]


def needs_optimization(spec: models.ModelDeploymentSpec) -> bool:
    """Whether the model goes through an optimization Job: optimize is set, or it is not ONNX yet."""
    return spec.optimize is not None or spec.model.format not in SERVED_AS_IS


def optimizer_version(image: str) -> str:
    """The optimizer version in the content key: the optimizer image's tag (the chart tags images with the
    package version), or its digest; the operator's own version for an image with neither."""
    reference = image.rsplit("/", 1)[-1]
    if "@" in reference:
        return reference.split("@", 1)[1]
    if ":" in reference:
        return reference.rsplit(":", 1)[1]
    return __version__


def optimizer_defaults(config: OperatorConfig) -> optimization_job.OptimizerDefaults:
    return optimization_job.OptimizerDefaults(
        image=config.optimizer_image,
        image_pull_policy=config.optimizer_image_pull_policy,
        image_pull_secrets=config.image_pull_secrets,
        resources=config.optimizer_resources,
        ttl_seconds=config.job_ttl_seconds,
        deadline_seconds=config.job_deadline_seconds,
        artifact_store=config.artifact_store,
        artifact_s3_endpoint=config.artifact_s3_endpoint,
        artifact_s3_region=config.artifact_s3_region,
        artifact_credentials_secret=config.artifact_credentials_secret,
    )


# --- apply ------------------------------------------------------------------------------------------------


class OptimizationResolver:
    """Serves ONNX models without optimize as they are; runs an optimization Job for the others."""

    def __init__(self, defaults: optimization_job.OptimizerDefaults, client: KubeClient) -> None:
        self.defaults = defaults
        self.client = client
        self.version = optimizer_version(defaults.image)
        self._as_is = ServeAsIs()
        self._jobs: Mapping[OwnerKey, Iterable[JobSnapshot]] = {}
        self._pods: Mapping[OwnerKey, Iterable[JobPodSnapshot]] = {}
        self._enqueue_after: Callable[[OwnerKey, float], None] | None = None
        # Known to this process before the watch shows it (status lags our own writes), by ModelDeployment
        # uid: the results read from Job pods, and the artifact last served.
        self._results: dict[str, Summary] = {}
        # uids of the Jobs whose outcome the metrics counted (a result is decided on every reconcile).
        self._counted_jobs: dict[str, set[str]] = {}
        self._served: dict[str, ServedArtifact | None] = {}

    def bind(
        self,
        jobs: Mapping[OwnerKey, Iterable[JobSnapshot]],
        pods: Mapping[OwnerKey, Iterable[JobPodSnapshot]],
        enqueue_after: Callable[[OwnerKey, float], None],
    ) -> None:
        """Attach the watch caches and the work queue, once they exist."""
        self._jobs = jobs
        self._pods = pods
        self._enqueue_after = enqueue_after

    def forget(self, uid: str) -> None:
        for kept in (self._results, self._served, self._counted_jobs):
            kept.pop(uid, None)

    async def resolve(self, md: ModelDeploymentSnapshot, spec: models.ModelDeploymentSpec) -> Resolution:
        if not needs_optimization(spec):
            resolution = await self._as_is.resolve(md, spec)
            self._served[md.uid] = resolution.artifact
            # No optimization any more: its condition goes (not reported) and so does its status.
            return dataclasses.replace(resolution, status={"optimization": None})
        owner = Owner(md.name, md.namespace, md.uid)
        key = content_key.content_key(spec, self.version)
        manifest = optimization_job.job(optimization_job.OptimizationInputs(owner, spec, key, self.defaults))
        remembered = self._results.get(md.uid)
        situation = Situation(
            key=key,
            job_name=manifest["metadata"]["name"],
            desired_job_hash=input_hash(manifest) or "",
            model_uri=spec.model.uri,
            model_format=spec.model.format,
            jobs=tuple(self._jobs.get(md.key, ())),
            pods=tuple(self._pods.get(md.key, ())),
            recorded=(
                remembered
                if remembered is not None and remembered.key == key
                else recorded_result(md.status, key)
            ),
            previous=self._served[md.uid] if md.uid in self._served else served_from_status(md.status),
            now=datetime.datetime.now(datetime.UTC),
            artifact_store=self.defaults.artifact_store,
        )
        decision = decide(situation)
        self._count_outcome(md, situation, decision)
        if decision.action != "none":
            decision = await self._run_job(md, manifest, decision)
        if decision.result is not None:
            self._results[md.uid] = decision.result
        self._served[md.uid] = decision.artifact
        if decision.recheck_after is not None:
            self._recheck(md.key, decision.recheck_after)
        return decision.resolution()

    async def _run_job(
        self, md: ModelDeploymentSnapshot, manifest: Mapping[str, Any], decision: Decision
    ) -> Decision:
        name = manifest["metadata"]["name"]
        try:
            if decision.stale is not None:
                await self._delete_job(md.namespace, decision.stale)
            await self.client.request(
                "POST", kinds.JOB.path(md.namespace), resource=kinds.JOB.plural, body=manifest
            )
        except ApiError as error:
            if error.status == 409:
                # The fixed name is taken: by this key's Job (a restarted operator, or the watch has not
                # shown our own create yet), which is adopted, or by the failed Job still going away.
                if decision.stale is not None:
                    return dataclasses.replace(decision, recheck_after=REPLACE_RETRY_SECONDS)
                return decision
            logger.warning("cannot create optimization Job %s/%s: %s", md.namespace, name, error)
            return _creation_failed(decision, name, f"{error.status} {error.reason}: {error.message}")
        except (OSError, TimeoutError) as error:
            return _creation_failed(decision, name, str(error) or type(error).__name__)
        logger.info("created optimization Job %s/%s", md.namespace, name)
        return decision

    async def _delete_job(self, namespace: str, job: JobSnapshot) -> None:
        """Delete exactly `job` and, in the background, its pods (a Job's API default orphans them)."""
        try:
            await self.client.request(
                "DELETE",
                kinds.JOB.path(namespace, job.name),
                resource=kinds.JOB.plural,
                body={
                    "kind": "DeleteOptions",
                    "apiVersion": "v1",
                    "propagationPolicy": "Background",
                    "preconditions": {"uid": job.uid},
                },
            )
        except ApiError as error:
            if error.status not in (404, 409):
                raise

    def _count_outcome(self, md: ModelDeploymentSnapshot, situation: Situation, decision: Decision) -> None:
        """ferry_operator_optimizations_total and the duration histogram, once per finished Job."""
        outcome = job_outcome(decision)
        job = next((j for j in situation.jobs if j.name == situation.job_name), None)
        if outcome is None or job is None or job.uid in self._counted_jobs.get(md.uid, ()):
            return
        self._counted_jobs.setdefault(md.uid, set()).add(job.uid)
        labels = {"namespace": md.namespace, "modeldeployment": md.name, "outcome": outcome}
        metrics.OPTIMIZATIONS.labels(**labels).inc()
        if job.started_at and job.finished_at:
            metrics.OPTIMIZATION_SECONDS.labels(**labels).observe(_duration(job.started_at, job.finished_at))

    def _recheck(self, key: OwnerKey, delay: float) -> None:
        if self._enqueue_after is not None:
            self._enqueue_after(key, delay)


def _creation_failed(decision: Decision, name: str, why: str) -> Decision:
    verdict = Verdict("False", "JobCreateFailed", f"the API server refused optimization Job {name}: {why}")
    return dataclasses.replace(decision, optimized=verdict, recheck_after=CREATE_RETRY_SECONDS)
