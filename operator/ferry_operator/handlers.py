"""kopf registrations, and nothing else: each handler is one line that calls the typed domain code.

kopf runs the process (login, start-up, clean-up) and watches the monitoring CRDs; every other kind
(ModelDeployments, their children, the monitoring ones included, pods and Jobs) is watched by Ferry's own
informers (informer.py): kopf's per-event machinery was half of the operator's CPU at 500
ModelDeployments, and kopf ended the process when a watched optional kind's CRD went away. The reconcile
workers do the work (reconcile/controller.py).
"""

from __future__ import annotations

from typing import Any

import kopf

from ferry_operator import wiring


def _ferry(memo: Any) -> wiring.Ferry:
    ferry: wiring.Ferry = memo.ferry
    return ferry


@kopf.on.login()
async def login(memo: Any, **kwargs: Any) -> kopf.ConnectionInfo | None:
    return wiring.login(_ferry(memo), **kwargs)


@kopf.on.startup()
async def startup(memo: Any, **_: Any) -> None:
    await wiring.startup(_ferry(memo))


@kopf.on.cleanup()
async def cleanup(memo: Any, **_: Any) -> None:
    await wiring.cleanup(_ferry(memo))


# --- the monitoring CRDs: kopf watches CRDs (always served); every other kind, the monitoring children
# included, is watched by Ferry's own informers (informer.py, wiring.py).


@kopf.on.event("apiextensions.k8s.io", "v1", "customresourcedefinitions", when=wiring.is_monitoring_crd)
async def monitoring_crd_event(memo: Any, **_: Any) -> None:
    _ferry(memo).controller.rediscover_monitoring()
