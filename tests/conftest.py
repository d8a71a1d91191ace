"""Fixtures shared by every test that needs Kubernetes.

`kube` (session-wide cluster, handed to each test): a `Kube` whose `kubeconfig` points at a real API
server, with `kubectl(...)`, `kubectl_json(...)`, `apply(...)` and `helm(...)` helpers.
  * KUBECONFIG set: that cluster (its current context) is used as is, and only if its server is a
    loopback address; a test suite must never touch a remote cluster by accident.
  * KUBECONFIG unset: `devcluster up` runs once per session (seconds when it is already up, a cold
    binary build the first time on a machine). A cluster that test sessions started is stopped by the
    last session to finish (`devcluster down`, state kept so the next start is warm) unless
    FERRY_DEVCLUSTER_KEEP=1; one a developer started with `devcluster/devcluster up` is left running.
    So CI ends with nothing running, and a developer who ran `up` once keeps a warm cluster.
`namespace` (per test): a fresh namespace, deleted after the test without waiting. It enforces Pod
Security "restricted" (`pod-security.kubernetes.io/enforce`), so the API server itself refuses any pod
Ferry makes that is not; a test of the devcluster's own generic pods names another level with
`@pytest.mark.pod_security("privileged")`.

Only tests marked `cluster` or `e2e` may use these fixtures (a fast unit test that quietly starts a
cluster would make `make unit` slow); using them elsewhere fails the test with the reason.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
try:
    import ferry_devcluster  # noqa: F401
except ImportError:  # the venv predates the package; it is stdlib-only, so the source tree will do
    sys.path.insert(0, str(ROOT / "devcluster"))

from ferry_devcluster import build, cluster  # noqa: E402
from ferry_devcluster.config import ClusterConfig, default_port_base, default_state_dir  # noqa: E402
from ferry_devcluster.kube import KubectlError  # noqa: E402
from ferry_devcluster.testing import Kube, is_loopback_server, shared_devcluster  # noqa: E402

CLUSTER_MARKERS = ("cluster", "e2e")


def _server_of(kubeconfig_env: str) -> str:
    result = subprocess.run(
        [str(build.kubectl()), "config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "KUBECONFIG": kubeconfig_env},
    )
    if result.returncode != 0:
        raise pytest.UsageError(f"KUBECONFIG={kubeconfig_env} has no usable current context: {result.stderr}")
    return result.stdout.strip()


@pytest.fixture(scope="session")
def _kube_session() -> Iterator[Kube]:
    kubeconfig_env = os.environ.get("KUBECONFIG")
    if kubeconfig_env:
        server = _server_of(kubeconfig_env)
        if not is_loopback_server(server):
            pytest.fail(
                f"KUBECONFIG's current context talks to {server}, which is not a loopback address; the "
                "tests create and delete objects, so they only run against a local cluster. Unset "
                "KUBECONFIG to use the devcluster.",
                pytrace=False,
            )
        # with a colon-separated list, the first file is the one whose context is used
        yield Kube(kubeconfig=Path(kubeconfig_env.split(os.pathsep)[0]), is_devcluster=False)
        return

    state_dir = default_state_dir()
    config = ClusterConfig.load(state_dir) or ClusterConfig(
        state_dir=state_dir, port_base=default_port_base()
    )
    try:
        with shared_devcluster(config, sys.stderr) as kube:
            yield kube
    except (cluster.ClusterError, build.BuildError, KubectlError) as error:
        pytest.fail(f"devcluster: {error}", pytrace=False)


def _require_cluster_marker(request: pytest.FixtureRequest) -> None:
    if not any(request.node.get_closest_marker(marker) for marker in CLUSTER_MARKERS):
        pytest.fail(
            f"{request.node.nodeid} uses a cluster fixture but is not marked "
            "@pytest.mark.cluster (or e2e); only marked tests may start the cluster",
            pytrace=False,
        )


@pytest.fixture
def kube(request: pytest.FixtureRequest) -> Kube:
    _require_cluster_marker(request)
    session: Kube = request.getfixturevalue("_kube_session")
    return session


@pytest.fixture
def namespace(kube: Kube, request: pytest.FixtureRequest) -> Iterator[str]:
    # a readable prefix from the test's name, a random suffix so reruns never collide with a namespace
    # still terminating from the previous run
    stem = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].rstrip("-")
    name = f"t-{stem}-{secrets.token_hex(3)}"
    marker = request.node.get_closest_marker("pod_security")
    level = marker.args[0] if marker else "restricted"
    kube.kubectl("create", "namespace", name)
    kube.kubectl(
        "label",
        "namespace",
        name,
        "ferry.dev/test=true",
        f"pod-security.kubernetes.io/enforce={level}",
        "pod-security.kubernetes.io/enforce-version=latest",
    )
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)
