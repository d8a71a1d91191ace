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
"""

from __future__ import annotations

import argparse
import datetime
import functools
import hashlib
import logging
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO
from urllib.parse import unquote, urlsplit
from xml.etree import ElementTree

from ferry_runtime import sigv4
from ferry_runtime.termination import write_termination_message

log = logging.getLogger(__name__)

CHUNK = 1 << 20
ATTEMPTS = 4
Opener = Callable[[], AbstractContextManager[IO[bytes]]]


class FetchError(Exception):
    """A fetch that cannot succeed as asked; the message names the URI and the reason."""


@dataclass(frozen=True, slots=True)
class Entry:
    # Path relative to the fetched directory (or the file's own name).
    relative: PurePosixPath
    open: Opener


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
        digests[path.relative_to(directory).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return manifest_digest(digests)


# --- sources -------------------------------------------------------------------------------------


def _local_entries(root: Path, uri: str, directory: bool) -> list[Entry]:
    if directory:
        if not root.is_dir():
            raise FetchError(f"{uri}: {root} is not a directory")
        files = sorted(path for path in root.rglob("*") if path.is_file())
        if not files:
            raise FetchError(f"{uri}: directory {root} holds no files")
        return [Entry(PurePosixPath(path.relative_to(root).as_posix()), _file_opener(path)) for path in files]
    if not root.is_file():
        raise FetchError(f"{uri}: no file at {root}")
    return [Entry(PurePosixPath(root.name), _file_opener(root))]


def _file_opener(path: Path) -> Opener:
    return lambda: path.open("rb")


def _with_retries(uri: str, action: Callable[[], IO[bytes]]) -> IO[bytes]:
    """Retry connection failures and 5xx/429 answers (an init container should ride out a blip)."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return action()
        except urllib.error.HTTPError as error:
            if error.code < 500 and error.code != 429:
                detail = error.read(500).decode("utf-8", "replace").strip()
                raise FetchError(f"{uri}: HTTP {error.code} {error.reason}: {detail}") from None
            failure: Exception = error
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            failure = error
        if attempt == ATTEMPTS:
            raise FetchError(f"{uri}: failed after {ATTEMPTS} attempts: {failure}") from None
        log.warning("%s: attempt %d failed (%s); retrying", uri, attempt, failure)
        time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


def _http_entries(uri: str, directory: bool) -> list[Entry]:
    if directory:
        raise FetchError(f"{uri}: http(s) has no directory listing; name each file (or use s3:// or pvc://)")
    name = PurePosixPath(urlsplit(uri).path).name or "model.onnx"
    return [
        Entry(
            PurePosixPath(name), lambda: _with_retries(uri, lambda: urllib.request.urlopen(uri, timeout=60))
        )
    ]


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

    def request(self, key: str, query: Sequence[tuple[str, str]] = ()) -> urllib.request.Request:
        encoded_key = sigv4.uri_encode(key, encode_slash=False)
        base = urlsplit(self.endpoint)
        if self.path_style:
            host, path = base.netloc, f"{base.path}/{self.bucket}/{encoded_key}"
        else:
            host, path = f"{self.bucket}.{base.netloc}", f"{base.path}/{encoded_key}"
        url = f"{base.scheme}://{host}{path}" + (f"?{sigv4.canonical_query(query)}" if query else "")
        headers = {"host": host}
        if self.credentials is not None:
            amz_date = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
            headers |= {"x-amz-date": amz_date, "x-amz-content-sha256": sigv4.EMPTY_SHA256}
            if self.credentials.session_token:
                headers["x-amz-security-token"] = self.credentials.session_token
            headers["authorization"] = sigv4.authorization(
                method="GET",
                canonical_path=path,
                query=query,
                headers=headers,
                payload_sha256=sigv4.EMPTY_SHA256,
                credentials=self.credentials,
                region=self.region,
                service="s3",
                amz_date=amz_date,
            )
        return urllib.request.Request(url, headers=headers, method="GET")

    def open(self, uri: str, key: str) -> IO[bytes]:
        return _with_retries(uri, lambda: urllib.request.urlopen(self.request(key), timeout=60))

    def list_keys(self, uri: str, prefix: str) -> Iterator[str]:
        token = ""
        while True:
            query = [("list-type", "2"), ("prefix", prefix)] + (
                [("continuation-token", token)] if token else []
            )
            listing = self.request("", query)
            with _with_retries(uri, functools.partial(urllib.request.urlopen, listing, timeout=60)) as reply:
                document = ElementTree.fromstring(reply.read())
            namespace = document.tag.partition("}")[0] + "}" if document.tag.startswith("{") else ""
            for contents in document.iter(f"{namespace}Contents"):
                key = contents.findtext(f"{namespace}Key") or ""
                if key and not key.endswith("/"):
                    yield key
            if (document.findtext(f"{namespace}IsTruncated") or "false").lower() != "true":
                return
            token = document.findtext(f"{namespace}NextContinuationToken") or ""
            if not token:
                return


