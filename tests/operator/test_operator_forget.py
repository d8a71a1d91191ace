"""`Controller.reconcile` against an in-memory API server: what only the cluster tests reached before, and
that nothing kept per ModelDeployment outlives it (memory must not grow with every object ever deleted)."""

from __future__ import annotations

import asyncio
import collections
import functools
import gc
import itertools
import tracemalloc
from collections.abc import Mapping
from typing import Any

import prometheus_client
from operator_cases import spec_with

from ferry_operator import kinds
from ferry_operator.config import OperatorConfig
from ferry_operator.informer import View
from ferry_operator.kube import KubeClient
from ferry_operator.reconcile import observe, optimization
from ferry_operator.reconcile.controller import Controller, Indices
from ferry_operator.reconcile.optimization import OptimizationResolver

NAMESPACE = "team"
SERVED = spec_with()
OPTIMIZED = spec_with(optimize={"quantize": "dynamic"})


class InMemoryApiServer(KubeClient):
    """Answers the reconcile's requests as the API server would, and feeds what it stores to the views
    (the watch), so a reconcile sees its own children the next time."""

    def __init__(self, views: Mapping[kinds.Kind, View[Any]]) -> None:  # what the watch feeds, by kind
        super().__init__()
        self._views = views
        self._uids = itertools.count()
        # By (method, resource): bounded, so it does not count as memory the operator kept.
        self.requests: collections.Counter[tuple[str, str]] = collections.Counter()
        self.last_body: dict[tuple[str, str], Any] = {}

    async def request(
        self,
        method: str,
        path: str,  # noqa: ARG002 - the client's signature
        *,
        resource: str,
        body: Any = None,
        params: Mapping[str, str] | None = None,  # noqa: ARG002 - the client's signature
        content_type: str = "application/json",  # noqa: ARG002
    ) -> dict[str, Any]:
        self.requests[method, resource] += 1
        self.last_body[method, resource] = body
        if method == "GET":  # discovery: no monitoring API in this "cluster"
            return {"resources": []}
        if method in {"PATCH", "POST"} and resource in {kind.plural for kind in self._views}:
            kind = next(kind for kind in self._views if kind.plural == resource)
            stored = {**body, "metadata": {**body["metadata"], "uid": f"uid-{next(self._uids)}"}}
            stored["metadata"].setdefault("resourceVersion", str(next(self._uids)))
            self._views[kind].put(stored["metadata"]["uid"], stored)
            return stored
        return {"metadata": {"resourceVersion": str(next(self._uids))}}


def model_deployment(name: str, uid: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "uid": uid,
            "generation": 1,
            "resourceVersion": "1",
        },
        "spec": dict(spec),
    }


class Cluster:
    def __init__(self, **settings: Any) -> None:
        self.model_deployments = View(observe.model_deployment_entry, lambda _key: None)
        self.children: dict[kinds.Kind, View[Any]] = {
            kind: View(functools.partial(observe.child_entry, kind), lambda _key: None)
            for kind in kinds.CHILD_KINDS
        }
        self.pods = View(observe.pod_entry, lambda _key: None)
        self.jobs = View(optimization.job_entry, lambda _key: None)
        self.job_pods = View(optimization.job_pod_entry, lambda _key: None)
        self.api = InMemoryApiServer({**self.children, kinds.JOB: self.jobs})
        config = OperatorConfig(workers=1, artifact_store="pvc://artifacts/", **settings)
        self.resolver = OptimizationResolver(optimization.optimizer_defaults(config), self.api)
        self.resolver.bind(self.jobs, self.job_pods, lambda _key, _delay: None)
        self.controller = Controller(config, self.api, self.resolver)
        self.controller.bind(Indices(self.model_deployments, self.children, self.pods))

    async def create_then_delete(self, count: int, first: int = 0) -> list[str]:
        outcomes = []
        for number in range(first, first + count):
            name = f"md-{number}"
            spec = OPTIMIZED if number % 3 == 0 else SERVED
            self.model_deployments.put(f"md-uid-{number}", model_deployment(name, f"md-uid-{number}", spec))
            outcomes.append(await self.controller.reconcile((NAMESPACE, name)))
            outcomes.append(await self.controller.reconcile((NAMESPACE, name)))
        for number in range(first, first + count):
            # Deleted: the garbage collector takes the children, the watch delivers it all.
            self.model_deployments.drop(f"md-uid-{number}")
            for view in (*self.children.values(), self.jobs):
                for child in list(view.get((NAMESPACE, f"md-{number}"), ())):
                    view.drop(child.uid)
            outcomes.append(await self.controller.reconcile((NAMESPACE, f"md-{number}")))
        return outcomes

    def per_object_state(self) -> dict[str, int]:
        controller, resolver = self.controller, self.resolver
        held = {name: len(getattr(controller, name)) for name in ("_desired", "_uids")}
        held |= {name: len(getattr(controller.applier, name)) for name in ("_applied", "_deleted_uids")}
        held |= {name: len(getattr(controller.reporter, name)) for name in ("_written_status", "_phases")}
        held |= {name: len(getattr(resolver, name)) for name in ("_results", "_served", "_counted_jobs")}
        held["finalizer writes"] = len(controller.finalizers)
        held["replica series"] = sum(
            1
            for metric in prometheus_client.REGISTRY.collect()
            if metric.name == "ferry_operator_modeldeployment_replicas"
            for sample in metric.samples
            if sample.labels.get("namespace") == NAMESPACE
        )
        return held


