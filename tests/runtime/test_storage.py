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

import hashlib
import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

import pytest

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
                + "".join(f"<Contents><Key>{escape(key)}</Key></Contents>" for key in page)
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
