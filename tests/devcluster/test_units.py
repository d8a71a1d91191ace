"""devcluster's pure parts and its local mechanics (openssl PKI, process supervision): fast, no cluster."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from ferry_devcluster import (
    build,
    cli,
    cluster,
    components,
    control_plane,
    fake_nodes,
    kubeconfig,
    pki,
    processes,
    testing,
)
from ferry_devcluster.config import PORT_OFFSETS, ClusterConfig
from ferry_devcluster.processes import ProcessSpec, Supervisor

BIN = Path("/opt/bin")


def make_config(tmp_path: Path, **changes: object) -> ClusterConfig:
    return ClusterConfig(state_dir=tmp_path / "state", **changes)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- command line


def test_up_options_are_parsed_and_saved_values_are_the_defaults(tmp_path: Path) -> None:
    state = tmp_path / "state"
    args = cli.build_parser().parse_args(
        ["--state-dir", str(state), "up", "--nodes", "3", "--gpu-nodes", "0"]
    )
    config = cli.resolve_config(args)
    assert (config.nodes, config.gpu_nodes, config.state_dir) == (3, 0, state.resolve())
    config.save()
    # a later command without options acts on the same cluster
    again = cli.resolve_config(cli.build_parser().parse_args(["--state-dir", str(state), "up"]))
    assert again == config


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["up", "--nodes", "two"], "--nodes expects a whole number, got 'two'"),
        (["up", "--gpu-nodes", "-1"], "--gpu-nodes must be between 0 and 500, got -1"),
        (["up", "--port-base", "80"], "--port-base must be between 1024 and 65435, got 80"),
        (["monitoring-crds", "remove"], "invalid choice: 'remove'"),
    ],
)
def test_bad_options_are_refused_with_the_option_named(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(argv)
    assert message in capsys.readouterr().err


def test_up_without_any_node_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["--state-dir", str(tmp_path), "up", "--nodes", "0", "--gpu-nodes", "0"])
    assert code == 2
    assert "at least one node" in capsys.readouterr().err


def test_down_without_a_cluster_is_fine_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for _ in range(2):
        assert cli.main(["--state-dir", str(tmp_path / "nothing-here"), "down"]) == 0
    assert "nothing (not running)" in capsys.readouterr().err


# --------------------------------------------------------------------------- configuration


def test_ports_are_distinct_below_the_nodeport_and_ephemeral_ranges(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    ports = [config.port(name) for name in PORT_OFFSETS]
    assert len(set(ports)) == len(ports)
    assert all(1024 < port < 30000 for port in ports)
    assert make_config(tmp_path, port_base=40000).server_url == "https://127.0.0.1:40043"


def test_every_process_binds_to_loopback_only(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    specs = [
        control_plane.etcd(config, BIN / "etcd"),
        control_plane.apiserver(config, BIN / "kube-apiserver"),
        control_plane.controller_manager(config, BIN / "kube-controller-manager"),
        control_plane.scheduler(config, BIN / "kube-scheduler"),
        fake_nodes.kwok_process(config, BIN / "kwok"),
    ]
    for spec in specs:
        addresses = [
            arg.split("=", 1)[1]
            for arg in spec.argv
            if arg.startswith(("--bind-address=", "--listen-", "--server-address=", "--advertise-address="))
        ]
        assert addresses, f"{spec.name} sets no listen address, so it would bind to all interfaces"
        for address in addresses:
            for url in address.split(","):
                host = url.split("//")[-1].rsplit(":", 1)[0] if ":" in url else url
                assert ipaddress.ip_address(host).is_loopback, f"{spec.name}: {url}"


def test_apiserver_flags_wire_rbac_service_accounts_and_the_aggregation_layer(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    argv = control_plane.apiserver(config, BIN / "kube-apiserver").argv
    flags = dict(arg.split("=", 1) for arg in argv[1:])
    assert flags["--authorization-mode"] == "Node,RBAC"
    assert flags["--service-account-signing-key-file"].endswith("sa.key")
    assert flags["--requestheader-client-ca-file"].endswith("front-proxy-ca.crt")
    assert flags["--requestheader-allowed-names"] == "front-proxy-client"
    assert flags["--proxy-client-cert-file"].endswith("front-proxy-client.crt")
    assert flags["--etcd-servers"] == f"http://127.0.0.1:{config.port('etcd')}"
    assert "ExtendedResourceToleration" in flags["--enable-admission-plugins"]


def test_scheduler_reads_its_kubeconfig_from_the_config_file(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    rendered = control_plane.scheduler_configuration(config)
    assert f"kubeconfig: {kubeconfig.path_for(config, 'kube-scheduler')}" in rendered
    # --kubeconfig is ignored when --config is given, so it must not be relied on
    assert not any(arg.startswith("--kubeconfig") for arg in control_plane.scheduler(config, BIN).argv)


# --------------------------------------------------------------------------- PKI


def test_apiserver_certificate_names_every_address_clients_use(tmp_path: Path) -> None:
    config = make_config(tmp_path, service_cidr="10.100.0.0/16", kubernetes_service_ip="10.100.0.1")
    (apiserver,) = [spec for spec in pki.certificate_specs(config) if spec.name == "apiserver"]
    assert apiserver.subject_alt_names == (
        "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,"
        "DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.100.0.1"
    )
    assert apiserver.extended_key_usage == "serverAuth"


def test_client_identities_match_the_builtin_rbac_subjects(tmp_path: Path) -> None:
    specs = {spec.name: spec for spec in pki.certificate_specs(make_config(tmp_path))}
    assert specs["admin"].subject == "/O=system:masters/CN=devcluster-admin"
    assert specs["kube-controller-manager"].common_name == "system:kube-controller-manager"
    assert specs["kube-scheduler"].common_name == "system:kube-scheduler"
    assert specs["metrics-server"].common_name == "system:serviceaccount:kube-system:metrics-server"
    assert "metrics-server.kube-system.svc" in specs["metrics-server-serving"].dns_names
    assert specs["front-proxy-client"].signer == pki.FRONT_PROXY_CA


def test_openssl_issues_a_verifiable_pki_and_reissues_only_what_changed(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    pki.ensure(config)
    pki_dir = config.pki_dir

    def openssl(*args: str) -> str:
        return subprocess.run(["openssl", *args], capture_output=True, text=True, check=True).stdout

    assert "apiserver.crt: OK" in openssl(
        "verify", "-CAfile", str(pki_dir / "ca.crt"), str(pki_dir / "apiserver.crt")
    )
    front_proxy = openssl(
        "verify", "-CAfile", str(pki_dir / "front-proxy-ca.crt"), str(pki_dir / "front-proxy-client.crt")
    )
    assert "OK" in front_proxy
    assert "IP Address:10.96.0.1" in openssl(
        "x509", "-in", str(pki_dir / "apiserver.crt"), "-noout", "-ext", "subjectAltName"
    )
    assert "system:masters" in openssl("x509", "-in", str(pki_dir / "admin.crt"), "-noout", "-subject")

    admin_before = (pki_dir / "admin.crt").read_bytes()
    apiserver_before = (pki_dir / "apiserver.crt").read_bytes()
    changed = ClusterConfig(
        state_dir=config.state_dir, service_cidr="10.100.0.0/16", kubernetes_service_ip="10.100.0.1"
    )
    pki.ensure(changed)
    assert (pki_dir / "admin.crt").read_bytes() == admin_before
    assert (pki_dir / "apiserver.crt").read_bytes() != apiserver_before

    kubeconfig.write_all(config)
    admin = config.admin_kubeconfig.read_text()
    assert f"server: {config.server_url}" in admin
    assert "client-certificate-data: " in admin
    assert config.admin_kubeconfig.stat().st_mode & 0o077 == 0


# --------------------------------------------------------------------------- fake nodes


def test_gpu_nodes_carry_the_gpu_resource_and_a_taint_cpu_nodes_do_not(tmp_path: Path) -> None:
    nodes = fake_nodes.node_objects(make_config(tmp_path, nodes=2, gpu_nodes=1), "v1.37.2")
    assert [node["metadata"]["name"] for node in nodes] == ["kwok-node-0", "kwok-node-1", "kwok-gpu-node-0"]
    cpu, _, gpu = nodes
    assert cpu["status"]["capacity"] == {
        "cpu": "8",
        "memory": "32Gi",
        "pods": "110",
        "ephemeral-storage": "100Gi",
    }
    assert "taints" not in cpu["spec"]
    assert gpu["status"]["allocatable"]["nvidia.com/gpu"] == "2"
    assert gpu["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
    for node in nodes:
        annotations = node["metadata"]["annotations"]
        assert annotations["kwok.x-k8s.io/node"] == "fake"
        name = node["metadata"]["name"]
        assert (
            annotations["metrics.k8s.io/resource-metrics-path"] == f"/metrics/nodes/{name}/metrics/resource"
        )
        assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.37.2"


def test_kwok_manages_only_annotated_nodes(tmp_path: Path) -> None:
    argv = fake_nodes.kwok_process(make_config(tmp_path), BIN / "kwok").argv
    assert "--manage-all-nodes=false" in argv
    assert "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake" in argv


# --------------------------------------------------------------------------- pins and builds


@pytest.mark.parametrize("component", components.ALL, ids=lambda component: component.name)
def test_each_component_version_is_pinned_in_its_go_mod(component: components.Component) -> None:
    assert component.version.startswith("v")
    go_mod = (component.module_dir / "go.mod").read_text()
    go_sum = (component.module_dir / "go.sum").read_text()
    assert f"{component.module} {component.version} h1:" in go_sum
    for binary in component.binaries:
        assert binary.package in go_mod, f"{binary.package} is not a `tool` of {component.name}/go.mod"


def test_kubernetes_staging_modules_are_replaced_at_the_matching_version() -> None:
    go_mod = (components.KUBERNETES.module_dir / "go.mod").read_text()
    minor_patch = components.KUBERNETES.version.removeprefix("v1.")
    for module in ("api", "apimachinery", "apiserver", "client-go", "component-base", "kubelet", "streaming"):
        assert f"replace k8s.io/{module} => k8s.io/{module} v0.{minor_patch}" in go_mod


def test_pinned_version_names_the_file_when_the_module_is_missing(tmp_path: Path) -> None:
    go_mod = tmp_path / "go.mod"
    go_mod.write_text("module example.com/x\n\nrequire (\n\tk8s.io/api v0.37.2 // indirect\n)\n")
    assert components.pinned_version(go_mod, "k8s.io/api") == "v0.37.2"
    with pytest.raises(ValueError, match=r"go.mod: no `require k8s.io/client-go"):
        components.pinned_version(go_mod, "k8s.io/client-go")


def test_binaries_are_cached_per_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERRY_CACHE", str(tmp_path))
    assert (
        build.binary_path("kube-apiserver")
        == tmp_path / "bin" / f"kube-apiserver-{components.KUBERNETES.version}"
    )
    assert build.binary_path("etcd") == tmp_path / "bin" / f"etcd-{components.ETCD.version}"
    with pytest.raises(KeyError, match="unknown binary 'kubeadm'"):
        build.binary_path("kubeadm")


@pytest.mark.parametrize(
    ("package", "name"),
    [
        ("go.etcd.io/etcd/server/v3", "server"),
        ("k8s.io/kubernetes/cmd/kube-apiserver", "kube-apiserver"),
        ("helm.sh/helm/v3/cmd/helm", "helm"),
    ],
)
def test_go_build_output_names(package: str, name: str) -> None:
    assert build.default_executable_name(package) == name


# --------------------------------------------------------------------------- processes


def test_supervisor_stops_the_whole_process_group(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path / "run", tmp_path / "logs")
    # a parent that starts a child of its own: stopping must take both
    spec = ProcessSpec(name="sleeper", argv=("sh", "-c", "sleep 300 & echo started; wait"))
    pid = supervisor.start(spec)
    assert supervisor.pid("sleeper") == pid
    deadline = time.monotonic() + 10
    while len(processes.group_members(pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(processes.group_members(pid)) == 2
    assert supervisor.stop("sleeper", grace_seconds=5)
    assert processes.group_members(pid) == []
    assert supervisor.pid("sleeper") is None
    assert not supervisor.stop("sleeper")
    assert "started" in supervisor.log_file("sleeper").read_text()


def test_a_reused_pid_is_not_taken_for_ours(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path / "run", tmp_path / "logs")
    (tmp_path / "run").mkdir()
    # this test process is alive, but its start time differs from the one "recorded"
    (tmp_path / "run" / "impostor.pid").write_text(json.dumps({"pid": os.getpid(), "start_time": 1}))
    assert supervisor.pid("impostor") is None


@pytest.mark.parametrize(
    ("server", "loopback"),
    [
        ("https://127.0.0.1:26443", True),
        ("https://127.5.0.1:6443", True),
        ("https://[::1]:6443", True),
        ("https://localhost:6443", True),
        ("https://10.0.0.1:6443", False),
        ("https://prod.example.com", False),
        ("https://localhost.example.com:6443", False),
    ],
)
def test_only_loopback_clusters_are_accepted_from_kubeconfig(server: str, loopback: bool) -> None:
    assert testing.is_loopback_server(server) is loopback


def test_a_changed_config_file_counts_as_a_changed_command(tmp_path: Path) -> None:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    stages = config_dir / "kwok.yaml"
    stages.write_text("kind: Stage\n")
    spec = ProcessSpec(name="kwok", argv=("kwok", f"--config={stages}", "--node-port=1"))
    before = cluster._command_digest(spec, config_dir)
    assert cluster._command_digest(spec, config_dir) == before
    stages.write_text("kind: Stage\n---\nkind: Metric\n")
    assert cluster._command_digest(spec, config_dir) != before
