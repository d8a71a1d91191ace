"""Who may call the model: bearer tokens from a directory, or Kubernetes service account tokens.

`Authenticator.check` takes the request's Authorization header and answers at once with a `Verdict`
when it can (bearer tokens; a cached TokenReview), or with a future the transport waits on (a
TokenReview in flight). The transports (protocol/rest/server.py, protocol/grpc/server.py) gate the
inference, feedback, generation and metadata endpoints with it; health endpoints stay open for probes.

- `bearer`: every file in `--auth-token-dir` whose name does not start with "." holds one accepted
  token. That is the layout of a Secret mounted as a volume (one file per key, beside the kubelet's
  `..data` links), so editing the Secret rotates the tokens without a restart: the directory is looked
  at again at most once a second, and a new set replaces the old one as a whole.
- `kubernetes`: the token is sent to the API server's TokenReview API with the pod's own service
  account token, as kube-rbac-proxy and the API server's webhook authenticator do. Answers are cached by
  the token's SHA-256 (authenticated ones for `--auth-cache-seconds`, refused ones for at most
  `_NEGATIVE_CACHE_SECONDS`, so a revoked token stops working soon and a client retrying a bad token
  cannot make one review per request), one review per token is in flight at a time, and at most
  `_MAX_REVIEWS_IN_FLIGHT` reviews run at once: beyond that a request is answered 503 with Retry-After
  rather than queued without bound. A review that fails (API server unreachable, 5xx) is a 503, never a
  401: the client did nothing wrong.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import ssl
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from ferry_runtime.errors import FerryError, PermissionDenied, Unauthenticated, Unavailable

log = logging.getLogger(__name__)

# The outcomes of ferry_auth_decisions_total.
ALLOWED: Final = "allowed"
MISSING: Final = "missing"  # no Authorization header, or not a Bearer one: 401
INVALID: Final = "invalid"  # a token nobody issued, or an expired one: 401
FORBIDDEN: Final = "forbidden"  # an authenticated identity that is not on the allowed list: 403
UNAVAILABLE: Final = "unavailable"  # the token could not be checked now: 503
OUTCOMES: Final = (ALLOWED, MISSING, INVALID, FORBIDDEN, UNAVAILABLE)

SERVICE_ACCOUNT_DIR: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_RELOAD_SECONDS: Final = 1.0
_NEGATIVE_CACHE_SECONDS: Final = 2.0
_CACHE_ENTRIES: Final = 4096
_MAX_REVIEWS_IN_FLIGHT: Final = 32
_REVIEW_TIMEOUT_SECONDS: Final = 5.0
# RFC 6750 2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=")


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: str
    message: str = ""
    subject: str = ""

    @property
    def allowed(self) -> bool:
        return self.outcome == ALLOWED


class Authenticator(Protocol):
    scheme_hint: str

    def check(self, authorization: bytes | None) -> Verdict | asyncio.Future[Verdict]:
        """The verdict on a request's Authorization header, or a future of it."""

    def close(self) -> None: ...


def refusal(verdict: Verdict, challenge: str) -> FerryError | None:
    """The error a refused request is answered with (401, 403, 503), or None when it is admitted."""
    outcome = verdict.outcome
    if outcome == ALLOWED:
        return None
    if outcome == FORBIDDEN:
        return PermissionDenied(verdict.message)
    if outcome == UNAVAILABLE:
        return Unavailable(verdict.message, retry_after_seconds=1)
    return Unauthenticated(verdict.message, challenge, invalid_token=outcome == INVALID)


def bearer_token(authorization: bytes | None) -> bytes | Verdict:
    """The token of an `Authorization: Bearer <token>` header, or the verdict on a header without one."""
    if authorization is None:
        return Verdict(MISSING, "this endpoint needs an 'Authorization: Bearer <token>' header; none came")
    scheme, _, token = authorization.strip().partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer":
        shown = scheme[:32].decode("latin-1")
        return Verdict(MISSING, f"the Authorization header must use the Bearer scheme, not {shown!r}")
    if not token or not set(token) <= _B64TOKEN:
        return Verdict(INVALID, "the bearer token is empty or has characters a token cannot have (RFC 6750)")
    return token


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


