"""--auth kubernetes against the devcluster's real API server: real service account tokens, checked with
the real TokenReview API, allowed service accounts, audiences, revocation, and pipelined requests that
wait for a review without losing their order.

The runtime runs on the host here, so it is given the API server's address, its CA and a reviewer's
token by flag; in a pod these default to the in-cluster service account (docs/security.md).
"""

from __future__ import annotations

import base64
import json
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from conftest import start_runtime
from ferry_devcluster.testing import Kube
from runtime_models import DigitsModel

pytestmark = pytest.mark.cluster


def token(kube: Kube, namespace: str, account: str, *extra: str) -> str:
    return kube.kubectl(
        "create", "token", account, "-n", namespace, "--duration", "1h", *extra
    ).stdout.strip()


def status_of(url: str, bearer: str | None) -> int:
    headers = {} if bearer is None else {"Authorization": f"Bearer {bearer}"}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return error.code


class Reviewer:
    """A service account allowed to create TokenReviews (system:auth-delegator), as the chart's
    token-reviewer role allows a serving pod's account."""

    def __init__(self, kube: Kube, namespace: str, directory: Path) -> None:
        self.binding = f"{namespace}-reviewer"
        kube.kubectl("create", "serviceaccount", "reviewer", "-n", namespace)
        kube.kubectl(
            "create",
            "clusterrolebinding",
            self.binding,
            "--clusterrole=system:auth-delegator",
            f"--serviceaccount={namespace}:reviewer",
        )
        config = json.loads(kube.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
        cluster = config["clusters"][0]["cluster"]
        self.server = cluster["server"]
        self.ca = directory / "ca.crt"
        if "certificate-authority-data" in cluster:
            self.ca.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
        else:
            self.ca.write_text(Path(cluster["certificate-authority"]).read_text())
        self.token_file = directory / "reviewer.token"
        self.token_file.write_text(token(kube, namespace, "reviewer"))

    def flags(self) -> list[str]:
        return [
            "--auth",
            "kubernetes",
            "--auth-api-server",
            self.server,
            "--auth-api-ca-file",
            str(self.ca),
            "--auth-api-token-file",
            str(self.token_file),
        ]


@pytest.fixture
def reviewer(kube: Kube, namespace: str, tmp_path: Path) -> Iterator[Reviewer]:
    made = Reviewer(kube, namespace, tmp_path)
    for account in ("caller", "stranger", "leaver"):
        kube.kubectl("create", "serviceaccount", account, "-n", namespace)
    yield made
    kube.kubectl("delete", "clusterrolebinding", made.binding, "--ignore-not-found", check=False)


def test_service_account_tokens_are_reviewed_by_the_api_server(
    kube: Kube, namespace: str, reviewer: Reviewer, digits: DigitsModel, log_dir: Path
) -> None:
    runtime = start_runtime(
        digits.path.parent,
        "digits",
        log_dir,
        *reviewer.flags(),
        "--auth-allowed-service-accounts",
        f"{namespace}/caller,{namespace}/leaver",
        "--auth-cache-seconds",
        "1",
    )
    try:
        url = runtime.url("/v2/models/digits")
        caller, stranger = token(kube, namespace, "caller"), token(kube, namespace, "stranger")
        assert status_of(url, caller) == 200, runtime.log()
        assert status_of(url, stranger) == 403  # authenticated, not on the list
        assert status_of(url, caller[:-4] + "AAAA") == 401  # a forged signature
        assert status_of(url, None) == 401

        client = triton_grpc.InferenceServerClient(runtime.grpc)
        assert (
            client.get_model_metadata("digits", headers={"authorization": f"Bearer {caller}"}).name
            == "digits"
        )
        with pytest.raises(InferenceServerException) as denied:
            client.get_model_metadata("digits", headers={"authorization": f"Bearer {stranger}"})
        assert denied.value.status() == str(grpc.StatusCode.PERMISSION_DENIED)

        # Revocation: a deleted service account's tokens stop working once the short cache expires.
        leaver = token(kube, namespace, "leaver")
        assert status_of(url, leaver) == 200
        kube.kubectl("delete", "serviceaccount", "leaver", "-n", namespace)
        deadline = time.monotonic() + 60
        while status_of(url, leaver) != 401:
            assert time.monotonic() < deadline, "a deleted service account's token was still accepted"
            time.sleep(0.5)
    finally:
        assert runtime.stop() == 0, runtime.log()


def test_pipelined_requests_keep_their_order_while_a_token_is_reviewed(
    kube: Kube, namespace: str, reviewer: Reviewer, digits: DigitsModel, log_dir: Path
) -> None:
    runtime = start_runtime(digits.path.parent, "digits", log_dir, *reviewer.flags())
    try:
        fresh = token(kube, namespace, "caller")  # never seen: the first request waits for its review
        requests = (
            b"GET /v2/models/digits HTTP/1.1\r\nhost: x\r\nauthorization: Bearer %s\r\n\r\n" % fresh.encode()
            + b"GET /v2/health/ready HTTP/1.1\r\nhost: x\r\n\r\n"
            + b"GET /v2/models/digits/ready HTTP/1.1\r\nhost: x\r\nauthorization: Bearer %s\r\n"
            b"connection: close\r\n\r\n" % fresh.encode()
        )
        with socket.create_connection(("127.0.0.1", runtime.http_port), timeout=30) as connection:
            connection.sendall(requests)
            answer = b""
            while chunk := connection.recv(65536):
                answer += chunk
        # Bodies are not CRLF-terminated: each status line follows the previous body directly.
        assert re.findall(rb"HTTP/1\.1 (\d{3}) ", answer) == [b"200"] * 3, answer
        markers = (b'"platform"', b'{"ready":true}', b'"name":"digits","ready":true')
        first, second, third = (answer.index(marker) for marker in markers)
        assert first < second < third, answer
    finally:
        assert runtime.stop() == 0, runtime.log()


def test_audiences_are_checked(
    kube: Kube, namespace: str, reviewer: Reviewer, digits: DigitsModel, log_dir: Path
) -> None:
    runtime = start_runtime(
        digits.path.parent, "digits", log_dir, *reviewer.flags(), "--auth-audiences", "ferry.dev/models"
    )
    try:
        url = runtime.url("/v2/models/digits")
        assert status_of(url, token(kube, namespace, "caller", "--audience", "ferry.dev/models")) == 200
        assert status_of(url, token(kube, namespace, "caller")) == 401  # issued for the API server only
    finally:
        assert runtime.stop() == 0, runtime.log()
