"""The real node: configuration units, and (e2e) a second cluster with a real kubelet that serves a model
from the ferry-runtime image through its Service, resolves Service names, and leaves nothing behind."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ferry_devcluster import build, cli, control_plane, pki, processes, real_node
from ferry_devcluster.config import ClusterConfig
from ferry_devcluster.testing import Kube, free_port_base, real_node_slot_or_skip

DEVCLUSTER = build.REPO_ROOT / "devcluster" / "devcluster"
RUNTIME_IMAGE = "ferry-runtime:0.1.0"
WAIT_SECONDS = 240


def make_config(tmp_path: Path, **changes: Any) -> ClusterConfig:
    values: dict[str, Any] = {
        "state_dir": tmp_path,
        "port_base": 27400,
        "real_node": True,
        "node_ip": "192.0.2.7",
    }
    values.update(changes)
    return ClusterConfig(**values)


# --------------------------------------------------------------------------- units


def test_real_node_flag_is_remembered_and_can_be_turned_off(tmp_path: Path) -> None:
    on = cli.resolve_config(
        cli.build_parser().parse_args(["--state-dir", str(tmp_path), "up", "--real-node"])
    )
    assert on.real_node
    on.save()
    again = cli.resolve_config(cli.build_parser().parse_args(["--state-dir", str(tmp_path), "up"]))
    assert again.real_node
    off = cli.resolve_config(
        cli.build_parser().parse_args(["--state-dir", str(tmp_path), "up", "--no-real-node"])
    )
    assert not off.real_node


def test_without_the_real_node_the_api_server_stays_on_loopback(tmp_path: Path) -> None:
    argv = control_plane.apiserver(make_config(tmp_path, real_node=False), Path("/bin/true")).argv
    assert "--bind-address=127.0.0.1" in argv
    assert "--endpoint-reconciler-type=none" in argv
    names = {spec.name for spec in pki.certificate_specs(make_config(tmp_path, real_node=False))}
    assert not names & {"kubelet", "kubelet-serving", "kube-proxy"}


def test_with_the_real_node_the_api_server_advertises_the_host_address(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    argv = control_plane.apiserver(config, Path("/bin/true")).argv
    assert "--advertise-address=192.0.2.7" in argv
    assert "--endpoint-reconciler-type=none" not in argv
    specs = {spec.name: spec for spec in pki.certificate_specs(config)}
    assert "192.0.2.7" in specs["apiserver"].ip_addresses
    assert specs["kubelet"].common_name == "system:node:real-node-0"
    assert specs["kubelet"].organizations == ("system:nodes",)
    assert specs["kube-proxy"].common_name == "system:kube-proxy"


def test_kubelet_configuration_names_the_cgroup_v1_settings_and_our_runtime(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    text = real_node.kubelet_configuration(config)
    for line in (
        "failCgroupV1: false",
        "cgroupDriver: cgroupfs",
        f"containerRuntimeEndpoint: unix://{real_node.containerd_socket(config)}",
        "readOnlyPort: 0",
        "failSwapOn: false",
        f"port: {config.port('kubelet')}",
        "clusterDNS: [10.96.0.10]",
    ):
        assert line in text


def test_containerd_config_keeps_everything_under_the_state_dir(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    text = real_node.containerd_config(config)
    for path_line in ("root = ", "state = ", "address = ", "bin_dir = ", "conf_dir = "):
        (line,) = [line for line in text.splitlines() if line.strip().startswith(path_line)][:1]
        assert str(tmp_path) in line, line
    assert f'sandbox_image = "{real_node.PAUSE_IMAGE}"' in text
    assert "SystemdCgroup = false" in text


def test_cni_conflist_uses_the_node_pod_cidr(tmp_path: Path) -> None:
    conflist = json.loads(real_node.cni_conflist(make_config(tmp_path), "10.244.3.0/24"))
    bridge = conflist["plugins"][0]
    assert bridge["bridge"] == "fdc27400"
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.244.3.0/24"}]]


@pytest.mark.parametrize(
    ("image", "reference"),
    [
        ("ferry-runtime:0.1.0", "docker.io/library/ferry-runtime:0.1.0"),
        ("acme/runtime:1", "docker.io/acme/runtime:1"),
        ("registry.example:5000/acme/runtime:1", "registry.example:5000/acme/runtime:1"),
        ("localhost/ferry-runtime:0.1.0", "localhost/ferry-runtime:0.1.0"),
    ],
)
def test_image_names_are_normalised_as_the_kubelet_looks_them_up(image: str, reference: str) -> None:
    assert real_node.normalized_reference(image) == reference


def test_pause_image_archive_is_a_docker_save_layout(tmp_path: Path) -> None:
    binary = tmp_path / "pause"
    binary.write_bytes(b"\x7fELF not really")
    archive_bytes = real_node.pause_image_archive(binary, "example.dev/pause:1")

    def member(archive: tarfile.TarFile, name: str) -> bytes:
        extracted = archive.extractfile(name)
        assert extracted is not None, name
        return extracted.read()

    with tarfile.open(fileobj=io.BytesIO(archive_bytes)) as archive:
        manifest = json.loads(member(archive, "manifest.json"))
        image_config = json.loads(member(archive, "config.json"))
        layer_bytes = member(archive, "layer.tar")
    assert manifest[0]["RepoTags"] == ["example.dev/pause:1"]
    assert image_config["config"]["Entrypoint"] == ["/pause"]
    with tarfile.open(fileobj=io.BytesIO(layer_bytes)) as layer:
        assert layer.getmember("pause").mode == 0o755
        assert member(layer, "pause") == binary.read_bytes()


# --------------------------------------------------------------------------- e2e


def wait_for(what: str, probe: Callable[[], Any], timeout: float = WAIT_SECONDS) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(1)
    pytest.fail(f"timed out waiting for {what}; last seen: {last!r}")


def relu_model(directory: Path) -> None:
    """A one-node ONNX model (y = relu(x), x: float[N, 4]) so the answer is known exactly."""
    onnx = pytest.importorskip("onnx")
    helper = onnx.helper
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    directory.mkdir(parents=True)
    onnx.save(model, directory / "model.onnx")
    # the runtime image runs as an unprivileged user; the hostPath mount is this directory itself
    directory.chmod(0o755)
    (directory / "model.onnx").chmod(0o644)


def runtime_pod(name: str, model_dir: Path) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "nodeSelector": {real_node.NODE_LABEL[0]: real_node.NODE_LABEL[1]},
            "containers": [
                {
                    "name": "runtime",
                    "image": RUNTIME_IMAGE,
                    "imagePullPolicy": "Never",
                    "args": ["--model-dir", "/models", "--model-name", "relu"],
                    "ports": [{"containerPort": 8080}],
                    "readinessProbe": {
                        "httpGet": {"path": "/v2/health/ready", "port": 8080},
                        "periodSeconds": 1,
                    },
                    "volumeMounts": [{"name": "model", "mountPath": "/models", "readOnly": True}],
                }
            ],
            "volumes": [{"name": "model", "hostPath": {"path": str(model_dir), "type": "Directory"}}],
        },
    }


def leftovers(config: ClusterConfig) -> dict[str, Any]:
    """Everything a real node could leave on the host; all empty after `down`."""
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True, check=True).stdout
    nat = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True, check=True).stdout
    mounts = Path("/proc/self/mountinfo").read_text()
    cgroup = Path("/sys/fs/cgroup/cpu") / real_node.cgroup_root(config).lstrip("/")
    return {
        "processes": processes.strays(config.state_dir, build.cache_dir() / "bin"),
        "shims": real_node.shim_pids(config),
        "containerd": real_node.containerd_socket(config).exists() and real_node.containerd_ready(config),
        "bridge": real_node.bridge_name(config) in links,
        "nat rules": [line for line in nat.splitlines() if real_node.network_name(config) in line],
        "mounts": [line for line in mounts.splitlines() if str(config.state_dir) in line],
        "cgroup": cgroup.exists(),
    }


@pytest.fixture(scope="module")
def real_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ClusterConfig, Kube]]:
    real_node_slot_or_skip()
    state_dir = tmp_path_factory.mktemp("real-node") / "cluster"
    command = [str(DEVCLUSTER), "--state-dir", str(state_dir)]
    up = [
        *command,
        "up",
        "--real-node",
        "--nodes",
        "1",
        "--gpu-nodes",
        "0",
        "--port-base",
        str(free_port_base()),
    ]
    try:
        result = subprocess.run(up, capture_output=True, text=True, check=False, timeout=1800)
        assert result.returncode == 0, result.stderr
        config = ClusterConfig.load(state_dir.resolve())
        assert config is not None
        yield config, Kube(config.admin_kubeconfig, is_devcluster=True)
    finally:
        subprocess.run([*command, "down"], capture_output=True, check=False, timeout=300)


@pytest.mark.e2e
def test_runtime_pod_serves_through_its_service_and_down_leaves_nothing(
    real_cluster: tuple[ClusterConfig, Kube], tmp_path: Path
) -> None:
    config, kube = real_cluster
    # A new machine has no images yet: build the runtime image the way users do (cached by podman).
    if subprocess.run(["podman", "image", "exists", RUNTIME_IMAGE], check=False).returncode != 0:
        built = subprocess.run(
            ["bash", str(DEVCLUSTER.parents[1] / "scripts" / "build-images.sh"), "--only", "runtime"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert kube.kubectl_json("get", "node", real_node.NODE_NAME)["metadata"]["labels"][
        real_node.NODE_LABEL[0]
    ]
    loaded = subprocess.run(
        [str(DEVCLUSTER), "--state-dir", str(config.state_dir), "load-image", RUNTIME_IMAGE],
        capture_output=True,
        text=True,
        check=False,
    )
    assert loaded.returncode == 0, loaded.stderr
    assert real_node.image_present(config, real_node.normalized_reference(RUNTIME_IMAGE))

    model_dir = tmp_path / "model"
    relu_model(model_dir)
    kube.apply(runtime_pod("relu", model_dir))
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "relu"},
            "spec": {"selector": {"app": "relu"}, "ports": [{"port": 80, "targetPort": 8080}]},
        }
    )
    kube.kubectl("wait", "--for=condition=Ready", "pod/relu", f"--timeout={WAIT_SECONDS}s")
    cluster_ip = kube.kubectl_json("get", "service", "relu")["spec"]["clusterIP"]

    # from the host, through kube-proxy's rules for the ClusterIP. The pod being Ready does not mean
    # kube-proxy has programmed its endpoint yet (until then the ClusterIP rejects connections), so a
    # client waits for the Service to answer, as any client of a new Service does.
    def service_ready() -> bool | None:
        try:
            with urllib.request.urlopen(f"http://{cluster_ip}/v2/health/ready", timeout=10) as reply:
                return reply.status == 200 or None
        except OSError:
            time.sleep(0.5)
            return None

    wait_for("the relu Service to answer on its ClusterIP", service_ready, timeout=60)
    request = urllib.request.Request(
        f"http://{cluster_ip}/v2/models/relu/infer",
        data=json.dumps(
            {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [-1, 2, -3, 4]}]}
        ).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert json.loads(reply.read())["outputs"][0]["data"] == [0.0, 2.0, 0.0, 4.0]

    # from another pod: Service names resolve (CoreDNS), the `kubernetes` Service reaches the API
    # server at its advertised address, and a claim of the local class binds to a volume on the node
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "scratch"},
            "spec": {
                "storageClassName": real_node.LOCAL_STORAGE_CLASS,
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
            },
        }
    )
    probe = (
        "import ssl, urllib.request; "
        "open('/scratch/written-by-pod', 'w').write('hello'); "
        "print(urllib.request.urlopen('https://kubernetes.default.svc/readyz', "
        "context=ssl._create_unverified_context(), timeout=10).status, "
        "urllib.request.urlopen('http://relu.default.svc.cluster.local/v2/health/ready', timeout=10).status)"
    )
    client = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "client"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "client",
                    "image": RUNTIME_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["python3", "-c", probe],
                    "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                }
            ],
            "volumes": [{"name": "scratch", "persistentVolumeClaim": {"claimName": "scratch"}}],
        },
    }
    kube.apply(client)
    wait_for(
        "the client pod to finish",
        lambda: kube.kubectl_json("get", "pod", "client")["status"].get("phase") in ("Succeeded", "Failed"),
    )
    assert kube.kubectl("logs", "client").stdout.split() == ["200", "200"]
    assert kube.kubectl_json("get", "pod", "client")["spec"]["nodeName"] == real_node.NODE_NAME
    volume = kube.kubectl_json("get", "pv", kube.kubectl_json("get", "pvc", "scratch")["spec"]["volumeName"])
    assert (Path(volume["spec"]["local"]["path"]) / "written-by-pod").read_text() == "hello"

    # `down` stops everything and removes what the node added to the host
    down = subprocess.run(
        [str(DEVCLUSTER), "--state-dir", str(config.state_dir), "down"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert down.returncode == 0, down.stderr
    assert leftovers(config) == {
        "processes": [],
        "shims": [],
        "containerd": False,
        "bridge": False,
        "nat rules": [],
        "mounts": [],
        "cgroup": False,
    }
