"""Ferry's own watch caches (list, then watch) for the kinds whose events come by the thousand.

kopf handles every watch event with its full per-object machinery (a worker task per object, the handler
registry, filters, the index and event handlers); at 500 ModelDeployments that was about half of the
operator's CPU, 1-2 ms per event for ~10 events per object, while the cluster itself needs the same two
cores. An informer here does what client-go's informers do, and no more: list, watch from the list's
resourceVersion (with bookmarks, so a resumed watch starts from a recent version), relist when the server
says the version is too old (410 Gone), and keep one small snapshot per object in views keyed by the
owning ModelDeployment. A view tells the controller which ModelDeployment to reconcile when a snapshot
changes; an event that changes nothing the reconcile reads (most pod status churn) enqueues nothing.

The reconcile must not run on a partial cache (it would take missing children for deleted ones), so the
controller waits for every informer's first list before its workers start (`Informer.synced`).

A kind that comes and goes with its CRD (the Prometheus Operator's ServiceMonitor and PrometheusRule) is
watched by an `optional` informer: a 404 on its list or watch means "not served now", which is an empty,
synced view, listed again with backoff or at once when `wake()` says the CRDs changed. Nothing here ends
the operator because an optional kind went away (kopf's own watches of such kinds did).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import random
import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import aiohttp

from ferry_operator import kinds
from ferry_operator.kube import ApiError, KubeClient

logger = logging.getLogger("ferry_operator.informer")

V = TypeVar("V")
OwnerKey = tuple[str, str]  # (namespace, ModelDeployment name)
Extract = Callable[[Mapping[str, Any]], "tuple[OwnerKey, V] | None"]

# A namespace name as the API validates it (RFC 1123 label): anything else in --namespace is a pattern.
_LITERAL_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Items per page of the initial list: bounds one response's size, not the number of requests that matter.
_LIST_PAGE = 500
# Delay before watching again after a failed watch or list (doubling up to the maximum, with jitter).
_BACKOFF_SECONDS = (0.5, 30.0)
# Failures the API or the network recovers from: retried with backoff. Anything else is a bug.
_RETRIED = (ApiError, aiohttp.ClientError, TimeoutError, OSError, ValueError)


class View(Mapping[OwnerKey, Collection[V]]):
    """The snapshots of one kind's objects by owning ModelDeployment: what the reconcile reads.

    `extract` turns an object into (owner key, snapshot), or None for objects that belong to no
    ModelDeployment. `on_change(key)` is called when the snapshots under `key` change; snapshots that
    compare equal count as no change.
    """

    def __init__(self, extract: Extract[V], on_change: Callable[[OwnerKey], None]) -> None:
        self._extract = extract
        self._on_change = on_change
        self._by_key: dict[OwnerKey, dict[str, V]] = {}
        # uid -> owner key, so an object whose owner label changes leaves its old owner's entry.
        self._owner_of: dict[str, OwnerKey] = {}

    # --- Mapping: the read side -------------------------------------------------------------------------

    def __getitem__(self, key: OwnerKey) -> Collection[V]:
        return tuple(self._by_key[key].values())

    def __iter__(self) -> Iterator[OwnerKey]:
        return iter(tuple(self._by_key))

    def __len__(self) -> int:
        return len(self._by_key)

    # --- the informer's side ----------------------------------------------------------------------------

    def put(self, uid: str, body: Mapping[str, Any]) -> None:
        entry = self._extract(body)
        if entry is None:
            self.drop(uid)
            return
        key, snapshot = entry
        previous_key = self._owner_of.get(uid)
        if previous_key is not None and previous_key != key:
            self.drop(uid)
        objects = self._by_key.setdefault(key, {})
        if objects.get(uid) == snapshot:
            return
        objects[uid] = snapshot
        self._owner_of[uid] = key
        self._on_change(key)

    def drop(self, uid: str) -> None:
        key = self._owner_of.pop(uid, None)
        if key is None:
            return
        objects = self._by_key.get(key, {})
        objects.pop(uid, None)
        if not objects:
            self._by_key.pop(key, None)
        self._on_change(key)

    def replace(self, bodies: Mapping[str, Mapping[str, Any]], in_scope: Callable[[str], bool]) -> None:
        """A fresh list of one scope (uid -> object): objects missing from it were deleted meanwhile."""
        for uid, key in list(self._owner_of.items()):
            if uid not in bodies and in_scope(key[0]):
                self.drop(uid)
        for uid, body in bodies.items():
            self.put(uid, body)


class Expired(Exception):
    """The watch's resourceVersion is older than the server keeps: list again."""


