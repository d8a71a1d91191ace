"""The operator process: kopf settings, credentials, the controller and the metrics endpoint, tied together.

handlers.py registers kopf handlers that call the functions here; cli.py builds the pieces and runs kopf.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Iterable
from typing import Any

import kopf
from aiohttp import web

from ferry_operator import informer, kinds, metrics
from ferry_operator.api import models
from ferry_operator.config import OperatorConfig
from ferry_operator.informer import Informer, View
from ferry_operator.kube import KubeClient
from ferry_operator.reconcile import observe, optimization
from ferry_operator.reconcile.controller import Controller, Indices
from ferry_operator.reconcile.observe import ChildSnapshot, ModelDeploymentSnapshot, OwnerKey, PodSnapshot
from ferry_operator.reconcile.optimization import (
    JobPodSnapshot,
    JobSnapshot,
    OptimizationResolver,
    optimizer_defaults,
)

logger = logging.getLogger("ferry_operator")

# The CRDs whose arrival or removal changes which monitoring children `auto` creates.
MONITORING_CRDS = frozenset(f"{kind.plural}.{kind.group}" for kind in kinds.MONITORING_KINDS)
MANAGED_SELECTOR = f"{kinds.MANAGED_BY_LABEL}={kinds.MANAGED_BY}"


@dataclasses.dataclass
class WatchCaches:
    """Ferry's own informers and the views the reconcile reads (see informer.py for why not kopf's)."""

    model_deployments: View[ModelDeploymentSnapshot]
    children: dict[kinds.Kind, View[ChildSnapshot]]
    pods: View[PodSnapshot]
    jobs: View[JobSnapshot]
    optimization_pods: View[JobPodSnapshot]
    informers: list[Informer]


def watch_caches(
    config: OperatorConfig,
    client: KubeClient,
    namespaces: list[str],
    on_change: Callable[[OwnerKey], None],
) -> WatchCaches:
    """One informer per kind and scope; pods feed two views (serving pods, optimization Job pods). Every
    view calls `on_change` with the owning ModelDeployment when what it holds for it changes. The
    monitoring kinds' informers are optional: their CRDs may be absent, or come and go."""
    model_deployments = View(observe.model_deployment_entry, on_change)
    children: dict[kinds.Kind, View[ChildSnapshot]] = {
        kind: View(functools.partial(observe.child_entry, kind), on_change)
        for kind in kinds.CHILD_KINDS
        # Without a token-reviewer role the operator makes no ClusterRoleBindings, and needs no RBAC to
        # watch them (policy.py refuses auth mode kubernetes).
        if kind != kinds.CLUSTER_ROLE_BINDING or config.token_reviewer_role
    }
    pods = View(observe.pod_entry, on_change)
    jobs = View(optimization.job_entry, on_change)
    optimization_pods = View(optimization.job_pod_entry, on_change)
    watched: list[tuple[kinds.Kind, list[View[Any]], str]] = [
        (kinds.MODEL_DEPLOYMENT, [model_deployments], ""),
        *((kind, [view], MANAGED_SELECTOR) for kind, view in children.items()),
        (kinds.POD, [pods, optimization_pods], MANAGED_SELECTOR),
        (kinds.JOB, [jobs], MANAGED_SELECTOR),
    ]
    places, namespace_filter = informer.scopes(namespaces)
    informers = [
        Informer(
            client,
            kind,
            views,
            namespace=namespace,
            label_selector=selector,
            namespace_filter=namespace_filter,
            server_timeout_seconds=config.watch_server_timeout_seconds,
            client_timeout_seconds=config.watch_client_timeout_seconds,
            optional=kind in kinds.MONITORING_KINDS,
            absent_recheck_seconds=config.monitoring_discovery_seconds,
        )
        for kind, views, selector in watched
        if kind.namespaced
        for namespace in places
    ]
    # A cluster-scoped kind has one watch, of the whole cluster; its objects say by label which
    # namespace's ModelDeployment they belong to, and only the watched namespaces' are kept.
    informers += [
        Informer(
            client,
            kind,
            views,
            namespace=None,
            label_selector=selector,
            namespace_filter=informer.namespace_matcher(namespaces) if namespaces else None,
            namespace_of=observe.labelled_namespace,
            server_timeout_seconds=config.watch_server_timeout_seconds,
            client_timeout_seconds=config.watch_client_timeout_seconds,
        )
        for kind, views, selector in watched
        if not kind.namespaced
    ]
    return WatchCaches(model_deployments, children, pods, jobs, optimization_pods, informers)


@dataclasses.dataclass
class Ferry:
    """Everything one operator process holds; passed to kopf as the memo, so handlers reach it."""

    config: OperatorConfig
    client: KubeClient
    controller: Controller
    optimization: OptimizationResolver
    caches: WatchCaches
    metrics_server: web.AppRunner | None = None


