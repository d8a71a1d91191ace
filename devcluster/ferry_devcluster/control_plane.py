"""The control plane's processes: etcd, kube-apiserver, kube-controller-manager, kube-scheduler.

Pure functions from the configuration to command lines (and the scheduler's config file), so the flags
are unit-tested and read in one place. The flag set follows kubeadm's static pods, trimmed to one
loopback-only machine.
"""

from __future__ import annotations

from pathlib import Path

from ferry_devcluster import kubeconfig
from ferry_devcluster.config import LOOPBACK, ClusterConfig
from ferry_devcluster.processes import ProcessSpec

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
# Admission plugins on top of the defaults: NodeRestriction for the real node's kubelet;
# ExtendedResourceToleration lets pods that request nvidia.com/gpu tolerate the GPU nodes' taint,
# as on managed clusters, while ordinary pods stay off the GPU nodes.
EXTRA_ADMISSION_PLUGINS = ("NodeRestriction", "ExtendedResourceToleration")


def etcd(config: ClusterConfig, binary: Path) -> ProcessSpec:
    client_url = f"http://{LOOPBACK}:{config.port('etcd')}"
    peer_url = f"http://{LOOPBACK}:{config.port('etcd-peer')}"
    return ProcessSpec(
        name="etcd",
        argv=(
            str(binary),
            "--name=devcluster",
            f"--data-dir={config.etcd_data_dir}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=devcluster={peer_url}",
            # a throwaway development store on a shared, noisy disk: fsync latency would otherwise
            # stall the API server; a crash of the machine loses at most the cluster, never user data
            "--unsafe-no-fsync",
            "--log-level=warn",
        ),
    )


def apiserver(config: ClusterConfig, binary: Path) -> ProcessSpec:
    pki = config.pki_dir
    return ProcessSpec(
        name="kube-apiserver",
        argv=(
            str(binary),
            f"--etcd-servers=http://{LOOPBACK}:{config.port('etcd')}",
            *_address_flags(config),
            f"--secure-port={config.port('apiserver')}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=Node,RBAC",
            f"--enable-admission-plugins={','.join(EXTRA_ADMISSION_PLUGINS)}",
            "--allow-privileged=true",
            f"--service-cluster-ip-range={config.service_cidr}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            # the aggregation layer (metrics.k8s.io): the API server proxies with the front-proxy
            # client certificate and passes the caller's identity in these headers
            f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
            f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
            # PodTemplates (which nothing here uses) bypass the watch cache and are served from etcd, so
            # a test can make a watch's resourceVersion really expire (compact etcd, get 410 Gone); a
            # watch cache replays a fresh cluster's state for any old version instead
            # (tests/operator/test_informer.py)
            f"--watch-cache-sizes={WATCH_CACHE_OFF}#0",
        ),
    )


# The one resource the API server serves without a watch cache (see the flag above).
WATCH_CACHE_OFF = "podtemplates"


def _address_flags(config: ClusterConfig) -> tuple[str, ...]:
    if config.advertise_address == LOOPBACK:
        return (
            f"--bind-address={LOOPBACK}",
            f"--advertise-address={LOOPBACK}",
            # the reconciler would publish the advertise address as the `kubernetes` Service's
            # endpoint, and the API server refuses to start with a loopback one; without pods that
            # need that Service there is nothing to publish
            "--endpoint-reconciler-type=none",
        )
    # the real node's pods reach the API server at the host's address (the `kubernetes` Service's
    # endpoint), host clients at 127.0.0.1: both, so all addresses
    return ("--bind-address=0.0.0.0", f"--advertise-address={config.advertise_address}")


def _component_auth_flags(config: ClusterConfig, client: str) -> tuple[str, ...]:
    path = kubeconfig.path_for(config, client)
    return (
        f"--kubeconfig={path}",
        # delegated authentication/authorization for the component's own HTTPS endpoint
        f"--authentication-kubeconfig={path}",
        f"--authorization-kubeconfig={path}",
    )


def controller_manager(config: ClusterConfig, binary: Path) -> ProcessSpec:
    pki = config.pki_dir
    return ProcessSpec(
        name="kube-controller-manager",
        argv=(
            str(binary),
            *_component_auth_flags(config, "kube-controller-manager"),
            f"--bind-address={LOOPBACK}",
            f"--secure-port={config.port('kube-controller-manager')}",
            # every default controller: deployment, replicaset, job, cronjob, horizontal pod
            # autoscaling, garbage collector, namespace, service account and its tokens, ...
            "--controllers=*",
            # each controller acts as its own ServiceAccount, so RBAC is exercised as on a real cluster
            "--use-service-account-credentials=true",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            f"--service-cluster-ip-range={config.service_cidr}",
            "--allocate-node-cidrs=true",
            f"--cluster-cidr={config.pod_cidr}",
            # one instance: waiting to acquire a lease only slows the start
            "--leader-elect=false",
            # The client-side rate limit (default 20 QPS, burst 30) caps how fast the Deployment and
            # ReplicaSet controllers create hundreds of pods: scale runs measure it, not the operator.
            # Production control planes raise it the same way.
            "--kube-api-qps=200",
            "--kube-api-burst=400",
            "--concurrent-deployment-syncs=10",
            "--concurrent-replicaset-syncs=10",
        ),
    )


def scheduler_configuration(config: ClusterConfig) -> str:
    # with --config, kube-scheduler ignores --kubeconfig; the connection goes in the file
    return (
        "apiVersion: kubescheduler.config.k8s.io/v1\n"
        "kind: KubeSchedulerConfiguration\n"
        "clientConnection:\n"
        f"  kubeconfig: {kubeconfig.path_for(config, 'kube-scheduler')}\n"
        # binding hundreds of pods at the default 50 QPS makes the scheduler the bottleneck of scale runs
        "  qps: 200\n"
        "  burst: 400\n"
        "leaderElection:\n"
        "  leaderElect: false\n"
    )


def scheduler_config_path(config: ClusterConfig) -> Path:
    return config.config_dir / "kube-scheduler.yaml"


def scheduler(config: ClusterConfig, binary: Path) -> ProcessSpec:
    path = kubeconfig.path_for(config, "kube-scheduler")
    return ProcessSpec(
        name="kube-scheduler",
        argv=(
            str(binary),
            f"--config={scheduler_config_path(config)}",
            f"--authentication-kubeconfig={path}",
            f"--authorization-kubeconfig={path}",
            f"--bind-address={LOOPBACK}",
            f"--secure-port={config.port('kube-scheduler')}",
        ),
    )
