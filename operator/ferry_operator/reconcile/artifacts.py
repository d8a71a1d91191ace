"""Which artifact the serving pods run: the seam between serving and optimization.

The reconcile asks a resolver for the artifact of a ModelDeployment. Without optimization the source
model is served as it is when it is ONNX; the optimization integration provides a resolver that runs the
optimization Job, reports the Optimized condition and status.optimization, and returns the optimized
artifact once it passed the accuracy gate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol

from ferry_operator.api import models
from ferry_operator.builders.inputs import ServedArtifact
from ferry_operator.reconcile.conditions import ArtifactResolution, Verdict
from ferry_operator.reconcile.observe import ModelDeploymentSnapshot


@dataclasses.dataclass(frozen=True)
class Resolution:
    # What to serve; None while there is nothing servable (the current serving children are kept).
    artifact: ServedArtifact | None
    # The ModelResolved view of it.
    resolution: ArtifactResolution
    # The Optimized condition, when the resolver optimizes (None: the condition is not reported).
    optimized: Verdict | None = None
    # Status fields the resolver owns (status.optimization).
    status: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class ArtifactResolver(Protocol):
    async def resolve(self, md: ModelDeploymentSnapshot, spec: models.ModelDeploymentSpec) -> Resolution: ...

    def forget(self, uid: str) -> None:
        """Release what is kept for the ModelDeployment with `uid`: it is gone."""


SERVED_AS_IS = ("onnx", "onnx-genai")


class ServeAsIs:
    """Serve spec.model unchanged: ONNX models (tensor models, and onnxruntime-genai folders) only."""

    def forget(self, uid: str) -> None:
        """Nothing is kept per ModelDeployment."""

    async def resolve(self, md: ModelDeploymentSnapshot, spec: models.ModelDeploymentSpec) -> Resolution:  # noqa: ARG002
        model = spec.model
        if model.format not in SERVED_AS_IS:
            return Resolution(
                artifact=None,
                resolution=ArtifactResolution(
                    ready=False,
                    status="False",
                    reason="ConversionRequired",
                    message=(
                        f"spec.model.format is {model.format}: the runtime serves ONNX, so the model must be "
                        "converted by an optimization Job, which this operator build does not run; provide "
                        "an ONNX model (format: onnx)"
                    ),
                ),
            )
        return Resolution(
            artifact=ServedArtifact(uri=model.uri, sha256=model.sha256, format=model.format),
            resolution=ArtifactResolution(ready=True, message=f"serving {model.uri} as it is"),
        )
