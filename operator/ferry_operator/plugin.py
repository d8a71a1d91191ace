"""`kubectl ferry`: follow ModelDeployments from a terminal.

kubectl runs any `kubectl-ferry` on the PATH as `kubectl ferry ...`; it inherits the usual kubeconfig
(KUBECONFIG, --kubeconfig, --context). Commands:

    kubectl ferry list [-A | -n NS]
    kubectl ferry status NAME [--watch]
    kubectl ferry report NAME [--plot FILE]
    kubectl ferry predict NAME --input FILE [--url URL [--ca-file FILE]] [--token TOKEN | --token-file FILE]
    kubectl ferry chat NAME [--message TEXT] [--url URL [--ca-file FILE]] [--token TOKEN | --token-file FILE]

Everything shown comes from the ModelDeployment's status (what the operator observed) and, for
`predict` and `chat`, from the model server itself through the API server's service proxy, so it works
from a laptop without port-forwarding. Errors say what to do next.

A model with spec.serving.auth needs a token (--token, --token-file or $FERRY_TOKEN, sent as
`Authorization: Bearer TOKEN`), and a token only travels with --url: the API server removes the
Authorization header of every request it authenticated before the request goes on (k8s.io/apiserver's
WithAuthentication filter), so the service proxy can never deliver one to the model.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO, cast

GROUP, VERSION, PLURAL = "ferry.dev", "v1alpha1", "modeldeployments"
# Conditions in the order a rollout passes through them: the first one not True is "where it is".
PROGRESS_CONDITIONS = ("ModelResolved", "Optimized", "Deployed", "Ready")


class PluginError(Exception):
    """A failure the user can act on; printed without a traceback."""


TOKEN_ENV = "FERRY_TOKEN"
PROXY_CANNOT_CARRY_A_TOKEN = (
    "a token cannot reach the model through the API server's service proxy: the API server removes the "
    "Authorization header once it has authenticated you. Reach the model directly: run `kubectl "
    "port-forward -n {namespace} service/{name} 8080:8080` in another terminal and add `--url "
    "http://127.0.0.1:8080`"
)


# --------------------------------------------------------------------------------------------------
# Pure rendering: status dict -> text. Kept free of API calls so it is unit-testable.


def age(timestamp: str | None, now: dt.datetime | None = None) -> str:
    if not timestamp:
        return "-"
    created = dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = int(((now or dt.datetime.now(dt.UTC)) - created).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return None


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def list_rows(objects: Sequence[Mapping[str, Any]], now: dt.datetime | None = None) -> list[list[str]]:
    rows = []
    for obj in objects:
        status = obj.get("status") or {}
        ready = condition(status, "Ready")
        desired = status.get("replicas", "-")
        rows.append(
            [
                obj["metadata"]["namespace"],
                obj["metadata"]["name"],
                ready["status"] if ready else "Unknown",
                status.get("phase", "Pending"),
                f"{status.get('readyReplicas', 0)}/{desired}",
                status.get("url", ""),
                age(obj["metadata"].get("creationTimestamp"), now),
            ]
        )
    return rows


def progress_line(obj: Mapping[str, Any], width: int = 24) -> str:
    """One line: phase, where the rollout is, replicas ready of desired as a bar."""
    status = obj.get("status") or {}
    phase = status.get("phase", "Pending")
    desired = int(status.get("replicas") or 0)
    ready = int(status.get("readyReplicas") or 0)
    filled = round(width * ready / desired) if desired else 0
    bar = "#" * filled + "." * (width - filled)
    step = ""
    for kind in PROGRESS_CONDITIONS:
        cond = condition(status, kind)
        # A condition the operator does not report (Optimized without spec.optimize) is not a step;
        # Ready always is.
        if cond is None and kind != "Ready":
            continue
        if cond is None or cond.get("status") != "True":
            reason = (cond or {}).get("reason", "Waiting")
            step = f" {kind}: {reason}"
            break
    optimization = status.get("optimization") or {}
    if optimization.get("step"):
        step += f" (optimizing: {optimization['step']})"
    stale = ""
    generation = obj.get("metadata", {}).get("generation")
    if generation is not None and status.get("observedGeneration") != generation:
        stale = " [operator has not seen the latest spec yet]"
    return f"{phase:<11} [{bar}] {ready}/{desired} ready{step}{stale}"


def describe_conditions(status: Mapping[str, Any]) -> str:
    rows = [
        [c.get("type", ""), c.get("status", ""), c.get("reason", ""), c.get("message", "")]
        for c in status.get("conditions") or []
    ]
    return table(["CONDITION", "STATUS", "REASON", "MESSAGE"], rows) if rows else "no conditions yet"


def report_rows(report: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    chosen = report.get("chosen")
    for cand in report.get("candidates") or []:
        rows.append(
            [
                ("* " if cand.get("name") == chosen else "  ") + str(cand.get("name")),
                "pass" if cand.get("passed") else "REJECTED",
                f"{int(cand.get('sizeBytes', 0)) / 1e6:.2f} MB",
                f"{float(cand.get('latencyMs', 0.0)):.3f} ms",
                f"{float(cand.get('metric', 0.0)):.4f}",
            ]
        )
    return rows


def artifact_row(artifact: Mapping[str, Any]) -> list[str]:
    """status.optimization.artifact as a table row: where it is, its size, its digest."""
    size = artifact.get("sizeBytes")
    return [
        str(artifact.get("uri", "")),
        f"{int(size) / 1e6:.2f} MB" if size is not None else "",
        str(artifact.get("sha256", "")),
    ]


# --------------------------------------------------------------------------------------------------
# Cluster access.


def _api(kubeconfig: str | None, context: str | None) -> Any:
    from kubernetes import client, config

    try:
        config.load_kube_config(config_file=kubeconfig, context=context)  # type: ignore[no-untyped-call]
    except Exception as exc:  # the client raises several unrelated types for a missing/invalid file
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except Exception:
            raise PluginError(
                f"cannot load a kubeconfig ({exc}); set KUBECONFIG or pass --kubeconfig "
                "(for the local cluster: `export KUBECONFIG=$(devcluster/devcluster kubeconfig)`)"
            ) from exc
    return client.ApiClient()


def _namespace(args: argparse.Namespace) -> str:
    if args.namespace:
        return str(args.namespace)
    from kubernetes import config

    try:
        _, active = config.list_kube_config_contexts(config_file=args.kubeconfig)  # type: ignore[no-untyped-call]
        return str(active["context"].get("namespace", "default"))
    except Exception:
        return "default"


def _get(api: Any, namespace: str, name: str) -> dict[str, Any]:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        obj = cast(
            "dict[str, Any]",
            client.CustomObjectsApi(api).get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name
            ),
        )
    except ApiException as exc:
        if exc.status == 404:
            raise PluginError(
                f'modeldeployment "{name}" not found in namespace "{namespace}"; '
                "`kubectl ferry list -A` shows them all"
            ) from exc
        raise PluginError(f"reading modeldeployment {namespace}/{name}: {exc.status} {exc.reason}") from exc
    return obj


def cmd_list(api: Any, args: argparse.Namespace, out: TextIO) -> int:
    from kubernetes import client

    custom = client.CustomObjectsApi(api)
    if args.all_namespaces:
        listing = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
    else:
        listing = custom.list_namespaced_custom_object(GROUP, VERSION, _namespace(args), PLURAL)
    items = cast("dict[str, list[dict[str, Any]]]", listing)["items"]
    if not items:
        print("no ModelDeployments found; ship one with `kubectl apply -f examples/digits.yaml`", file=out)
        return 0
    headers = ["NAMESPACE", "NAME", "READY", "PHASE", "REPLICAS", "URL", "AGE"]
    print(table(headers, list_rows(items)), file=out)
    return 0


def _watch(api: Any, namespace: str, name: str, timeout: int) -> Iterator[dict[str, Any]]:
    from kubernetes import client, watch

    stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
        client.CustomObjectsApi(api).list_namespaced_custom_object,
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        field_selector=f"metadata.name={name}",
        timeout_seconds=timeout,
    )
    for event in stream:
        if event["type"] == "DELETED":
            raise PluginError(f"modeldeployment {namespace}/{name} was deleted")
        yield event["object"]


def cmd_status(api: Any, args: argparse.Namespace, out: TextIO) -> int:
    namespace = _namespace(args)
    obj = _get(api, namespace, args.name)
    if not args.watch:
        status = obj.get("status") or {}
        print(f"{namespace}/{args.name}: {progress_line(obj)}", file=out)
        if status.get("url"):
            print(f"url: {status['url']}", file=out)
        print(describe_conditions(status), file=out)
        return 0
    # A TTY gets one line redrawn in place; a pipe or log gets one line per change, never a redraw.
    interactive = out.isatty()
    last = ""
    deadline = time.monotonic() + args.timeout
    for current in _watch(api, namespace, args.name, args.timeout):
        line = progress_line(current)
        if line != last:
            print(("\r\x1b[2K" if interactive else "") + line, end="" if interactive else "\n", file=out)
            out.flush()
            last = line
        if (current.get("status") or {}).get("phase") in ("Ready", "Failed") and args.exit_on_done:
            break
        if time.monotonic() > deadline:
            break
    if interactive:
        print(file=out)
    return 0 if last.startswith("Ready") else 1


def cmd_report(api: Any, args: argparse.Namespace, out: TextIO) -> int:
    namespace = _namespace(args)
    status = _get(api, namespace, args.name).get("status") or {}
    optimization = status.get("optimization") or {}
    report = optimization.get("report")
    if not report:
        raise PluginError(
            f"{namespace}/{args.name} has no optimization report: add `spec.optimize` to optimize the model, "
            "or wait for the optimization Job (`kubectl ferry status NAME --watch`)"
        )
    print(table(["CANDIDATE", "GATE", "SIZE", "LATENCY", "METRIC"], report_rows(report)), file=out)
    metric = report.get("metric") or {}
    if metric:
        print(
            f"\nmetric {metric.get('name')}: baseline {metric.get('baseline')}"
            f" -> chosen {metric.get('value')}",
            file=out,
        )
    print(f"chosen: {report.get('chosen') or 'none'} ({report.get('reason', '')})", file=out)
    artifact = optimization.get("artifact")
    if artifact:
        print("\n" + table(["ARTIFACT", "SIZE", "SHA256"], [artifact_row(artifact)]), file=out)
    if args.plot:
        plot_report(report, Path(args.plot))
        print(f"wrote {args.plot}", file=out)
    return 0


def plot_report(report: Mapping[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PluginError("--plot needs matplotlib: `pip install matplotlib`") from exc
    candidates = report.get("candidates") or []
    names = [str(c.get("name")) for c in candidates]
    colors = ["tab:green" if c.get("passed") else "tab:red" for c in candidates]
    series = (
        ("size (MB)", [int(c.get("sizeBytes", 0)) / 1e6 for c in candidates]),
        ("latency (ms)", [float(c.get("latencyMs", 0.0)) for c in candidates]),
        ("metric", [float(c.get("metric", 0.0)) for c in candidates]),
    )
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, (title, values) in zip(axes, series, strict=True):
        ax.bar(names, values, color=colors)
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(f"candidates (green passed the gate; chosen: {report.get('chosen')})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def infer_request(path: Path, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Build a v2 JSON inference request from a .json request or an .npz of named arrays."""
    if path.suffix == ".json":
        body: dict[str, Any] = json.loads(path.read_text())
        if "inputs" not in body:
            raise PluginError(f"{path}: a JSON input must be a v2 inference request with an `inputs` list")
        return body
    if path.suffix != ".npz":
        raise PluginError(f"{path}: expected a .json v2 request or an .npz of arrays, got {path.suffix!r}")
    import numpy as np

    arrays = np.load(path)
    inputs = []
    for spec in metadata.get("inputs", []):
        name = spec["name"]
        key = name if name in arrays else ("x" if "x" in arrays and len(metadata["inputs"]) == 1 else None)
        if key is None:
            raise PluginError(f"{path}: no array for model input {name!r} (arrays: {sorted(arrays.files)})")
        array = arrays[key].astype(_NUMPY_DTYPES.get(spec["datatype"], arrays[key].dtype))
        inputs.append(
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": spec["datatype"],
                "data": array.ravel().tolist(),
            }
        )
    return {"inputs": inputs}


