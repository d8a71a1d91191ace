"""kopf registrations, and nothing else: each handler is one line that calls the typed domain code.

kopf watches only the monitoring children and their CRDs here; ModelDeployments and the children and pods
every cluster serves are watched by Ferry's own informers (informer.py; kopf's per-event machinery was half
of the operator's CPU at 500 ModelDeployments). Watch events never do work here; they index what was seen
(kopf indices, read by the reconcile) and enqueue the ModelDeployment it belongs to. The reconcile workers
do the rest (reconcile/controller.py).
"""

from __future__ import annotations

from typing import Any

import kopf

from ferry_operator import kinds, wiring
from ferry_operator.reconcile import observe

MANAGED = {kinds.MANAGED_BY_LABEL: kinds.MANAGED_BY}


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


# --- the monitoring children: their kinds come and go with the monitoring.coreos.com CRDs, which kopf's
# watches follow. The always-served kinds are watched by Ferry's own informers (informer.py, wiring.py).


@kopf.index("monitoring.coreos.com", "v1", "servicemonitors", labels=MANAGED)
async def servicemonitor_index(body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return wiring.kopf_index_entry(observe.child_entry(kinds.SERVICE_MONITOR, body))


@kopf.index("monitoring.coreos.com", "v1", "prometheusrules", labels=MANAGED)
async def prometheusrule_index(body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return wiring.kopf_index_entry(observe.child_entry(kinds.PROMETHEUS_RULE, body))


@kopf.on.event("monitoring.coreos.com", "v1", "servicemonitors", labels=MANAGED)
async def servicemonitor_event(memo: Any, body: kopf.Body, **_: Any) -> None:
    _ferry(memo).controller.enqueue(observe.owner_key(body))


@kopf.on.event("monitoring.coreos.com", "v1", "prometheusrules", labels=MANAGED)
async def prometheusrule_event(memo: Any, body: kopf.Body, **_: Any) -> None:
    _ferry(memo).controller.enqueue(observe.owner_key(body))


@kopf.on.event("apiextensions.k8s.io", "v1", "customresourcedefinitions", when=wiring.is_monitoring_crd)
async def monitoring_crd_event(memo: Any, **_: Any) -> None:
    _ferry(memo).controller.rediscover_monitoring()
