"""Ferry's own watch caches (ferry_operator.informer): the views' bookkeeping, namespace scoping, and the
list/watch/relist cycle against the real API server."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Mapping
from typing import Any

import kopf
import pytest

from ferry_devcluster import control_plane
from ferry_devcluster.config import ClusterConfig
from ferry_devcluster.testing import Kube
from ferry_operator import informer, kinds
from ferry_operator.config import OperatorConfig
from ferry_operator.informer import Informer, View
from ferry_operator.kube import KubeClient
from ferry_operator.reconcile.controller import Controller

OwnerKey = tuple[str, str]
CONFIG_MAP = kinds.Kind("", "v1", "ConfigMap", "configmaps")
OWNER_LABEL = "test.ferry.dev/owner"


def by_owner_label(body: Mapping[str, Any]) -> tuple[OwnerKey, str] | None:
    """Test extract: the owner is a label, the snapshot the `value` data field."""
    meta = body.get("metadata", {})
    owner = (meta.get("labels") or {}).get(OWNER_LABEL)
    if owner is None:
        return None
    return (str(meta.get("namespace", "")), str(owner)), str((body.get("data") or {}).get("value", ""))


def config_map(name: str, owner: str | None, value: str, namespace: str = "ns") -> dict[str, Any]:
    labels = {} if owner is None else {OWNER_LABEL: owner}
    return {
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "labels": labels},
        "data": {"value": value},
    }


def recording_view() -> tuple[View[str], list[OwnerKey]]:
    changes: list[OwnerKey] = []
    view: View[str] = View(by_owner_label, changes.append)
    return view, changes


def test_a_view_keeps_snapshots_by_owner_and_reports_only_real_changes() -> None:
    view, changes = recording_view()
    view.put("uid-a", config_map("a", "md1", "1"))
    view.put("uid-b", config_map("b", "md1", "2"))
    assert sorted(view[("ns", "md1")]) == ["1", "2"]
    assert changes == [("ns", "md1"), ("ns", "md1")]
    # The same snapshot again (a status-only event the snapshot does not keep): nothing to reconcile.
    view.put("uid-a", config_map("a", "md1", "1"))
    assert len(changes) == 2
    view.put("uid-a", config_map("a", "md1", "3"))
    assert sorted(view[("ns", "md1")]) == ["2", "3"]
    assert len(changes) == 3


def test_an_object_that_changes_owner_leaves_its_old_owner() -> None:
    view, changes = recording_view()
    view.put("uid-a", config_map("a", "md1", "1"))
    view.put("uid-a", config_map("a", "md2", "1"))
    assert ("ns", "md1") not in view
    assert list(view[("ns", "md2")]) == ["1"]
    assert changes == [("ns", "md1"), ("ns", "md1"), ("ns", "md2")]
    # Losing the owner label entirely (no ModelDeployment's any more) drops it too.
    view.put("uid-a", config_map("a", None, "1"))
    assert len(view) == 0
    assert changes[-1] == ("ns", "md2")


def test_drop_reports_the_owner_and_forgets_unknown_objects_quietly() -> None:
    view, changes = recording_view()
    view.put("uid-a", config_map("a", "md1", "1"))
    view.drop("uid-a")
    view.drop("uid-never-seen")
    assert len(view) == 0
    assert changes == [("ns", "md1"), ("ns", "md1")]
    assert view.get(("ns", "md1"), ()) == ()


def test_a_relist_drops_what_was_deleted_meanwhile_but_only_in_its_own_scope() -> None:
    view, changes = recording_view()
    view.put("uid-a", config_map("a", "md1", "1", namespace="one"))
    view.put("uid-b", config_map("b", "md2", "1", namespace="one"))
    view.put("uid-c", config_map("c", "md3", "1", namespace="two"))
    changes.clear()
    # Namespace "one" listed again: b is gone, a unchanged; namespace two is another informer's business.
    view.replace({"uid-a": config_map("a", "md1", "1", namespace="one")}, lambda ns: ns == "one")
    assert sorted(view) == [("one", "md1"), ("two", "md3")]
    assert changes == [("one", "md2")]


@pytest.mark.parametrize(
    ("patterns", "expected"),
    [
        (["ml-*"], {"ml-a": True, "ml-b": True, "web": False}),
        (["!kube-*"], {"ml-a": True, "kube-system": False, "web": True}),
        (
            ["ml-*, !*-pr-*, *pr-123"],
            {"ml-test": True, "ml-pr-123": True, "ml-pr-456": False, "x-pr-123": False},
        ),
        (["ml-*", "web"], {"ml-a": True, "web": True, "webx": False}),
    ],
)
def test_namespace_patterns_match_like_kopfs(patterns: list[str], expected: dict[str, bool]) -> None:
    matches = informer.namespace_matcher(patterns)
    assert {name: matches(name) for name in expected} == expected


def test_scopes_watch_named_namespaces_each_and_patterns_cluster_wide() -> None:
    assert informer.scopes([]) == ([None], None)
    assert informer.scopes(["a", "b", "a"]) == (["a", "b"], None)
    places, namespace_filter = informer.scopes(["a", "ml-*"])
    assert places == [None]
    assert namespace_filter is not None
    assert namespace_filter("a")
    assert namespace_filter("ml-x")
    assert not namespace_filter("b")


# --- against the real API server ------------------------------------------------------------------------


async def _eventually(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _client(kube: Kube, monkeypatch: pytest.MonkeyPatch) -> KubeClient:
    monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig))
    info = kopf.login_with_kubeconfig(settings=kopf.OperatorSettings())
    assert info is not None
    client = KubeClient()
    client.login(info)
    return client


@pytest.mark.cluster
def test_an_informer_lists_then_follows_creates_updates_and_deletes(
    kube: Kube, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def apply(name: str, owner: str, value: str) -> None:
        manifest = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "labels": {OWNER_LABEL: owner, "test.ferry.dev/watched": "yes"}},
            "data": {"value": value},
        }
        kube.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(manifest))

    apply("before", "md1", "listed")
    # Not selected by the label selector: must never show up.
    kube.kubectl("create", "configmap", "unlabelled", "-n", namespace, "--from-literal=value=x")

    async def scenario() -> None:
        client = _client(kube, monkeypatch)
        view, changes = recording_view()
        watcher = Informer(
            client, CONFIG_MAP, [view], namespace=namespace, label_selector="test.ferry.dev/watched=yes"
        )
        task = asyncio.create_task(watcher.run())
        try:
            await asyncio.wait_for(watcher.synced.wait(), 30)
            assert list(view[(namespace, "md1")]) == ["listed"]
            await asyncio.to_thread(apply, "after", "md2", "watched")
            await _eventually(lambda: (namespace, "md2") in view, "the created object")
            await asyncio.to_thread(apply, "after", "md2", "changed")
            await _eventually(lambda: list(view[(namespace, "md2")]) == ["changed"], "the update")
            await asyncio.to_thread(kube.kubectl, "delete", "configmap", "before", "-n", namespace)
            await _eventually(lambda: (namespace, "md1") not in view, "the delete")
            assert sorted(view) == [(namespace, "md2")]
            assert changes.count((namespace, "md1")) == 2  # listed, deleted
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await client.close()

    asyncio.run(scenario())


def _compact_etcd(kube: Kube, revision: str) -> None:
    """Compact the devcluster's etcd at `revision` (through etcd's JSON gateway): what the API server
    does every five minutes, done now, so that older resourceVersions are really gone."""
    config = ClusterConfig.load(kube.kubeconfig.resolve().parent.parent)
    assert config is not None, f"no devcluster config next to {kube.kubeconfig}"
    request = urllib.request.Request(
        f"http://127.0.0.1:{config.port('etcd')}/v3/kv/compaction",
        data=json.dumps({"revision": revision, "physical": True}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200


@pytest.mark.cluster
def test_a_watch_from_a_version_the_server_no_longer_keeps_means_list_again(
    kube: Kube, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real 410 needs history the server no longer has. A watch cache replays a fresh cluster's state for
    # any old resourceVersion, and etcd keeps every revision until the API server compacts it (every five
    # minutes). So the test watches PodTemplates, which the devcluster serves without a watch cache, after
    # compacting etcd at the current revision.
    if not kube.is_devcluster:
        pytest.skip("compacts etcd directly: only on the devcluster")
    kube.kubectl("create", "configmap", "marker", "-n", namespace)
    revision = kube.kubectl(
        "get", "configmap", "marker", "-n", namespace, "-o", "jsonpath={.metadata.resourceVersion}"
    ).stdout.strip()
    _compact_etcd(kube, revision)

    async def scenario() -> None:
        client = _client(kube, monkeypatch)
        view, _ = recording_view()
        watcher = Informer(
            client,
            kinds.Kind("", "v1", "PodTemplate", control_plane.WATCH_CACHE_OFF),
            [view],
            namespace=namespace,
            label_selector="x=y",
            server_timeout_seconds=10,
            client_timeout_seconds=20,
        )
        try:
            # (A devcluster started before --watch-cache-sizes was added answers with the cache's replay and
            # this does not raise: `devcluster down && devcluster up` picks the flag up.)
            with pytest.raises(informer.Expired):
                await watcher.watch_from("1")
            # And run() recovers by listing again: the list succeeds and the cache says it is synced.
            task = asyncio.create_task(watcher.run())
            await asyncio.wait_for(watcher.synced.wait(), 30)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        finally:
            await client.close()

    asyncio.run(scenario())


def test_a_crashed_watch_cache_fails_the_health_check_and_no_worker_runs_unsynced() -> None:
    # A bug in an informer (not an API error: those are retried) must not leave the operator serving a
    # frozen cache while /healthz says ok.
    class CrashingInformer:
        kind = CONFIG_MAP
        optional = False

        def __init__(self) -> None:
            self.synced = asyncio.Event()

        async def run(self) -> None:
            await asyncio.sleep(0)
            raise RuntimeError("a bug in the informer")

    async def scenario() -> tuple[bool, str, int]:
        controller = Controller(OperatorConfig(workers=2), KubeClient())
        reconciled: list[OwnerKey] = []

        async def reconcile(key: OwnerKey) -> str:
            reconciled.append(key)
            return "noop"

        controller.reconcile = reconcile  # type: ignore[method-assign]
        controller.enqueue(("ns", "md"))
        controller.start([CrashingInformer()])  # type: ignore[list-item]
        for _ in range(20):
            await asyncio.sleep(0.01)
        healthy, reason = controller.healthy()
        await controller.stop()
        return healthy, reason, len(reconciled)

    healthy, reason, reconciles = asyncio.run(scenario())
    assert not healthy
    assert "ferry-watch-caches" in reason
    assert "a bug in the informer" in reason
    assert reconciles == 0


WIDGET = kinds.Kind("informer-test.ferry.dev", "v1", "Widget", "widgets")
WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.informer-test.ferry.dev"},
    "spec": {
        "group": "informer-test.ferry.dev",
        "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "listKind": "WidgetList"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "data": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                        },
                    }
                },
            }
        ],
    },
}


@pytest.mark.cluster
def test_an_optional_kind_whose_crd_comes_and_goes_is_an_empty_view_and_never_ends_the_informer(
    kube: Kube, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The Prometheus Operator's kinds are optional: a 404 (CRD absent, or deleted under a running watch)
    # is "not served", not a failure. kopf's own watch of ServiceMonitors ended the operator here.
    crd = json.dumps(WIDGET_CRD)
    kube.kubectl("delete", "crd", WIDGET_CRD["metadata"]["name"], "--ignore-not-found", "--wait")

    def widget(name: str, owner: str) -> None:
        manifest = {
            "apiVersion": WIDGET.api_version,
            "kind": "Widget",
            "metadata": {"name": name, "labels": {OWNER_LABEL: owner}},
            "data": {"value": name},
        }
        kube.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(manifest))

    async def scenario() -> None:
        client = _client(kube, monkeypatch)
        view, _ = recording_view()
        watcher = Informer(
            client,
            WIDGET,
            [view],
            namespace=namespace,
            label_selector=OWNER_LABEL,
            optional=True,
            absent_recheck_seconds=300,  # far beyond the test: only wake() can make it list again in time
        )
        task = asyncio.create_task(watcher.run())
        try:
            await asyncio.wait_for(watcher.synced.wait(), 30)
            assert not watcher.served
            assert len(view) == 0
            # The CRD arrives; the CRD event wakes the informer.
            await asyncio.to_thread(kube.kubectl, "apply", "-f", "-", stdin=crd)
            await asyncio.to_thread(
                kube.kubectl, "wait", "--for=condition=Established", f"crd/{WIDGET_CRD['metadata']['name']}"
            )
            await asyncio.to_thread(widget, "one", "md1")
            watcher.wake()
            await _eventually(lambda: (namespace, "md1") in view, "the widget listed after the wake")
            assert watcher.served
            # And goes away under the running watch: the view empties, the informer keeps running.
            await asyncio.to_thread(kube.kubectl, "delete", "crd", WIDGET_CRD["metadata"]["name"], "--wait")
            await _eventually(lambda: len(view) == 0, "the widgets gone with their CRD")
            await _eventually(lambda: not watcher.served, "the kind seen as not served", timeout=60)
            assert not task.done(), task
            # Back again: served and listed again at the next wake.
            await asyncio.to_thread(kube.kubectl, "apply", "-f", "-", stdin=crd)
            await asyncio.to_thread(
                kube.kubectl, "wait", "--for=condition=Established", f"crd/{WIDGET_CRD['metadata']['name']}"
            )
            await asyncio.to_thread(widget, "two", "md2")
            watcher.wake()
            await _eventually(lambda: (namespace, "md2") in view, "the widget after the CRD came back")
            assert not task.done()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await client.close()
            await asyncio.to_thread(
                kube.kubectl, "delete", "crd", WIDGET_CRD["metadata"]["name"], "--ignore-not-found"
            )

    asyncio.run(scenario())
