"""`ferry-fetch URI DEST [--sha256 DIGEST]`: the storage initializer run as the serving pod's init container.

Schemes: file://PATH, pvc://CLAIM/PATH (the operator mounts claim CLAIM at ${FERRY_PVC_ROOT:-/mnt/pvc}/CLAIM),
http(s)://HOST/PATH and s3://BUCKET/KEY (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
AWS_REGION, AWS_ENDPOINT_URL from the environment; anonymous without keys). A URI ending in "/" is a
directory: every file under it is fetched, keeping relative paths (http(s) has no listing, so it names
files only). A single file lands at DEST/<name> when DEST is a directory or ends in "/", else at DEST.

Digest (--sha256): for a file, the SHA-256 of its bytes; for a directory, the SHA-256 of its manifest,
i.e. the lines "<file sha256>  <relative path>\\n" sorted by path, which is what
`find . -type f | sort | xargs sha256sum | sha256sum` prints in that directory (`directory_digest`).
Writes are atomic: every file is downloaded to a temporary name beside its destination and renamed
into place only after all files arrived and the digest matched, so a failed fetch leaves nothing half-done.

Every body is checked against the size the source promised (Content-Length, Content-Range, the S3
listing's Size); a cut or short body is retried with a ranged read from where it stopped. A read that
waits longer than the read timeout, or a fetch that runs past its deadline, fails. Paths never leave the
volume a URI names: ".." is refused, and so is a symlink whose target is outside it. Every failure is one
line naming the URI (without credentials) and what went wrong, on stderr and in the termination message.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import datetime
import functools
import hashlib
import http.client
import logging
import os
import re
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, Protocol, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit
from xml.etree import ElementTree

from ferry_runtime import sigv4, termination

log = logging.getLogger(__name__)

CHUNK = 1 << 20
ENV_PREFIX = "FERRY_FETCH_"
# Exit status for a bad flag or FERRY_FETCH_* value (argparse's own code): rerunning cannot help.
EXIT_USAGE = 2
# The longest pause between two attempts, however many failed: the deadline bounds the total.
MAX_BACKOFF_SECONDS = 30.0
# How often a long download logs its progress.
PROGRESS_EVERY_SECONDS = 10.0
T = TypeVar("T")


def _option(default: Any, help_text: str) -> Any:
    return field(default=default, metadata={"help": help_text})


@dataclass(frozen=True, slots=True)
class Limits:
    """How long a fetch may wait and how often it retries; each is a flag and a FERRY_FETCH_* variable."""

    read_timeout_seconds: float = _option(
        60.0,
        "Longest wait for a connection or for the next bytes of a body; a longer silence is a failed "
        "attempt (retried, resuming where it stopped).",
    )
    deadline_seconds: float = _option(
        3600.0,
        "Longest the whole fetch may take, every file and retry included (checked after every read, so "
        "it ends at most one read timeout later). 1 h moves ~35 GiB at 10 MB/s.",
    )
    attempts: int = _option(
        5,
        "Tries per request before giving up; an attempt that brought new bytes starts the count again.",
    )
    retry_backoff_seconds: float = _option(
        1.0, "Pause before the first retry, doubled after each failure (at most 30 s)."
    )

    def __post_init__(self) -> None:
        problems = [
            f"{flag_name(name)} must be positive, got {getattr(self, name):g}"
            for name in ("read_timeout_seconds", "deadline_seconds")
            if not getattr(self, name) > 0
        ]
        if self.attempts < 1:
            problems.append(f"--attempts must be at least 1, got {self.attempts}")
        if not self.retry_backoff_seconds >= 0:
            problems.append(
                f"--retry-backoff-seconds must not be negative, got {self.retry_backoff_seconds:g}"
            )
        if problems:
            raise ValueError("; ".join(problems))

    @staticmethod
    def from_environment(
        environ: Mapping[str, str], overrides: Mapping[str, str | None] | None = None
    ) -> Limits:
        """Flags (`overrides`, by field name) win over FERRY_FETCH_* variables, then the defaults."""
        values: dict[str, Any] = {}
        for option in dataclasses.fields(Limits):
            raw, source = (overrides or {}).get(option.name), flag_name(option.name)
            if raw is None:
                raw, source = environ.get(env_name(option.name)), env_name(option.name)
            if raw is None:
                continue
            whole = option.type in (int, "int")
            try:
                values[option.name] = int(raw) if whole else float(raw)
            except ValueError:
                kind = "a whole number" if whole else "a number of seconds"
                raise ValueError(f"{source} must be {kind}, got {raw!r}") from None
        return Limits(**values)


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def limits_table() -> str:
    """The Markdown table of ferry-fetch's limits for docs/runtime.md."""
    rows = ["| flag | environment variable | default | meaning |", "|---|---|---|---|"]
    for option in dataclasses.fields(Limits):
        flag, env = flag_name(option.name), env_name(option.name)
        rows.append(f"| `{flag}` | `{env}` | `{option.default}` | {option.metadata['help']} |")
    return "\n".join(rows) + "\n"


