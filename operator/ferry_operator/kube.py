"""A small asynchronous Kubernetes API client for the operator's writes.

kopf watches (its own connection); this client does the few writes the reconcile needs: server-side
apply, delete, status merge-patch and event creation. It is built from the credentials kopf logged in
with, shares the event loop with kopf (no threads), and counts every request by verb, resource and code,
so the API cost per ModelDeployment is measurable (the 500-object scale target depends on it).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import aiohttp
import kopf

from ferry_operator import kinds, metrics

APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
MERGE_PATCH_CONTENT_TYPE = "application/merge-patch+json"


class ApiError(Exception):
    """The API server refused a request. `status` is the HTTP code, `message` the server's explanation."""

    def __init__(
        self, status: int, reason: str, message: str, method: str, path: str, *, retry_after: float = 0.0
    ) -> None:
        super().__init__(f"{method} {path}: {status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        # Seconds the server asked us to wait (Retry-After on 429/503), 0 when it did not say.
        self.retry_after = retry_after

    @property
    def permanent(self) -> bool:
        """A request that will fail again unchanged until something else changes (spec, RBAC, CRDs)."""
        return self.status in (400, 403, 404, 405, 415, 422)


class KubeClient:
    """Writes to the API server with the operator's credentials."""

    def __init__(self, max_connections: int = 32) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        # Watches hold their connection for minutes: a pool of their own, so they never take the slots
        # the reconcile's writes need.
        self._watch_session: aiohttp.ClientSession | None = None
        self._server = ""
        self._ready = asyncio.Event()

    def login(self, info: kopf.ConnectionInfo) -> None:
        """Adopt the credentials kopf logged in with (called from the login handler)."""
        old = (self._session, self._watch_session)
        self._server = info.server.rstrip("/")
        ssl = info.as_ssl_context()
        headers = {**info.as_http_headers(), "User-Agent": "ferry-operator"}
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._max_connections, ssl=ssl),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=30),
        )
        self._watch_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ssl=ssl), headers=headers
        )
        self._ready.set()
        for session in old:
            if session is not None:
                asyncio.get_running_loop().create_task(session.close())

    async def close(self) -> None:
        for session in (self._session, self._watch_session):
            if session is not None:
                await session.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        resource: str,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        await self._ready.wait()
        assert self._session is not None
        data = None if body is None else json.dumps(body, separators=(",", ":"))
        headers = {"Content-Type": content_type} if body is not None else {}
        code = "error"
        try:
            async with self._session.request(
                method, self._server + path, data=data, params=params, headers=headers
            ) as response:
                code = str(response.status)
                payload = _decode(await response.text())
                if response.status >= 400:
                    raise _api_error(response, payload, method, path)
                return payload if isinstance(payload, dict) else {}
        finally:
            metrics.API_REQUESTS.labels(verb=method, resource=resource, code=code).inc()

    async def watch(
        self, path: str, *, resource: str, params: Mapping[str, str], read_timeout: float
    ) -> AsyncGenerator[dict[str, Any], None]:
        """The events of a watch request, decoded, until the server ends the stream. `read_timeout`: give
        up on a connection silent for that long (a half-open TCP connection would otherwise hang forever;
        bookmarks and the server's own timeout keep a healthy one talking)."""
        await self._ready.wait()
        assert self._watch_session is not None
        code = "error"
        try:
            async with self._watch_session.get(
                self._server + path,
                params=params,
                timeout=aiohttp.ClientTimeout(total=None, connect=30, sock_read=read_timeout),
            ) as response:
                code = str(response.status)
                if response.status >= 400:
                    raise _api_error(response, _decode(await response.text()), "WATCH", path)
                # Lines can be longer than aiohttp's line reader allows (objects with large annotations),
                # so the stream is split here.
                pending = b""
                async for chunk in response.content.iter_any():
                    *lines, pending = (pending + chunk).split(b"\n")
                    for line in lines:
                        if line:
                            event = json.loads(line)
                            if not isinstance(event, dict):
                                raise ValueError(f"watch event is not an object: {line[:80]!r}")
                            yield event
        finally:
            metrics.API_REQUESTS.labels(verb="WATCH", resource=resource, code=code).inc()

    async def apply(
        self, kind: kinds.Kind, manifest: Mapping[str, Any], field_manager: str
    ) -> dict[str, Any]:
        """Server-side apply: the manifest states every field this manager owns; fields it no longer
        lists are released (and removed when nobody else owns them)."""
        meta = manifest["metadata"]
        return await self.request(
            "PATCH",
            kind.path(meta.get("namespace"), meta["name"]),
            resource=kind.plural,
            body=manifest,
            # force: Ferry is the only writer of the fields it sets on its own children; a hand edit
            # (another manager) must not block convergence back to the spec.
            params={"fieldManager": field_manager, "force": "true"},
            content_type=APPLY_CONTENT_TYPE,
        )

    async def delete(self, kind: kinds.Kind, namespace: str | None, name: str, uid: str) -> None:
        """Delete exactly the object with `uid` (a same-named successor is left alone); `namespace` None
        for a cluster-scoped kind."""
        try:
            await self.request(
                "DELETE",
                kind.path(namespace, name),
                resource=kind.plural,
                body={"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": uid}},
            )
        except ApiError as error:
            if error.status not in (404, 409):
                raise

    async def set_finalizers(
        self, namespace: str, name: str, finalizers: tuple[str, ...], resource_version: str
    ) -> dict[str, Any]:
        """Replace a ModelDeployment's finalizers. A merge patch replaces the whole list, so the
        resourceVersion it was read at is a precondition: a concurrent change (another controller's
        finalizer) answers 409 and the caller reads again, instead of overwriting it."""
        return await self.request(
            "PATCH",
            kinds.MODEL_DEPLOYMENT.path(namespace, name),
            resource=kinds.MODEL_DEPLOYMENT.plural,
            body={"metadata": {"finalizers": list(finalizers), "resourceVersion": resource_version}},
            content_type=MERGE_PATCH_CONTENT_TYPE,
        )

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request(
            "PATCH",
            kinds.MODEL_DEPLOYMENT.path(namespace, name, "status"),
            resource=f"{kinds.MODEL_DEPLOYMENT.plural}/status",
            body={"status": status},
            content_type=MERGE_PATCH_CONTENT_TYPE,
        )

    async def create_event(self, namespace: str, event: Mapping[str, Any]) -> None:
        await self.request("POST", kinds.EVENT.path(namespace), resource=kinds.EVENT.plural, body=event)

    async def served_resources(self, group_version: str) -> frozenset[str]:
        """The resources (plural names) the API serves in `group_version`; none when the group is not
        installed (monitoring.coreos.com/v1 -> servicemonitors, prometheusrules, ...)."""
        try:
            listing = await self.request("GET", f"/apis/{group_version}", resource="discovery")
        except ApiError as error:
            if error.status == 404:
                return frozenset()
            raise
        return frozenset(str(item.get("name", "")) for item in listing.get("resources", []))