class NotServed(Exception):
    """The API server does not serve an optional kind (its CRD is not installed): an empty view."""


class Informer:
    """List and watch one kind in one scope (a namespace, or the cluster with an optional namespace filter),
    feeding every object to `views`. `run()` runs until cancelled, reconnecting on its own."""

    def __init__(
        self,
        client: KubeClient,
        kind: kinds.Kind,
        views: Sequence[View[Any]],
        *,
        namespace: str | None,
        label_selector: str,
        namespace_filter: Callable[[str], bool] | None = None,
        server_timeout_seconds: int = 300,
        client_timeout_seconds: int = 330,
        optional: bool = False,
        absent_recheck_seconds: float = 60.0,
        namespace_of: Callable[[Mapping[str, Any]], str] | None = None,
    ) -> None:
        self.kind = kind
        # A 404 means the kind is not served now (CRD absent), not an error; see the module docstring.
        self.optional = optional
        self.served = True
        self.views = tuple(views)
        self.namespace = namespace
        self.synced = asyncio.Event()
        self._client = client
        self._label_selector = label_selector
        self._namespace_filter = namespace_filter
        self._server_timeout = server_timeout_seconds
        self._client_timeout = client_timeout_seconds
        self._path = kind.path(namespace) if namespace is not None else kind.cluster_path()
        self._absent_recheck = absent_recheck_seconds
        # Which namespace an object counts for (the filter's input): its own, unless the kind is
        # cluster-scoped and its objects name one (observe.labelled_namespace).
        self._namespace_of = namespace_of or _own_namespace
        self._wake = asyncio.Event()

    def __repr__(self) -> str:
        return f"Informer({self.kind.plural}, {self.namespace or 'all namespaces'})"

    def _in_scope(self, namespace: str) -> bool:
        if self.namespace is not None:
            return namespace == self.namespace
        return self._namespace_filter is None or self._namespace_filter(namespace)

    def wake(self) -> None:
        """List again now, ending any backoff: the kind's CRD was created or deleted."""
        self._wake.set()

    async def run(self) -> None:
        failures = 0
        absences = 0
        while True:
            self._wake.clear()
            try:
                version = await self._list()
                failures = absences = 0
                self._set_served(True)
                self.synced.set()
                while True:
                    try:
                        version = await self.watch_from(version)
                        failures = 0
                    except _RETRIED as error:
                        if isinstance(error, ApiError) and error.status == 410:
                            raise Expired from error
                        if self.optional and isinstance(error, ApiError) and error.status == 404:
                            raise NotServed from error
                        failures += 1
                        delay = _backoff(failures)
                        logger.warning("watch of %r failed (again in %.1f s): %s", self, delay, error)
                        await self._sleep(delay)
            except Expired:
                logger.info("watch of %r expired; listing again", self)
            except NotServed:
                # Nothing of the kind exists while it is not served: an empty view, and the reconcile may
                # run (it does not create children of kinds discovery says are absent).
                for view in self.views:
                    view.replace({}, self._in_scope)
                self._set_served(False)
                self.synced.set()
                absences += 1
                # Soon after a wake (a CRD event can come before the API serves the kind), then rarely.
                if await self._sleep(min(self._absent_recheck, _backoff(absences))):
                    absences = 0
            except _RETRIED as error:
                failures += 1
                delay = _backoff(failures)
                logger.warning("list of %r failed (again in %.1f s): %s", self, delay, error)
                await self._sleep(delay)

    def _set_served(self, served: bool) -> None:
        if served != self.served:
            logger.info("%r: %s", self, "the kind is served again" if served else "the kind is not served")
        self.served = served

    async def _sleep(self, seconds: float) -> bool:
        """Sleep, or less when woken; True when woken."""
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _list(self) -> str:
        bodies: dict[str, Mapping[str, Any]] = {}
        version = ""
        token = ""
        while True:
            params = {"labelSelector": self._label_selector, "limit": str(_LIST_PAGE)}
            if token:
                params["continue"] = token
            try:
                page = await self._client.request("GET", self._path, resource=self.kind.plural, params=params)
            except ApiError as error:
                if self.optional and error.status == 404:
                    raise NotServed from error
                raise
            metadata = page.get("metadata") or {}
            version = str(metadata.get("resourceVersion", ""))
            for item in page.get("items") or []:
                if self._in_scope(self._namespace_of(item)):
                    bodies[str((item.get("metadata") or {}).get("uid", ""))] = item
            token = str(metadata.get("continue") or "")
            if not token:
                break
        for view in self.views:
            view.replace(bodies, self._in_scope)
        return version

    async def watch_from(self, version: str) -> str:
        """Watch from `version` until the server ends the stream; returns the last version seen."""
        params = {
            "labelSelector": self._label_selector,
            "watch": "true",
            "allowWatchBookmarks": "true",
            "resourceVersion": version,
            "timeoutSeconds": str(self._server_timeout),
        }
        events = self._client.watch(
            self._path, resource=self.kind.plural, params=params, read_timeout=self._client_timeout
        )
        async with contextlib.aclosing(events):
            async for event in events:
                kind = event.get("type")
                body = event.get("object") or {}
                if kind == "ERROR":
                    code = int(body.get("code") or 0)
                    if code == 410:
                        raise Expired
                    raise ApiError(
                        code, str(body.get("reason", "")), str(body.get("message", "")), "WATCH", self._path
                    )
                meta = body.get("metadata") or {}
                version = str(meta.get("resourceVersion") or version)
                if kind == "BOOKMARK" or not self._in_scope(self._namespace_of(body)):
                    continue
                uid = str(meta.get("uid", ""))
                for view in self.views:
                    if kind == "DELETED":
                        view.drop(uid)
                    else:
                        view.put(uid, body)
        return version


