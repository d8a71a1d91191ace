"""`make demo`: a local Kubernetes with Ferry installed and a sample model optimized and served.

    python scripts/demo.py [up]     # idempotent: reuses what is already running
    python scripts/demo.py down     # stops the operator, the model server and the cluster

Steps: start the devcluster (a real control plane built from upstream Go modules, with fake nodes);
`helm install` Ferry; run the operator as the chart's ServiceAccount; train the digits classifier; run
`ferry-optimize` on it (INT8 behind an accuracy gate); apply a ModelDeployment for the optimized model and
wait for Ready; serve the same artifact with `ferry-runtime` and make a real prediction; print where to
send requests. The devcluster's nodes are fake (kwok): the control flow is real, containers are not, so
the operator runs on this host and the model is served by the runtime on this host.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "out" / "demo"
BIN = Path(sys.executable).parent
DEVCLUSTER = ROOT / "devcluster" / "devcluster"
RELEASE_NAMESPACE = "ferry-system"
DEMO_NAMESPACE = "demo"
HTTP_PORT = int(os.environ.get("FERRY_DEMO_HTTP_PORT", "8080"))
GRPC_PORT = int(os.environ.get("FERRY_DEMO_GRPC_PORT", "8081"))


def step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def run(*command: str | Path, env: dict[str, str] | None = None, capture: bool = False) -> str:
    result = subprocess.run(
        [str(c) for c in command],
        env={**os.environ, **(env or {})},
        text=True,
        stdout=subprocess.PIPE if capture else None,
        check=False,
    )
    if result.returncode != 0:
        sys.exit(f"demo: `{' '.join(str(c) for c in command)}` failed with exit code {result.returncode}")
    return result.stdout or ""


def kubeconfig() -> str:
    return run(DEVCLUSTER, "kubeconfig", capture=True).strip()


def kubectl(*args: str, capture: bool = False) -> str:
    return run(BIN / "kubectl", "--kubeconfig", kubeconfig(), *args, capture=capture)


def helm_binary() -> Path:
    sys.path.insert(0, str(ROOT / "devcluster"))
    from ferry_devcluster import build

    return build.ensure(["helm"])["helm"]


def background(name: str, command: list[str], env: dict[str, str]) -> None:
    """Start a long-running process once; its pid and log live in out/demo/."""
    pid_file = OUT / f"{name}.pid"
    if pid_file.exists() and _alive(int(pid_file.read_text())):
        print(f"{name} already running (pid {pid_file.read_text().strip()})")
        return
    log = (OUT / f"{name}.log").open("w")
    process = subprocess.Popen(
        command, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    pid_file.write_text(str(process.pid))
    print(f"{name} started (pid {process.pid}, log {OUT / (name + '.log')})")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop(name: str) -> None:
    pid_file = OUT / f"{name}.pid"
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    if _alive(pid):
        os.killpg(pid, signal.SIGTERM)
        for _ in range(100):
            if not _alive(pid):
                break
            time.sleep(0.1)
        print(f"stopped {name}")
    pid_file.unlink()


def service_account_kubeconfig() -> Path:
    """A kubeconfig that authenticates as the chart's ServiceAccount: the operator gets exactly its RBAC."""
    token = kubectl(
        "create", "token", "ferry", "-n", RELEASE_NAMESPACE, "--duration=24h", capture=True
    ).strip()
    admin = json.loads(kubectl("config", "view", "--raw", "-o", "json", capture=True))
    cluster = admin["clusters"][0]
    path = OUT / "operator.kubeconfig"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster],
                "users": [{"name": "ferry", "user": {"token": token}}],
                "contexts": [{"name": "ferry", "context": {"cluster": cluster["name"], "user": "ferry"}}],
                "current-context": "ferry",
            }
        )
    )
    path.chmod(0o600)
    return path


