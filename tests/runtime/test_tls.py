"""TLS on REST and gRPC (--tls-dir, a kubernetes.io/tls Secret's layout), with clients that verify the
certificate against a CA made in the test: Triton's HTTP and gRPC clients, grpcio with a root
certificate, and the official OpenAI client with a custom CA; renewal without a restart."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http

from conftest import RuntimeProcess, TinyLlama, start_runtime, write_secret_volume
from ferry_runtime.protocol.grpc.generated import grpc_predict_v2_pb2 as pb
from runtime_models import DigitsModel

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


class Authority:
    """A CA made in the test, and server certificates for 127.0.0.1/localhost signed by it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=ferry-test-ca",
            cwd=directory,
        )  # fmt: skip
        self.ca = directory / "ca.crt"

    def issue(self, serial: int) -> dict[str, str]:
        """tls.crt and tls.key of a new server certificate, as a Secret's data."""
        work = self.directory
        (work / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        openssl(
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "server.key", "-out", "server.csr", "-subj", f"/CN=ferry-{serial}",
            cwd=work,
        )  # fmt: skip
        openssl(
            "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-set_serial", str(serial), "-days", "1", "-out", "server.crt", "-extfile", "san.cnf",
            cwd=work,
        )  # fmt: skip
        return {"tls.crt": (work / "server.crt").read_text(), "tls.key": (work / "server.key").read_text()}


def served_serial(port: int, ca: Path) -> int:
    context = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        certificate = tls.getpeercert()
        assert certificate is not None
        return int(str(certificate["serialNumber"]), 16)


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return Authority(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def tls_dir(authority: Authority, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tls") / "secret"
    write_secret_volume(directory, authority.issue(1), 1)
    return directory


@pytest.fixture(scope="module")
def secure(
    digits: DigitsModel, tls_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RuntimeProcess]:
    runtime = start_runtime(
        digits.path.parent,
        "digits",
        tmp_path_factory.mktemp("tls-logs"),
        "--tls-dir",
        str(tls_dir),
        wait_ready=False,
    )
    yield runtime
    assert runtime.stop() == 0, runtime.log()


def wait_ready_over_tls(runtime: RuntimeProcess, ca: Path) -> None:
    client = triton_http.InferenceServerClient(runtime.http, ssl=True, ssl_options={"ca_certs": str(ca)})
    deadline = time.monotonic() + 120
    while True:
        assert runtime.process.poll() is None, runtime.log()
        try:
            if client.is_server_ready():
                return
        except Exception:
            pass
        assert time.monotonic() < deadline, runtime.log()
        time.sleep(0.1)


def test_triton_clients_verify_the_certificate(
    secure: RuntimeProcess, authority: Authority, digits: DigitsModel
) -> None:
    wait_ready_over_tls(secure, authority.ca)
    images = digits.test_images[:8]
    http = triton_http.InferenceServerClient(
        secure.http, ssl=True, ssl_options={"ca_certs": str(authority.ca)}
    )
    tensor = triton_http.InferInput("input", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images, binary_data=True)
    np.testing.assert_array_equal(
        http.infer("digits", [tensor]).as_numpy("label"), digits.expected_labels[:8]
    )
    over_grpc = triton_grpc.InferenceServerClient(secure.grpc, ssl=True, root_certificates=str(authority.ca))
    tensor = triton_grpc.InferInput("input", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    np.testing.assert_array_equal(
        over_grpc.infer("digits", [tensor]).as_numpy("label"), digits.expected_labels[:8]
    )


def test_grpcio_with_a_root_certificate(secure: RuntimeProcess, authority: Authority) -> None:
    wait_ready_over_tls(secure, authority.ca)
    credentials = grpc.ssl_channel_credentials(root_certificates=authority.ca.read_bytes())
    with grpc.secure_channel(secure.grpc, credentials) as channel:
        live = channel.unary_unary(
            "/inference.GRPCInferenceService/ServerLive",
            request_serializer=pb.ServerLiveRequest.SerializeToString,
            response_deserializer=pb.ServerLiveResponse.FromString,
        )
        assert live(pb.ServerLiveRequest(), timeout=30).live


def test_an_untrusted_or_plain_client_gets_nothing(secure: RuntimeProcess, authority: Authority) -> None:
    wait_ready_over_tls(secure, authority.ca)
    with pytest.raises(ssl.SSLCertVerificationError):
        served_serial(
            secure.http_port,
            Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt"),
        )
    with socket.create_connection(("127.0.0.1", secure.http_port), timeout=30) as plain:
        plain.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n")
        answer = plain.recv(65536)
    assert b"live" not in answer  # a TLS alert or a closed connection, never the plain-text answer
    assert secure.process.poll() is None


def test_a_renewed_certificate_is_served_without_a_restart(
    secure: RuntimeProcess, authority: Authority, tls_dir: Path
) -> None:
    wait_ready_over_tls(secure, authority.ca)
    assert served_serial(secure.http_port, authority.ca) == 1
    # An open connection survives the renewal.
    client = triton_http.InferenceServerClient(
        secure.http, ssl=True, ssl_options={"ca_certs": str(authority.ca)}
    )
    assert client.is_server_live()
    write_secret_volume(tls_dir, authority.issue(2), 2)
    deadline = time.monotonic() + 30
    while served_serial(secure.http_port, authority.ca) != 2:
        assert time.monotonic() < deadline, "the renewed certificate was never served"
        time.sleep(0.2)
    assert served_serial(secure.grpc_port, authority.ca) == 2
    assert client.is_server_live()
    # A broken pair (a key that does not match) is refused and the working one kept.
    broken = authority.issue(3)
    broken["tls.key"] = authority.issue(4)["tls.key"]
    write_secret_volume(tls_dir, broken, 3)
    time.sleep(2.5)  # the reloader looks once a second: give it two looks at the broken pair
    assert served_serial(secure.http_port, authority.ca) == 2
    assert "cannot load the TLS pair" in secure.log()


def test_openai_client_with_a_custom_ca(
    tiny_llama: TinyLlama, authority: Authority, tmp_path: Path, log_dir: Path
) -> None:
    import openai

    directory = tmp_path / "secret"
    write_secret_volume(directory, authority.issue(10), 1)
    runtime = start_runtime(
        tiny_llama.genai, "tiny-llama", log_dir, "--tls-dir", str(directory), wait_ready=False
    )
    try:
        wait_ready_over_tls(runtime, authority.ca)
        http_client = openai.DefaultHttpx2Client(verify=ssl.create_default_context(cafile=str(authority.ca)))
        client = openai.OpenAI(
            api_key="unused", base_url=f"https://127.0.0.1:{runtime.http_port}/v1", http_client=http_client
        )
        completion = client.completions.create(model="tiny-llama", prompt="the", max_tokens=3, temperature=0)
        assert completion.usage is not None
        assert completion.usage.completion_tokens == 3
    finally:
        assert runtime.stop() == 0, runtime.log()


def test_a_pair_that_does_not_load_stops_the_runtime_naming_the_setting(
    digits: DigitsModel, authority: Authority, tmp_path: Path, log_dir: Path
) -> None:
    directory = tmp_path / "secret"
    broken = authority.issue(20)
    broken["tls.key"] = authority.issue(21)["tls.key"]
    write_secret_volume(directory, broken, 1)
    runtime = start_runtime(
        digits.path.parent, "digits", log_dir, "--tls-dir", str(directory), wait_ready=False
    )
    assert runtime.process.wait(60) == 2
    assert "cannot start (--tls-dir)" in runtime.log()


def test_kubectl_ferry_predict_verifies_the_certificate_with_its_ca_file(
    secure: RuntimeProcess, authority: Authority, digits: DigitsModel, tmp_path: Path
) -> None:
    import io
    import json

    from ferry_operator import plugin

    wait_ready_over_tls(secure, authority.ca)
    request = tmp_path / "request.json"
    row = digits.test_images[:1]
    request.write_text(
        json.dumps(
            {
                "inputs": [
                    {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": row.ravel().tolist()}
                ]
            }
        )
    )
    url = f"https://127.0.0.1:{secure.http_port}"
    out = io.StringIO()
    args = ["predict", "digits", "--url", url, "--input", str(request)]
    assert plugin.main([*args, "--ca-file", str(authority.ca)], out=out, environ={}) == 0
    assert out.getvalue().startswith(f"label INT64 [1]: [{digits.expected_labels[0]}]"), out.getvalue()
    untrusted = io.StringIO()
    assert plugin.main(args, out=untrusted, environ={}) != 0  # the system CAs do not know this one