def _own_namespace(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("namespace", ""))


def _backoff(failures: int) -> float:
    low, high = _BACKOFF_SECONDS
    delay: float = min(high, low * 2.0 ** min(failures - 1, 10))
    return delay * random.uniform(0.8, 1.2)


def namespace_matcher(patterns: Sequence[str]) -> Callable[[str], bool]:
    """kopf's namespace pattern semantics (`--namespace 'ml-*'`, `'!kube-*'`, comma-separated globs), so the
    informers watch exactly what kopf's own watches do."""

    def matches(namespace: str) -> bool:
        return any(_match_pattern(namespace, pattern) for pattern in patterns)

    return matches


def _match_pattern(name: str, pattern: str) -> bool:
    globs = [glob.strip() for glob in pattern.split(",")]
    if not globs or globs[0].startswith("!"):
        globs.insert(0, "*")
    matches = first = fnmatch.fnmatchcase(name, globs[0])
    for glob in globs[1:]:
        if glob.startswith("!"):
            matches = matches and not fnmatch.fnmatchcase(name, glob[1:])
        else:
            matches = matches or (first and fnmatch.fnmatchcase(name, glob))
    return matches


def scopes(namespaces: Sequence[str]) -> tuple[list[str | None], Callable[[str], bool] | None]:
    """Where to list and watch: each named namespace on its own (namespaced RBAC suffices), or the whole
    cluster, filtered when any name is a pattern."""
    if not namespaces:
        return [None], None
    if all(_LITERAL_NAMESPACE.match(name) for name in namespaces):
        return list(dict.fromkeys(namespaces)), None
    return [None], namespace_matcher(namespaces)


async def wait_synced(informers: Collection[Informer]) -> None:
    await asyncio.gather(*(informer.synced.wait() for informer in informers))


async def run_all(informers: Collection[Informer]) -> None:
    """Run every informer until cancelled; one that crashes (a bug, not an API error) takes the others
    down with it, so the operator's health check reports it instead of serving a frozen cache."""
    tasks = [asyncio.create_task(informer.run(), name=repr(informer)) for informer in informers]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
