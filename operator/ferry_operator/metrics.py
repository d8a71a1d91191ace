"""The operator's own Prometheus metrics and its /metrics + /healthz endpoint (one port, as the chart probes).

kopf has a liveness endpoint of its own, but it would need a second port; here /healthz answers from the
same event loop that runs the watches and the reconcile workers, so a wedged loop fails the probe, and it
reports unhealthy when a reconcile worker has died.
"""

from __future__ import annotations

from collections.abc import Callable

import prometheus_client
from aiohttp import web

RECONCILES = prometheus_client.Counter(
    "ferry_operator_reconcile_total",
    "Reconciles of ModelDeployments by outcome (noop: nothing to write, applied, status, retry: a temporary"
    " failure, gone: deleted, error).",
    ["outcome"],
)
RECONCILE_SECONDS = prometheus_client.Histogram(
    "ferry_operator_reconcile_duration_seconds",
    "Time of one reconcile, from dequeue to the last write.",
    ["outcome"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
API_REQUESTS = prometheus_client.Counter(
    "ferry_operator_api_requests_total",
    "Requests the reconcile made to the Kubernetes API (not kopf's watches), by verb, resource and code.",
    ["verb", "resource", "code"],
)
MODEL_DEPLOYMENTS = prometheus_client.Gauge(
    "ferry_operator_modeldeployments",
    "ModelDeployments the operator watches, by phase.",
    ["phase"],
)
# Per-ModelDeployment series carry the object's own `namespace` label (the chart's ServiceMonitor sets
# honorLabels so a scrape keeps it rather than the operator pod's namespace), as kube-state-metrics does.
MODEL_DEPLOYMENT_REPLICAS = prometheus_client.Gauge(
    "ferry_operator_modeldeployment_replicas",
    "Serving replicas of a ModelDeployment as its status reports them: desired (the serving Deployment's "
    "replica count, set by the autoscaler when there is one) and ready.",
    ["namespace", "modeldeployment", "state"],
)
MODEL_DEPLOYMENT_ROLLOUT_STUCK = prometheus_client.Gauge(
    "ferry_operator_modeldeployment_rollout_stuck",
    "1 while the ModelDeployment's serving Deployment is past its progress deadline (its Progressing "
    "condition False with reason ProgressDeadlineExceeded), else 0.",
    ["namespace", "modeldeployment"],
)
OPTIMIZATIONS = prometheus_client.Counter(
    "ferry_operator_optimizations_total",
    "Optimization Jobs that finished, by ModelDeployment and outcome: passed, gate_rejected, "
    "candidates_failed (serves the converted model), failed (the Job failed), no_result (succeeded without "
    "a summary). Once per Job.",
    ["namespace", "modeldeployment", "outcome"],
)
OPTIMIZATION_SECONDS = prometheus_client.Histogram(
    "ferry_operator_optimization_duration_seconds",
    "Run time of finished optimization Jobs (the Job's startTime to its completion or failure), by "
    "ModelDeployment and outcome.",
    ["namespace", "modeldeployment", "outcome"],
    buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 21600),
)
ROLLBACKS = prometheus_client.Counter(
    "ferry_operator_rollbacks_total",
    "Automatic rollbacks to the last Ready revision (spec.rollout.autoRollback), by why the rollout failed "
    "(ProgressDeadlineExceeded, CrashLoopBackOff, FetchFailed).",
    ["reason"],
)
QUEUE_DEPTH = prometheus_client.Gauge(
    "ferry_operator_queue_depth",
    "ModelDeployments waiting for a reconcile.",
)


async def serve(port: int, healthy: Callable[[], tuple[bool, str]]) -> web.AppRunner:
    """Start the /metrics and /healthz server on `port`; the caller keeps the runner to stop it."""

    async def metrics_handler(_: web.Request) -> web.Response:
        return web.Response(
            body=prometheus_client.generate_latest(),
            headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST},
        )

    async def health_handler(_: web.Request) -> web.Response:
        ok, detail = healthy()
        return web.Response(status=200 if ok else 503, text=detail + "\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", health_handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host="0.0.0.0", port=port).start()
    return runner