class TokenDirectory:
    """The accepted tokens: one per file in a directory (a mounted Secret), reread when it changes."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._clock = clock
        self._checked_at = float("-inf")
        self._signature: tuple[tuple[str, int, int, int], ...] | None = None
        # SHA-256 of each token: membership in a set of digests leaks nothing usable about a token's
        # bytes through timing, where comparing the tokens themselves byte by byte would.
        self._digests: frozenset[bytes] = frozenset()

    def digests(self) -> frozenset[bytes]:
        now = self._clock()
        if now - self._checked_at >= _RELOAD_SECONDS:
            self._checked_at = now
            self._reload()
        return self._digests

    def _files(self) -> list[Path]:
        return sorted(
            entry for entry in self.path.iterdir() if not entry.name.startswith(".") and entry.is_file()
        )

    def _reload(self) -> None:
        try:
            files = self._files()
            signature = tuple(
                (file.name, (stat := file.stat()).st_ino, stat.st_mtime_ns, stat.st_size) for file in files
            )
            if signature == self._signature:
                return
            tokens = [file.read_bytes().strip() for file in files]
        except OSError as error:
            # Keep the tokens read last: a Secret volume swaps its files atomically, so this is the
            # directory going away or unreadable, and refusing every client would turn that into an outage.
            log.error(
                "cannot read the bearer tokens in %s: %s; keeping the %d read before",
                self.path,
                error,
                len(self._digests),
            )
            return
        accepted = frozenset(_digest(token) for token in tokens if token)
        if not accepted:
            log.error("%s holds no token: every authenticated request is refused", self.path)
        elif self._signature is not None:
            log.info("bearer tokens reloaded from %s: %d accepted", self.path, len(accepted))
        self._signature, self._digests = signature, accepted


class BearerAuthenticator:
    scheme_hint = 'Bearer realm="ferry"'

    def __init__(self, tokens: TokenDirectory) -> None:
        self.tokens = tokens

    def check(self, authorization: bytes | None) -> Verdict | asyncio.Future[Verdict]:
        token = bearer_token(authorization)
        if isinstance(token, Verdict):
            return token
        if _digest(token) in self.tokens.digests():
            return Verdict(ALLOWED)
        return Verdict(INVALID, "the bearer token is not one this model accepts")

    def close(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class TokenReviewConfig:
    api_server: str
    token_file: Path
    ca_file: Path | None
    audiences: tuple[str, ...] = ()
    # `namespace/name` of the service accounts that may call; empty: any authenticated identity.
    allowed_service_accounts: tuple[str, ...] = ()
    cache_seconds: float = 10.0


def in_cluster_api_server(environ: dict[str, str] | os._Environ[str] = os.environ) -> str:
    host, port = environ.get("KUBERNETES_SERVICE_HOST", ""), environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        return ""
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


class TokenReviewer:
    """Asks the API server about one token (blocking; run on the authenticator's threads)."""

    def __init__(self, config: TokenReviewConfig) -> None:
        self.config = config
        self._context = ssl.create_default_context(
            cafile=str(config.ca_file) if config.ca_file is not None else None
        )
        self._credential: tuple[tuple[int, int], str] | None = None

    def _own_token(self) -> str:
        # The pod's projected token is rotated by the kubelet: read again whenever the file changes.
        stat = self.config.token_file.stat()
        key = (stat.st_mtime_ns, stat.st_size)
        if self._credential is None or self._credential[0] != key:
            self._credential = (key, self.config.token_file.read_text().strip())
        return self._credential[1]

    def review(self, token: bytes) -> Verdict:
        config = self.config
        spec: dict[str, Any] = {"token": token.decode("ascii")}
        if config.audiences:
            spec["audiences"] = list(config.audiences)
        body = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec})
        try:
            request = urllib.request.Request(
                f"{config.api_server}/apis/authentication.k8s.io/v1/tokenreviews",
                data=body.encode(),
                method="POST",
                headers={
                    "Authorization": f"Bearer {self._own_token()}",
                    "Content-Type": "application/json",
                    "Accept": "application/json",
                },
            )
            with urllib.request.urlopen(
                request, timeout=_REVIEW_TIMEOUT_SECONDS, context=self._context
            ) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as error:
            detail = error.read()[:300].decode("utf-8", "replace")
            log.error("TokenReview answered %d: %s", error.code, detail)
            return Verdict(UNAVAILABLE, f"cannot check the token now: the API server answered {error.code}")
        except (OSError, ValueError) as error:
            log.error("TokenReview failed: %s", error)
            return Verdict(UNAVAILABLE, "cannot check the token now: the API server cannot be reached")
        status = answer.get("status") or {}
        if not status.get("authenticated"):
            reason = status.get("error") or "not authenticated"
            return Verdict(INVALID, f"the token was refused by the Kubernetes API server: {reason}")
        username = str((status.get("user") or {}).get("username", ""))
        allowed = config.allowed_service_accounts
        if allowed and service_account(username) not in allowed:
            return Verdict(
                FORBIDDEN,
                f"{username} may not call this model; allowed service accounts: {', '.join(allowed)}",
                username,
            )
        return Verdict(ALLOWED, subject=username)