def _s3_entries(uri: str, directory: bool, environ: Mapping[str, str]) -> list[Entry]:
    parts = urlsplit(uri)
    bucket, key = parts.netloc, unquote(parts.path.lstrip("/"))
    if not bucket:
        raise FetchError(f"{uri}: s3 URIs are s3://BUCKET/KEY")
    location = S3Location.from_environment(bucket, environ)
    if not directory:
        if not key:
            raise FetchError(f"{uri}: no object key; end the URI with '/' to fetch a whole prefix")
        return [Entry(PurePosixPath(PurePosixPath(key).name), lambda: location.open(uri, key))]
    keys = sorted(location.list_keys(uri, key))
    if not keys:
        raise FetchError(f"{uri}: no objects under prefix '{key}' in bucket '{bucket}'")
    return [
        Entry(PurePosixPath(object_key[len(key) :]), functools.partial(location.open, uri, object_key))
        for object_key in keys
    ]


def entries_for(uri: str, environ: Mapping[str, str]) -> tuple[list[Entry], bool]:
    parts = urlsplit(uri)
    directory = uri.endswith("/")
    if parts.scheme == "file":
        return _local_entries(Path(unquote(parts.path)), uri, directory), directory
    if parts.scheme == "pvc":
        if not parts.netloc:
            raise FetchError(f"{uri}: pvc URIs are pvc://CLAIM/PATH")
        root = (
            Path(environ.get("FERRY_PVC_ROOT", "/mnt/pvc")) / parts.netloc / unquote(parts.path.lstrip("/"))
        )
        return _local_entries(root, uri, directory), directory
    if parts.scheme in ("http", "https"):
        return _http_entries(uri, directory), directory
    if parts.scheme == "s3":
        return _s3_entries(uri, directory, environ), directory
    raise FetchError(f"{uri}: unsupported scheme '{parts.scheme}'; use file://, pvc://, http(s):// or s3://")


# --- fetching ------------------------------------------------------------------------------------


def _target(dest: Path, entry: Entry, into_directory: bool) -> Path:
    target = dest / Path(*entry.relative.parts) if into_directory else dest
    resolved = target.resolve()
    # A listing must not write outside DEST ("../" in an object key).
    if not resolved.is_relative_to(dest.resolve()) and resolved != dest.resolve():
        raise FetchError(f"refusing to write {entry.relative} outside {dest}")
    return target


def fetch(
    uri: str, dest: Path | str, sha256: str | None = None, environ: Mapping[str, str] | None = None
) -> Fetched:
    """Fetch URI into DEST; a string DEST ending in "/" is a directory even before it exists."""
    environ = os.environ if environ is None else environ
    entries, directory = entries_for(uri, environ)
    into_directory = directory or str(dest).endswith("/") or Path(dest).is_dir()
    dest = Path(dest)
    staged: list[tuple[Path, Path]] = []
    digests: dict[str, str] = {}
    size = 0
    try:
        for entry in entries:
            target = _target(dest, entry, into_directory)
            target.parent.mkdir(parents=True, exist_ok=True)
            handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed below, renamed after all arrive)
                dir=target.parent, prefix=f".{target.name}.", suffix=".part", delete=False
            )
            staged.append((Path(handle.name), target))
            hasher = hashlib.sha256()
            with handle, entry.open() as source:
                while chunk := source.read(CHUNK):
                    hasher.update(chunk)
                    handle.write(chunk)
                    size += len(chunk)
            digests[entry.relative.as_posix()] = hasher.hexdigest()
        digest = manifest_digest(digests) if directory else next(iter(digests.values()))
        if sha256 is not None and digest != sha256.strip().lower():
            raise FetchError(f"{uri}: SHA-256 mismatch: expected {sha256.strip().lower()}, got {digest}")
        for temporary, target in staged:
            os.replace(temporary, target)
        staged = []
    finally:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)
    return Fetched([_target(dest, entry, into_directory) for entry in entries], digest, size)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ferry-fetch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "uri",
        help="file://, pvc://CLAIM/PATH, http(s):// or s3://BUCKET/KEY; a trailing / fetches a directory",
    )
    parser.add_argument("dest", help="destination directory (or file path for a single file)")
    parser.add_argument("--sha256", help="expected digest (of the file, or of the directory's manifest)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="ferry-fetch: %(message)s", stream=sys.stderr)
    started = time.perf_counter()
    try:
        fetched = fetch(args.uri, args.dest, args.sha256)
    except (FetchError, OSError) as error:
        message = f"ferry-fetch: {error}"
        print(message, file=sys.stderr)
        write_termination_message(message)
        return 1
    print(
        f"fetched {len(fetched.files)} file(s), {fetched.size_bytes} bytes, sha256 {fetched.sha256}, "
        f"into {args.dest} in {time.perf_counter() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
