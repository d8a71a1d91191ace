"""The cluster's certificates, made with the `openssl` CLI (no Python crypto dependency).

Two CAs, as kubeadm lays them out: the cluster CA signs every serving and client certificate; the
front-proxy CA signs only the certificate the API server presents when it forwards a request to an
aggregated API (metrics-server), which trusts that CA for the X-Remote-User headers and nothing else.
Keys are ECDSA P-256 (fast to make, accepted everywhere in Kubernetes); the service-account signing
key is RSA, as kubeadm's.

Each certificate's spec (subject, names, usages) is stored beside it; when a spec changes (a new
Service range changes the API server's names) `up` reissues just that certificate.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from ferry_devcluster.config import LOOPBACK, REAL_NODE_NAME, ClusterConfig

CLUSTER_CA = "ca"
FRONT_PROXY_CA = "front-proxy-ca"
# long enough that a developer's state directory never expires under them; this PKI guards a
# loopback-only development cluster, not production
VALIDITY_DAYS = 3650
# without a config of our own, `openssl req -x509` adds the CA extensions of the system's openssl.cnf
_MINIMAL_OPENSSL_CONFIG = "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\n"


class PkiError(RuntimeError):
    """openssl failed to make a key or certificate."""


@dataclass(frozen=True)
class CertificateSpec:
    """One leaf certificate."""

    # file stem: <name>.crt and <name>.key in the PKI directory
    name: str
    common_name: str
    # subject O= entries; Kubernetes reads them as the client's groups
    organizations: tuple[str, ...] = ()
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    server: bool = False
    client: bool = False
    signer: str = CLUSTER_CA

    @property
    def subject(self) -> str:
        return "".join(f"/O={org}" for org in self.organizations) + f"/CN={self.common_name}"

    @property
    def subject_alt_names(self) -> str:
        return ",".join(
            [*(f"DNS:{name}" for name in self.dns_names), *(f"IP:{ip}" for ip in self.ip_addresses)]
        )

    @property
    def extended_key_usage(self) -> str:
        return ",".join([*(["serverAuth"] if self.server else []), *(["clientAuth"] if self.client else [])])


def apiserver_dns_names(config: ClusterConfig) -> tuple[str, ...]:
    service_names = ["kubernetes", "kubernetes.default", "kubernetes.default.svc"]
    return ("localhost", *service_names, f"kubernetes.default.svc.{config.cluster_domain}")


def certificate_specs(config: ClusterConfig) -> tuple[CertificateSpec, ...]:
    """Every leaf certificate the cluster needs. Identities follow kubeadm's, so the built-in RBAC
    roles (system:kube-controller-manager, system:kube-scheduler) apply unchanged."""
    return (
        CertificateSpec(
            name="apiserver",
            common_name="kube-apiserver",
            dns_names=apiserver_dns_names(config),
            ip_addresses=tuple(
                dict.fromkeys((LOOPBACK, config.kubernetes_service_ip, config.advertise_address))
            ),
            server=True,
        ),
        CertificateSpec(
            name="admin", common_name="devcluster-admin", organizations=("system:masters",), client=True
        ),
        # the API server's identity towards kubelets (logs, exec, port-forward; kwok serves these)
        CertificateSpec(
            name="apiserver-kubelet-client",
            common_name="kube-apiserver-kubelet-client",
            organizations=("system:masters",),
            client=True,
        ),
        CertificateSpec(
            name="kube-controller-manager", common_name="system:kube-controller-manager", client=True
        ),
        CertificateSpec(name="kube-scheduler", common_name="system:kube-scheduler", client=True),
        # kwok acts for every fake node's kubelet and, through its volume stages, a provisioner; the
        # Node authorizer would confine a single kubelet identity to one node, so it is an admin
        CertificateSpec(
            name="kwok", common_name="kwok-controller", organizations=("system:masters",), client=True
        ),
        # the fake kubelets' HTTPS endpoint, which metrics-server scrapes at the nodes' InternalIP
        CertificateSpec(
            name="kwok-serving",
            common_name="kwok",
            dns_names=("localhost",),
            ip_addresses=(LOOPBACK,),
            server=True,
        ),
        # metrics-server authenticates as the ServiceAccount its upstream RBAC manifest binds
        # (RBAC matches a ServiceAccount subject by the user name system:serviceaccount:NS:NAME)
        CertificateSpec(
            name="metrics-server",
            common_name="system:serviceaccount:kube-system:metrics-server",
            organizations=("system:serviceaccounts", "system:serviceaccounts:kube-system"),
            client=True,
        ),
        # the aggregator verifies the backend as <service>.<namespace>.svc
        CertificateSpec(
            name="metrics-server-serving",
            common_name="metrics-server",
            dns_names=("metrics-server.kube-system.svc", "localhost"),
            ip_addresses=(LOOPBACK,),
            server=True,
        ),
        CertificateSpec(
            name="front-proxy-client", common_name="front-proxy-client", client=True, signer=FRONT_PROXY_CA
        ),
        *(real_node_certificate_specs(config) if config.real_node else ()),
    )


def real_node_certificate_specs(config: ClusterConfig) -> tuple[CertificateSpec, ...]:
    node = REAL_NODE_NAME
    return (
        # the Node authorizer and NodeRestriction confine this identity to its own node
        CertificateSpec(
            name="kubelet", common_name=f"system:node:{node}", organizations=("system:nodes",), client=True
        ),
        # the kubelet's HTTPS endpoint (logs, exec, metrics), reached at the node's InternalIP
        CertificateSpec(
            name="kubelet-serving",
            common_name=f"system:node:{node}",
            dns_names=(node, "localhost"),
            ip_addresses=tuple(dict.fromkeys((LOOPBACK, config.advertise_address))),
            server=True,
        ),
        # bound by the built-in ClusterRoleBinding system:node-proxier
        CertificateSpec(name="kube-proxy", common_name="system:kube-proxy", client=True),
        # cluster DNS; bound to the ClusterRole real_node.py applies (as CoreDNS's upstream manifest)
        CertificateSpec(name="coredns", common_name="system:coredns", client=True),
    )


def _openssl(*args: str) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".cnf") as openssl_config:
        openssl_config.write(_MINIMAL_OPENSSL_CONFIG)
        openssl_config.flush()
        command = [
            "openssl",
            args[0],
            *(["-config", openssl_config.name] if args[0] == "req" else []),
            *args[1:],
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PkiError(f"{' '.join(command)} failed:\n{result.stderr}")


def _key_args(key: Path) -> list[str]:
    return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key)]


def _make_ca(pki_dir: Path, name: str) -> None:
    if (pki_dir / f"{name}.crt").exists() and (pki_dir / f"{name}.key").exists():
        return
    _openssl(
        "req", "-x509", "-new", *_key_args(pki_dir / f"{name}.key"),
        "-out", str(pki_dir / f"{name}.crt"), "-days", str(VALIDITY_DAYS), "-subj", f"/CN=devcluster-{name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
    )  # fmt: skip


def _make_leaf(pki_dir: Path, spec: CertificateSpec) -> None:
    spec_file = pki_dir / f"{spec.name}.spec.json"
    wanted = json.dumps(asdict(spec), sort_keys=True)
    current = spec_file.read_text() if spec_file.exists() else None
    if current == wanted and (pki_dir / f"{spec.name}.crt").exists():
        return
    extensions = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={spec.extended_key_usage}",
    ]
    if spec.subject_alt_names:
        extensions.append(f"subjectAltName={spec.subject_alt_names}")
    _openssl(
        "req", "-x509", "-new", *_key_args(pki_dir / f"{spec.name}.key"),
        "-out", str(pki_dir / f"{spec.name}.crt"), "-days", str(VALIDITY_DAYS), "-subj", spec.subject,
        "-CA", str(pki_dir / f"{spec.signer}.crt"), "-CAkey", str(pki_dir / f"{spec.signer}.key"),
        *(arg for extension in extensions for arg in ("-addext", extension)),
    )  # fmt: skip
    spec_file.write_text(wanted)


def issue(config: ClusterConfig, spec: CertificateSpec) -> None:
    """One leaf certificate signed by this cluster's CAs (reissued when its spec changed), for a
    component started on demand after `up` (prometheus_adapter)."""
    _make_leaf(config.pki_dir, spec)


def _make_service_account_key(pki_dir: Path) -> None:
    if (pki_dir / "sa.key").exists() and (pki_dir / "sa.pub").exists():
        return
    _openssl("genrsa", "-out", str(pki_dir / "sa.key"), "2048")
    _openssl("rsa", "-in", str(pki_dir / "sa.key"), "-pubout", "-out", str(pki_dir / "sa.pub"))


def ensure(config: ClusterConfig) -> None:
    """Create whatever part of the PKI is missing or out of date; keep the rest (so clients holding
    the old CA keep working across `down` and `up`)."""
    pki_dir = config.pki_dir
    pki_dir.mkdir(parents=True, exist_ok=True)
    pki_dir.chmod(0o700)
    _make_ca(pki_dir, CLUSTER_CA)
    _make_ca(pki_dir, FRONT_PROXY_CA)
    for spec in certificate_specs(config):
        _make_leaf(pki_dir, spec)
    _make_service_account_key(pki_dir)
