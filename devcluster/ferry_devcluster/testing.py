"""Helpers for tests that run against a cluster (used by tests/conftest.py's fixtures)."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferry_devcluster import build

COMMAND_TIMEOUT_SECONDS = 300


@dataclass(frozen=True)
class Kube:
    """A cluster to test against."""

    kubeconfig: Path
    # True when the cluster is this checkout's devcluster (GPU nodes, `devcluster` commands apply)
    is_devcluster: bool

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        command = [str(build.kubectl()), "--kubeconfig", str(self.kubeconfig), *args]
        result = subprocess.run(
            command, input=stdin, capture_output=True, text=True, check=False, timeout=COMMAND_TIMEOUT_SECONDS
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return result

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def apply(self, manifest: dict[str, Any] | str, namespace: str | None = None) -> None:
        document = manifest if isinstance(manifest, str) else json.dumps(manifest)
        self.kubectl("apply", *(["-n", namespace] if namespace else []), "-f", "-", stdin=document)

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        helm = build.ensure(["helm"])["helm"]
        result = subprocess.run(
            [str(helm), "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=COMMAND_TIMEOUT_SECONDS,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return result


def is_loopback_server(server: str) -> bool:
    host = urllib.parse.urlsplit(server).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