def adopt_kept_crd() -> None:
    """A CRD kept by an earlier uninstall (or applied with kubectl) still names its old owner; Helm
    refuses to take it over until it names this release (docs/operations.md, "Reinstalling")."""
    crd = "modeldeployments.ferry.dev"
    exists = subprocess.run(
        [str(BIN / "kubectl"), "--kubeconfig", kubeconfig(), "get", "crd", crd],
        capture_output=True,
        check=False,
    )
    if exists.returncode == 0:
        kubectl("label", "crd", crd, "app.kubernetes.io/managed-by=Helm", "--overwrite", capture=True)
        kubectl(
            "annotate",
            "crd",
            crd,
            "meta.helm.sh/release-name=ferry",
            f"meta.helm.sh/release-namespace={RELEASE_NAMESPACE}",
            "--overwrite",
            capture=True,
        )


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    sys.exit(f"demo: {url} did not become ready in {timeout:.0f}s; see {OUT}/runtime.log")


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def up() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    step("Local Kubernetes (devcluster): etcd, kube-apiserver, controller-manager, scheduler, kwok nodes")
    run(DEVCLUSTER, "up")

    step("helm install Ferry (CRD, RBAC, ServiceAccount); the operator runs on this host as that account")
    adopt_kept_crd()
    run(
        helm_binary(),
        "--kubeconfig",
        kubeconfig(),
        "upgrade",
        "--install",
        "ferry",
        ROOT / "charts" / "ferry",
        "--namespace",
        RELEASE_NAMESPACE,
        "--create-namespace",
        "--values",
        ROOT / "charts" / "ferry" / "ci" / "host-operator-values.yaml",
    )
    background(
        "operator",
        [str(BIN / "ferry-operator"), "--namespace", DEMO_NAMESPACE],
        {"KUBECONFIG": str(service_account_kubeconfig()), "FERRY_OPERATOR_METRICS_PORT": "8000"},
    )

    model_dir = OUT / "models" / "digits"
    if not (model_dir / "model.keras").exists():
        step("Train the sample model: a Keras classifier on scikit-learn's bundled digits")
        run(sys.executable, ROOT / "examples" / "digits" / "train.py", model_dir)

    artifact = OUT / "artifacts" / "digits"
    if not (artifact / "model.onnx").exists():
        step("Optimize it: convert to ONNX, INT8 quantization, accuracy gate (max drop 1 point)")
        spec = OUT / "optimize.json"
        spec.write_text(
            json.dumps({"quantize": "dynamic", "validate": {"metric": "accuracy", "maxDrop": 0.01}})
        )
        run(
            BIN / "ferry-optimize",
            "--model",
            f"file://{model_dir / 'model.keras'}",
            "--format",
            "keras",
            "--spec",
            spec,
            "--data",
            f"file://{model_dir / 'data.npz'}",
            "--output",
            f"file://{artifact}/",
            "--termination-log",
            OUT / "optimize-summary.json",
        )

    step("Ship it: kubectl apply a ModelDeployment and wait for Ready")
    namespace = kubectl("create", "namespace", DEMO_NAMESPACE, "--dry-run=client", "-o", "json", capture=True)
    (OUT / "namespace.json").write_text(namespace)
    kubectl("apply", "-f", str(OUT / "namespace.json"))
    manifest = {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "digits", "namespace": DEMO_NAMESPACE},
        "spec": {
            "model": {"uri": f"file://{artifact}/", "format": "onnx"},
            "serving": {"autoscaling": {"minReplicas": 1, "maxReplicas": 4, "metric": "cpu", "target": 70}},
        },
    }
    (OUT / "digits.json").write_text(json.dumps(manifest, indent=2))
    kubectl("apply", "-f", str(OUT / "digits.json"))
    kubectl("wait", "--for=condition=Ready", "modeldeployment/digits", "-n", DEMO_NAMESPACE, "--timeout=120s")
    kubectl("get", "modeldeployments", "-n", DEMO_NAMESPACE)

    step(
        f"Serve the optimized artifact with ferry-runtime: 127.0.0.1:{HTTP_PORT} (REST), :{GRPC_PORT} (gRPC)"
    )
    if port_free(HTTP_PORT) and port_free(GRPC_PORT):
        background(
            "runtime",
            [
                str(BIN / "ferry-runtime"),
                "--model-dir",
                str(artifact),
                "--model-name",
                "digits",
                "--http-port",
                str(HTTP_PORT),
                "--grpc-port",
                str(GRPC_PORT),
            ],
            {},
        )
    wait_http(f"http://127.0.0.1:{HTTP_PORT}/v2/health/ready", 60)

    step("A real prediction over the Open Inference Protocol v2")
    import numpy as np

    data = np.load(model_dir / "data.npz")
    x, y = data["x"][:8], data["y"][:8]
    request = {
        "inputs": [{"name": "pixels", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]
    }
    metadata = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{HTTP_PORT}/v2/models/digits").read())
    request["inputs"][0]["name"] = metadata["inputs"][0]["name"]
    (OUT / "request.json").write_text(json.dumps(request))
    reply = urllib.request.urlopen(
        urllib.request.Request(
            f"http://127.0.0.1:{HTTP_PORT}/v2/models/digits/infer",
            data=json.dumps(request).encode(),
            headers={"Content-Type": "application/json"},
        )
    )
    output = json.loads(reply.read())["outputs"][0]
    predicted = np.asarray(output["data"]).reshape(output["shape"]).argmax(axis=1)
    print(f"labels:    {y.tolist()}\npredicted: {predicted.tolist()}")

    summary = json.loads((OUT / "optimize-summary.json").read_text())
    print(
        f"""
Ferry is up ({time.monotonic() - started:.0f}s). The optimizer chose {summary.get("chosen")!r} """
        f"""({summary.get("reason", "")}).

Send requests (any Open Inference Protocol v2 client: Triton's tritonclient, KServe's, curl):
  curl -s localhost:{HTTP_PORT}/v2/models/digits
  curl -s -H 'Content-Type: application/json' -d @{OUT / "request.json"} \\
       localhost:{HTTP_PORT}/v2/models/digits/infer
  gRPC (inference.GRPCInferenceService): localhost:{GRPC_PORT}
  metrics: curl -s localhost:{HTTP_PORT}/metrics | grep ^ferry_

Watch the cluster:
  export KUBECONFIG={kubeconfig()}
  kubectl get md -n {DEMO_NAMESPACE}; kubectl describe md/digits -n {DEMO_NAMESPACE}
  kubectl ferry status digits -n {DEMO_NAMESPACE} --watch     # (.venv/bin on PATH: kubectl-ferry)

Stop everything: .venv/bin/python scripts/demo.py down
"""
    )


def down() -> None:
    stop("runtime")
    stop("operator")
    run(DEVCLUSTER, "down")


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "up"
    if command not in ("up", "down"):
        sys.exit(f"usage: {sys.argv[0]} [up|down] (got {command!r})")
    if command == "up":
        up()
    else:
        down()
