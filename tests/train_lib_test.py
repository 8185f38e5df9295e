import dataclasses
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import aftt_tf.runtimes.layers  # noqa: F401  (registers serializable objects)
from aftt_tf import io_utils
from aftt_tf.training import phases, train_lib, trainers
from aftt_tf.training.config import TrainConfig
from tests.conftest import requires_fashion_mnist

TINY = dict(
    architecture="fmnist_mlp",
    train_examples=512,
    test_examples=256,
    batch_size=64,
    pretrain_epochs=2,
    finetune_epochs=2,
    seed=3,
)


@requires_fashion_mnist
def test_run_directory_contents_and_keras_round_trip(tmp_path):
    config = TrainConfig(method="aftt", **TINY)
    metrics = train_lib.train_and_evaluate(config, tmp_path / "run")
    run = tmp_path / "run"
    for name in ("config.json", "flags.txt", "metrics.json", "classifier.keras", "manifest.json"):
        assert (run / name).exists(), name
    assert (run / "tensorboard" / "pretrain").is_dir()
    assert TrainConfig.from_dict(json.loads((run / "config.json").read_text())) == config
    assert metrics["generalization_error"] == pytest.approx(
        metrics["train_accuracy"] - metrics["test_accuracy"]
    )
    assert len(metrics["history"]["pretrain"]) == 2
    assert {
        "reconstruction_loss",
        "discriminator_gain",
        "extractor_adversarial_loss",
        "discriminator_accuracy_real",
        "discriminator_accuracy_fake",
    } <= set(metrics["history"]["pretrain"][0])
    assert metrics["complexity"]["classifier"]["parameters"] == 1719818
    manifest = io_utils.read_json(run / "manifest.json")
    assert manifest["artifacts"]["classifier.keras"]["sha256"] == io_utils.sha256_file(
        run / "classifier.keras"
    )

    classifier = keras.saving.load_model(run / "classifier.keras")
    images = np.random.default_rng(0).uniform(size=(32, 28, 28, 1)).astype("float32")
    reloaded = keras.saving.load_model(run / "classifier.keras")
    np.testing.assert_array_equal(
        classifier.predict(images, verbose=0), reloaded.predict(images, verbose=0)
    )
    # The saved classifier reproduces the test accuracy in metrics.json.
    splits = train_lib.load_config_splits(config)
    predictions = classifier.predict(splits.test_images.astype("float32") / 255, verbose=0)
    accuracy = float(np.mean(predictions.argmax(-1) == splits.test_labels))
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-6)


class _Interrupt(Exception):
    pass


