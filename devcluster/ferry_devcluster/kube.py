"""Talking to the cluster: a small HTTPS client for health and readiness polls (cheap enough to call
several times a second, unlike spawning kubectl), and kubectl for applying manifests."""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ferry_devcluster import build
from ferry_devcluster.config import ClusterConfig


class KubectlError(RuntimeError):
    """kubectl exited non-zero."""


class ApiClient:
    """GETs against one HTTPS endpoint with a client certificate."""

    def __init__(self, base_url: str, ca_cert: Path | None, client_cert: Path, client_key: Path) -> None:
        self.base_url = base_url
        if ca_cert is None:
            # the component's self-signed serving certificate: only its liveness is asked
            self._context = ssl.create_default_context()
            self._context.check_hostname = False
            self._context.verify_mode = ssl.CERT_NONE
        else:
            self._context = ssl.create_default_context(cafile=str(ca_cert))
        self._context.load_cert_chain(str(client_cert), str(client_key))

    @classmethod
    def for_apiserver(cls, config: ClusterConfig) -> ApiClient:
        pki = config.pki_dir
        return cls(config.server_url, pki / "ca.crt", pki / "admin.crt", pki / "admin.key")

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        """(HTTP status, body); status 0 when nothing answered."""
        try:
            with urllib.request.urlopen(
                self.base_url + path, context=self._context, timeout=timeout
            ) as reply:
                return int(reply.status), bytes(reply.read())
        except urllib.error.HTTPError as error:
            return error.code, error.read()
        except (urllib.error.URLError, OSError, TimeoutError):
            return 0, b""

    def get_json(self, path: str) -> dict[str, Any] | None:
        status, body = self.get(path)
        if status != 200:
            return None
        parsed: dict[str, Any] = json.loads(body)
        return parsed


def kubectl(
    kubeconfig: Path, *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    command = [str(build.kubectl()), "--kubeconfig", str(kubeconfig), *args]
    result = subprocess.run(command, input=stdin, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise KubectlError(
            f"kubectl {' '.join(args)} failed (exit {result.returncode}):\n{result.stderr.strip()}"
        )
    return result


def apply(kubeconfig: Path, objects: Sequence[Mapping[str, Any]]) -> None:
    """Server-side apply (field manager "devcluster"); kubectl reads a JSON List as one document."""
    if not objects:
        return
    document = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
    kubectl(
        kubeconfig,
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=devcluster",
        "-f",
        "-",
        stdin=document,
    )


def apply_files(kubeconfig: Path, paths: list[Path]) -> None:
    args = [arg for path in paths for arg in ("-f", str(path))]
    kubectl(kubeconfig, "apply", "--server-side", "--force-conflicts", "--field-manager=devcluster", *args)