def test_a_reconcile_creates_the_children_and_the_optimization_job_then_writes_status() -> None:
    cluster = Cluster()
    outcomes = asyncio.run(cluster.create_then_delete(3))
    # md-0 (optimized) waits for its Job, md-1 and md-2 are served as they are; then all three are gone.
    assert outcomes[-3:] == ["gone", "gone", "gone"]
    # md-0: the Job created (status "creating"), then seen running (status "optimizing"); md-1 and md-2:
    # children applied (a new object's first status is skipped), then the status written.
    assert outcomes[:6] == ["status", "status", "applied", "status", "applied", "status"], outcomes
    assert cluster.api.requests["POST", "jobs"] == 1
    applied = {resource for method, resource in cluster.api.requests if method == "PATCH"}
    assert {"services", "deployments", "poddisruptionbudgets", "modeldeployments/status"} <= applied


def test_nothing_kept_per_model_deployment_outlives_it() -> None:
    cluster = Cluster()

    async def scenario() -> tuple[dict[str, int], int, int]:
        # A first thousand warms every cache and interned string; a second must not add to what stays.
        await cluster.create_then_delete(1000)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        await cluster.create_then_delete(1000, first=1000)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        return cluster.per_object_state(), before, after

    state, before, after = asyncio.run(scenario())
    assert state == dict.fromkeys(state, 0), state
    # Flat. A leak of the state of one reconciled object (its desired manifests, its status: several KB)
    # would be several MB after 1,000; what stays is hash tables of the peak size being reallocated
    # (a dict does not shrink when emptied), a few hundred KB however many objects came and went.
    assert after - before < 1024 * 1024, f"{(after - before) / 1024:.0f} KiB kept after 1,000 deletions"


def test_a_file_uri_is_refused_naming_the_field_unless_the_operator_allows_them() -> None:
    spec = spec_with(model={"uri": "file:///srv/models/digits.onnx"})
    refused = Cluster()
    refused.model_deployments.put("md-uid-f", model_deployment("local", "md-uid-f", spec))
    assert asyncio.run(refused.controller.reconcile((NAMESPACE, "local"))) == "status"
    # No serving pods for it: only its status was written.
    assert set(refused.api.requests) == {("PATCH", "modeldeployments/status")}, refused.api.requests
    status = refused.api.last_body["PATCH", "modeldeployments/status"]["status"]
    assert status["phase"] == "Failed"
    (ready,) = [c for c in status["conditions"] if c["type"] == "Ready"]
    assert ready["reason"] == "InvalidSpec"
    assert ready["message"].startswith("spec.model.uri: file:// URIs are for development clusters")
    assert "got file:///srv/models/digits.onnx" in ready["message"]

    allowed = Cluster(allow_file_uris=True)
    allowed.model_deployments.put("md-uid-f", model_deployment("local", "md-uid-f", spec))
    assert asyncio.run(allowed.controller.reconcile((NAMESPACE, "local"))) == "applied"
    assert allowed.api.requests["PATCH", "deployments"] == 1
