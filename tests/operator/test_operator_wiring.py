"""The kopf wiring: what the handler module registers, and the settings that depend on it."""

from __future__ import annotations

import kopf

from ferry_operator import handlers, kinds, wiring
from ferry_operator.config import OperatorConfig
from ferry_operator.kube import KubeClient


def test_only_index_and_event_handlers_so_no_diff_base_is_needed() -> None:
    # wiring.NoDiffBase skips kopf's per-event deep copy of every body, which only change handlers
    # (on.create/on.update/on.field/on.resume) read. Registering one needs kopf's stock storage back.
    registry = kopf.get_default_registry()
    assert handlers.monitoring_crd_event is not None  # the module is imported and registered
    assert registry._watching.get_all_handlers()
    assert not registry._changing.get_all_handlers()
    assert not registry._spawning.get_all_handlers()
    settings = wiring.operator_settings(OperatorConfig())
    assert isinstance(settings.persistence.diffbase_storage, wiring.NoDiffBase)
    assert settings.persistence.diffbase_storage.build(body=kopf.Body({"spec": {"a": 1}})) == {}


def test_the_crd_filter_passes_only_the_monitoring_crds() -> None:
    assert wiring.is_monitoring_crd(name="servicemonitors.monitoring.coreos.com")
    assert wiring.is_monitoring_crd(name="prometheusrules.monitoring.coreos.com")
    assert not wiring.is_monitoring_crd(name="modeldeployments.ferry.dev")


def test_every_watched_kind_has_exactly_one_watch_ferrys_own() -> None:
    # kopf's per-event machinery was half the operator's CPU at 500 ModelDeployments, and kopf ended the
    # process when a watched kind's CRD went away; only the CRDs themselves are kopf's to watch.
    config = OperatorConfig(token_reviewer_role="ferry-token-reviewer")
    caches = wiring.watch_caches(config, KubeClient(), ["team-a", "team-b"], lambda _key: None)
    watched = sorted((i.kind.plural, i.namespace) for i in caches.informers)
    own_kinds = {kinds.MODEL_DEPLOYMENT, *kinds.CHILD_KINDS, kinds.POD, kinds.JOB}
    namespaced = [kind for kind in own_kinds if kind.namespaced]
    # A cluster-scoped kind (the TokenReview bindings) has one watch of the whole cluster.
    assert watched == sorted(
        [(kind.plural, ns) for kind in namespaced for ns in ("team-a", "team-b")]
        + [(kinds.CLUSTER_ROLE_BINDING.plural, None)]
    )
    assert {i.kind for i in caches.informers if i.optional} == set(kinds.MONITORING_KINDS)
    registry = kopf.get_default_registry()
    kopf_watched = {
        handler.selector.any_name if handler.selector else None
        for handler in (*registry._indexing.get_all_handlers(), *registry._watching.get_all_handlers())
    }
    assert kopf_watched == {"customresourcedefinitions"}
    assert {kind.plural for kind in own_kinds}.isdisjoint(kopf_watched)


def test_a_cluster_scoped_watch_keeps_only_the_watched_namespaces_objects() -> None:
    config = OperatorConfig(token_reviewer_role="ferry-token-reviewer")
    caches = wiring.watch_caches(config, KubeClient(), ["team-a"], lambda _key: None)
    (bindings,) = [i for i in caches.informers if i.kind == kinds.CLUSTER_ROLE_BINDING]
    assert bindings.namespace is None
    # The binding's labels, not its (absent) namespace, say whose it is.
    assert bindings._in_scope(bindings._namespace_of(_binding("team-a")))
    assert not bindings._in_scope(bindings._namespace_of(_binding("team-b")))


def test_without_a_token_reviewer_role_cluster_role_bindings_are_not_watched() -> None:
    # No RBAC is needed for them then: the operator makes none (policy.py refuses auth mode kubernetes).
    caches = wiring.watch_caches(OperatorConfig(), KubeClient(), [], lambda _key: None)
    assert kinds.CLUSTER_ROLE_BINDING not in {i.kind for i in caches.informers}
    assert kinds.CLUSTER_ROLE_BINDING not in caches.children


def _binding(namespace: str) -> dict[str, object]:
    return {
        "metadata": {
            "name": f"ferry:tokenreview:{namespace}:digits",
            "labels": {
                kinds.MODEL_DEPLOYMENT_LABEL: "digits",
                kinds.MODEL_DEPLOYMENT_NAMESPACE_LABEL: namespace,
                kinds.MANAGED_BY_LABEL: kinds.MANAGED_BY,
            },
        }
    }
