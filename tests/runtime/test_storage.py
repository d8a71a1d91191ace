"""ferry-fetch against real local sources: files, pvc paths, real HTTP servers and a real S3 server.

The S3 flows run against gofakes3 (a real S3-compatible server, built from its Go module and cached like
the devcluster's binaries): GET, ranged GET and ListObjectsV2, with a TCP proxy in front that cuts,
stalls or shortens its answers on purpose. gofakes3 accepts any signature, so SigV4 is proven against
AWS's published test vectors and a small local server that recomputes each request's signature with the
same secret. The HTTP faults (a short body, a trickle, a stall, a reset, a malformed answer, a published
digest) come from a local http.server that misbehaves on purpose. Limits are tiny (FAST) so every fault
ends in well under a second or two; no assertion depends on the machine's speed.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import http.server
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

import pytest

from ferry_devcluster import build
from ferry_runtime import sigv4, storage

FERRY_FETCH = str(Path(sys.executable).parent / "ferry-fetch")


# --- SigV4: AWS's published vectors ----------------------------------------------------------------


def test_sigv4_get_vanilla_vector() -> None:
    # aws-sig-v4-test-suite/get-vanilla
    header = sigv4.authorization(
        method="GET",
        canonical_path="/",
        query=[],
        headers={"host": "example.amazonaws.com", "x-amz-date": "20150830T123600Z"},
        payload_sha256=sigv4.EMPTY_SHA256,
        credentials=sigv4.Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
        region="us-east-1",
        service="service",
        amz_date="20150830T123600Z",
    )
    assert header == (
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;x-amz-date, "
        "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
    )


def test_sigv4_query_order_vector() -> None:
    # aws-sig-v4-test-suite/get-vanilla-query-order-key-case: the query is sorted before signing.
    header = sigv4.authorization(
        method="GET",
        canonical_path="/",
        query=[("Param2", "value2"), ("Param1", "value1")],
        headers={"host": "example.amazonaws.com", "x-amz-date": "20150830T123600Z"},
        payload_sha256=sigv4.EMPTY_SHA256,
        credentials=sigv4.Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
        region="us-east-1",
        service="service",
        amz_date="20150830T123600Z",
    )
    assert header.endswith("Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500")


S3_DOCS_KEY = sigv4.Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
S3_DOCS_HEADERS = {
    "host": "examplebucket.s3.amazonaws.com",
    "x-amz-content-sha256": sigv4.EMPTY_SHA256,
    "x-amz-date": "20130524T000000Z",
}


def test_sigv4_s3_get_object_vector() -> None:
    # Amazon S3 API reference, "Signature Calculations for the Authorization Header", Example: GET Object.
    header = sigv4.authorization(
        method="GET",
        canonical_path="/test.txt",
        query=[],
        headers=S3_DOCS_HEADERS | {"range": "bytes=0-9"},
        payload_sha256=sigv4.EMPTY_SHA256,
        credentials=S3_DOCS_KEY,
        region="us-east-1",
        service="s3",
        amz_date="20130524T000000Z",
    )
    assert header == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )


def test_sigv4_s3_list_objects_vector() -> None:
    # Same reference, Example: List Objects (query parameters sorted and encoded).
    header = sigv4.authorization(
        method="GET",
        canonical_path="/",
        query=[("prefix", "J"), ("max-keys", "2")],
        headers=S3_DOCS_HEADERS,
        payload_sha256=sigv4.EMPTY_SHA256,
        credentials=S3_DOCS_KEY,
        region="us-east-1",
        service="s3",
        amz_date="20130524T000000Z",
    )
    assert header.endswith("Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7")


# --- local sources -------------------------------------------------------------------------------


@pytest.fixture
def model_tree(tmp_path: Path) -> Path:
    source = tmp_path / "source" / "digits"
    (source / "extra").mkdir(parents=True)
    (source / "model.onnx").write_bytes(b"onnx-bytes" * 1000)
    (source / "extra" / "labels.txt").write_text("0\n1\n")
    return source


def test_file_directory_fetch_and_manifest_digest(model_tree: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    expected = storage.directory_digest(model_tree)
    # The documented equivalent: sha256sum of the sorted sha256sum listing.
    listing = subprocess.run(
        "find . -type f | sort | xargs sha256sum",
        shell=True,
        cwd=model_tree,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert expected == hashlib.sha256(listing.encode()).hexdigest()
    fetched = storage.fetch(f"file://{model_tree}/", dest, sha256=expected)
    assert fetched.sha256 == expected
    assert (dest / "model.onnx").read_bytes() == (model_tree / "model.onnx").read_bytes()
    assert (dest / "extra" / "labels.txt").read_text() == "0\n1\n"
    assert not list(dest.rglob("*.part"))


def test_pvc_file_into_directory(model_tree: Path, tmp_path: Path) -> None:
    dest = tmp_path / "models"
    dest.mkdir()
    digest = hashlib.sha256((model_tree / "model.onnx").read_bytes()).hexdigest()
    environ = {"FERRY_PVC_ROOT": str(model_tree.parent.parent)}
    fetched = storage.fetch("pvc://source/digits/model.onnx", dest, sha256=digest.upper(), environ=environ)
    assert fetched.files == [dest / "model.onnx"]


def test_digest_mismatch_leaves_nothing_behind(model_tree: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    with pytest.raises(storage.FetchError, match=r"SHA-256 mismatch: expected 00+, got [0-9a-f]{64}"):
        storage.fetch(f"file://{model_tree}/", dest, sha256="0" * 64)
    assert not [path for path in dest.rglob("*") if path.is_file()]


def test_cli_reports_errors_and_exit_code(tmp_path: Path) -> None:
    completed = subprocess.run(  # noqa: PLW1510 (the exit code is asserted)
        [FERRY_FETCH, "ftp://host/model.onnx", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 1
    assert "unsupported scheme 'ftp'" in completed.stderr
    missing = subprocess.run(  # noqa: PLW1510 (the exit code is asserted)
        [FERRY_FETCH, f"file://{tmp_path}/nope.onnx", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1
    assert "no file at" in missing.stderr


# --- HTTP ----------------------------------------------------------------------------------------


@pytest.fixture
def http_server(model_tree: Path) -> Iterator[str]:
    failures = {"count": 0}

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(model_tree), **kwargs)  # type: ignore[arg-type]

        def do_GET(self) -> None:
            # The first request for /flaky fails with a 503: the fetcher must retry.
            if self.path == "/flaky/model.onnx" and failures["count"] == 0:
                failures["count"] += 1
                self.send_error(503, "try again")
                return
            self.path = self.path.removeprefix("/flaky")
            super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_http_fetch_with_digest_and_retry(http_server: str, model_tree: Path, tmp_path: Path) -> None:
    digest = hashlib.sha256((model_tree / "model.onnx").read_bytes()).hexdigest()
    completed = subprocess.run(  # noqa: PLW1510 (the exit code is asserted)
        [FERRY_FETCH, f"{http_server}/flaky/model.onnx", f"{tmp_path}/out/", "--sha256", digest],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    assert f"sha256 {digest}" in completed.stdout
    assert (tmp_path / "out" / "model.onnx").read_bytes() == (model_tree / "model.onnx").read_bytes()


def test_http_errors_name_the_status(http_server: str, tmp_path: Path) -> None:
    with pytest.raises(storage.FetchError, match="HTTP 404"):
        storage.fetch(f"{http_server}/missing.onnx", tmp_path)
    with pytest.raises(storage.FetchError, match="no directory listing"):
        storage.fetch(f"{http_server}/", tmp_path)


# --- S3 ------------------------------------------------------------------------------------------


@pytest.fixture
def s3_endpoint(model_tree: Path) -> Iterator[tuple[str, list[str]]]:
    objects = {
        f"models/digits/{path.relative_to(model_tree).as_posix()}": path.read_bytes()
        for path in model_tree.rglob("*")
        if path.is_file()
    }
    objects["models/liar/model.onnx"] = b"onnx"
    objects["models/evil/../../escape.txt"] = b"written outside DEST?"
    # The listing's Size of each key: the liar's says more than its GET sends.
    sizes = {key: len(body) for key, body in objects.items()} | {"models/liar/model.onnx": 5}
    secret = "s3cr3t"
    seen: list[str] = []

    class S3(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            seen.append(self.path)
            given = self.headers.get("Authorization", "")
            signed = given.partition("SignedHeaders=")[2].partition(",")[0].split(";")
            headers = {name: self.headers.get(name, "") for name in signed if name}
            query = [
                (key, value)
                for key, values in parse_qs(parts.query, keep_blank_values=True).items()
                for value in values
            ]
            expected = sigv4.authorization(
                method="GET",
                canonical_path=parts.path,
                query=query,
                headers=headers,
                payload_sha256=sigv4.EMPTY_SHA256,
                credentials=sigv4.Credentials("AKIDTEST", secret),
                region="eu-west-1",
                service="s3",
                amz_date=headers["x-amz-date"],
            )
            if given != expected:
                self._reply(403, b"<Error><Code>SignatureDoesNotMatch</Code></Error>")
                return
            bucket, _, key = unquote(parts.path).lstrip("/").partition("/")
            if bucket != "bucket":
                self._reply(404, b"<Error><Code>NoSuchBucket</Code></Error>")
            elif key:
                self._reply(200, objects[key]) if key in objects else self._reply(
                    404, b"<Error><Code>NoSuchKey</Code></Error>"
                )
            else:
                self._list(dict(query))

        def _list(self, query: dict[str, str]) -> None:
            # One key per page, to exercise continuation tokens.
            keys = sorted(key for key in objects if key.startswith(query.get("prefix", "")))
            start = int(query.get("continuation-token", "0"))
            page = keys[start : start + 1]
            truncated = start + 1 < len(keys)
            body = (
                '<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                + "".join(
                    f"<Contents><Key>{escape(key)}</Key><Size>{sizes[key]}</Size></Contents>" for key in page
                )
                + f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>"
                + (f"<NextContinuationToken>{start + 1}</NextContinuationToken>" if truncated else "")
                + "</ListBucketResult>"
            )
            self._reply(200, body.encode())

        def _reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), S3)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()


def s3_environ(endpoint: str, secret: str = "s3cr3t") -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "AKIDTEST",
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_REGION": "eu-west-1",
        "AWS_ENDPOINT_URL": endpoint,
    }


def test_s3_prefix_fetch_pages_through_the_listing(
    s3_endpoint: tuple[str, list[str]], model_tree: Path, tmp_path: Path
) -> None:
    endpoint, seen = s3_endpoint
    fetched = storage.fetch(
        "s3://bucket/models/digits/",
        tmp_path / "dest",
        environ=s3_environ(endpoint),
        sha256=storage.directory_digest(model_tree),
    )
    assert sorted(path.relative_to(tmp_path / "dest").as_posix() for path in fetched.files) == [
        "extra/labels.txt",
        "model.onnx",
    ]
    assert sum("continuation-token" in path for path in seen) == 1


def test_s3_single_object_and_bad_credentials(
    s3_endpoint: tuple[str, list[str]], model_tree: Path, tmp_path: Path
) -> None:
    endpoint, _ = s3_endpoint
    fetched = storage.fetch(
        "s3://bucket/models/digits/model.onnx", f"{tmp_path}/one/", environ=s3_environ(endpoint)
    )
    assert fetched.files[0].read_bytes() == (model_tree / "model.onnx").read_bytes()
    with pytest.raises(storage.FetchError, match=r"HTTP 403.*SignatureDoesNotMatch"):
        storage.fetch(
            "s3://bucket/models/digits/model.onnx", f"{tmp_path}/two/", environ=s3_environ(endpoint, "wrong")
        )
    with pytest.raises(storage.FetchError, match="no objects under prefix 'nothing/'"):
        storage.fetch("s3://bucket/nothing/", tmp_path / "three", environ=s3_environ(endpoint))


# --- limits and messages -------------------------------------------------------------------------

# Tiny limits so each fault below ends at once; the defaults are for multi-GiB models.
FAST = storage.Limits(read_timeout_seconds=0.5, deadline_seconds=20, attempts=3, retry_backoff_seconds=0.01)
FAST_ENV = {
    "FERRY_FETCH_READ_TIMEOUT_SECONDS": "0.5",
    "FERRY_FETCH_DEADLINE_SECONDS": "20",
    "FERRY_FETCH_ATTEMPTS": "2",
    "FERRY_FETCH_RETRY_BACKOFF_SECONDS": "0",
}


def test_limits_come_from_flags_then_environment_then_defaults() -> None:
    assert storage.Limits.from_environment({}) == storage.Limits()
    environ = {"FERRY_FETCH_DEADLINE_SECONDS": "7200", "FERRY_FETCH_ATTEMPTS": "9"}
    limits = storage.Limits.from_environment(environ, {"attempts": "2", "deadline_seconds": None})
    assert (limits.deadline_seconds, limits.attempts) == (7200.0, 2)
    with pytest.raises(ValueError, match=r"FERRY_FETCH_ATTEMPTS must be a whole number, got 'many'"):
        storage.Limits.from_environment({"FERRY_FETCH_ATTEMPTS": "many"})
    with pytest.raises(ValueError, match=r"--read-timeout-seconds must be positive, got 0"):
        storage.Limits(read_timeout_seconds=0)


def test_documentation_carries_the_current_limits_table() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "runtime.md").read_text()
    assert storage.limits_table() in docs, (
        "docs/runtime.md's ferry-fetch table is stale: paste limits_table()"
    )


def run_fetch(*args: str, tmp_path: Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """ferry-fetch as the init container runs it: (exit code, stderr, termination message)."""
    termination_log = tmp_path / "termination-log"
    completed = subprocess.run(  # noqa: PLW1510 (the exit code is returned)
        [FERRY_FETCH, *args, "--termination-log", str(termination_log)],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith(("FERRY_FETCH_", "AWS_"))},
            **(env or {}),
        },
    )
    message = termination_log.read_text() if termination_log.exists() else ""
    return completed.returncode, completed.stderr, message


def test_a_bad_limit_is_one_line_and_exit_2(tmp_path: Path) -> None:
    code, stderr, message = run_fetch(
        "file:///nowhere", str(tmp_path), "--deadline-seconds", "-1", tmp_path=tmp_path
    )
    assert code == storage.EXIT_USAGE
    assert message == "ferry-fetch: --deadline-seconds must be positive, got -1"
    assert stderr.strip() == message


def test_connection_failure_is_one_line_without_credentials(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port now: every attempt is refused.
    uri = f"http://reader:hunter2@127.0.0.1:{port}/model.onnx?X-Amz-Signature=deadbeef"
    code, stderr, message = run_fetch(uri, str(tmp_path / "out"), tmp_path=tmp_path, env=FAST_ENV)
    assert code == 1
    assert message == (
        f"ferry-fetch: http://127.0.0.1:{port}/model.onnx?X-Amz-Signature=REDACTED: "
        "gave up after 2 attempts: connection refused"
    )
    assert "hunter2" not in stderr + message
    assert "deadbeef" not in stderr + message
    assert "Traceback" not in stderr


def files_under(directory: Path) -> list[Path]:
    """What a fetch left in `directory` (temporary .part files included)."""
    return [path for path in directory.rglob("*") if path.is_file()] if directory.exists() else []


# --- containment ---------------------------------------------------------------------------------


@pytest.fixture
def claim(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A claim's mount (FERRY_PVC_ROOT/models) with a model, and a secret beside the mount."""
    root = tmp_path / "pvc"
    (root / "models" / "digits").mkdir(parents=True)
    (root / "models" / "digits" / "model.onnx").write_bytes(b"onnx")
    (root / "models" / "shared.txt").write_text("inside the claim")
    (tmp_path / "secret.txt").write_text("outside every claim")
    return root / "models", {"FERRY_PVC_ROOT": str(root)}