def create(config: OperatorConfig, namespaces: list[str]) -> Ferry:
    """The operator's parts; `namespaces` as given to kopf (empty: the whole cluster)."""
    client = KubeClient(max_connections=max(8, config.workers * 2))
    resolver = OptimizationResolver(optimizer_defaults(config), client)
    controller = Controller(config, client, resolver)
    return Ferry(
        config=config,
        client=client,
        controller=controller,
        optimization=resolver,
        caches=watch_caches(config, client, namespaces, controller.enqueue),
    )


class NoDiffBase(kopf.AnnotationsDiffBaseStorage):
    """kopf keeps a "diff base" (an object's last handled essence) for change handlers (on.create, on.update,
    on.field) only. Ferry registers none: the reconcile is level-based on index and event handlers. Yet
    kopf builds the essence, a deep copy of the whole body, on every watch event of every watched kind; at
    scale that was about a third of the operator's CPU (pods and Deployments carry large managedFields).
    So nothing is built or read. A change handler would need the stock storage back; a unit test fails
    when one is registered."""

    def build(
        self,
        *,
        body: kopf.Body,  # noqa: ARG002 - the signature kopf calls
        extra_fields: Iterable[kopf.FieldSpec] | None = None,  # noqa: ARG002
    ) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:  # noqa: ARG002 - kopf's signature
        return None


def operator_settings(config: OperatorConfig) -> kopf.OperatorSettings:
    """kopf configured for production; each setting says why."""
    settings = kopf.OperatorSettings()
    # kopf's markers carry Ferry's API group: `kubectl get md -o yaml` shows whose they are, and another
    # kopf-based operator in the cluster never mistakes them for its own. (The reconcile itself is
    # level-based and stores no progress; these matter for any future on.create/on.delete handler.)
    settings.persistence.finalizer = kinds.FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=models.GROUP)
    settings.persistence.diffbase_storage = NoDiffBase(prefix=models.GROUP, key="last-handled-configuration")
    # A watch stream ends after server_timeout and kopf resumes from the last resourceVersion; without a
    # timeout a half-open TCP connection (NAT, load balancer) would silently stop all events.
    settings.watching.server_timeout = config.watch_server_timeout_seconds
    settings.watching.client_timeout = config.watch_client_timeout_seconds
    settings.watching.connect_timeout = 30
    # Short API calls (lists at start-up) fail fast rather than hang the start.
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 30
    # kopf posts events for its own handler errors; only warnings and worse (the reconcile posts one event
    # per phase transition itself, so kopf must not add one per handler run).
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "ferry-operator"
    # One active operator (the chart runs one replica with the Recreate strategy), so no peering CRDs.
    settings.peering.standalone = True
    return settings


def configure_logging(config: OperatorConfig) -> None:
    kopf.configure(
        log_format=kopf.LogFormat.JSON if config.log_format == "json" else kopf.LogFormat.FULL,
        debug=config.log_level == "DEBUG",
        quiet=config.log_level in ("WARNING", "ERROR"),
    )
    logging.getLogger().setLevel(config.log_level)
    # kopf logs every handler run at INFO; with every watch event enqueuing a reconcile that is one line per
    # event (thousands at scale) and measurable CPU. The reconcile logs what it changes instead.
    if config.log_level != "DEBUG":
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)


def login(ferry: Ferry, **kwargs: Any) -> kopf.ConnectionInfo | None:
    """Log in as kopf would (service account in a pod, else the kubeconfig) and share the credentials with
    the reconcile's own client (kopf calls this again when credentials expire)."""
    info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
    if info is not None:
        ferry.client.login(info)
    return info


async def startup(ferry: Ferry) -> None:
    caches = ferry.caches
    ferry.controller.bind(
        Indices(model_deployments=caches.model_deployments, children=caches.children, pods=caches.pods)
    )
    ferry.optimization.bind(
        jobs=caches.jobs,
        pods=caches.optimization_pods,
        enqueue_after=ferry.controller.queue.add_after,
    )
    ferry.controller.start(caches.informers)
    if ferry.config.metrics_port:
        ferry.metrics_server = await metrics.serve(ferry.config.metrics_port, ferry.controller.healthy)
    logger.info(
        "ferry-operator started (%d workers, runtime image %s)",
        ferry.config.workers,
        ferry.config.runtime_image,
    )


async def cleanup(ferry: Ferry) -> None:
    await ferry.controller.stop()
    if ferry.metrics_server is not None:
        await ferry.metrics_server.cleanup()
    await ferry.client.close()


def is_monitoring_crd(name: str, **_: Any) -> bool:
    """kopf filter: only the monitoring.coreos.com CRDs Ferry creates objects of."""
    return name in MONITORING_CRDS
