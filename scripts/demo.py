"""`make demo`: Ferry on a local Kubernetes with a real node, a model optimized in the cluster and served.

    python scripts/demo.py [up]     # idempotent: reuses what is already running
    python scripts/demo.py down     # stops the cluster (and its Prometheus)

Steps: start the devcluster with its real node (containerd, kubelet, kube-proxy, CNI, CoreDNS on this
host; no fake nodes); build the three images if podman lacks them and import them into the node's
containerd; `helm install` Ferry (the operator runs as a pod on the node); train the digits classifier and
put it on a PersistentVolumeClaim; apply a ModelDeployment that asks for INT8 quantization behind an
accuracy gate; the operator runs the optimization Job (the optimizer image), then serving pods start from
the chosen artifact; wait for Ready; start a Prometheus on the host that scrapes what the ServiceMonitor
describes, and prometheus-adapter over it (the custom metrics API, for HPAs on in-flight requests or
requests per second: spec.serving.autoscaling.metric); make a real prediction through the Service. Then the
generative half: a small Llama trained here on Debian's fortunes (examples/llm/train.py, cached under
~/.cache/ferry/demo), its Hugging Face folder deployed as ModelDeployment `llm` (format huggingface: the
Job builds it into onnxruntime-genai folders and chooses int4 behind a perplexity gate; autoscaled on
waiting requests), and a completion streamed through its Service with the official `openai` client. Print
where to send requests.

Environment: FERRY_DEVCLUSTER_DIR / FERRY_DEVCLUSTER_PORT_BASE select the cluster (docs/devcluster.md),
FERRY_DEMO_OUT the scratch directory (default out/demo). tests/e2e/test_demo_e2e.py runs this script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(os.environ.get("FERRY_DEMO_OUT", ROOT / "out" / "demo")).resolve()
BIN = Path(sys.executable).parent
DEVCLUSTER = ROOT / "devcluster" / "devcluster"
sys.path.insert(0, str(ROOT / "devcluster"))

from ferry_devcluster import build, prometheus_adapter, real_node  # noqa: E402  (the stdlib-only package beside this script)
from ferry_devcluster.config import ClusterConfig, default_state_dir  # noqa: E402

RELEASE = "ferry"
RELEASE_NAMESPACE = "ferry-system"
NAMESPACE = "demo"
MODEL = "digits"
VERSION = "0.1.0"
IMAGES = {"operator": f"ferry-operator:{VERSION}", "runtime": f"ferry-runtime:{VERSION}"}
IMAGES["optimizer"] = f"ferry-optimizer:{VERSION}"
LLM = "llm"
MODEL_CLAIM = "models"
ARTIFACT_CLAIM = "ferry-artifacts"
READY_TIMEOUT_SECONDS = 900
ON_THE_REAL_NODE = {real_node.NODE_LABEL[0]: real_node.NODE_LABEL[1]}

# The chart's values for this cluster: the operator on the real node, images imported (never pulled),
# the artifact claim made by the demo in the models' namespace (claims are namespaced; docs/operator.md,
# "Artifact store scope"), and requests that fit a 2-core node.
HELM_VALUES: dict[str, Any] = {
    "operator": {
        "image": {"pullPolicy": "Never"},
        "nodeSelector": ON_THE_REAL_NODE,
        "resources": {"requests": {"cpu": "50m", "memory": "192Mi"}, "limits": {"memory": "512Mi"}},
    },
    "runtime": {"image": {"pullPolicy": "Never"}},
    "optimizer": {
        "image": {"pullPolicy": "Never"},
        "resources": {"requests": {"cpu": "250m", "memory": "1Gi"}, "limits": {"memory": "3Gi"}},
    },
    "artifactStore": {"type": "pvc", "pvc": {"create": False, "name": ARTIFACT_CLAIM}},
    # the operator's own metrics, scraped by the host Prometheus like the serving pods
    "serviceMonitor": {"enabled": True, "interval": "15s"},
}

OPTIMIZE = {
    "quantize": "dynamic",
    "data": {"uri": f"pvc://{MODEL_CLAIM}/{MODEL}/data.npz"},
    "validate": {"metric": "accuracy", "maxDrop": 0.01},
}


def model_deployment(model_path: str = f"{MODEL}/model.keras") -> dict[str, Any]:
    """The demo's ModelDeployment; the e2e test applies variants of it (a new model, a broken one)."""
    return {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": MODEL, "namespace": NAMESPACE},
        "spec": {
            "model": {"uri": f"pvc://{MODEL_CLAIM}/{model_path}", "format": "keras"},
            "optimize": OPTIMIZE,
            "serving": {
                # scale in 20 s after the load stops, not after Kubernetes' default 5 minutes
                "autoscaling": {
                    "minReplicas": 1,
                    "maxReplicas": 4,
                    "metric": "cpu",
                    "target": 50,
                    "scaleDown": {"stabilizationWindowSeconds": 20},
                },
                # Small requests wait up to 25 ms for others to join their batch (a request that fills a
                # batch runs at once): it shows dynamic batching, and requests in flight track the load.
                "batching": {"maxDelayMs": 25},
                "resources": {"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
                "nodeSelector": ON_THE_REAL_NODE,
            },
        },
    }


LLM_OPTIMIZE = {
    "quantize": "int4",
    "data": {"uri": f"pvc://{MODEL_CLAIM}/{LLM}-data/heldout.txt"},
    "validate": {"metric": "perplexity", "maxIncrease": 0.05},
}


def llm_deployment(sha256: str | None = None) -> dict[str, Any]:
    """The generative ModelDeployment: the Hugging Face folder training wrote, built into onnxruntime-genai
    folders (fp32, int4, int8) in a Job, int4 chosen behind a perplexity gate on held-out fortunes (int8 is
    the fallback), then served and scaled on its queue. `sha256`: the folder's manifest digest, which pins
    its content (the Job refuses other files, and the optimization's content key is made from it)."""
    return {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": LLM, "namespace": NAMESPACE},
        "spec": {
            "model": {
                "uri": f"pvc://{MODEL_CLAIM}/{LLM}/",
                "format": "huggingface",
                **({"sha256": sha256} if sha256 else {}),
            },
            "optimize": LLM_OPTIMIZE,
            "serving": {
                # Four sequences per pod: beyond them requests wait, which is what metric: queue scales on.
                "generation": {"maxSequences": 4},
                "autoscaling": {
                    "minReplicas": 1,
                    "maxReplicas": 2,
                    "metric": "queue",
                    "target": 2,
                    "scaleDown": {"stabilizationWindowSeconds": 20},
                },
                # No memory request: the operator sizes it from the model and its KV cache.
                "resources": {"requests": {"cpu": "200m"}, "limits": {"memory": "1Gi"}},
                "nodeSelector": ON_THE_REAL_NODE,
            },
        },
    }


def llm_model() -> Path:
    """The demo's generative model, made on this machine once: a Hugging Face folder trained on Debian's
    fortunes (minutes on two cores); the optimization Job builds and quantizes it, as it would a user's.
    Returns the folder that holds `hf/` and `heldout.txt`. Cached under FERRY_CACHE by the code that makes
    it, so only a change of that code trains again."""
    import hashlib
    import inspect

    sys.path.insert(0, str(ROOT))
    from bench.generative_models import make_hf_llama

    script = ROOT / "examples" / "llm" / "train.py"
    # What makes the model: the training script and the function it calls to make the untrained Llama.
    key = hashlib.sha256(script.read_bytes() + inspect.getsource(make_hf_llama).encode())
    cache = Path(os.environ.get("FERRY_CACHE", Path.home() / ".cache" / "ferry")) / "demo"
    folder = cache / f"llm-{key.hexdigest()[:12]}"
    if not (folder / "train.json").exists():  # written when training finished
        step("Train the generative model: a small Llama on Debian's fortunes (a few minutes, cached after)")
        run(sys.executable, script, folder)
    return folder


def stream_completion(address: str, prompt: str) -> str:
    """A completion streamed through the Service with the official openai client, printed as it comes."""
    import openai

    client = openai.OpenAI(base_url=f"http://{address}:8080/v1", api_key="unused", max_retries=0)
    text = []
    print(f"prompt: {prompt}\nreply:  ", end="", flush=True)
    stream = client.completions.create(
        model=LLM, prompt=prompt, max_tokens=48, temperature=0.7, seed=1, stream=True
    )
    for chunk in stream:
        piece = chunk.choices[0].text if chunk.choices else ""
        text.append(piece)
        print(piece, end="", flush=True)
    print()
    return "".join(text)


def step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def run(*command: str | Path, capture: bool = False, stdin: str | None = None) -> str:
    result = subprocess.run(
        [str(c) for c in command],
        text=True,
        input=stdin,
        stdout=subprocess.PIPE if capture else None,
        check=False,
    )
    if result.returncode != 0:
        sys.exit(f"demo: `{' '.join(str(c) for c in command)}` failed with exit code {result.returncode}")
    return result.stdout or ""


def cluster_config() -> ClusterConfig:
    config = ClusterConfig.load(default_state_dir())
    if config is None:
        sys.exit(f"demo: no devcluster in {default_state_dir()}")
    return config


def kubectl(*args: str, capture: bool = False, stdin: str | None = None) -> str:
    kubeconfig = cluster_config().admin_kubeconfig
    return run(build.kubectl(), "--kubeconfig", kubeconfig, *args, capture=capture, stdin=stdin)


def kubectl_json(*args: str) -> Any:
    return json.loads(kubectl(*args, "-o", "json", capture=True))


def apply(manifest: dict[str, Any]) -> None:
    kubectl("apply", "-f", "-", stdin=json.dumps(manifest), capture=True)


def podman_image_id(image: str) -> str | None:
    found = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Id}}", image],
        capture_output=True,
        text=True,
        check=False,
    )
    return found.stdout.strip() if found.returncode == 0 else None