@pytest.mark.parametrize(
    "uri",
    [
        "pvc://models/../../secret.txt",
        "pvc://models/digits/%2e%2e/%2e%2e/%2e%2e/secret.txt",
        "file:///tmp/../etc/passwd",
    ],
)
def test_dot_dot_is_refused(uri: str, claim: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    with pytest.raises(storage.FetchError, match=r": '\.\.' is not allowed in the path"):
        storage.fetch(uri, f"{tmp_path}/out/", environ=claim[1])
    assert not (tmp_path / "out").exists()


def test_a_claim_must_be_a_claim_name(claim: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    with pytest.raises(storage.FetchError, match=r"'\.\.' is not a PersistentVolumeClaim name"):
        storage.fetch("pvc://../secret.txt", f"{tmp_path}/out/", environ=claim[1])


def test_symlinks_out_of_the_claim_are_refused_by_name(
    claim: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    mount, environ = claim
    (mount / "digits" / "leak.txt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(
        storage.FetchError,
        match=r"pvc://models/digits/: leak.txt is a symlink to .*secret.txt, outside .*models: refused",
    ):
        storage.fetch("pvc://models/digits/", tmp_path / "out", environ=environ)
    with pytest.raises(storage.FetchError, match=r"leak.txt is a symlink to .*secret.txt, outside"):
        storage.fetch("pvc://models/digits/leak.txt", f"{tmp_path}/one/", environ=environ)
    (mount / "digits" / "leak.txt").unlink()
    (mount / "digits" / "etc").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(storage.FetchError, match=r"etc is a symlink to .*, outside .*models: refused"):
        storage.fetch("pvc://models/digits/", tmp_path / "out", environ=environ)
    # The directory named is itself a way out.
    with pytest.raises(storage.FetchError, match=r"digits/etc resolves to .*, outside .*models: refused"):
        storage.fetch("pvc://models/digits/etc/", tmp_path / "out", environ=environ)
    assert not files_under(tmp_path / "out")


def test_symlinks_inside_the_volume_are_followed_once(
    claim: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    mount, environ = claim
    (mount / "digits" / "labels.txt").symlink_to(mount / "shared.txt")
    # A loop back to the directory itself is walked once, not forever.
    (mount / "digits" / "again").symlink_to(mount / "digits", target_is_directory=True)
    fetched = storage.fetch("pvc://models/digits/", tmp_path / "out", environ=environ)
    assert sorted(path.name for path in fetched.files) == ["labels.txt", "model.onnx"]
    assert (tmp_path / "out" / "labels.txt").read_text() == "inside the claim"


def test_a_file_directory_is_its_own_volume(model_tree: Path, tmp_path: Path) -> None:
    (model_tree / "extra" / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(storage.FetchError, match=r"extra/passwd is a symlink to /etc/passwd, outside"):
        storage.fetch(f"file://{model_tree}/", tmp_path / "out")


# --- HTTP faults ---------------------------------------------------------------------------------

BODY = bytes(range(256)) * 4096  # 1 MiB
HALF = len(BODY) // 2
ETAG = '"v1"'


@dataclass
class Faulty:
    url: str
    # (path, Range, If-Range) of every request, in order.
    requests: list[tuple[str, str | None, str | None]]
    # The Authorization header each path was asked with.
    authorization: dict[str, str | None]


@pytest.fixture
def faulty() -> Iterator[Faulty]:
    requests: list[tuple[str, str | None, str | None]] = []
    authorization: dict[str, str | None] = {}
    stop = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path
            requests.append((path, self.headers.get("Range"), self.headers.get("If-Range")))
            authorization[path] = self.headers.get("Authorization")
            first = [request[0] for request in requests].count(path) == 1
            if path == "/model.onnx":
                self.send_body(BODY)
            elif path == "/cut-once":
                self.send_body(BODY, cut_at=HALF if first else None, reset=True)
            elif path == "/cut-then-whole":
                # No range support after the cut: the whole object again, from byte 0.
                self.send_body(BODY, cut_at=HALF if first else None, honor_range=False)
            elif path == "/short":
                self.send_body(BODY, cut_at=HALF, honor_range=False)
            elif path == "/chunked-cut":
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.write(b"10\r\n" + BODY[:16] + b"\r\n")
            elif path == "/stall":
                self.send_body(BODY, cut_at=10, honor_range=False)
                stop.wait(5)
            elif path == "/trickle":
                self.send_response(200)
                self.send_header("Content-Length", str(len(BODY)))
                self.end_headers()
                # One byte every 50 ms, each within the read timeout; at most 10 s of it.
                for index in range(200):
                    if stop.wait(0.05):
                        return
                    self.wfile.write(BODY[index : index + 1])
                    self.wfile.flush()
            elif path == "/garbage":
                self.wfile.write(b"garbage\r\n\r\n")
            elif path == "/digest-good":
                digest = base64.b64encode(hashlib.sha256(BODY).digest()).decode()
                self.send_body(BODY, headers={"Repr-Digest": f"sha-256=:{digest}:"})
            elif path == "/digest-bad":
                digest = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
                self.send_body(BODY, headers={"Repr-Digest": f"sha-512=:AAAA:, sha-256=:{digest}:"})
            elif path.startswith("/amz-"):
                published = {
                    "/amz-bad": base64.b64encode(hashlib.sha256(b"other").digest()).decode(),
                    # A multipart upload's checksum of its parts' checksums: not the object's.
                    "/amz-composite": base64.b64encode(hashlib.sha256(b"parts").digest()).decode() + "-3",
                }[path]
                self.send_body(BODY, headers={"x-amz-checksum-sha256": published})
            elif path == "/redirect":
                # To another host (localhost is not 127.0.0.1 as a host name), as a CDN would be.
                self.send_response(302)
                self.send_header("Location", f"http://localhost:{self.server.server_address[1]}/model.onnx")
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self.send_error(404)

        def send_body(
            self,
            body: bytes,
            *,
            cut_at: int | None = None,
            reset: bool = False,
            honor_range: bool = True,
            headers: dict[str, str] | None = None,
        ) -> None:
            start = 0
            wanted = self.headers.get("Range")
            if honor_range and wanted and self.headers.get("If-Range") in (None, ETAG):
                start = int(wanted.removeprefix("bytes=").removesuffix("-"))
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.send_header("Content-Length", str(len(body) - start))
            self.send_header("ETag", ETAG)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body[start:] if cut_at is None else body[start:cut_at])
            self.wfile.flush()
            if cut_at is not None and reset:
                # RST instead of FIN: the client sees "connection reset by peer".
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.handle_error = lambda *_: None  # type: ignore[method-assign]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Faulty(f"http://127.0.0.1:{server.server_address[1]}", requests, authorization)
    stop.set()
    server.shutdown()
    server.server_close()


def test_a_body_shorter_than_its_content_length_is_refused(faulty: Faulty, tmp_path: Path) -> None:
    with pytest.raises(storage.FetchError) as caught:
        storage.fetch(f"{faulty.url}/short", f"{tmp_path}/out/", limits=FAST)
    assert str(caught.value) == (
        f"{faulty.url}/short: gave up after 3 attempts: "
        "the body ended early, at 512.0 KiB of 1.0 MiB of short"
    )
    assert not files_under(tmp_path / "out")


def test_a_cut_connection_resumes_with_a_ranged_read(faulty: Faulty, tmp_path: Path) -> None:
    fetched = storage.fetch(
        f"{faulty.url}/cut-once", f"{tmp_path}/out/", sha256=hashlib.sha256(BODY).hexdigest(), limits=FAST
    )
    assert (tmp_path / "out" / "cut-once").read_bytes() == BODY
    assert fetched.size_bytes == len(BODY)
    # The reset discards what the client had not read yet: it resumes from what it did receive.
    (first, second) = faulty.requests
    assert first == ("/cut-once", None, None)
    resumed_at = int((second[1] or "").removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at <= HALF
    assert second == ("/cut-once", f"bytes={resumed_at}-", ETAG)


def test_a_server_that_ignores_the_range_is_read_again_from_the_start(faulty: Faulty, tmp_path: Path) -> None:
    fetched = storage.fetch(f"{faulty.url}/cut-then-whole", f"{tmp_path}/out/", limits=FAST)
    assert fetched.sha256 == hashlib.sha256(BODY).hexdigest()
    assert (tmp_path / "out" / "cut-then-whole").read_bytes() == BODY
    assert [request[1] for request in faulty.requests] == [None, f"bytes={HALF}-"]


def test_a_cut_chunked_body_is_retried(faulty: Faulty, tmp_path: Path) -> None:
    with pytest.raises(
        storage.FetchError,
        match=r"gave up after 3 attempts: the connection closed before the end of a chunked body",
    ):
        storage.fetch(f"{faulty.url}/chunked-cut", f"{tmp_path}/out/", limits=FAST)
    assert len(faulty.requests) == 3


def test_a_stalled_body_ends_at_the_read_timeout(faulty: Faulty, tmp_path: Path) -> None:
    limits = dataclasses.replace(FAST, read_timeout_seconds=0.2, attempts=2)
    with pytest.raises(storage.FetchError) as caught:
        storage.fetch(f"{faulty.url}/stall", f"{tmp_path}/out/", limits=limits)
    assert str(caught.value) == (
        f"{faulty.url}/stall: gave up after 2 attempts: no bytes for 0.2 s (read timeout, "
        "--read-timeout-seconds / FERRY_FETCH_READ_TIMEOUT_SECONDS), at 10 B of 1.0 MiB of stall"
    )


def test_a_trickling_body_ends_at_the_deadline(faulty: Faulty, tmp_path: Path) -> None:
    limits = dataclasses.replace(FAST, deadline_seconds=1)
    started = time.monotonic()
    with pytest.raises(
        storage.FetchError,
        match=(
            r"/trickle: gave up at the deadline of 1 s "
            r"\(--deadline-seconds / FERRY_FETCH_DEADLINE_SECONDS\), "
            r"at \d+ B of 1.0 MiB of trickle"
        ),
    ):
        storage.fetch(f"{faulty.url}/trickle", f"{tmp_path}/out/", limits=limits)
    # Generous: the trickle alone would take 10 s to give its 200 bytes.
    assert time.monotonic() - started < 8
    assert not files_under(tmp_path / "out")


def test_a_malformed_answer_is_one_line_in_the_termination_message(faulty: Faulty, tmp_path: Path) -> None:
    code, stderr, message = run_fetch(
        f"{faulty.url}/garbage", str(f"{tmp_path}/out/"), tmp_path=tmp_path, env=FAST_ENV
    )
    assert code == 1
    assert message == (
        f"ferry-fetch: {faulty.url}/garbage: gave up after 2 attempts: "
        "malformed HTTP answer (BadStatusLine: garbage)"
    )
    assert "Traceback" not in stderr
    assert stderr.strip().endswith(message)


def test_a_published_digest_is_checked(faulty: Faulty, tmp_path: Path) -> None:
    fetched = storage.fetch(f"{faulty.url}/digest-good", f"{tmp_path}/good/", limits=FAST)
    assert fetched.sha256 == hashlib.sha256(BODY).hexdigest()
    with pytest.raises(storage.FetchError) as caught:
        storage.fetch(f"{faulty.url}/digest-bad", f"{tmp_path}/bad/", limits=FAST)
    assert str(caught.value) == (
        f"{faulty.url}/digest-bad: digest-bad: the source's Repr-Digest says SHA-256 "
        f"{hashlib.sha256(b'other').hexdigest()}, "
        f"the bytes received hash to {hashlib.sha256(BODY).hexdigest()}"
    )
    assert not files_under(tmp_path / "bad")


# --- a real S3 server, and a proxy that breaks its answers ---------------------------------------

BIG = hashlib.sha256(b"seed").digest() * (3 * 65536)  # 6 MiB: a cut at 1 MiB falls mid-body


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def real_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """gofakes3 serving a directory as bucket "store": (endpoint, the bucket's directory)."""
    binary = build.ensure(["gofakes3"])["gofakes3"]
    bucket = tmp_path_factory.mktemp("s3-store")
    (bucket / "big").mkdir()
    (bucket / "big" / "model.onnx").write_bytes(BIG)
    (bucket / "big" / "model.onnx.data").write_bytes(BIG[: 1 << 20])
    port = free_port()
    server = subprocess.Popen(
        [
            binary,
            "-backend",
            "directfs",
            "-directfs.path",
            str(bucket),
            "-directfs.bucket",
            "store",
            "-host",
            f"127.0.0.1:{port}",
            "-quiet",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", bucket
    finally:
        server.terminate()
        server.wait(timeout=10)


class BreakingProxy:
    """A TCP proxy in front of a real server that breaks some answers on the way back: after `after`
    bytes it cuts the connection ("cut", a reset), ends it cleanly ("close", a short body) or goes
    silent ("stall"), as `plan(connection index)` says; None passes the answer through whole."""

    def __init__(self, upstream: str, plan: Callable[[int], tuple[str, int] | None]) -> None:
        self.upstream = urlsplit(upstream)
        self.plan = plan
        self.heads: list[bytes] = []
        self.stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            index = len(self.heads)
            self.heads.append(b"")
            threading.Thread(target=self._serve, args=(client, index), daemon=True).start()

    def _serve(self, client: socket.socket, index: int) -> None:
        upstream = socket.create_connection((self.upstream.hostname, self.upstream.port))
        threading.Thread(target=self._requests, args=(client, upstream, index), daemon=True).start()
        action = self.plan(index)
        sent = 0
        try:
            while data := upstream.recv(65536):
                if action is not None and sent + len(data) >= action[1]:
                    client.sendall(data[: action[1] - sent])
                    self._break(client, action[0])
                    return
                client.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            upstream.close()
            client.close()

    def _requests(self, client: socket.socket, upstream: socket.socket, index: int) -> None:
        try:
            while data := client.recv(65536):
                self.heads[index] += data
                upstream.sendall(data)
        except OSError:
            pass

    def _break(self, client: socket.socket, how: str) -> None:
        if how == "stall":
            self.stop.wait(5)
        elif how == "cut":
            # Linger 0: close sends RST. SHUT_RD first wakes the request pump blocked in recv, which
            # would otherwise keep the socket open past close().
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.shutdown(socket.SHUT_RD)
        else:
            client.shutdown(socket.SHUT_RDWR)

    def header(self, index: int, name: str) -> str | None:
        for line in self.heads[index].decode("latin-1").split("\r\n"):
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None

    def close(self) -> None:
        self.stop.set()
        self.listener.close()


@pytest.fixture
def breaking(
    real_s3: tuple[str, Path],
) -> Iterator[Callable[[Callable[[int], tuple[str, int] | None]], BreakingProxy]]:
    proxies: list[BreakingProxy] = []

    def start(plan: Callable[[int], tuple[str, int] | None]) -> BreakingProxy:
        proxies.append(BreakingProxy(real_s3[0], plan))
        return proxies[-1]

    yield start
    for proxy in proxies:
        proxy.close()


def test_real_s3_prefix_with_sizes_and_digest(real_s3: tuple[str, Path], tmp_path: Path) -> None:
    endpoint, bucket = real_s3
    fetched = storage.fetch(
        "s3://store/big/",
        tmp_path / "out",
        sha256=storage.directory_digest(bucket / "big"),
        environ=s3_environ(endpoint),
        limits=FAST,
    )
    assert sorted(path.name for path in fetched.files) == ["model.onnx", "model.onnx.data"]
    assert fetched.size_bytes == len(BIG) + (1 << 20)


def test_real_s3_cut_connection_resumes_with_a_ranged_get(
    breaking: Callable[[Callable[[int], tuple[str, int] | None]], BreakingProxy], tmp_path: Path
) -> None:
    proxy = breaking(lambda index: ("cut", 1 << 20) if index == 0 else None)
    fetched = storage.fetch(
        "s3://store/big/model.onnx",
        f"{tmp_path}/out/",
        sha256=hashlib.sha256(BIG).hexdigest(),
        environ=s3_environ(proxy.url),
        limits=FAST,
    )
    assert (tmp_path / "out" / "model.onnx").read_bytes() == BIG
    assert fetched.size_bytes == len(BIG)
    assert proxy.header(0, "Range") is None
    resumed_at = int((proxy.header(1, "Range") or "").removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at < 1 << 20
    assert proxy.header(1, "If-Range") == f'"{hashlib.md5(BIG).hexdigest()}"'  # S3's ETag


def test_real_s3_short_bodies_are_never_complete(
    breaking: Callable[[Callable[[int], tuple[str, int] | None]], BreakingProxy], tmp_path: Path
) -> None:
    # Every answer ends cleanly (FIN, no error) after 1 MiB, headers included: a short body each time.
    proxy = breaking(lambda _: ("close", 1 << 20))
    once = dataclasses.replace(FAST, attempts=1)
    with pytest.raises(storage.FetchError) as caught:
        storage.fetch(
            "s3://store/big/model.onnx", f"{tmp_path}/out/", environ=s3_environ(proxy.url), limits=once
        )
    assert re.fullmatch(
        r"s3://store/big/model.onnx: gave up after 1 attempt: "
        r"the body ended early, at 10\d\d\.\d KiB of 6.0 MiB of model.onnx",
        str(caught.value),
    ), caught.value
    assert not files_under(tmp_path / "out")
    # With retries, each short answer is resumed where it ended until the object is whole.
    fetched = storage.fetch(
        "s3://store/big/model.onnx", f"{tmp_path}/out/", environ=s3_environ(proxy.url), limits=FAST
    )
    assert fetched.sha256 == hashlib.sha256(BIG).hexdigest()
    starts = [int((proxy.header(index, "Range") or "bytes=0-")[6:-1]) for index in range(1, len(proxy.heads))]
    assert len(starts) >= 7
    assert starts == sorted(starts)
    assert starts[0] == 0


def test_real_s3_stall_is_retried_and_resumes(
    breaking: Callable[[Callable[[int], tuple[str, int] | None]], BreakingProxy], tmp_path: Path
) -> None:
    # Connection 0 is the listing, 1 the first GET of model.onnx: it goes silent after 1 MiB.
    proxy = breaking(lambda index: ("stall", 1 << 20) if index == 1 else None)
    limits = dataclasses.replace(FAST, read_timeout_seconds=0.3)
    fetched = storage.fetch("s3://store/big/", tmp_path / "out", environ=s3_environ(proxy.url), limits=limits)
    assert (tmp_path / "out" / "model.onnx").read_bytes() == BIG
    assert fetched.size_bytes == len(BIG) + (1 << 20)
    assert proxy.header(0, "Range") is None
    assert proxy.header(1, "Range") is None
    assert (proxy.header(2, "Range") or "").startswith("bytes=")
    assert len(proxy.heads) == 4


def test_an_s3_checksum_is_checked_unless_it_is_a_multipart_composite(faulty: Faulty, tmp_path: Path) -> None:
    with pytest.raises(storage.FetchError, match=r"amz-bad: the source's x-amz-checksum-sha256 says SHA-256"):
        storage.fetch(f"{faulty.url}/amz-bad", f"{tmp_path}/bad/", limits=FAST)
    assert not files_under(tmp_path / "bad")
    fetched = storage.fetch(f"{faulty.url}/amz-composite", f"{tmp_path}/ok/", limits=FAST)
    assert fetched.sha256 == hashlib.sha256(BODY).hexdigest()


def test_credentials_are_not_sent_to_another_host_on_a_redirect(faulty: Faulty, tmp_path: Path) -> None:
    with_user = faulty.url.replace("http://", "http://reader:hunter2@")
    fetched = storage.fetch(f"{with_user}/redirect", f"{tmp_path}/out/", limits=FAST)
    assert fetched.sha256 == hashlib.sha256(BODY).hexdigest()
    assert faulty.authorization["/redirect"] == "Basic " + base64.b64encode(b"reader:hunter2").decode()
    assert faulty.authorization["/model.onnx"] is None


def test_s3_an_object_that_disagrees_with_its_listing_is_refused(
    s3_endpoint: tuple[str, list[str]], tmp_path: Path
) -> None:
    endpoint, _ = s3_endpoint
    with pytest.raises(storage.FetchError) as caught:
        storage.fetch("s3://bucket/models/liar/", tmp_path / "out", environ=s3_environ(endpoint), limits=FAST)
    assert (
        str(caught.value)
        == "s3://bucket/models/liar/: model.onnx: the listing says 5 bytes, the server sends 4"
    )
    assert not files_under(tmp_path / "out")


def test_s3_a_key_that_climbs_out_of_dest_is_refused(
    s3_endpoint: tuple[str, list[str]], tmp_path: Path
) -> None:
    endpoint, _ = s3_endpoint
    with pytest.raises(storage.FetchError, match=r"refusing to write \.\./\.\./escape.txt outside .*out"):
        storage.fetch("s3://bucket/models/evil/", tmp_path / "out", environ=s3_environ(endpoint), limits=FAST)
    assert not (tmp_path / "escape.txt").exists()


def test_a_directory_digest_streams_its_files(tmp_path: Path) -> None:
    # A model's external data can outgrow the memory of the pod that hashes it: 256 MiB of zeros (a
    # sparse file, no disk) must be hashed in chunks, not read whole.
    import tracemalloc

    big = tmp_path / "model.onnx.data"
    with big.open("wb") as stream:
        stream.truncate(256 << 20)
    (tmp_path / "model.onnx").write_bytes(b"graph")
    tracemalloc.start()
    try:
        digest = storage.directory_digest(tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    zeros = hashlib.sha256()
    for _ in range(256):
        zeros.update(bytes(1 << 20))
    expected = storage.manifest_digest(
        {"model.onnx": hashlib.sha256(b"graph").hexdigest(), "model.onnx.data": zeros.hexdigest()}
    )
    assert digest == expected
    assert peak < 16 << 20, f"hashing held {peak >> 20} MiB"