def display_uri(uri: str) -> str:
    """The URI as messages show it: no user:password@, and no query values (a presigned URL's signature)."""
    try:
        parts = urlsplit(uri)
        netloc = parts.netloc.rpartition("@")[2]
        query = "&".join(f"{key}=REDACTED" for key, _ in parse_qsl(parts.query, keep_blank_values=True))
        return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    except ValueError:
        return uri.partition("://")[0] + "://(unparsable URI)"


def _one_line(text: str) -> str:
    return " ".join(text.split())


class FetchError(Exception):
    """A fetch that cannot succeed as asked: one line naming the URI (without credentials) and the reason."""

    def __init__(self, uri: str, reason: str) -> None:
        super().__init__(_one_line(f"{display_uri(uri)}: {reason}"))
        self.uri = uri
        self.reason = reason


class _Retryable(Exception):
    """An attempt that failed in a way another attempt may not (a cut, a timeout, a short body)."""

    def __init__(self, reason: str, made_progress: bool = False) -> None:
        super().__init__(reason)
        # New bytes arrived before it failed: the retry count starts again.
        self.made_progress = made_progress


class Stream(Protocol):
    def read1(self, size: int = ..., /) -> bytes: ...


@dataclass(slots=True)
class Body:
    """One answer to a (possibly ranged) read of a source."""

    stream: Stream
    close: Callable[[], None]
    # Offset of the body's first byte in the object (0, or where a ranged read resumed).
    start: int
    # Bytes the source promised to send from `start`; None when it did not say (chunked, close-delimited).
    length: int | None
    # The whole object's size, when known.
    total: int | None
    # What If-Range needs to resume only the same version of the object (ETag or Last-Modified).
    validator: str = ""
    # SHA-256 hex the source publishes for the whole object, and the header it came from.
    published_sha256: tuple[str, str] | None = None


# Opens the source for reading from `offset`; `validator` is the previous answer's, `timeout` the
# longest a connection or read may wait.
Opener = Callable[[int, str, float], Body]


@dataclass(frozen=True, slots=True)
class Entry:
    # Path relative to the fetched directory (or the file's own name).
    relative: PurePosixPath
    open: Opener
    # The size a listing gave, checked against what arrives.
    size: int | None = None


@dataclass(frozen=True, slots=True)
class Fetched:
    files: list[Path]
    sha256: str
    size_bytes: int