@requires_fashion_mnist
def test_resume_after_interruption_continues_and_matches(tmp_path, monkeypatch):
    config = TrainConfig(method="aftt", **TINY)
    reference = train_lib.train_and_evaluate(config, tmp_path / "reference")

    # Interrupt right after the first fine-tuning epoch's checkpoint was written.
    original = phases._EpochCallback.on_epoch_end

    def interrupting(self, epoch, logs=None):
        original(self, epoch, logs)
        if self.phase_state.directory.name == "finetune" and epoch == 0:
            raise _Interrupt()

    monkeypatch.setattr(phases._EpochCallback, "on_epoch_end", interrupting)
    with pytest.raises(_Interrupt):
        train_lib.train_and_evaluate(config, tmp_path / "resumed")
    monkeypatch.setattr(phases._EpochCallback, "on_epoch_end", original)
    state = io_utils.read_json(tmp_path / "resumed" / "checkpoints" / "finetune" / "state.json")
    assert state["epochs_completed"] == 1
    assert not (tmp_path / "resumed" / "metrics.json").exists()

    fitted_epochs = []
    original_fit = keras.Model.fit

    def recording_fit(self, *args, **kwargs):
        fitted_epochs.append((type(self).__name__, kwargs["initial_epoch"], kwargs["epochs"]))
        return original_fit(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", recording_fit)
    resumed = train_lib.train_and_evaluate(config, tmp_path / "resumed")
    # No pre-training again; fine-tuning continues at epoch 1 of 2.
    assert fitted_epochs == [("ClassifierTrainer", 1, 2)]
    assert [row["epoch"] for row in resumed["history"]["finetune"]] == [1, 2]
    # Same seed, same data order per epoch, restored optimizer state: same result.
    assert resumed["test_accuracy"] == pytest.approx(reference["test_accuracy"], abs=1e-6)
    assert resumed["train_accuracy"] == pytest.approx(reference["train_accuracy"], abs=1e-6)


@requires_fashion_mnist
def test_completed_run_is_reused_and_other_config_refused(tmp_path):
    config = TrainConfig(method="none", **{**TINY, "finetune_epochs": 1})
    first = train_lib.train_and_evaluate(config, tmp_path / "run")
    again = train_lib.train_and_evaluate(config, tmp_path / "run")
    assert again == first
    other = dataclasses.replace(config, learning_rate=0.01)
    with pytest.raises(train_lib.RunDirectoryError, match=r"learning_rate: 0.001 -> 0.01"):
        train_lib.train_and_evaluate(other, tmp_path / "run")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("keep me")
    with pytest.raises(train_lib.RunDirectoryError, match="not an aftt-train run directory"):
        train_lib.train_and_evaluate(config, tmp_path / "foreign")
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "keep me"


@requires_fashion_mnist
def test_lambda_grid_selects_best_validation_accuracy(tmp_path):
    config = TrainConfig(method="l2", reg_lambda_grid=(0.0, 1.0), **{**TINY, "finetune_epochs": 2})
    metrics = train_lib.train_and_evaluate(config, tmp_path / "grid")
    sweep = metrics["lambda_sweep"]
    assert [row["reg_lambda"] for row in sweep] == [0.0, 1.0]
    best = max(sweep, key=lambda row: row["validation_accuracy"])
    assert metrics["reg_lambda"] == best["reg_lambda"]
    # lambda = 1 on sum w^2 crushes the weights: it must lose.
    assert best["reg_lambda"] == 0.0
    assert (tmp_path / "grid" / "lambda_1" / "classifier.keras").exists()
    assert io_utils.sha256_file(tmp_path / "grid" / "classifier.keras") == io_utils.sha256_file(
        tmp_path / "grid" / "lambda_0" / "classifier.keras"
    )


def diverging_phase(workdir, finite_epochs: int = 1):
    """A 3-epoch fine-tuning phase whose losses turn NaN after `finite_epochs` epochs."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    classifier = keras.Model(inputs, keras.layers.Dense(10, name="logits")(inputs))
    trainer = trainers.ClassifierTrainer(classifier)
    optimizer = keras.optimizers.SGD(0.1)
    trainer.compile(optimizer=optimizer)
    variables = classifier.variables + phases.optimizer_variables(
        {"o": optimizer}, {"o": trainer.trainable_variables_list()}
    )

    def make_dataset(first, last):
        def epoch(index):
            images = tf.where(index >= finite_epochs, np.nan, 1.0) * tf.ones((8, 4))
            return tf.data.Dataset.from_tensors((images, tf.zeros((8,), tf.int32)))

        return tf.data.Dataset.range(first, last).flat_map(epoch), 1

    return lambda: phases.run_phase("finetune", trainer, variables, make_dataset, 3, workdir)


def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path):
    # Epoch 0 is finite, epoch 1 holds a NaN.
    with pytest.raises(
        train_lib.TrainingDivergedError, match="NaN or infinite in epoch 2.*epoch 1"
    ):
        diverging_phase(tmp_path, finite_epochs=1)()
    state = io_utils.read_json(tmp_path / "checkpoints" / "finetune" / "state.json")
    assert state["epochs_completed"] == 1
    with np.load(tmp_path / "checkpoints" / "finetune" / "variables.npz") as arrays:
        assert all(np.isfinite(arrays[name]).all() for name in arrays.files)
