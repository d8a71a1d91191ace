"""The artifact store: where optimization Jobs write artifact directories and serving pods fetch them from.

One home for its location and S3 credentials, so the optimization Job (which writes) and the serving
pod's fetch containers (which read) get the same environment.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import urlsplit

# The file ferry-optimize writes beside model.onnx when data was given: the drift reference statistics the
# runtime reads from its model directory (ferry_runtime.drift.REFERENCE_FILE).
DRIFT_REFERENCE_FILE = "reference.json"
MODEL_FILE = "model.onnx"
# The folder ferry-optimize writes a model with external data and every generative model into
# (OUTPUT/model/).
MODEL_FOLDER = "model/"
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


@dataclasses.dataclass(frozen=True)
class ArtifactStore:
    # pvc://CLAIM/[PREFIX/] or s3://BUCKET/[PREFIX/]; empty: no store configured.
    uri: str = ""
    s3_endpoint: str = ""
    s3_region: str = ""
    # Secret (in the ModelDeployment's namespace) with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY of the store.
    credentials_secret: str = ""

    def holds(self, uri: str) -> bool:
        """Whether URI names something inside the store (an optimized artifact)."""
        if not self.uri:
            return False
        root = self.uri if self.uri.endswith("/") else self.uri + "/"
        return uri.startswith(root)

    def s3_environment(self) -> list[dict[str, Any]]:
        """The AWS_* variables ferry-fetch and ferry-optimize read; none unless the store is S3."""
        if urlsplit(self.uri).scheme != "s3":
            return []
        env: list[dict[str, Any]] = []
        if self.s3_endpoint:
            env.append({"name": "AWS_ENDPOINT_URL", "value": self.s3_endpoint})
        if self.s3_region:
            env.append({"name": "AWS_REGION", "value": self.s3_region})
        if self.credentials_secret:
            env += [
                {"name": name, "valueFrom": {"secretKeyRef": {"name": self.credentials_secret, "key": name}}}
                for name in S3_KEYS
            ]
        return env

    def drift_reference(self, artifact_uri: str) -> str | None:
        """The reference.json beside an optimized model.onnx (or beside the model/ folder of one with
        external data) in the store; None for any other artifact."""
        if not self.holds(artifact_uri):
            return None
        for suffix in (MODEL_FILE, MODEL_FOLDER):
            if artifact_uri.endswith("/" + suffix):
                return artifact_uri.removesuffix(suffix) + DRIFT_REFERENCE_FILE
        return None