def manifest_digest(file_digests: Mapping[str, str]) -> str:
    lines = "".join(f"{digest}  ./{path}\n" for path, digest in sorted(file_digests.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def directory_digest(directory: Path) -> str:
    """The digest `ferry-fetch --sha256` expects for a directory URI with these files."""
    digests = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        # Streamed: a model's external data file can be larger than the memory of the pod hashing it.
        with path.open("rb") as stream:
            digests[path.relative_to(directory).as_posix()] = hashlib.file_digest(
                stream, "sha256"
            ).hexdigest()
    return manifest_digest(digests)


class _Deadline:
    """The fetch's overall deadline, and the timeout each connection and read may wait under it."""

    def __init__(self, uri: str, limits: Limits) -> None:
        self.uri, self.limits = uri, limits
        self.ends = time.monotonic() + limits.deadline_seconds

    def remaining(self) -> float:
        return self.ends - time.monotonic()

    def check(self, where: str) -> None:
        """Raise once the deadline passed; `where` says how far the fetch got ("at 1 MiB of 2 MiB")."""
        if self.remaining() <= 0:
            option = "deadline_seconds"
            seconds = f"{self.limits.deadline_seconds:g} s ({flag_name(option)} / {env_name(option)})"
            raise FetchError(self.uri, f"gave up at the deadline of {seconds}, {where}")

    def timeout(self, where: str) -> float:
        self.check(where)
        return min(self.limits.read_timeout_seconds, self.remaining())

    def sleep(self, seconds: float, where: str) -> None:
        time.sleep(max(0.0, min(seconds, self.remaining())))
        self.check(where)


# --- failures ------------------------------------------------------------------------------------


def _describe(error: BaseException, limits: Limits) -> str:
    """What went wrong, in words (one line), for an exception of a connection or a read."""
    return _one_line(_describe_lines(error, limits))


def _describe_lines(error: BaseException, limits: Limits) -> str:
    if isinstance(error, urllib.error.URLError) and not isinstance(error, urllib.error.HTTPError):
        reason = error.reason
        return (
            _describe_lines(reason, limits)
            if isinstance(reason, BaseException)
            else f"cannot connect: {reason}"
        )
    if isinstance(error, TimeoutError):
        return (
            f"no bytes for {limits.read_timeout_seconds:g} s (read timeout, "
            f"{flag_name('read_timeout_seconds')} / {env_name('read_timeout_seconds')})"
        )
    if isinstance(error, http.client.IncompleteRead):
        return "the connection closed before the end of a chunked body"
    if isinstance(error, http.client.RemoteDisconnected):
        return "the server closed the connection without answering"
    if isinstance(error, http.client.HTTPException):
        return f"malformed HTTP answer ({type(error).__name__}: {str(error).strip()})"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror[0].lower() + error.strerror[1:]
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _error_detail(error: urllib.error.HTTPError) -> str:
    """A short reason from an error body: S3's <Code> and <Message> only (its SignatureDoesNotMatch
    body echoes the canonical request, session token included), else the first 200 characters."""
    try:
        text = error.read(4096).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        return ""
    try:
        document = ElementTree.fromstring(text)
    except ElementTree.ParseError:
        return _one_line(text)[:200]
    code, message = document.findtext("Code") or "", document.findtext("Message") or ""
    return ": ".join(part for part in (code, message) if part) if document.tag == "Error" else ""


def _retrying(uri: str, limits: Limits, deadline: _Deadline, attempt: Callable[[], T]) -> T:
    """Run `attempt` until it succeeds: connection failures, timeouts, short bodies, 5xx and 429 are
    retried with backoff, until `limits.attempts` failed in a row or the deadline passed."""
    failures = 0
    while True:
        try:
            return attempt()
        except urllib.error.HTTPError as error:
            if error.code < 500 and error.code != 429:
                detail = _error_detail(error)
                raise FetchError(
                    uri, f"HTTP {error.code} {error.reason}" + (f": {detail}" if detail else "")
                ) from None
            failure = f"HTTP {error.code} {error.reason}"
            progressed = False
        except _Retryable as error:
            failure, progressed = str(error), error.made_progress
        except (OSError, http.client.HTTPException) as error:
            failure, progressed = _describe(error, limits), False
        failures = 1 if progressed else failures + 1
        if failures >= limits.attempts:
            plural = "s" if limits.attempts > 1 else ""
            raise FetchError(uri, f"gave up after {limits.attempts} attempt{plural}: {failure}")
        pause = min(MAX_BACKOFF_SECONDS, limits.retry_backoff_seconds * 2 ** (failures - 1))
        log.warning("%s: %s; retrying in %.1f s", display_uri(uri), failure, pause)
        deadline.sleep(pause, f"while retrying after: {failure}")


# --- sources -------------------------------------------------------------------------------------

# A claim name is a DNS subdomain (RFC 1123), so "..", "." and "a/b" are not claims.
_CLAIM_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _refuse_dot_dot(uri: str, path: str) -> None:
    if ".." in path.split("/"):
        raise FetchError(
            uri, "'..' is not allowed in the path: a URI names a file inside its volume, never above it"
        )


def _file_opener(path: Path) -> Opener:
    def open_file(offset: int, _validator: str, _timeout: float) -> Body:
        handle = path.open("rb")
        size = os.fstat(handle.fileno()).st_size
        handle.seek(offset)
        return Body(handle, handle.close, offset, size - offset, size)

    return open_file


def _contained_files(uri: str, directory: Path, volume: Path) -> list[tuple[PurePosixPath, Path]]:
    """Every file under `directory` (resolved, inside `volume`), following symlinks that stay inside the
    volume and refusing, by name, any that leaves it."""
    found: list[tuple[PurePosixPath, Path]] = []
    seen = {directory}
    pending = [(directory, PurePosixPath())]
    while pending:
        current, relative = pending.pop()
        with os.scandir(current) as listing:
            entries = sorted(listing, key=lambda item: item.name)
        for entry in entries:
            path, name = Path(entry.path), relative / entry.name
            real = path.resolve()
            if entry.is_symlink() and not real.is_relative_to(volume):
                raise FetchError(uri, f"{name} is a symlink to {real}, outside {volume}: refused")
            if entry.is_dir():
                # A symlink back to a directory already walked (a loop) is not walked again.
                if real not in seen:
                    seen.add(real)
                    pending.append((real, name))
            elif entry.is_file():
                found.append((name, real))
    return sorted(found)


def _local_entries(uri: str, path: Path, volume: Path | None, directory: bool) -> list[Entry]:
    """Files of a file:// or pvc:// URI; `volume` is what they must stay inside (the claim's mount; for
    file:// the directory fetched), None for a single file:// path."""
    if directory:
        if not path.is_dir():
            raise FetchError(uri, f"{path} is not a directory")
        real = path.resolve()
        volume = volume or real
        if not real.is_relative_to(volume):
            raise FetchError(uri, f"{path} resolves to {real}, outside {volume}: refused")
        files = _contained_files(uri, real, volume)
        if not files:
            raise FetchError(uri, f"directory {path} holds no files")
        return [Entry(relative, _file_opener(real_path)) for relative, real_path in files]
    if not path.is_file():
        raise FetchError(uri, f"no file at {path}")
    real = path.resolve()
    if volume is not None and not real.is_relative_to(volume):
        raise FetchError(uri, f"{path} is a symlink to {real}, outside {volume}: refused")
    return [Entry(PurePosixPath(path.name), _file_opener(real))]


def _pvc_entries(uri: str, environ: Mapping[str, str], directory: bool) -> list[Entry]:
    parts = urlsplit(uri)
    claim, path = parts.netloc, unquote(parts.path).lstrip("/")
    if not claim:
        raise FetchError(uri, "pvc URIs are pvc://CLAIM/PATH")
    if not _CLAIM_NAME.fullmatch(claim) or len(claim) > 253:
        raise FetchError(uri, f"'{claim}' is not a PersistentVolumeClaim name (a lowercase DNS subdomain)")
    _refuse_dot_dot(uri, path)
    mount = Path(environ.get("FERRY_PVC_ROOT", "/mnt/pvc")) / claim
    return _local_entries(uri, mount / path, mount.resolve(), directory)


def _published_sha256(headers: http.client.HTTPMessage) -> tuple[str, str] | None:
    """A whole-object SHA-256 the answer carries: RFC 9530's Repr-Digest, RFC 3230's Digest, or S3's
    x-amz-checksum-sha256 (not a multipart upload's composite "...-N", which is not the object's)."""
    candidates = []
    for header in ("Repr-Digest", "Digest"):
        for item in (headers.get(header) or "").split(","):
            algorithm, _, value = item.strip().partition("=")
            if algorithm.strip().lower() == "sha-256":
                candidates.append((header, value.strip().strip(":")))
    amz = headers.get("x-amz-checksum-sha256") or ""
    if amz and "-" not in amz and (headers.get("x-amz-checksum-type") or "FULL_OBJECT") == "FULL_OBJECT":
        candidates.append(("x-amz-checksum-sha256", amz))
    for header, value in candidates:
        try:
            digest = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            continue
        if len(digest) == 32:
            return digest.hex(), header
    return None


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def _http_body(response: http.client.HTTPResponse, offset: int) -> Body:
    """What a (ranged) GET answered: where its bytes start, how many it promised, the object's size."""
    length_header = response.headers.get("Content-Length")
    try:
        length = int(length_header) if length_header is not None else None
    except ValueError:
        response.close()
        raise _Retryable(f"malformed Content-Length {length_header!r}") from None
    start, total = 0, length
    if response.status == 206:
        match = _CONTENT_RANGE.fullmatch((response.headers.get("Content-Range") or "").strip())
        if match is None or int(match.group(1)) != offset:
            response.close()
            raise _Retryable(
                f"asked for bytes from {offset}, got Content-Range {response.headers.get('Content-Range')!r}"
            )
        start = offset
        total = None if match.group(3) == "*" else int(match.group(3))
        length = int(match.group(2)) - start + 1 if length is None else length
    # A weak ETag cannot validate a range (RFC 9110 13.1.5): then Last-Modified does. Without either a
    # resumed read is not validated, and only a digest (--sha256, or one the source publishes) would
    # notice an object replaced mid-download.
    etag = response.headers.get("ETag") or ""
    validator = (etag if not etag.startswith("W/") else "") or response.headers.get("Last-Modified") or ""
    published = _published_sha256(response.headers) if start == 0 else None
    return Body(response, response.close, start, length, total, validator, published)


class _CredentialsStayOnTheirHost(urllib.request.HTTPRedirectHandler):
    """Follows redirects, but never sends Authorization or x-amz-* headers to another host (urllib's own
    handler does: a redirect to a CDN would receive the password or the signature), nor the old Host."""

    def redirect_request(  # noqa: PLR0917 (urllib's signature)
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        redirected = super().redirect_request(req, fp, code, msg, headers, newurl)
        if redirected is not None and urlsplit(newurl).netloc != urlsplit(req.full_url).netloc:
            for name in list(redirected.headers):
                if name.lower() in ("authorization", "host") or name.lower().startswith("x-amz-"):
                    redirected.remove_header(name)
        return redirected


_OPENER = urllib.request.build_opener(_CredentialsStayOnTheirHost)


def _http_open(uri: str, request: Callable[[], urllib.request.Request]) -> Opener:
    def open_http(offset: int, validator: str, timeout: float) -> Body:
        prepared = request()
        if offset:
            prepared.add_header("Range", f"bytes={offset}-")
            if validator:
                prepared.add_header("If-Range", validator)
        try:
            response: http.client.HTTPResponse = _OPENER.open(prepared, timeout=timeout)
        except ValueError:
            # http.client's InvalidURL names the URL, which may hold credentials: say it without them.
            raise FetchError(uri, "not a valid URL (host, port or scheme)") from None
        return _http_body(response, offset)

    return open_http


def _http_entries(uri: str, directory: bool) -> list[Entry]:
    if directory:
        raise FetchError(uri, "http(s) has no directory listing; name each file (or use s3:// or pvc://)")
    parts = urlsplit(uri)
    name = PurePosixPath(parts.path).name or "model.onnx"
    headers = {}
    if parts.username is not None:
        # http://user:password@host/: Basic authentication, sent in a header and never in a message.
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        uri_without_user = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    else:
        uri_without_user = uri
    request = functools.partial(urllib.request.Request, uri_without_user, headers=headers)
    return [Entry(PurePosixPath(name), _http_open(uri, request))]


@dataclass(frozen=True, slots=True)
class S3Location:
    # Base URL of the service: the custom endpoint, or AWS's regional endpoint.
    endpoint: str
    bucket: str
    region: str
    credentials: sigv4.Credentials | None
    # Path-style (endpoint/bucket/key) for custom endpoints; virtual-hosted (bucket.endpoint/key) on AWS.
    path_style: bool

    @staticmethod
    def from_environment(bucket: str, environ: Mapping[str, str]) -> S3Location:
        region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        endpoint = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL") or ""
        key_id, secret = environ.get("AWS_ACCESS_KEY_ID", ""), environ.get("AWS_SECRET_ACCESS_KEY", "")
        credentials = (
            sigv4.Credentials(key_id, secret, environ.get("AWS_SESSION_TOKEN", ""))
            if key_id and secret
            else None
        )
        if endpoint:
            return S3Location(endpoint.rstrip("/"), bucket, region, credentials, path_style=True)
        return S3Location(f"https://s3.{region}.amazonaws.com", bucket, region, credentials, path_style=False)

    def request(
        self, key: str, query: Sequence[tuple[str, str]] = (), headers: Mapping[str, str] | None = None
    ) -> urllib.request.Request:
        """A signed GET; `headers` are signed too (S3 requires every x-amz-* header to be)."""
        encoded_key = sigv4.uri_encode(key, encode_slash=False)
        base = urlsplit(self.endpoint)
        if self.path_style:
            host, path = base.netloc, f"{base.path}/{self.bucket}/{encoded_key}"
        else:
            host, path = f"{self.bucket}.{base.netloc}", f"{base.path}/{encoded_key}"
        url = f"{base.scheme}://{host}{path}" + (f"?{sigv4.canonical_query(query)}" if query else "")
        signed = {"host": host, **(headers or {})}
        if self.credentials is not None:
            amz_date = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
            signed |= {"x-amz-date": amz_date, "x-amz-content-sha256": sigv4.EMPTY_SHA256}
            if self.credentials.session_token:
                signed["x-amz-security-token"] = self.credentials.session_token
            signed["authorization"] = sigv4.authorization(
                method="GET",
                canonical_path=path,
                query=query,
                headers=signed,
                payload_sha256=sigv4.EMPTY_SHA256,
                credentials=self.credentials,
                region=self.region,
                service="s3",
                amz_date=amz_date,
            )
        return urllib.request.Request(url, headers=signed, method="GET")

    def opener(self, uri: str, key: str) -> Opener:
        # Asks for the object's SHA-256 checksum, which S3 returns when the object was uploaded with one.
        return _http_open(uri, lambda: self.request(key, headers={"x-amz-checksum-mode": "ENABLED"}))

    def list_objects(
        self, uri: str, prefix: str, limits: Limits, deadline: _Deadline
    ) -> Iterator[tuple[str, int]]:
        """(key, size) of every object under the prefix, through ListObjectsV2's pages."""
        token = ""
        while True:
            query = [("list-type", "2"), ("prefix", prefix)] + (
                [("continuation-token", token)] if token else []
            )
            opener = _http_open(uri, functools.partial(self.request, "", query))
            page = _retrying(uri, limits, deadline, functools.partial(_read_whole, opener, deadline))
            try:
                document = ElementTree.fromstring(page)
            except ElementTree.ParseError as error:
                raise FetchError(uri, f"the listing is not ListObjectsV2 XML ({error})") from None
            namespace = document.tag.partition("}")[0] + "}" if document.tag.startswith("{") else ""
            for contents in document.iter(f"{namespace}Contents"):
                key = contents.findtext(f"{namespace}Key") or ""
                size = contents.findtext(f"{namespace}Size")
                if key and not key.endswith("/"):
                    yield key, int(size) if size and size.isdigit() else -1
            if (document.findtext(f"{namespace}IsTruncated") or "false").lower() != "true":
                return
            token = document.findtext(f"{namespace}NextContinuationToken") or ""
            if not token:
                return


def _read_whole(opener: Opener, deadline: _Deadline) -> bytes:
    """A small answer (a listing), read in full and checked against its Content-Length."""
    body = opener(0, "", deadline.timeout("before listing the prefix"))
    try:
        parts = []
        while chunk := body.stream.read1(CHUNK):
            parts.append(chunk)
            deadline.check("while listing the prefix")
    finally:
        body.close()
    data = b"".join(parts)
    if body.length is not None and len(data) != body.length:
        raise _Retryable(f"the listing ended after {len(data)} of {body.length} bytes")
    return data


def _s3_entries(
    uri: str, directory: bool, environ: Mapping[str, str], limits: Limits, deadline: _Deadline
) -> list[Entry]:
    parts = urlsplit(uri)
    bucket, key = parts.netloc, unquote(parts.path.lstrip("/"))
    if not bucket:
        raise FetchError(uri, "s3 URIs are s3://BUCKET/KEY")
    location = S3Location.from_environment(bucket, environ)
    if not directory:
        if not key:
            raise FetchError(uri, "no object key; end the URI with '/' to fetch a whole prefix")
        return [Entry(PurePosixPath(PurePosixPath(key).name), location.opener(uri, key))]
    objects = sorted(location.list_objects(uri, key, limits, deadline))
    if not objects:
        raise FetchError(uri, f"no objects under prefix '{key}' in bucket '{bucket}'")
    return [
        Entry(
            PurePosixPath(object_key[len(key) :]),
            location.opener(uri, object_key),
            size if size >= 0 else None,
        )
        for object_key, size in objects
    ]


def entries_for(
    uri: str, environ: Mapping[str, str], limits: Limits | None = None, deadline: _Deadline | None = None
) -> tuple[list[Entry], bool]:
    limits = limits or Limits()
    deadline = deadline or _Deadline(uri, limits)
    parts = urlsplit(uri)
    directory = uri.endswith("/")
    try:
        if parts.scheme == "file":
            path = unquote(parts.path)
            _refuse_dot_dot(uri, path)
            return _local_entries(uri, Path(path), None, directory), directory
        if parts.scheme == "pvc":
            return _pvc_entries(uri, environ, directory), directory
    except OSError as error:
        # An unreadable directory or file of the volume.
        where = f" {error.filename}" if error.filename else ""
        raise FetchError(uri, f"cannot read{where}: {_describe(error, limits)}") from None
    if parts.scheme in ("http", "https"):
        return _http_entries(uri, directory), directory
    if parts.scheme == "s3":
        return _s3_entries(uri, directory, environ, limits, deadline), directory
    raise FetchError(uri, f"unsupported scheme '{parts.scheme}'; use file://, pvc://, http(s):// or s3://")


# --- fetching ------------------------------------------------------------------------------------


def _target(uri: str, dest: Path, entry: Entry, into_directory: bool) -> Path:
    target = dest / Path(*entry.relative.parts) if into_directory else dest
    resolved = target.resolve()
    # A listing must not write outside DEST ("../" in an object key).
    if not resolved.is_relative_to(dest.resolve()) and resolved != dest.resolve():
        raise FetchError(uri, f"refusing to write {entry.relative} outside {dest}")
    return target


def _size(count: int | None) -> str:
    if count is None:
        return "?"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


class _Download:
    """One file arriving into `handle`, resumed with ranged reads across attempts."""

    def __init__(
        self, uri: str, entry: Entry, handle: IO[bytes], limits: Limits, deadline: _Deadline
    ) -> None:
        self.uri, self.entry, self.handle = uri, entry, handle
        self.limits, self.deadline = limits, deadline
        self.received = 0
        self.hasher = hashlib.sha256()
        self.total: int | None = entry.size
        self.validator = ""
        self.published: tuple[str, str] | None = None
        self.logged_at = self.started = time.monotonic()

    def progress(self) -> str:
        return f"{_size(self.received)} of {_size(self.total)} of {self.entry.relative}"

    def run(self) -> str:
        _retrying(self.uri, self.limits, self.deadline, self.attempt)
        digest = self.hasher.hexdigest()
        if self.published is not None and self.published[0] != digest:
            raise FetchError(
                self.uri,
                f"{self.entry.relative}: the source's {self.published[1]} says SHA-256 {self.published[0]}, "
                f"the bytes received hash to {digest}",
            )
        return digest

    def attempt(self) -> None:
        before = self.received
        body = self.entry.open(self.received, self.validator, self.deadline.timeout(f"at {self.progress()}"))
        try:
            self._take(body)
        except (OSError, http.client.HTTPException) as error:
            reason = f"{_describe(error, self.limits)}, at {self.progress()}"
            raise _Retryable(reason, self.received > before) from None
        except _Retryable as error:
            raise _Retryable(str(error), self.received > before) from None
        finally:
            body.close()

    def _take(self, body: Body) -> None:
        if body.start != self.received:
            # The server sent the whole object (no range support, or the object changed): start over.
            self._restart()
        self.validator = body.validator or self.validator
        self.published = body.published_sha256 or self.published
        size = (
            body.total
            if body.total is not None
            else (None if body.length is None else body.start + body.length)
        )
        if size is not None and self.total is not None and size != self.total:
            raise FetchError(
                self.uri,
                f"{self.entry.relative}: the listing says {self.total} bytes, the server sends {size}",
            )
        self.total = size if size is not None else self.total
        while chunk := body.stream.read1(CHUNK):
            self.hasher.update(chunk)
            try:
                self.handle.write(chunk)
            except OSError as error:
                # The destination's fault (a full disk), not the source's: never retried.
                reason = f"cannot write {self.entry.relative}: {_describe(error, self.limits)}"
                raise FetchError(self.uri, reason) from None
            self.received += len(chunk)
            self.deadline.check(f"at {self.progress()}")
            self._log_progress()
        if self.total is not None and self.received != self.total:
            raise _Retryable(f"the body ended early, at {self.progress()}")

    def _restart(self) -> None:
        self.handle.seek(0)
        self.handle.truncate()
        self.received, self.hasher, self.published = 0, hashlib.sha256(), None

    def _log_progress(self) -> None:
        now = time.monotonic()
        if now - self.logged_at >= PROGRESS_EVERY_SECONDS:
            self.logged_at = now
            rate = self.received / max(now - self.started, 1e-9)
            log.info("%s: %s, %s/s", display_uri(self.uri), self.progress(), _size(int(rate)))


def fetch(
    uri: str,
    dest: Path | str,
    sha256: str | None = None,
    environ: Mapping[str, str] | None = None,
    limits: Limits | None = None,
) -> Fetched:
    """Fetch URI into DEST; a string DEST ending in "/" is a directory even before it exists.

    `limits` default to the FERRY_FETCH_* variables of `environ`. Raises FetchError only.
    """
    environ = os.environ if environ is None else environ
    try:
        limits = limits or Limits.from_environment(environ)
    except ValueError as error:
        raise FetchError(uri, str(error)) from None
    deadline = _Deadline(uri, limits)
    entries, directory = entries_for(uri, environ, limits, deadline)
    into_directory = directory or str(dest).endswith("/") or Path(dest).is_dir()
    dest = Path(dest)
    staged: list[tuple[Path, Path]] = []
    digests: dict[str, str] = {}
    size = 0
    try:
        for entry in entries:
            target = _target(uri, dest, entry, into_directory)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed below, renamed after all arrive)
                    dir=target.parent, prefix=f".{target.name}.", suffix=".part", delete=False
                )
            except OSError as error:
                raise FetchError(
                    uri, f"cannot write into {target.parent}: {_describe(error, limits)}"
                ) from None
            staged.append((Path(handle.name), target))
            with handle:
                download = _Download(uri, entry, handle, limits, deadline)
                digests[entry.relative.as_posix()] = download.run()
            size += download.received
        digest = manifest_digest(digests) if directory else next(iter(digests.values()))
        if sha256 is not None and digest != sha256.strip().lower():
            raise FetchError(uri, f"SHA-256 mismatch: expected {sha256.strip().lower()}, got {digest}")
        try:
            for temporary, target in staged:
                os.replace(temporary, target)
        except OSError as error:
            raise FetchError(
                uri, f"cannot move the download into place: {_describe(error, limits)}"
            ) from None
        staged = []
    finally:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)
    return Fetched([_target(uri, dest, entry, into_directory) for entry in entries], digest, size)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ferry-fetch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "uri",
        help="file://, pvc://CLAIM/PATH, http(s):// or s3://BUCKET/KEY; a trailing / fetches a directory",
    )
    parser.add_argument("dest", help="destination directory (or file path for a single file)")
    parser.add_argument("--sha256", help="expected digest (of the file, or of the directory's manifest)")
    parser.add_argument(
        "--termination-log",
        type=Path,
        help=f"where the failure message is written (default {termination.TERMINATION_LOG}, inside a pod)",
    )
    for option in dataclasses.fields(Limits):
        parser.add_argument(
            flag_name(option.name),
            dest=option.name,
            metavar="N",
            help=f"{option.metadata['help']} [env {env_name(option.name)}; default {option.default}]",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="ferry-fetch: %(message)s", stream=sys.stderr)
    # The default only inside a pod, where the kubelet created the file: never create /dev/termination-log.
    default_log = termination.TERMINATION_LOG
    termination_log = args.termination_log or (default_log if os.access(default_log, os.W_OK) else None)

    def fail(message: str, code: int) -> int:
        line = f"ferry-fetch: {message}"
        print(line, file=sys.stderr)
        if termination_log is not None:
            termination.write_termination_message(line, termination_log)
        return code

    try:
        overrides = {option.name: getattr(args, option.name) for option in dataclasses.fields(Limits)}
        limits = Limits.from_environment(os.environ, overrides)
    except ValueError as error:
        return fail(str(error), EXIT_USAGE)
    started = time.perf_counter()
    try:
        fetched = fetch(args.uri, args.dest, args.sha256, limits=limits)
    except FetchError as error:
        return fail(str(error), 1)
    except Exception as error:
        # A bug still ends in one line and a termination message; the traceback goes to the log.
        traceback.print_exc()
        return fail(f"{display_uri(args.uri)}: unexpected {type(error).__name__}: {_one_line(str(error))}", 1)
    print(
        f"fetched {len(fetched.files)} file(s), {fetched.size_bytes} bytes, sha256 {fetched.sha256}, "
        f"into {args.dest} in {time.perf_counter() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
