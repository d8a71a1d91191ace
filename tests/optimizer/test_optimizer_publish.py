"""Publishing the artifact directory to S3-compatible storage: signed PUTs to a local S3-style server.

No S3 server is installable under the project's pins (see tests/runtime/test_storage.py); this one checks
every request's SigV4 signature with ferry_runtime.sigv4 and stores what it accepted.
"""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from ferry_optimizer import locations
from ferry_optimizer.errors import InputError
from ferry_runtime import sigv4

SECRET = "s3cr3t"


@pytest.fixture
def s3_server() -> Iterator[tuple[str, dict[str, bytes]]]:
    stored: dict[str, bytes] = {}

    class S3(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            signed = {name: self.headers[name] for name in ("host", "x-amz-content-sha256", "x-amz-date")}
            expected = sigv4.authorization(
                method="PUT",
                canonical_path=urlsplit(self.path).path,
                query=(),
                headers=signed,
                payload_sha256=hashlib.sha256(body).hexdigest(),
                credentials=sigv4.Credentials("AKIDTEST", SECRET),
                region="eu-west-1",
                service="s3",
                amz_date=signed["x-amz-date"],
            )
            if self.headers.get("Authorization") != expected:
                self._reply(403, b"<Error><Code>SignatureDoesNotMatch</Code></Error>")
                return
            stored[unquote(urlsplit(self.path).path)] = body
            self._reply(200, b"")

        def _reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), S3)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", stored
    server.shutdown()


def environ(endpoint: str, secret: str = SECRET) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "AKIDTEST",
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_REGION": "eu-west-1",
        "AWS_ENDPOINT_URL": endpoint,
    }


def test_every_file_is_put_under_the_prefix_with_a_valid_signature(
    s3_server: tuple[str, dict[str, bytes]], tmp_path: Path
) -> None:
    endpoint, stored = s3_server
    (tmp_path / "tensorboard" / "report").mkdir(parents=True)
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07onnx")
    (tmp_path / "report.json").write_text("{}")
    (tmp_path / "tensorboard" / "report" / "events.out.tfevents.1").write_bytes(b"event")
    locations.publish(tmp_path, "s3://artifacts/digits/key 1/", environ(endpoint))
    assert stored == {
        "/artifacts/digits/key 1/model.onnx": b"\x08\x07onnx",
        "/artifacts/digits/key 1/report.json": b"{}",
        "/artifacts/digits/key 1/tensorboard/report/events.out.tfevents.1": b"event",
    }


def test_a_refused_upload_names_the_output_flag(
    s3_server: tuple[str, dict[str, bytes]], tmp_path: Path
) -> None:
    endpoint, stored = s3_server
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    with pytest.raises(
        InputError, match=r"--output: expected a writable S3 location \(PUT digits/model\.onnx answered 403"
    ):
        locations.publish(tmp_path, "s3://artifacts/digits", environ(endpoint, secret="wrong"))
    assert stored == {}


def test_output_locations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERRY_PVC_ROOT", str(tmp_path / "pvc"))
    assert (
        locations.output_dir("pvc://artifacts/digits/abc", tmp_path)
        == tmp_path / "pvc" / "artifacts" / "digits" / "abc"
    )
    assert locations.output_dir("file:///srv/out", tmp_path) == Path("/srv/out")
    assert locations.output_dir("s3://bucket/prefix", tmp_path) == tmp_path / "output"
    with pytest.raises(InputError, match="--output"):
        locations.output_dir("ftp://host/out", tmp_path)
