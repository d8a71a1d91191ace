"""Where the model, the data and the output live: URIs resolved to local paths.

Fetching is ferry_runtime.storage's job (the storage initializer, the one home of Ferry's URI schemes and
of the model digest): local paths are used in place, everything else is fetched into a scratch directory.
The output is written to a local directory: a path, file:///PATH, or pvc://CLAIM/PATH, which the Job
reaches through the claim mounted at ${FERRY_PVC_ROOT:-/mnt/pvc}/CLAIM (the same rule as the fetcher's);
for s3://BUCKET/PREFIX it is written to a scratch directory and then uploaded (`publish`), with the same
environment (AWS_* variables) and request signing as the fetcher.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ferry_optimizer.errors import InputError
from ferry_optimizer.key import file_sha256
from ferry_runtime import sigv4, storage


@dataclass(frozen=True)
class Located:
    path: Path
    sha256: str
    # ferry-fetch's digest: of the file's bytes, or of a directory's sorted "<sha256>  ./<path>" manifest.


def local_path(uri: str) -> Path | None:
    """The local path a URI names without fetching (a plain path or file://), or None."""
    parts = urlsplit(uri)
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    if parts.scheme == "":
        return Path(uri)
    return None


def digest(path: Path) -> str:
    """The digest ferry-fetch --sha256 checks, so a spec.model.sha256 is also the key's model digest."""
    return storage.directory_digest(path) if path.is_dir() else file_sha256(path)


def fetch(uri: str, scratch: Path, flag: str) -> Located:
    """A local copy (or the local original) of what `uri` names, with its digest."""
    path = local_path(uri)
    if path is not None:
        if not path.exists():
            raise InputError(flag, "an existing file or directory", uri)
        return Located(path, digest(path))
    name = Path(urlsplit(uri).path.rstrip("/")).name or "object"
    dest = scratch / flag.strip("-") / name
    if uri.endswith("/"):
        dest.mkdir(parents=True, exist_ok=True)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        fetched = storage.fetch(uri, dest)
    except (storage.FetchError, OSError) as error:
        raise InputError(
            flag, "a URI ferry-fetch can read (file://, pvc://, http(s)://, s3://)", str(error)
        ) from error
    return Located(dest, fetched.sha256)


def output_dir(uri: str, scratch: Path) -> Path:
    """The local directory the artifacts are written to (for s3://, a scratch directory to publish)."""
    path = local_path(uri)
    if path is not None:
        return path
    parts = urlsplit(uri)
    if parts.scheme == "pvc" and parts.netloc:
        return (
            Path(os.environ.get("FERRY_PVC_ROOT", "/mnt/pvc"))
            / parts.netloc
            / unquote(parts.path.lstrip("/"))
        )
    if parts.scheme == "s3" and parts.netloc:
        return scratch / "output"
    raise InputError("--output", "a local path, file:///PATH, pvc://CLAIM/PATH or s3://BUCKET/PREFIX", uri)


def publish(local: Path, uri: str, environ: Mapping[str, str] | None = None) -> None:
    """Upload every file under `local` to s3://BUCKET/PREFIX/<relative path>; other URIs are already there."""
    parts = urlsplit(uri)
    if parts.scheme != "s3":
        return
    environ = os.environ if environ is None else environ
    location = storage.S3Location.from_environment(parts.netloc, environ)
    prefix = unquote(parts.path).strip("/")
    for file in sorted(p for p in local.rglob("*") if p.is_file()):
        key = "/".join(filter(None, [prefix, file.relative_to(local).as_posix()]))
        request = _put_request(location, key, file.read_bytes())
        try:
            with urllib.request.urlopen(request, timeout=120) as reply:
                reply.read()
        except urllib.error.HTTPError as error:
            detail = error.read(300).decode("utf-8", "replace").strip()
            raise InputError(
                "--output", f"a writable S3 location (PUT {key} answered {error.code})", detail
            ) from error
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            raise InputError("--output", "a reachable S3 endpoint", f"{uri}: {error}") from error


def _put_request(location: storage.S3Location, key: str, body: bytes) -> urllib.request.Request:
    """A SigV4-signed PutObject (the payload's sha256 is signed), addressed like the fetcher's GETs."""
    encoded_key = sigv4.uri_encode(key, encode_slash=False)
    base = urlsplit(location.endpoint)
    if location.path_style:
        host, path = base.netloc, f"{base.path}/{location.bucket}/{encoded_key}"
    else:
        host, path = f"{location.bucket}.{base.netloc}", f"{base.path}/{encoded_key}"
    payload = hashlib.sha256(body).hexdigest()
    headers = {"host": host, "x-amz-content-sha256": payload}
    if location.credentials is not None:
        amz_date = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        headers["x-amz-date"] = amz_date
        if location.credentials.session_token:
            headers["x-amz-security-token"] = location.credentials.session_token
        headers["authorization"] = sigv4.authorization(
            method="PUT",
            canonical_path=path,
            query=(),
            headers=headers,
            payload_sha256=payload,
            credentials=location.credentials,
            region=location.region,
            service="s3",
            amz_date=amz_date,
        )
    return urllib.request.Request(f"{base.scheme}://{host}{path}", data=body, headers=headers, method="PUT")
