"""Small campaign directories written by an earlier head, kept in tests/data so that later
code must resume them with zero recomputed cells and recompute every cell to the same
numbers (tests/legacy_campaign_test.py).

    python -m tests.legacy_campaigns tests/data/legacy_campaigns   # Models, data and cells.

Written once with commit 1d2ec9d (the head before fault kinds became objects); do not
rewrite them with today's code, or the test checks nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from aftt_tf.faults.spec import FaultSpec

EXAMPLES = 96
RATES = (0.0, 0.05, 0.2)
TRIALS = 2
# (campaign name, model file, spec): every kind of the earlier head on its runtimes.
CAMPAIGNS = (
    ("keras_weight", "model.keras", FaultSpec(kind="weight", include_bias=True)),
    ("keras_filter", "model.keras", FaultSpec(kind="filter", include_bias=True)),
    ("keras_node", "model.keras", FaultSpec(kind="node")),
    ("keras_stuck_value", "model.keras", FaultSpec(kind="stuck_value")),
    ("keras_bit", "model.keras", FaultSpec(kind="bit", bit_position=-1)),
    ("keras_bit_sampled", "model.keras", FaultSpec(kind="bit", sampling="bernoulli")),
    ("keras_normalization", "model.keras", FaultSpec(kind="bit", include_normalization=True)),
    ("keras_activation_bit", "model.keras", FaultSpec(kind="activation_bit", bit_position=22)),
    (
        "keras_activation_value",
        "model.keras",
        FaultSpec(kind="activation_value", stuck_value=50.0, faults_per_inference=2),
    ),
    ("float32_weight", "model_float32.tflite", FaultSpec(kind="weight")),
    ("float32_node", "model_float32.tflite", FaultSpec(kind="node")),
    ("float32_bit", "model_float32.tflite", FaultSpec(kind="bit")),
    ("float32_activation_bit", "model_float32.tflite", FaultSpec(kind="activation_bit")),
    ("int8_weight", "model_int8.tflite", FaultSpec(kind="weight", include_bias=True)),
    ("int8_filter", "model_int8.tflite", FaultSpec(kind="filter")),
    ("int8_stuck_value", "model_int8.tflite", FaultSpec(kind="stuck_value", stuck_value=0.1)),
    ("int8_bit", "model_int8.tflite", FaultSpec(kind="bit", bit_position=6)),
    (
        "int8_metadata",
        "model_int8.tflite",
        FaultSpec(kind="bit", targets=("scales", "zero_points", "biases")),
    ),
    ("int8_activation_bit", "model_int8.tflite", FaultSpec(kind="activation_bit")),
)


def spec_of(spec: FaultSpec) -> FaultSpec:
    """The campaign's spec with the fixture's rates, trials and seed."""
    import dataclasses

    return dataclasses.replace(spec, rates=RATES, trials=TRIALS, seed=7)


def write_models(root: Path) -> None:
    """A Conv + BatchNorm + Depthwise + Dense classifier on 8x8x2 inputs, labelled by its
    own predictions, saved as .keras, float32 and int8 .tflite, with its data."""
    import keras

    from tests import conversion

    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(6, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="norm")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.DepthwiseConv2D(3, name="depthwise", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(12, activation="relu", name="hidden")(x)
    model = keras.Model(inputs, keras.layers.Dense(4, name="logits")(x))
    norm = model.get_layer("norm")
    rng = np.random.default_rng(3)
    norm.set_weights(
        [
            rng.uniform(0.5, 1.5, 6),
            rng.normal(0, 0.1, 6),
            rng.normal(0, 0.1, 6),
            rng.uniform(0.5, 1.5, 6),
        ]
    )
    images = rng.random((EXAMPLES, 8, 8, 2)).astype(np.float32)
    labels = np.argmax(np.asarray(model(images)), -1)
    root.mkdir(parents=True, exist_ok=True)
    model.save(root / "model.keras")
    np.savez(root / "data.npz", images=images, labels=labels)
    paths = conversion.tflite_files(model, root / "staging", "model", np.tile(images, (2, 1, 1, 1)))
    for mode, path in paths.items():
        path.rename(root / f"model_{mode}.tflite")
    import shutil

    shutil.rmtree(root / "staging")


def data(root: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(root / "data.npz") as arrays:
        return arrays["images"], arrays["labels"]


def run(root: Path, name: str, model_file: str, spec: FaultSpec, out: Path):
    """The campaign `name` on the fixture's model file, written (or resumed) in `out`."""
    from aftt_tf.campaigns import evaluate

    return evaluate(
        {name: str(root / model_file)},
        spec_of(spec),
        data(root),
        out_dir=out,
        transform="raw",
        batch_size=48,
        allow_chance_accuracy=True,
    )


def main(root: str) -> None:
    root = Path(root)
    write_models(root)
    for name, model_file, spec in CAMPAIGNS:
        run(root, name, model_file, spec, root / "campaigns" / name)
        print(name, "written")


if __name__ == "__main__":
    main(sys.argv[1])
