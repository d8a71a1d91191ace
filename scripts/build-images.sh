#!/usr/bin/env bash
# Builds Ferry's three images (operator, runtime, optimizer) with podman.
#
#   scripts/build-images.sh [--base IMAGE] [--load] [--only NAME]
#
# No container registry is reachable on the development machines, so by default the base image is a
# Debian bookworm root filesystem made here with mmdebstrap from the Debian archive and imported into
# podman (Debian's python3 is 3.11, the version Ferry supports). Users with a registry pass
# --base docker.io/library/python:3.11-slim-bookworm. --load imports the images into the local cluster's
# containerd (namespace k8s.io) when it runs.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
base=""
load=false
only=""
while (($#)); do
  case "$1" in
    --base) base="$2"; shift 2 ;;
    --load) load=true; shift ;;
    --only) only="$2"; shift 2 ;;
    *) echo "unknown argument: $1 (expected --base IMAGE, --load, --only operator|runtime|optimizer)" >&2; exit 2 ;;
  esac
done

# One build at a time per machine: podman's layer cache and the superseded-image cleanup below are shared
# by every checkout (tests, CI and people building by hand at once).
lock="${FERRY_CACHE:-$HOME/.cache/ferry}/images.lock"
mkdir -p "$(dirname "$lock")"
exec 9>"$lock"
flock 9

need=()
command -v podman >/dev/null || need+=(podman)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v runc >/dev/null || need+=(runc)
if ((${#need[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" uidmap fuse-overlayfs
fi

if [[ -z "$base" ]]; then
  base="localhost/ferry-base:bookworm-slim"
  if ! podman image exists "$base"; then
    rootfs_tar="${FERRY_CACHE:-$HOME/.cache/ferry}/images/bookworm-python-slim.tar"
    mkdir -p "$(dirname "$rootfs_tar")"
    if [[ ! -s "$rootfs_tar" ]]; then
      echo "making a Debian bookworm base with python3 (mmdebstrap)"
      # mmdebstrap picks the output format from the file name, so the partial file must end in .tar too.
      # Documentation, man pages and translations are dropped (dpkg path excludes): ~60 MiB nobody reads.
      mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates,libgomp1 \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        bookworm "${rootfs_tar%.tar}.partial.tar"
      mv "${rootfs_tar%.tar}.partial.tar" "$rootfs_tar"
    fi
    podman import --change 'CMD ["/bin/bash"]' "$rootfs_tar" "$base"
  fi
fi

# This machine kind mounts cgroup v1 with a cgroup2 hierarchy beside it ("hybrid"), which crun refuses;
# runc with the cgroupfs manager works. Its sandbox also forbids raising RLIMIT_NOFILE/NPROC to podman's
# defaults, so build steps get explicit limits under the host's hard limits.
podman_flags=(--runtime runc --cgroup-manager cgroupfs)
build_limits=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit "nproc=8192:8192")

# A host that trusts an extra CA for PyPI (PIP_CERT) lends it to the build, read-only, never into the image.
ca_flags=()
if [[ -n "${PIP_CERT:-}" && -f "$PIP_CERT" ]]; then
  ca_flags=(--volume "$PIP_CERT:/run/ferry-build-ca.crt:ro" --build-arg PIP_CERT=/run/ferry-build-ca.crt)
fi

for component in operator runtime optimizer; do
  [[ -n "$only" && "$only" != "$component" ]] && continue
  image="ferry-$component:$version"
  deps_image="ferry-$component-deps:$version"
  echo "building $image on $base"
  start=$(date +%s)
  # The images these builds replace: removed afterwards, or every source change would leave an untagged
  # copy behind until the disk fills (the optimizer's dependency layer alone is 1.8 GB).
  superseded=()
  for tag in "$image" "$deps_image"; do
    superseded+=("$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)")
  done
  build=(podman "${podman_flags[@]}" build "${build_limits[@]}" "${ca_flags[@]}" --network host
    --build-arg "BASE_IMAGE=$base" --build-arg "COMPONENT=$component" -f Dockerfile)
  # The dependency stage is tagged so that it is neither dangling (prunable) nor left behind untracked.
  "${build[@]}" --target deps -t "$deps_image" .
  "${build[@]}" --target "$component" -t "$image" .
  for old in "${superseded[@]}"; do
    [[ -z "$old" ]] && continue
    in_use=$(podman image inspect --format '{{.Id}}' "$image" "$deps_image" | grep -c "^$old$" || true)
    ((in_use)) || podman rmi "$old" >/dev/null 2>&1 || true
  done
  # No `podman image prune` here: the untagged wheel stage is the layer cache that lets an unchanged
  # checkout rebuild to the same image id (so nothing is re-imported into a node); stale ones are small.
  size=$(podman image inspect "$image" --format '{{.Size}}')
  echo "$image: $((size / 1024 / 1024)) MiB, built in $(($(date +%s) - start)) s"
  if $load; then
    sock="${FERRY_CONTAINERD_SOCKET:-/run/containerd/containerd.sock}"
    if [[ -S "$sock" ]]; then
      archive=$(mktemp --suffix=.tar)
      podman save --format oci-archive -o "$archive" "localhost/$image"
      ctr --address "$sock" -n k8s.io images import --base-name "docker.io/library/ferry-$component" "$archive"
      rm -f "$archive"
    else
      echo "no containerd at $sock: $image stays in podman only" >&2
    fi
  fi
done
