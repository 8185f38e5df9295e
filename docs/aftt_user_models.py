"""docs/results.md "aftt on users' models": what the two games cost a user's model in
clean accuracy, against plain fine-tuning of the same supervised length.

Four small user networks on Fashion-MNIST (a Conv+BatchNorm+Depthwise CNN, a nested
backbone ending in global pooling, a GRU over image rows, a one-block patch
transformer), each trained plainly first (the base), then hardened from that base with
`none` (fine-tuning, --epochs) and `aftt` (--pretrain_epochs of the games, then the same
fine-tuning), seed 0. Run it with the code to measure on the import path:

    .venv/bin/python docs/aftt_user_models.py --out results/aftt_user_models/new
    PYTHONPATH=OLD_CHECKOUT .venv/bin/python docs/aftt_user_models.py --out .../old

and compare the results.json files. With --campaign, the hardened `none` and `aftt` of
each model are also measured in a paired campaign of stuck-at-0 weights at `none`'s
cliff (the rates where it keeps about 90/50/20% of its accuracy above chance), 10
trials on the test images: is the undamaged aftt more tolerant than plain fine-tuning?
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import keras
import numpy as np
from keras import layers as L

from aftt_tf.campaigns import campaign_lib
from aftt_tf.data import datasets
from aftt_tf.data.frontend import DataOptions
from aftt_tf.faults.spec import FaultSpec
from aftt_tf.training import harden


def _cnn_bn() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            L.Conv2D(16, 3, strides=2, use_bias=False, name="conv1"),
            L.BatchNormalization(name="bn1"),
            L.ReLU(name="relu1"),
            L.DepthwiseConv2D(3, name="depthwise"),
            L.BatchNormalization(name="bn2"),
            L.ReLU(name="relu2"),
            L.Flatten(name="flatten"),
            L.Dense(64, activation="relu", name="fc"),
            L.Dense(10, name="logits"),
        ],
        name="cnn_bn",
    )


def _nested() -> keras.Model:
    backbone = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            L.Conv2D(16, 3, strides=2, activation="relu", name="backbone_conv1"),
            L.Conv2D(32, 3, strides=2, activation="relu", name="backbone_conv2"),
        ],
        name="backbone",
    )
    inputs = keras.Input((28, 28, 1))
    x = L.GlobalAveragePooling2D(name="pool")(backbone(inputs))
    x = L.Dense(64, activation="relu", name="head_fc")(x)
    return keras.Model(inputs, L.Dense(10, name="head_logits")(x), name="nested")


def _gru() -> keras.Model:
    inputs = keras.Input((28, 28, 1))
    x = L.Reshape((28, 28), name="rows")(inputs)
    x = L.GRU(64, unroll=True, name="gru")(x)
    return keras.Model(inputs, L.Dense(10, name="logits")(x), name="gru")


def _vit() -> keras.Model:
    inputs = keras.Input((28, 28, 1))
    x = L.Conv2D(32, 7, strides=7, name="patches")(inputs)
    x = L.Reshape((16, 32), name="tokens")(x)
    attended = L.MultiHeadAttention(num_heads=2, key_dim=16, name="attention")(x, x)
    x = L.LayerNormalization(name="norm1")(L.Add(name="residual1")([x, attended]))
    x = L.GlobalAveragePooling1D(name="pool")(x)
    return keras.Model(inputs, L.Dense(10, name="logits")(x), name="vit")


MODELS = {"cnn_bn": _cnn_bn, "nested": _nested, "gru": _gru, "vit": _vit}


def _accuracy(model: keras.Model, split: harden.TrainingData) -> float:
    outputs = model.predict(split.inputs, batch_size=1000, verbose=0)
    return float(np.mean(np.argmax(outputs, -1) == split.labels))


def _campaign(models: dict, test: harden.TrainingData, out: Path) -> dict:
    """Paired stuck-at-0 weight campaign at the first model's cliff: per rate, the
    paired difference none - aftt (accuracy, 95% CI) and each model's accuracy."""
    out.mkdir(parents=True, exist_ok=True)
    for label, model in models.items():
        model.save(out / f"{label}.keras")
    config = campaign_lib.CampaignConfig(
        models=tuple(f"{label}={out / label}.keras" for label in models),
        out=str(out / "campaign"),
        spec=FaultSpec(kind="weight", rates=(0.0,), trials=10, seed=0),
        data_options=DataOptions(input_transform="raw"),
        cliff=True,
    )
    results = campaign_lib.run(
        config, models=models, test_data=(test.inputs, test.labels, {"source": "fashion_mnist"})
    )
    accuracy = {
        label: {row["rate"]: row["mean"] for row in results["summary"][label]["all"]["per_rate"]}
        for label in models
    }
    return {
        "rates": results["rate_choice"]["rates"],
        "accuracy": accuracy,
        "none - aftt": results["paired_differences"]["none - aftt"],
        "tolerance_verdict": results["tolerance_verdict"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--train_examples", type=int, default=10000)
    parser.add_argument("--test_examples", type=int, default=2000)
    parser.add_argument("--base_epochs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--pretrain_epochs", type=int, default=2)
    parser.add_argument("--campaign", action="store_true")
    args = parser.parse_args()
    arrays, _ = datasets.load_arrays("fashion_mnist", source="local")
    (train_x, train_y), (test_x, test_y) = arrays["train"], arrays["test"]
    scale = lambda x: (x.astype(np.float32) / 255.0).reshape(-1, 28, 28, 1)  # noqa: E731
    train = harden.TrainingData(
        scale(train_x[: args.train_examples]), train_y[: args.train_examples]
    )
    test = harden.TrainingData(scale(test_x[: args.test_examples]), test_y[: args.test_examples])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in args.models.split(","):
        keras.utils.set_random_seed(0)
        base = MODELS[name]()
        base.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        base.fit(train.inputs, train.labels, epochs=args.base_epochs, batch_size=128, verbose=0)
        row = {"base": _accuracy(base, test)}
        hardened_models = {}
        for method in ("none", "aftt"):
            config = harden.HardenConfig(
                method=method,
                epochs=args.epochs,
                pretrain_epochs=args.pretrain_epochs,
                batch_size=128,
                seed=0,
            )
            hardened, record = harden.harden(base, config, train)
            hardened_models[method] = hardened
            row[method] = _accuracy(hardened, test)
            if method == "aftt":
                games = record["phases"]["pretrain"]
                row["aftt_record"] = {
                    key: games.get(key)
                    for key in ("split_layer", "prior", "prior_stddev", "latent_moments_before")
                }
                row["batch_normalization"] = record["batch_normalization"]
        row["aftt_minus_none"] = row["aftt"] - row["none"]
        if args.campaign:
            row["campaign"] = _campaign(hardened_models, test, out / f"campaign_{name}")
        results[name] = row
        print(name, json.dumps(row, default=str))
        (out / "results.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
