"""The tensor pipeline's outputs: the chosen model, its TFLite exports and the drift reference.

Before anything is written, model files an earlier run left in the output are removed, so a stale model
never passes for this run's verdict. A model with external data (above 2 GiB it must have it) is written
as the folder OUTPUT/model/ (model.onnx and model.onnx.data, nothing else), which is then the artifact:
serving pods fetch the folder and check its manifest digest.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ferry_optimizer import onnxtools, reference
from ferry_optimizer.errors import StepError
from ferry_optimizer.evaluation import Evaluation
from ferry_optimizer.key import file_sha256
from ferry_optimizer.report import Artifact, Measurement, Report, Step
from ferry_runtime import storage

if TYPE_CHECKING:
    from ferry_optimizer.context import Lineage, Progress, Request

MODEL_FILES = ("model.onnx", "model.tflite", "model.int8.tflite")
# The folder of a model with external data, and of every generative model: then the artifact.
MODEL_FOLDER = "model"


class Exporter:
    def __init__(self, request: Request, work: Path, evaluation: Evaluation, progress: Progress) -> None:
        self.output = request.output
        self.source = request.model
        self.format = request.format
        self.export = request.spec.export
        self.work = work
        self.evaluation = evaluation
        self.progress = progress

    def write(self, report: Report, lineages: dict[str, Lineage], baseline_path: Path) -> None:
        """model.onnx (and TFLite exports) of the chosen candidate; nothing when none was chosen."""
        output = self.output
        output.mkdir(parents=True, exist_ok=True)
        # A model left by an earlier run in the same directory must not pass for this run's verdict.
        for stale in (*MODEL_FILES, reference.FILE):
            (output / stale).unlink(missing_ok=True)
        shutil.rmtree(output / MODEL_FOLDER, ignore_errors=True)
        chosen = next((c for c in report.candidates if c.name == report.chosen), None)
        if chosen is None:
            return
        lineage = lineages[chosen.lineage]
        onnx_path = baseline_path if chosen.name == "baseline" else lineage.onnx
        metric = chosen.measurement.metric if chosen.measurement else None
        with self.progress.step("export onnx"):
            if onnxtools.external_files(onnx_path):
                folder = output / MODEL_FOLDER
                folder.mkdir()
                onnxtools.copy_model(onnx_path, folder / "model.onnx")
                report.artifacts.append(self._folder_artifact(folder, metric))
            else:
                shutil.copyfile(onnx_path, output / "model.onnx")
                report.artifacts.append(self._artifact(output / "model.onnx", "onnx", metric))
        for fmt in self.export:
            if fmt == "onnx":
                continue
            with self.progress.step(f"export {fmt}"):
                started = time.perf_counter()
                try:
                    artifact = self._export_tflite(fmt, lineage, output)
                    report.artifacts.append(artifact)
                    report.steps.append(
                        Step(
                            lineage.name,
                            "export",
                            fmt,
                            chosen.measurement,
                            Measurement(artifact.size_bytes, None, None, None, artifact.metric),
                            time.perf_counter() - started,
                        )
                    )
                except StepError as failure:
                    report.steps.append(
                        Step(
                            lineage.name,
                            "export",
                            fmt,
                            chosen.measurement,
                            None,
                            time.perf_counter() - started,
                            error=failure.message,
                        )
                    )
                    report.notes.append(f"export {fmt} failed: {failure.message}")

    def write_reference(self, report: Report) -> None:
        """reference.json beside the chosen model: the data's statistics, for drift monitoring."""
        chosen = next((c for c in report.candidates if c.name == report.chosen), None)
        dataset = self.evaluation.dataset
        if chosen is None or dataset.source != "file":
            return
        accuracy = (
            chosen.measurement.metric
            if self.evaluation.metric_name == "accuracy" and chosen.measurement
            else None
        )
        document = reference.build(self.evaluation.inputs, dataset.inputs, accuracy)
        if document is None:
            report.notes.append(
                "no numeric input to summarize: reference.json (drift statistics) not written"
            )
            return
        path = reference.write(self.output, document)
        report.data["reference"] = {
            "file": path.name,
            "sha256": file_sha256(path),
            "samples": document["samples"],
            "inputs": sorted(document["inputs"]),
        }

    def _export_tflite(self, fmt: str, lineage: Lineage, output: Path) -> Artifact:
        from ferry_optimizer import tfmodels as tfm

        target = output / ("model.tflite" if fmt == "tflite" else "model.int8.tflite")
        if self.format == "tflite":
            shutil.copyfile(self.source, target)
        else:
            if lineage.keras_model is not None:
                saved = self.work / f"{lineage.name}-savedmodel"
                if not saved.exists():
                    tfm.export_saved_model(lineage.keras_model, saved)
            else:
                saved = self.source
            tfm.export_tflite(saved, target, self.evaluation.train.inputs if fmt == "tflite-int8" else None)
        outputs = tfm.predict_tflite(target, self.evaluation.validation.inputs)
        return self._artifact(target, fmt, self.evaluation.score(outputs))

    @staticmethod
    def _artifact(path: Path, fmt: str, metric: float | None) -> Artifact:
        return Artifact(path.name, fmt, file_sha256(path), path.stat().st_size, metric)

    @staticmethod
    def _folder_artifact(folder: Path, metric: float | None) -> Artifact:
        """The model/ folder (its URI ends in "/"), digested as ferry-fetch checks a directory."""
        size = sum(path.stat().st_size for path in folder.iterdir())
        return Artifact(f"{folder.name}/", "onnx", storage.directory_digest(folder), size, metric)
