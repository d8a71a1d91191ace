"""The ONNX steps that finish each lineage, in order: ONNX Runtime's transformer fusions (for a
transformer encoder at graph level extended or all, so quantization sees fused attention), quantize, then
the offline graph optimization. A lineage's final model is a requested candidate."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ferry_optimizer import onnxtools
from ferry_optimizer.context import Lineage, StepContext
from ferry_optimizer.errors import StepError
from ferry_optimizer.report import Candidate, Report, Step

FP16_NOTE = (
    "fp16 halves the weights; it speeds up GPUs with fp16 units, not CPUs (ONNX Runtime inserts casts)"
)
# Graph levels that include ONNX Runtime's own fusions; the transformer fusions run at the same levels.
FUSION_LEVELS = ("extended", "all")
FUSION_NOTE = (
    "the graph is a transformer encoder: ONNX Runtime's transformer fusions (attention, layer norms, GELU, "
    "embeddings) ran before the other steps, because graph level extended or all asks for fusions"
)
STATIC_FUSION_NOTE = (
    "the graph is a transformer encoder, but its fusions were skipped: static (QDQ) quantization needs "
    "standard ONNX ops around every MatMul"
)
ALL_LEVEL_NOTE = (
    "graph level all includes layout optimizations for this machine's CPU: the optimized file may be slower "
    "or fail to load on a different CPU; use extended for portable artifacts"
)


class OnnxSteps:
    """Applies the requested ONNX steps to the lineages of one run."""

    def __init__(self, context: StepContext) -> None:
        self.context = context

    def finish(self, lineage: Lineage, report: Report) -> Candidate | None:
        """Apply the requested ONNX steps to a lineage; its final model is a requested candidate."""
        name = {"original": "optimized", "pruned": "pruned", "student": "student"}[lineage.name]
        current = lineage.onnx
        steps = list(lineage.steps)
        if lineage.error is not None:
            return Candidate(
                name, lineage.name, steps, None, requested=True, reason=f"failed: {lineage.error}"
            )
        spec = self.context.spec
        planned: list[tuple[str, str]] = [("quantize", spec.quantize), ("graph", spec.graph)]
        fusion = self._transformer_fusion(current, report)
        if fusion is not None:
            planned.insert(0, ("fuse", fusion))
            self.context.progress.add(1)
        for kind, detail in planned:
            if detail in {"none", "disabled"}:
                continue
            target = self.context.work / f"{lineage.name}-{len(steps)}-{kind}.onnx"
            started = time.perf_counter()
            before = self.context.evaluation.measure(current)
            with self.context.progress.step(f"{lineage.name}: {kind} {detail}"):
                try:
                    details = self._onnx_step(kind, detail, current, target)
                    after = self.context.evaluation.measure(target)
                except StepError as failure:
                    # The fusion is an automatic step, not a requested one: the lineage goes on unfused.
                    automatic = kind == "fuse"
                    report.steps.append(
                        Step(
                            lineage.name,
                            kind,
                            detail,
                            before,
                            None,
                            time.perf_counter() - started,
                            notes=["continued without the transformer fusions"] if automatic else [],
                            error=failure.message,
                        )
                    )
                    if automatic:
                        continue
                    return Candidate(
                        name,
                        lineage.name,
                        [*steps, f"{kind}:{detail}"],
                        None,
                        requested=True,
                        reason=f"failed: {failure.message}",
                    )
            notes = [FP16_NOTE] if detail == "fp16" else ([ALL_LEVEL_NOTE] if detail == "all" else [])
            if kind == "fuse":
                notes = [FUSION_NOTE]
            report.steps.append(
                Step(lineage.name, kind, detail, before, after, time.perf_counter() - started, notes, details)
            )
            steps.append(f"{kind}:{detail}")
            current = target
        if current == lineage.onnx and lineage.name == "original":
            # No ONNX step requested: the original lineage adds nothing beyond the baseline.
            return None
        lineage.onnx = current
        return Candidate(name, lineage.name, steps, self.context.evaluation.measure(current), requested=True)

    def _transformer_fusion(self, model: Path, report: Report) -> str | None:
        """The transformer type to fuse for, when the graph step asks for fusions and the model is one."""
        if self.context.spec.graph not in FUSION_LEVELS:
            return None
        model_type = onnxtools.transformer_type(model)
        if model_type is not None and self.context.spec.quantize == "static":
            report.notes.append(STATIC_FUSION_NOTE)
            return None
        return model_type

    def _onnx_step(self, kind: str, detail: str, source: Path, target: Path) -> dict[str, Any]:
        """Run one ONNX step from source to target; returns the step's details for the report."""
        if kind == "fuse":
            fused = onnxtools.fuse_transformer(source, target, detail)
            return {"modelType": detail, "fusedOperators": fused}
        if kind == "graph":
            onnxtools.optimize_graph(source, target, detail)
        elif detail == "dynamic":
            onnxtools.quantize_dynamic(source, target)
        elif detail == "static":
            onnxtools.quantize_static(source, target, self.context.evaluation.train.inputs, batch=32)
        else:
            onnxtools.convert_fp16(source, target)
        return {}
