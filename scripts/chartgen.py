"""Generated parts of the Helm chart: CRD templates, values.schema.json and the values table in README.md.

values.yaml is the documentation (a `# --` comment above every key); the schema and the README table are
derived from it so they can never disagree with it. The CRD template wraps the generated CRD in
crds/ (itself generated from the operator's API models) behind `crds.enabled`, with the keep policy:
Helm never upgrades files in a chart's crds/ folder, templates it does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "ferry"

# Keys whose values are free-form Kubernetes structures (validated by the API server, not the chart).
FREE_FORM = {
    "operator.resources",
    "operator.nodeSelector",
    "operator.affinity",
    "operator.podAnnotations",
    "optimizer.resources",
    "serviceMonitor.labels",
}
LIST_ITEMS: dict[str, dict[str, Any]] = {
    "operator.watchNamespaces": {"type": "string", "minLength": 1},
    "operator.tolerations": {"type": "object"},
    "imagePullSecrets": {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string"}},
        "additionalProperties": False,
    },
    "artifactStore.pvc.accessModes": {
        "type": "string",
        "enum": ["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod", "ReadOnlyMany"],
    },
    "networkPolicy.metricsFrom": {"type": "object"},
}
ENUMS: dict[str, list[str]] = {
    "operator.logFormat": ["json", "text"],
    "operator.logLevel": ["DEBUG", "INFO", "WARNING", "ERROR"],
    "operator.image.pullPolicy": ["Always", "IfNotPresent", "Never"],
    "runtime.image.pullPolicy": ["Always", "IfNotPresent", "Never"],
    "optimizer.image.pullPolicy": ["Always", "IfNotPresent", "Never"],
    "artifactStore.type": ["pvc", "s3"],
}
RANGES: dict[str, tuple[int, int]] = {
    "operator.metricsPort": (1024, 65535),
    "optimizer.ttlSecondsAfterFinished": (0, 31_536_000),
}


def _comments(values_text: str) -> dict[str, str]:
    """Map dotted key -> the `# --` comment block above it."""
    docs: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] = []
    for line in values_text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = [stripped[4:].strip()]
            continue
        if stripped.startswith("#") and pending:
            pending.append(stripped[1:].strip())
            continue
        if not stripped or stripped.startswith("#") or stripped.startswith("- "):
            continue
        indent = len(line) - len(line.lstrip())
        key = stripped.split(":", 1)[0]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        if pending:
            docs[".".join(k for _, k in stack)] = " ".join(pending)
            pending = []
    return docs


def _schema(value: Any, path: str, docs: dict[str, str]) -> dict[str, Any]:
    node: dict[str, Any]
    if path in FREE_FORM:
        node = {"type": "object"}
    elif isinstance(value, bool):
        node = {"type": "boolean"}
    elif isinstance(value, int):
        node = {"type": "integer"}
        if path in RANGES:
            node["minimum"], node["maximum"] = RANGES[path]
    elif isinstance(value, str):
        node = {"type": "string"}
    elif isinstance(value, list):
        node = {"type": "array", "items": LIST_ITEMS.get(path, {"type": "string"})}
    elif isinstance(value, dict):
        node = {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                key: _schema(child, f"{path}.{key}" if path else key, docs) for key, child in value.items()
            },
        }
    else:
        raise TypeError(f"values.yaml key {path!r}: unsupported default {value!r}")
    if path in ENUMS:
        node["enum"] = ENUMS[path]
    if path in docs:
        node["description"] = docs[path]
    return node


def _leaves(value: Any, path: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict) and value and path not in FREE_FORM:
        rows: list[tuple[str, Any]] = []
        for key, child in value.items():
            rows += _leaves(child, f"{path}.{key}" if path else key)
        return rows
    return [(path, value)]


def generate() -> dict[str, str]:
    values_text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(values_text)
    docs = _comments(values_text)
    missing = [path for path, _ in _leaves(values) if path not in docs]
    if missing:
        raise ValueError(f"values.yaml keys without a `# --` description: {', '.join(missing)}")
    schema = {"$schema": "http://json-schema.org/draft-07/schema#", **_schema(values, "", docs)}
    files = {"charts/ferry/values.schema.json": json.dumps(schema, indent=2) + "\n"}

    rows = ["| key | default | description |", "|---|---|---|"]
    for path, default in _leaves(values):
        rendered = json.dumps(default).replace("|", "\\|")
        rows.append(f"| `{path}` | `{rendered}` | {docs[path]} |")
    readme_path = CHART / "README.md"
    readme = readme_path.read_text() if readme_path.exists() else "# Ferry Helm chart\n"
    start, end = "<!-- values:start -->", "<!-- values:end -->"
    head = readme.split(start, 1)[0]
    tail = readme.split(end, 1)[1] if end in readme else "\n"
    files["charts/ferry/README.md"] = f"{head}{start}\n" + "\n".join(rows) + f"\n{end}{tail}"

    for crd in sorted((ROOT / "crds").glob("*.yaml")):
        body = crd.read_text()
        manifest = yaml.safe_load(body)
        manifest["metadata"].setdefault("annotations", {})["helm.sh/resource-policy"] = "KEEP_PLACEHOLDER"
        rendered = yaml.safe_dump(manifest, sort_keys=False, width=110)
        rendered = rendered.replace(
            "helm.sh/resource-policy: KEEP_PLACEHOLDER",
            "{{- if .Values.crds.keep }}\n    helm.sh/resource-policy: keep\n    {{- end }}",
        )
        files[f"charts/ferry/templates/crds/{crd.name}"] = (
            f"# Generated from crds/{crd.name} by scripts/chartgen.py; do not edit.\n"
            "{{- if .Values.crds.enabled }}\n" + rendered + "{{- end }}\n"
        )
    return files
