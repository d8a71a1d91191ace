"""Where the model, the data and the output live: URIs resolved to local paths.

Local paths and file:// URIs are used in place. Every other scheme (pvc://, s3://, http(s)://) is fetched
by the storage initializer's fetcher, ferry_runtime.storage, the one home of that logic in Ferry.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol, cast
from urllib.parse import unquote, urlparse

from ferry_optimizer.errors import InputError


class _Fetcher(Protocol):
    def __call__(self, uri: str, dest: Path) -> Path: ...


def local_path(uri: str) -> Path | None:
    """The local path a URI names, or None when it names remote storage."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and uri[1:3] == ":\\"):
        return Path(uri)
    return None


def fetch(uri: str, scratch: Path, what: str) -> Path:
    """A local path holding what `uri` names; remote objects are fetched under `scratch`."""
    path = local_path(uri)
    if path is not None:
        if not path.exists():
            raise InputError(what, "an existing file or directory", uri)
        return path
    fetcher = _remote_fetcher(what, uri)
    name = Path(urlparse(uri).path.rstrip("/")).name or "object"
    dest = scratch / what.strip("-") / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    return fetcher(uri, dest)


def output_dir(uri: str) -> Path:
    """The local directory the artifacts are written to (file:// and plain paths; pvc:// via the mount)."""
    path = local_path(uri)
    if path is not None:
        return path
    parsed = urlparse(uri)
    if parsed.scheme == "pvc":
        storage = _storage_module("--output", uri)
        resolve = getattr(storage, "resolve_pvc", None)
        if resolve is not None:
            return cast(Path, resolve(uri))
    raise InputError("--output", "a local path, file:///PATH or pvc://CLAIM/PATH", uri)


def _storage_module(what: str, uri: str) -> object:
    try:
        return importlib.import_module("ferry_runtime.storage")
    except ImportError as error:
        raise InputError(
            what, "a local path or file:// URI (ferry_runtime.storage is not installed)", uri
        ) from error


def _remote_fetcher(what: str, uri: str) -> _Fetcher:
    storage = _storage_module(what, uri)
    fetcher = getattr(storage, "fetch", None)
    if fetcher is None:
        raise InputError(what, "a local path or file:// URI (this ferry_runtime has no fetcher)", uri)
    return cast(_Fetcher, fetcher)
