#!/usr/bin/env bash
# Installs the Debian packages Ferry's build, tests and demo need, only where they are missing, so a warm
# machine never touches apt. One list, one place: add a package here, never by hand on a machine.
set -euo pipefail
# command-name (or /path/of/a/file it installs):debian-package
needed=(
  "openssl:openssl"      # devcluster PKI
  "make:make"            # the README's commands
  "git:git"
  "curl:curl"
  "promtool:prometheus"  # promtool (alert rule tests) and prometheus (devcluster prometheus, the e2e)
  "containerd:containerd"  # devcluster --real-node: the container runtime (CRI), with ctr
  "runc:runc"            # devcluster --real-node: containerd's OCI runtime
  "iptables:iptables"    # devcluster --real-node: kube-proxy (iptables mode), CNI portmap/masquerade
  "conntrack:conntrack"  # devcluster --real-node: kube-proxy clears stale UDP (DNS) conntrack entries
  "ip:iproute2"          # devcluster --real-node: removes the CNI bridge on `down`
  "/usr/share/games/fortunes/fortunes:fortunes"  # the demo's text-generation model learns English from it
)
missing=()
for pair in "${needed[@]}"; do
  probe="${pair%%:*}"
  if [[ $probe == /* ]]; then  # a data package: the file it installs
    [[ -e $probe ]] || missing+=("${pair##*:}")
  else
    command -v "$probe" >/dev/null 2>&1 || missing+=("${pair##*:}")
  fi
done
if ((${#missing[@]})); then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