def service_account(username: str) -> str:
    """`namespace/name` of a service account's username (system:serviceaccount:NS:NAME), else ''."""
    parts = username.split(":")
    if len(parts) == 4 and parts[:2] == ["system", "serviceaccount"]:
        return f"{parts[2]}/{parts[3]}"
    return ""


class TokenReviewAuthenticator:
    scheme_hint = 'Bearer realm="kubernetes"'

    def __init__(
        self,
        reviewer: TokenReviewer | Callable[[bytes], Verdict],
        loop: asyncio.AbstractEventLoop,
        cache_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._review = reviewer.review if isinstance(reviewer, TokenReviewer) else reviewer
        self._loop = loop
        self._cache_seconds = cache_seconds
        self._clock = clock
        # digest -> (verdict, expires at); oldest first, bounded.
        self._cache: OrderedDict[bytes, tuple[Verdict, float]] = OrderedDict()
        self._in_flight: dict[bytes, asyncio.Future[Verdict]] = {}
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ferry-tokenreview")

    def check(self, authorization: bytes | None) -> Verdict | asyncio.Future[Verdict]:
        token = bearer_token(authorization)
        if isinstance(token, Verdict):
            return token
        key = _digest(token)
        cached = self._cache.get(key)
        if cached is not None:
            if cached[1] > self._clock():
                return cached[0]
            del self._cache[key]
        pending = self._in_flight.get(key)
        if pending is not None:
            return pending
        if len(self._in_flight) >= _MAX_REVIEWS_IN_FLIGHT:
            return Verdict(UNAVAILABLE, f"{_MAX_REVIEWS_IN_FLIGHT} token reviews are already in flight")
        future: asyncio.Future[Verdict] = self._loop.create_future()
        self._in_flight[key] = future
        review = self._loop.run_in_executor(self._executor, self._review, token)
        review.add_done_callback(lambda done: self._settle(key, future, done))
        return future

    def _settle(self, key: bytes, future: asyncio.Future[Verdict], done: asyncio.Future[Verdict]) -> None:
        del self._in_flight[key]
        error = done.exception()
        if error is not None:
            verdict = Verdict(UNAVAILABLE, f"cannot check the token now: {error}")
        else:
            verdict = done.result()
        if verdict.outcome != UNAVAILABLE:
            seconds = self._cache_seconds
            if not verdict.allowed:
                seconds = min(seconds, _NEGATIVE_CACHE_SECONDS)
            if seconds > 0:
                self._cache[key] = (verdict, self._clock() + seconds)
                while len(self._cache) > _CACHE_ENTRIES:
                    self._cache.popitem(last=False)
        if not future.done():
            future.set_result(verdict)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def build_authenticator(
    mode: str,
    loop: asyncio.AbstractEventLoop,
    token_dir: Path | None,
    review: TokenReviewConfig | None,
) -> Authenticator | None:
    if mode == "none":
        return None
    if mode == "bearer":
        assert token_dir is not None
        return BearerAuthenticator(TokenDirectory(token_dir))
    assert review is not None
    return TokenReviewAuthenticator(TokenReviewer(review), loop, review.cache_seconds)