def ensure_images(config: ClusterConfig) -> None:
    """Build the images of this checkout, then import into the node's containerd what it lacks or holds an
    older build of (the podman image id each import came from is remembered in the state directory)."""
    # Always build: podman's layer cache makes an unchanged checkout a no-op in seconds, while "build only
    # when missing" once served images of an older checkout (a field the API had gained was refused).
    step("Build the images from this checkout (podman; minutes the first time, cached after)")
    run("bash", ROOT / "scripts" / "build-images.sh")
    record_path = config.state_dir / "demo-images.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    for image in IMAGES.values():
        image_id = podman_image_id(image)
        reference = real_node.normalized_reference(image)
        if record.get(image) == image_id and real_node.image_present(config, reference):
            continue
        started = time.monotonic()
        real_node.import_podman_image(config, image, reference)
        print(f"imported {image} into the node's containerd ({time.monotonic() - started:.0f}s)")
        record[image] = image_id
        record_path.write_text(json.dumps(record, indent=2))


def prebound_claim(name: str, owned_by: str) -> None:
    """A claim of the node's local class bound now to a free local volume (a local volume binds only when a
    pod is scheduled otherwise), so files can be put on it before any pod runs. The volume's directory is
    opened to the pods' unprivileged users: local volumes get no ownership management."""
    if (
        subprocess.run(
            [
                str(build.kubectl()),
                "--kubeconfig",
                str(cluster_config().admin_kubeconfig),
                "get",
                "pvc",
                name,
                "-n",
                NAMESPACE,
            ],
            capture_output=True,
            check=False,
        ).returncode
        != 0
    ):
        free = [
            volume
            for volume in kubectl_json("get", "pv")["items"]
            if volume["spec"].get("storageClassName") == real_node.LOCAL_STORAGE_CLASS
            and volume["status"].get("phase") == "Available"
        ]
        if not free:
            sys.exit(f"demo: no free local volume of class {real_node.LOCAL_STORAGE_CLASS} for claim {name}")
        apply(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {
                    "name": name,
                    "namespace": NAMESPACE,
                    "labels": {"app.kubernetes.io/part-of": owned_by},
                },
                "spec": {
                    "storageClassName": real_node.LOCAL_STORAGE_CLASS,
                    "volumeName": free[0]["metadata"]["name"],
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            }
        )
    kubectl(
        "wait",
        "--for=jsonpath={.status.phase}=Bound",
        f"pvc/{name}",
        "-n",
        NAMESPACE,
        "--timeout=60s",
        capture=True,
    )


