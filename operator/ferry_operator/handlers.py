"""kopf registrations, and nothing else: each handler is one line that calls the typed domain code.

Watch events never do work here; they index what was seen (kopf indices, read by the reconcile) and
enqueue the ModelDeployment it belongs to. The reconcile workers do the rest (reconcile/controller.py).
"""

from __future__ import annotations

from typing import Any

import kopf

from ferry_operator import kinds, wiring
from ferry_operator.api import models
from ferry_operator.reconcile import observe, optimization

MANAGED = {kinds.MANAGED_BY_LABEL: kinds.MANAGED_BY}
OPTIMIZATION_PODS: dict[str, Any] = {
    **MANAGED,
    kinds.OPTIMIZATION_OF_LABEL: kopf.PRESENT,
}
MD = (models.GROUP, models.VERSION, models.PLURAL)


def _ferry(memo: Any) -> wiring.Ferry:
    ferry: wiring.Ferry = memo.ferry
    return ferry


@kopf.on.login()
async def login(memo: Any, **kwargs: Any) -> kopf.ConnectionInfo | None:
    return wiring.login(_ferry(memo), **kwargs)


@kopf.on.startup()
async def startup(memo: Any, **kwargs: Any) -> None:
    await wiring.startup(_ferry(memo), kwargs)


@kopf.on.cleanup()
async def cleanup(memo: Any, **_: Any) -> None:
    await wiring.cleanup(_ferry(memo))


# --- indices: the reconcile's view of the cluster ---------------------------------------------------------


@kopf.index(*MD)
async def modeldeployment_index(body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {observe.model_deployment_key(body): observe.model_deployment_snapshot(body)}


@kopf.index("apps", "v1", "deployments", labels=MANAGED)
async def deployment_index(body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return observe.index_child(kinds.DEPLOYMENT, body)


@kopf.index("v1", "services", labels=MANAGED)
async def service_index(body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return observe.index_child(kinds.SERVICE, body)


@kopf.index("autoscaling", "v2", "horizontalpodautoscalers", labels=MANAGED)
async def hpa_index(body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return observe.index_child(kinds.HORIZONTAL_POD_AUTOSCALER, body)


@kopf.index("policy", "v1", "poddisruptionbudgets", labels=MANAGED)
async def pdb_index(body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return observe.index_child(kinds.POD_DISRUPTION_BUDGET, body)


@kopf.index("monitoring.coreos.com", "v1", "servicemonitors", labels=MANAGED)
async def servicemonitor_index(body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return observe.index_child(kinds.SERVICE_MONITOR, body)


@kopf.index("monitoring.coreos.com", "v1", "prometheusrules", labels=MANAGED)
async def prometheusrule_index(body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return observe.index_child(kinds.PROMETHEUS_RULE, body)


@kopf.index("v1", "pods", labels=MANAGED)
async def pod_index(body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return observe.index_pod(body)


@kopf.index("batch", "v1", "jobs", labels=MANAGED)
async def job_index(body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return optimization.index_job(body)


@kopf.index("v1", "pods", labels=OPTIMIZATION_PODS)
async def optimization_pod_index(body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return optimization.index_job_pod(body)


# --- events: what to reconcile ----------------------------------------------------------------------------


@kopf.on.event(*MD)
async def modeldeployment_event(memo: Any, body: kopf.Body, **_: Any) -> None:
    _ferry(memo).controller.enqueue(observe.model_deployment_key(body))


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
async def deployment_event(memo: Any, body: kopf.Body, **_: Any) -> None:
    _ferry(memo).controller.enqueue(observe.owner_key(body))


@kopf.on.event("v1", "services", labels=MANAGED)
async def service_event(memo: Any, body: kopf.Body, **_: Any) -> None:
    _ferry(memo).controller.enqueue(observe.owner_key(body))


@kopf.on.event("autoscaling", "v2", "horizontalpodautoscalers", labels=MANAGED)
async def hpa_event(memo: Any, body: kopf.Body, **_: Any) -> None:
    _ferry(memo).controller.enqueue(observe.owner_key(body))


@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=MANAGED)
async def pdb_event(memo: Any, body: kopf.Body, **_: Any) -> None:
    _ferry(memo).controller.enqueue(observe.owner_key(body))


@kopf.on.event("monitoring.coreos.com", "v1", "servicemonitors", labels=MANAGED)
async def servicemonitor_event(memo: Any, body: kopf.Body, **_: Any) -> None:
    _ferry(memo).controller.enqueue(observe.owner_key(body))


@kopf.on.event("monitoring.coreos.com", "v1", "prometheusrules", labels=MANAGED)
async def prometheusrule_event(memo: Any, body: kopf.Body, **_: Any) -> None:
    _ferry(memo).controller.enqueue(observe.owner_key(body))


@kopf.on.event("apiextensions.k8s.io", "v1", "customresourcedefinitions", when=wiring.is_monitoring_crd)
async def monitoring_crd_event(memo: Any, **_: Any) -> None:
    _ferry(memo).controller.rediscover_monitoring()


@kopf.on.event("v1", "pods", labels=MANAGED)
async def pod_event(memo: Any, body: kopf.Body, event: Any, **_: Any) -> None:
    wiring.pod_changed(
        _ferry(memo), body.meta.uid or "", *observe.pod_change(body, event.get("type") == "DELETED")
    )


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)
async def job_event(memo: Any, body: kopf.Body, **_: Any) -> None:
    _ferry(memo).controller.enqueue(observe.owner_key(body))


@kopf.on.event("v1", "pods", labels=OPTIMIZATION_PODS)
async def optimization_pod_event(memo: Any, body: kopf.Body, **_: Any) -> None:
    _ferry(memo).controller.enqueue(optimization.job_pod_owner_key(body))