_NUMPY_DTYPES = {
    "FP32": "float32",
    "FP64": "float64",
    "FP16": "float16",
    "INT64": "int64",
    "INT32": "int32",
    "INT8": "int8",
    "UINT8": "uint8",
    "BOOL": "bool",
}


class _Reply:
    """A model server's answer, read whole or line by line (server-sent events)."""

    def __init__(self, status: int, chunks: Iterator[bytes], where: str) -> None:
        self.status = status
        self._chunks = chunks
        self.where = where

    def read(self) -> bytes:
        return b"".join(self._chunks)

    def lines(self) -> Iterator[bytes]:
        pending = b""
        for chunk in self._chunks:
            pending += chunk
            *complete, pending = pending.split(b"\n")
            yield from complete
        if pending:
            yield pending

    def json(self) -> dict[str, Any]:
        body = self.read()
        try:
            document = json.loads(body)
        except ValueError as exc:
            raise PluginError(f"{self.where}: not JSON: {body[:300]!r}") from exc
        if self.status >= 400:
            error = document.get("error") if isinstance(document, dict) else None
            message = error.get("message") if isinstance(error, dict) else error
            shown = message if message else repr(body[:500])
            raise PluginError(f"{self.where}: {self.status} {shown}")
        return cast("dict[str, Any]", document)