def claim_directory(name: str) -> Path:
    volume = kubectl_json("get", "pvc", name, "-n", NAMESPACE)["spec"]["volumeName"]
    return Path(kubectl_json("get", "pv", volume)["spec"]["local"]["path"])


def put_on_claim(claim: str, source: Path, destination: str) -> None:
    """Copy a host directory onto a claim's local volume, readable by the pods."""
    root = claim_directory(claim)
    target = root / destination
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.is_file():
            (target / path.name).write_bytes(path.read_bytes())
            (target / path.name).chmod(0o644)
    for directory in (root, target):
        directory.chmod(0o755)


def train(model_dir: Path) -> None:
    if not (model_dir / "model.keras").exists():
        step("Train the sample model: a Keras classifier on scikit-learn's bundled digits")
        run(sys.executable, ROOT / "examples" / "digits" / "train.py", model_dir)


def service_address(name: str = MODEL) -> str:
    return str(kubectl_json("get", "service", name, "-n", NAMESPACE)["spec"]["clusterIP"])


def wait_for_service(address: str, timeout: float = 120) -> None:
    """A new Service answers once kube-proxy has programmed its endpoints (after the pod is Ready)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{address}:8080/v2/health/ready", timeout=5) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"demo: the Service {address}:8080 did not answer within {timeout:.0f}s")


def up() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.monotonic()
        timings[name] = round(now - since, 1)
        return now

    step("Local Kubernetes with a real node: control plane, containerd, kubelet, kube-proxy, CNI, CoreDNS")
    run(DEVCLUSTER, "up", "--real-node", "--nodes", "0", "--gpu-nodes", "0")
    run(DEVCLUSTER, "monitoring-crds", "install", capture=True)
    config = cluster_config()
    mark = lap("cluster", started)

    ensure_images(config)
    mark = lap("images", mark)

    step("helm install Ferry: CRD, RBAC, the operator pod on the real node")
    values = OUT / "helm-values.json"
    values.write_text(json.dumps(HELM_VALUES, indent=2))
    run(
        build.ensure(["helm"])["helm"],
        "--kubeconfig",
        config.admin_kubeconfig,
        "upgrade",
        "--install",
        RELEASE,
        ROOT / "charts" / "ferry",
        "--namespace",
        RELEASE_NAMESPACE,
        "--create-namespace",
        "--values",
        values,
        "--wait",
        "--timeout",
        "5m",
    )
    mark = lap("helm install", mark)

    step(
        f"The model on a PersistentVolumeClaim: pvc://{MODEL_CLAIM}/{MODEL}/ (and the artifact store's claim)"
    )
    # The API server itself refuses any model or Job pod that is not Pod Security "restricted".
    apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": NAMESPACE,
                "labels": {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                },
            },
        }
    )
    model_dir = OUT / "models" / MODEL
    train(model_dir)
    prebound_claim(MODEL_CLAIM, "demo")
    prebound_claim(ARTIFACT_CLAIM, "ferry")
    put_on_claim(MODEL_CLAIM, model_dir, MODEL)
    artifacts = claim_directory(ARTIFACT_CLAIM)
    artifacts.chmod(0o777)  # the optimization Jobs (an unprivileged user) write here
    mark = lap("model on claim", mark)

    step("kubectl apply the ModelDeployment: optimize (INT8, accuracy gate) in a Job, then serve")
    manifest = model_deployment()
    (OUT / f"{MODEL}.json").write_text(json.dumps(manifest, indent=2))
    apply(manifest)
    kubectl(
        "wait",
        "--for=condition=Ready",
        f"modeldeployment/{MODEL}",
        "-n",
        NAMESPACE,
        f"--timeout={READY_TIMEOUT_SECONDS}s",
    )
    kubectl("get", "modeldeployments,jobs,pods", "-n", NAMESPACE)
    mark = lap("optimized and Ready", mark)

    step("Prometheus on the host, scraping what the ServiceMonitor describes")
    prometheus_url = run(DEVCLUSTER, "prometheus", "up", capture=True).strip()
    step("The custom metrics API over that Prometheus (prometheus-adapter), for HPAs on serving metrics")
    run(DEVCLUSTER, "adapter", "up", "--prometheus", prometheus_url)

    step("A real prediction through the Service over the Open Inference Protocol v2 (tritonclient)")
    address = service_address()
    wait_for_service(address)
    import numpy as np
    import tritonclient.http as triton_http

    data = np.load(model_dir / "data.npz")
    x, y = data["x"][:8], data["y"][:8]
    client = triton_http.InferenceServerClient(f"{address}:8080")
    input_name = client.get_model_metadata(MODEL)["inputs"][0]["name"]
    request = triton_http.InferInput(input_name, list(x.shape), "FP32")
    request.set_data_from_numpy(x)
    predicted = client.infer(MODEL, [request]).as_numpy(
        client.get_model_metadata(MODEL)["outputs"][0]["name"]
    )
    assert predicted is not None
    print(f"labels:    {y.tolist()}\npredicted: {predicted.argmax(axis=1).tolist()}")
    (OUT / "request.json").write_text(
        json.dumps(
            {
                "inputs": [
                    {
                        "name": input_name,
                        "shape": list(x.shape),
                        "datatype": "FP32",
                        "data": x.ravel().tolist(),
                    }
                ]
            }
        )
    )
    mark = lap("prometheus and first prediction", mark)

    llm_dir = llm_model()
    mark = lap("generative model made", mark)
    step(
        "kubectl apply the generative ModelDeployment: its Hugging Face folder built and quantized to int4 "
        "in a Job behind a perplexity gate, then served (OpenAI-compatible) and scaled on its queue"
    )
    put_on_claim(MODEL_CLAIM, llm_dir / "hf", LLM)
    data = OUT / "llm-data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "heldout.txt").write_bytes((llm_dir / "heldout.txt").read_bytes())
    put_on_claim(MODEL_CLAIM, data, f"{LLM}-data")
    from ferry_runtime.storage import directory_digest

    apply(llm_deployment(sha256=directory_digest(claim_directory(MODEL_CLAIM) / LLM)))
    kubectl(
        "wait",
        "--for=condition=Ready",
        f"modeldeployment/{LLM}",
        "-n",
        NAMESPACE,
        f"--timeout={READY_TIMEOUT_SECONDS}s",
    )
    llm_address = service_address(LLM)
    wait_for_service(llm_address)
    step("A completion streamed through the Service with the official openai client")
    stream_completion(llm_address, "A man walks into a bar and")
    lap("generative model optimized, Ready and streamed", mark)
    timings["total"] = round(time.monotonic() - started, 1)
    (OUT / "timings.json").write_text(json.dumps(timings, indent=2))

    status = kubectl_json("get", "modeldeployment", MODEL, "-n", NAMESPACE)["status"]
    in_flight = prometheus_adapter.CONCURRENCY_METRIC
    report = (status.get("optimization") or {}).get("report") or {}
    laps = ", ".join(f"{name} {seconds:.0f}s" for name, seconds in timings.items() if name != "total")
    print(
        f"""
