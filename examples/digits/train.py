"""Train the sample model: a small Keras classifier on scikit-learn's bundled 8x8 digits.

    python examples/digits/train.py OUTPUT_DIR

writes OUTPUT_DIR/model.keras (the model a data scientist would hand over), OUTPUT_DIR/saved_model/ (the
same model as a TensorFlow SavedModel) and OUTPUT_DIR/data.npz (held-out `x` float32 [n, 64] and `y`
labels: Ferry's data format for calibration, fine-tuning and the accuracy gate). The data ships with
scikit-learn, so this runs offline.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    import keras
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    keras.utils.set_random_seed(args.seed)
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int64")
    split = train_test_split(x, y, test_size=0.3, random_state=args.seed, stratify=y)
    x_train, x_test, y_train, y_test = split

    model = keras.Sequential(
        [
            keras.Input(shape=(64,), name="pixels"),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax", name="probabilities"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=32, verbose=0)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)

    args.output.mkdir(parents=True, exist_ok=True)
    model.save(args.output / "model.keras")
    model.export(str(args.output / "saved_model"), verbose=False)
    np.savez(args.output / "data.npz", x=x_test, y=y_test)
    print(f"digits classifier: test accuracy {accuracy:.4f}; wrote {args.output}")


if __name__ == "__main__":
    main()