Send = Callable[[str, str, "dict[str, Any] | None"], _Reply]


def token(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[str, str] | None:
    """The bearer token for the model server and where it came from: --token, else --token-file, else
    $FERRY_TOKEN; None without one. A file's trailing newline (`kubectl create token SA > FILE` writes
    one) is not part of the token."""
    value: str
    if args.token is not None:
        value = args.token
        where = "--token"
    elif args.token_file is not None:
        try:
            value = Path(args.token_file).read_text()
        except OSError as exc:
            raise PluginError(f"--token-file {args.token_file}: {exc.strerror or exc}") from exc
        where = f"--token-file {args.token_file}"
    elif environ.get(TOKEN_ENV):
        value = environ[TOKEN_ENV]
        where = f"${TOKEN_ENV}"
    else:
        return None
    value = value.strip()
    if not value or any(c.isspace() for c in value):
        raise PluginError(f"{where}: a token is one word with no white space, got {len(value)} characters")
    return value, where


def _server(api: Any, args: argparse.Namespace) -> Send:
    """How to reach the model server: --url directly, else the API server's service proxy (which reaches
    the ClusterIP Service from outside the cluster, but cannot carry a token: see the module docstring)."""
    timeout = args.timeout
    if args.url:
        base = args.url.rstrip("/")
        headers = {"Content-Type": "application/json"}
        if args.bearer_token is not None:
            headers["Authorization"] = f"Bearer {args.bearer_token}"

        context = None
        if args.ca_file:
            import ssl

            try:
                # Verifies the server's certificate and name against this CA only (spec.serving.tls).
                context = ssl.create_default_context(cafile=args.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise PluginError(f"--ca-file {args.ca_file}: {exc}") from exc

        def direct(method: str, path: str, body: dict[str, Any] | None = None) -> _Reply:
            import urllib.error
            import urllib.request

            data = json.dumps(body).encode() if body is not None else None
            request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
            try:
                response = urllib.request.urlopen(request, timeout=timeout, context=context)
            except urllib.error.HTTPError as exc:
                return _Reply(exc.code, iter([exc.read()]), f"{method} {base + path}")
            except urllib.error.URLError as exc:
                raise PluginError(f"cannot reach {base}: {exc.reason}") from exc
            return _Reply(
                response.status, iter(lambda: response.read1(65536), b""), f"{method} {base + path}"
            )

        return direct

    namespace, name = _namespace(args), args.name
    _get(api, namespace, name)  # a clear "not found" before any proxy error
    from kubernetes.client.exceptions import ApiException

    def proxied(method: str, path: str, body: dict[str, Any] | None = None) -> _Reply:
        proxy = f"/api/v1/namespaces/{namespace}/services/{name}:http/proxy{path}"
        where = f"{method} {path} via the service proxy"
        # kubernetes >= 31 splits a call into serializing (auth, host) and sending; the response is
        # read as it arrives, so a stream is printed token by token.
        method_, url, headers, data, _ = api.param_serialize(
            method,
            proxy,
            header_params={"Content-Type": "application/json", "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = api.call_api(method_, url, header_params=headers, body=data, _request_timeout=timeout)
        except ApiException as exc:
            raise PluginError(f"{where}: {exc.status} {exc.reason}") from exc
        if response.status == 503:
            raise PluginError(f"{where}: 503; is the model Ready? (`kubectl ferry status {name}`)")
        if response.status == 401:
            # The API server accepted our credentials (the ModelDeployment was read): the model refused.
            raise PluginError(
                f"{where}: 401: the model requires a token (spec.serving.auth); "
                + PROXY_CANNOT_CARRY_A_TOKEN.format(namespace=namespace, name=name)
                + ", with --token, --token-file or $"
                + TOKEN_ENV
            )
        return _Reply(response.status, response.response.stream(65536), where)

    return proxied


def cmd_predict(api: Any, args: argparse.Namespace, out: TextIO) -> int:
    name = args.name
    send = _server(api, args)
    metadata = send("GET", f"/v2/models/{name}", None).json()
    request = infer_request(Path(args.input), metadata)
    response = send("POST", f"/v2/models/{name}/infer", request).json()
    for output in response.get("outputs", []):
        data = output.get("data", [])
        preview = data if len(data) <= 20 else [*data[:20], f"... ({len(data)} values)"]
        print(f"{output['name']} {output.get('datatype')} {output.get('shape')}: {preview}", file=out)
    return 0


def chat_request(args: argparse.Namespace, message: str) -> dict[str, Any]:
    messages = [{"role": "system", "content": args.system}] if args.system else []
    messages.append({"role": "user", "content": message})
    body: dict[str, Any] = {"model": args.name, "messages": messages, "stream": True}
    body["stream_options"] = {"include_usage": True}
    if args.max_tokens is not None:
        body["max_tokens"] = args.max_tokens
    if args.temperature is not None:
        body["temperature"] = args.temperature
    return body


def cmd_chat(api: Any, args: argparse.Namespace, out: TextIO) -> int:
    """Stream one reply of a generative model to the terminal (OpenAI chat completions, SSE)."""
    message = args.message if args.message is not None else sys.stdin.read()
    if not message.strip():
        raise PluginError("nothing to send: pass --message TEXT or pipe the message on standard input")
    reply = _server(api, args)("POST", "/v1/chat/completions", chat_request(args, message))
    if reply.status != 200:
        reply.json()  # raises with the server's message
        raise PluginError(f"{reply.where}: {reply.status}")
    usage: dict[str, Any] | None = None
    for line in reply.lines():
        if not line.startswith(b"data: "):
            continue
        payload = line[len(b"data: ") :].strip()
        if payload == b"[DONE]":
            break
        event = json.loads(payload)
        if "error" in event:
            raise PluginError(f"{reply.where}: {event['error'].get('message', event['error'])}")
        for choice in event.get("choices") or []:
            out.write((choice.get("delta") or {}).get("content") or "")
            out.flush()
        usage = event.get("usage") or usage
    out.write("\n")
    if usage:
        print(
            f"({usage['prompt_tokens']} prompt tokens, {usage['completion_tokens']} generated)",
            file=sys.stderr,
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    # kubectl users put -n/--kubeconfig anywhere (`kubectl ferry status x -n ns`), so the common options
    # are accepted before and after the command; SUPPRESS keeps a later position from resetting them.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--kubeconfig", default=argparse.SUPPRESS, help="kubeconfig file (default: $KUBECONFIG)"
    )
    common.add_argument("--context", default=argparse.SUPPRESS, help="kubeconfig context")
    common.add_argument(
        "-n", "--namespace", default=argparse.SUPPRESS, help="namespace (default: the context's)"
    )
    parser = argparse.ArgumentParser(
        prog="kubectl ferry", description=__doc__.split("\n\n")[0], parents=[common]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser(
        "list", parents=[common], help="ModelDeployments with their phase, replicas and URL"
    )
    p_list.add_argument("-A", "--all-namespaces", action="store_true")
    p_status = sub.add_parser(
        "status", parents=[common], help="phase, conditions and replicas; --watch follows the rollout"
    )
    p_status.add_argument("name")
    p_status.add_argument("-w", "--watch", action="store_true")
    p_status.add_argument("--timeout", type=int, default=600, help="seconds to watch (default 600)")
    p_status.add_argument(
        "--exit-on-done", action="store_true", help="stop watching when the phase is Ready or Failed"
    )
    p_report = sub.add_parser(
        "report", parents=[common], help="the optimization report: every candidate and the gate"
    )
    p_report.add_argument("name")
    p_report.add_argument("--plot", metavar="FILE", help="also write a PNG chart of the candidates")
    p_predict = sub.add_parser(
        "predict", parents=[common], help="send an input (.json v2 request or .npz) and print outputs"
    )
    p_predict.add_argument("name")
    p_predict.add_argument("--input", required=True, metavar="FILE")
    p_predict.add_argument("--url", help="call this server directly, not through the API server's proxy")
    _token_options(p_predict)
    p_predict.add_argument("--timeout", type=float, default=30.0)
    p_chat = sub.add_parser(
        "chat", parents=[common], help="stream a generative model's reply to a message (OpenAI chat API)"
    )
    p_chat.add_argument("name")
    p_chat.add_argument("-m", "--message", help="the user message (default: read standard input)")
    p_chat.add_argument("--system", help="a system message before it")
    p_chat.add_argument("--max-tokens", type=int, help="most tokens to generate (default: the server's)")
    p_chat.add_argument("--temperature", type=float, help="0 for greedy (default: the server's, 1)")
    p_chat.add_argument("--url", help="call this server directly, not through the API server's proxy")
    _token_options(p_chat)
    p_chat.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for a read")
    return parser


def _token_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--ca-file",
        metavar="FILE",
        help="with an https --url: the CA that issued the model's certificate (spec.serving.tls)",
    )
    tokens = command.add_mutually_exclusive_group()
    needs_url = (
        "Needs --url: the API server's service proxy removes the Authorization header (e.g. "
        "`kubectl port-forward service/NAME 8080:8080` and --url http://127.0.0.1:8080)."
    )
    tokens.add_argument(
        "--token",
        help=f"bearer token for a model with spec.serving.auth (default: ${TOKEN_ENV}). {needs_url}",
    )
    tokens.add_argument(
        "--token-file",
        metavar="FILE",
        help=f"read the bearer token from FILE (e.g. `kubectl create token SA > FILE`). {needs_url}",
    )


COMMANDS = {
    "list": cmd_list,
    "status": cmd_status,
    "report": cmd_report,
    "predict": cmd_predict,
    "chat": cmd_chat,
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    for option in ("kubeconfig", "context", "namespace", "token", "token_file", "url"):
        if not hasattr(args, option):
            setattr(args, option, None)
    # Resolved by main() from the token options and the environment.
    args.bearer_token = None
    return args


def main(
    argv: Sequence[str] | None = None, out: TextIO = sys.stdout, environ: Mapping[str, str] | None = None
) -> int:
    args = parse_args(argv)
    try:
        calls_the_model = args.command in ("predict", "chat")
        given = token(args, os.environ if environ is None else environ) if calls_the_model else None
        if given is not None and not args.url:
            # Refused before anything is sent: through the proxy the token would be silently dropped.
            raise PluginError(
                f"{given[1]}: "
                + PROXY_CANNOT_CARRY_A_TOKEN.format(namespace=_namespace(args), name=args.name)
            )
        args.bearer_token = given[0] if given is not None else None
        direct = calls_the_model and args.url
        api = None if direct else _api(args.kubeconfig, args.context)
        return COMMANDS[args.command](api, args, out)
    except PluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