Ferry is up ({timings["total"]:.0f}s: {laps}).
The optimization Job chose {report.get("chosen")!r}: {report.get("reason", "")}

Send requests (any Open Inference Protocol v2 client: Triton's tritonclient, KServe's, curl), from this host
through the Service's ClusterIP (kube-proxy), or from pods at {status.get("url", "")}:
  curl -s http://{address}:8080/v2/models/{MODEL}
  curl -s -H 'Content-Type: application/json' -d @{OUT / "request.json"} http://{address}:8080/v2/models/{MODEL}/infer
  gRPC (inference.GRPCInferenceService): {address}:8081
  Prometheus: {prometheus_url}/graph?g0.expr=sum(rate(ferry_requests_total[1m]))%20by%20(pod)
  Custom metrics (spec.serving.autoscaling.metric concurrency or rps scales on them), e.g.:
    kubectl get --raw /apis/custom.metrics.k8s.io/v1beta1/namespaces/{NAMESPACE}/pods/*/{in_flight}

The generative model (OpenAI-compatible: /v1/models, /v1/completions, /v1/chat/completions, stream: true):
  curl -sN http://{llm_address}:8080/v1/completions -H 'Content-Type: application/json' \\
    -d '{{"model": "{LLM}", "prompt": "The meaning of life is", "max_tokens": 40, "stream": true}}'
  or any OpenAI client with base_url http://{llm_address}:8080/v1 and model {LLM!r} (README: "Generative").

Watch the cluster:
  export KUBECONFIG={config.admin_kubeconfig}
  kubectl get md,hpa,pods -n {NAMESPACE}; kubectl describe md/{MODEL} -n {NAMESPACE}
  kubectl ferry status {MODEL} -n {NAMESPACE} --watch     # (.venv/bin on PATH: kubectl-ferry)

Stop everything: .venv/bin/python scripts/demo.py down
"""
    )


def down() -> None:
    run(DEVCLUSTER, "down")


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "up"
    if command not in ("up", "down"):
        sys.exit(f"usage: {sys.argv[0]} [up|down] (got {command!r})")
    if command == "up":
        up()
    else:
        down()