def _decode(text: str) -> Any:
    try:
        return json.loads(text) if text else {}
    except ValueError:
        # Some errors (e.g. 404 for an API group that is not installed) come as plain text.
        return {"message": text.strip()}


def _api_error(response: aiohttp.ClientResponse, payload: Any, method: str, path: str) -> ApiError:
    message = payload.get("message", "") if isinstance(payload, dict) else str(payload)
    return ApiError(
        response.status,
        response.reason or "",
        str(message),
        method,
        path,
        retry_after=_retry_after(response.headers.get("Retry-After")),
    )


def _retry_after(value: str | None) -> float:
    """Retry-After in seconds (the API server sends delta-seconds; an HTTP date or junk counts as unsaid),
    capped so a hostile or broken proxy cannot park a reconcile for hours."""
    try:
        return min(max(float(value or 0), 0.0), 300.0)
    except ValueError:
        return 0.0


# Statuses that mean "try again later": conflicts, throttling, and the server or a proxy in between
# failing for now. (501 Not Implemented will not change by waiting.)
_TEMPORARY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


def temporary(error: BaseException) -> bool:
    """Whether a failed request is worth retrying unchanged: a temporary status, or the connection failing
    (reset, refused, timed out) before an answer came."""
    if isinstance(error, ApiError):
        return error.status in _TEMPORARY_STATUSES
    return isinstance(error, aiohttp.ClientError | OSError | TimeoutError)
