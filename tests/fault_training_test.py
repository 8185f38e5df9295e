"""Fault-aware training draws its faults through the same kind objects the campaigns use
(`kinds.FaultKind.training_value`): int8 codes as the converter stores them, bits flipped
at the per-bit rate, straight-through gradients (random bit error training)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from aftt_tf.faults import int8_storage, kinds
from aftt_tf.runtimes import layers as fault_layers
from aftt_tf.training import harden, trainers
from tests import tiny_models


def _kernel(shape=(3, 3, 4, 16), seed=0):
    return tf.Variable(np.random.default_rng(seed).normal(0, 0.1, shape).astype(np.float32))


@pytest.mark.parametrize("shape, axis", [((3, 3, 4, 16), 3), ((3, 3, 6, 1), 2), ((20, 7), None)])
def test_training_codes_are_the_campaigns_codes(shape, axis):
    kernel = _kernel(shape)
    codes, scales = int8_storage.tensor_codes(kernel, axis)
    stored = int8_storage.quantize(kernel.numpy(), axis)
    np.testing.assert_array_equal(codes.numpy().reshape(-1), stored.values)
    np.testing.assert_allclose((codes * scales).numpy(), stored.kernel(), rtol=1e-6)


def test_bit_error_training_flips_the_rate_of_the_code_bits_with_straight_through_gradients():
    kernel = _kernel((64, 64))
    step = kinds.TrainingStep(filter_axis=None, storage="int8")
    bit_error = kinds.get("bit_error")
    with tf.GradientTape() as tape:
        faulty = bit_error.training_value(kernel, 0.01, tf.constant([3, 4], tf.int64), step)
        loss = tf.reduce_sum(faulty * 2.0)
    codes, scales = int8_storage.tensor_codes(kernel, None)
    faulty_codes = np.round(faulty.numpy() / scales.numpy()).astype(np.int64)
    flipped = np.unpackbits(
        ((faulty_codes & 0xFF) ^ (codes.numpy().astype(np.int64) & 0xFF)).astype(np.uint8)
    )
    bits = 64 * 64 * 8
    assert abs(flipped.sum() - 0.01 * bits) < 4 * np.sqrt(0.01 * bits)  # Binomial.
    np.testing.assert_array_equal(tape.gradient(loss, kernel).numpy(), 2.0)  # Straight through.
    clean = bit_error.training_value(kernel, 0.0, tf.constant([3, 4], tf.int64), step)
    np.testing.assert_allclose(clean.numpy(), (codes * scales).numpy())


def test_stuck_at_zero_training_is_unchanged_in_float32():
    """The kinds reproduce the former trainer's draw exactly: the same keep mask."""
    kernel = _kernel((8, 8))
    seed = tf.constant([7, 2], tf.int64)
    value = kinds.get("weight").training_value(kernel, 0.3, seed, kinds.TrainingStep())
    keep = tf.cast(tf.random.stateless_uniform(kernel.shape, seed=seed) >= 0.3, tf.float32)
    np.testing.assert_array_equal(value.numpy(), (kernel * keep).numpy())


def test_filter_training_drops_whole_filters():
    kernel = _kernel((3, 3, 2, 32))
    value = kinds.get("filter").training_value(
        kernel, 0.5, tf.constant([1, 1], tf.int64), kinds.TrainingStep(filter_axis=3)
    )
    dropped = np.all(value.numpy() == 0, axis=(0, 1, 2))
    assert 4 < dropped.sum() < 28
    np.testing.assert_array_equal(value.numpy()[..., ~dropped], kernel.numpy()[..., ~dropped])


@pytest.mark.parametrize(
    "fields",
    [
        {"fault_kinds": ("bit_error", "node"), "fault_max_rate": 0.02, "storage": "int8"},
        {
            "fault_kinds": ("activation_value", "weight"),
            "fault_max_rate": 0.2,
            "fault_value": 100.0,
        },
    ],
)
def test_harden_trains_against_mixtures_of_kinds(fields):
    """Bit errors in int8 codes with node faults; transient value faults with weight faults."""
    model = tiny_models.dense_classifier(features=6, hidden=32, classes=3)
    images, labels = tiny_models.own_labels(model, 512)
    config = harden.HardenConfig(method="fat", epochs=1, batch_size=64, **fields)
    hardened, record = harden.harden(model, config, harden.TrainingData(images, labels))
    assert all(np.isfinite(epoch["loss"]) for epoch in record["phases"]["finetune"]["history"])
    before = model.get_layer("hidden").kernel.numpy()
    assert not np.array_equal(hardened.get_layer("hidden").kernel.numpy(), before)
    assert [layer.name for layer in hardened.layers] == [layer.name for layer in model.layers]


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"fault_kinds": ("bit_error",)}, "pass --storage=int8"),
        ({"fault_kinds": ("bit",), "fault_max_rate": 0.02}, "pass --storage=int8"),
        ({"fault_kinds": ("bit_error",), "storage": "int8"}, "fault_aware_max_rate <= 0.1"),
        ({"fault_kinds": ("node",), "storage": "int8"}, "nothing would be quantised"),
        ({"fault_kinds": ("activation_bit",)}, "use --method=range_fat"),
        ({"fault_kinds": ("weight", "weight")}, "distinct"),
        (
            {"method": "none", "storage": "int8"},
            "--storage is not read by --method=none: it is for --method=fat or aftt_fat",
        ),
    ],
)
def test_what_fault_aware_training_cannot_draw_is_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        harden.HardenConfig(**{"method": "fat", **fields}).validate()


def test_the_trainer_is_a_wrapper_for_a_users_own_fit():
    """From Python: the trainer wraps any Functional model for the user's own `fit`."""
    model = tiny_models.dense_classifier(features=6, hidden=16, classes=3)
    images, labels = tiny_models.own_labels(model, 256)
    trainer = trainers.ClassifierTrainer(
        model,
        loss="crossentropy",
        fault_aware_kinds=("bit_error",),
        fault_aware_max_rate=0.02,
        fault_storage="int8",
    )
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(32)
    seen = []
    history = trainer.fit(
        dataset,
        epochs=2,
        verbose=0,
        callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: seen.append(e))],
    )
    assert seen == [0, 1] and np.isfinite(history.history["loss"]).all()


@pytest.mark.parametrize("kind", ["weight", "filter", "stuck_value", "bit", "bit_error"])
def test_every_kind_keeps_what_a_protection_plan_covers(kind):
    """The plan is applied once, for every kind (filter's mask is per filter, bit kinds
    flip codes: they ignored it, or broke on its shape, before)."""
    kernel = _kernel((3, 3, 2, 8))
    guard = tf.constant(
        (np.arange(kernel.shape.num_elements()) % 2).reshape(kernel.shape), tf.float32
    )
    step = kinds.TrainingStep(filter_axis=3, guard=guard, storage="int8")
    faulty = kinds.get(kind).training_faults(kernel, 0.5, tf.constant([2, 9], tf.int64), step)
    clean = step.stored(kernel).numpy()
    covered = guard.numpy() == 1
    np.testing.assert_array_equal(faulty.numpy()[covered], clean[covered])
    assert (faulty.numpy()[~covered] != clean[~covered]).any()


@pytest.mark.parametrize("storage, kind", [("int8", "bit_error"), ("float32", "weight")])
def test_the_clean_loss_is_the_mean_of_the_faulty_and_the_fault_free_pass(storage, kind):
    """--fault_aware_clean_loss: one step's loss is (faulty + fault-free) / 2, both over
    the same stored weights (int8: the quantised codes), as RandBET trains."""
    model = tiny_models.dense_classifier(features=6, hidden=16, classes=3)
    images, labels = tiny_models.own_labels(model, 64)
    trainer = trainers.ClassifierTrainer(
        model,
        loss="crossentropy",
        fault_aware_kinds=(kind,),
        fault_aware_max_rate=0.09,
        fault_storage=storage,
        fault_aware_clean_loss=True,
    )
    trainer.compile(optimizer=keras.optimizers.SGD(0.0))  # Weights stay: the loss is exact.
    step = trainer.optimizer.iterations
    with keras.StatelessScope(state_mapping=trainer.fault_mapping(step)):
        faulty = trainers.classification_loss(labels, model(images), "crossentropy", "logits")
    with keras.StatelessScope(state_mapping=trainer.clean_mapping()):
        clean = trainers.classification_loss(labels, model(images), "crossentropy", "logits")
    plain = trainers.classification_loss(labels, model(images), "crossentropy", "logits")
    logs = trainer.train_step((tf.constant(images), tf.constant(labels)))
    expected = 0.5 * (float(faulty) + float(clean))
    np.testing.assert_allclose(float(logs["classification_loss"]), expected, rtol=1e-5)
    assert abs(float(faulty) - float(clean)) > 1e-4  # The step was faulty at all.
    if storage == "int8":  # The clean pass reads the int8 codes, not the float weights.
        assert float(clean) != float(plain)
    else:
        np.testing.assert_allclose(float(clean), float(plain), rtol=1e-6)


def test_the_clean_loss_needs_fault_aware_training():
    model = tiny_models.dense_classifier(features=6, hidden=16, classes=3)
    with pytest.raises(ValueError, match="give fault_aware_kinds too"):
        trainers.ClassifierTrainer(model, fault_aware_clean_loss=True)
    with pytest.raises(
        ValueError,
        match="--fault_aware_clean_loss is not read by --method=none: it is for --method=fat",
    ):
        harden.HardenConfig(method="none", fault_clean_loss=True).validate()


def test_transient_value_faults_strike_each_inference_anew_in_training():
    """--fault_aware_kinds=activation_value: each step sets a rate of every hidden
    layer's outputs to the value, drawn per inference (rows differ), through the kind."""
    model = tiny_models.dense_classifier(features=6, hidden=64, classes=3)
    images, labels = tiny_models.own_labels(model, 256)
    trainer = trainers.ClassifierTrainer(
        model,
        loss="crossentropy",
        fault_aware_kinds=("activation_value",),
        fault_aware_max_rate=0.5,
        fault_aware_value=50.0,
    )
    (layer,) = trainer.transient_faults
    hidden = keras.Model(trainer.node_view.inputs, trainer.node_view.get_layer(layer.name).output)
    with keras.StatelessScope(state_mapping=trainer.fault_mapping(tf.constant(3, tf.int64))):
        struck = hidden(images).numpy() == 50.0
    assert 0.05 < struck.mean() < 0.5  # The step's rate, uniform in [0, 0.5].
    assert len({row.tobytes() for row in struck[:20]}) == 20  # Drawn anew per inference.
    with keras.StatelessScope(state_mapping=trainer.clean_mapping()):
        assert not (hidden(images).numpy() == 50.0).any()
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = trainer.fit(images, labels, batch_size=64, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


def test_transient_training_needs_its_value():
    model = tiny_models.dense_classifier(features=6, hidden=16, classes=3)
    with pytest.raises(ValueError, match="give fault_aware_value"):
        trainers.ClassifierTrainer(
            model, fault_aware_kinds=("activation_value",), fault_aware_max_rate=0.1
        )
    with pytest.raises(ValueError, match="give --fault_aware_value"):
        harden.HardenConfig(method="fat", fault_kinds=("activation_value",)).validate()
    config = harden.HardenConfig(
        method="fat", epochs=1, fault_kinds=("activation_value", "weight"), fault_value=1e3
    )
    config.validate()
    assert config.as_dict()["fault_value"] == 1e3


def test_options_a_method_does_not_read_are_refused_alone_and_dropped_in_a_comparison():
    """Fault-aware and games' options given to a method that ignores them are an error
    (never silently dropped); a comparison shares one config among its methods, so each
    run gets the options its method reads, and an option no method reads is an error."""
    from aftt_tf.data.frontend import DataOptions
    from aftt_tf.reproduce.user_comparison import ComparisonConfig

    with pytest.raises(ValueError, match="--prior is not read by --method=fat: it is for"):
        harden.HardenConfig(method="fat", prior="gaussian").validate()
    with pytest.raises(ValueError, match="add activation_value to --fault_aware_kinds"):
        harden.HardenConfig(method="fat", fault_value=1e3).validate()
    shared = harden.HardenConfig(
        method="none", storage="int8", fault_kinds=("bit_error",), fault_max_rate=0.02
    )
    assert shared.for_method("none").storage == "float32"
    assert shared.for_method("fat").storage == "int8"
    options = DataOptions(data="fashion_mnist")
    ComparisonConfig("m.keras", "out", ("none", "fat"), shared, options).validate()
    with pytest.raises(ValueError, match="--storage is read by none of --methods=none,range"):
        ComparisonConfig("m.keras", "out", ("none", "range"), shared, options).validate()


def test_activation_bit_training_flips_one_bit_of_each_struck_float32_output():
    """The kind's training faults: one bit of the float32 word flipped per struck
    output (a NaN trained as an infinity of its sign), nothing else changed, gradients
    only through the unstruck outputs."""
    kind = kinds.get("activation_bit")
    values = np.random.default_rng(0).uniform(-3, 3, (256, 64)).astype(np.float32)
    values[:, 0] = 1.5  # In [1, 2): flipping exponent bit 30 makes a NaN.
    inputs = tf.constant(values)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        faulty = kind.training_outputs(inputs, tf.constant(0.25), tf.constant([4, 2], tf.int64), 0)
        total = tf.reduce_sum(tf.where(tf.math.is_finite(faulty), faulty, 0.0))
    gradient = tape.gradient(total, inputs).numpy()
    faulty = faulty.numpy()
    struck = faulty.view(np.int32) != values.view(np.int32)
    assert 0.22 < struck.mean() < 0.28
    assert not np.isnan(faulty).any()
    finite = struck & np.isfinite(faulty)
    changed = (faulty.view(np.uint32) ^ values.view(np.uint32))[finite]
    assert all(bin(int(word)).count("1") == 1 for word in changed)
    infinite = struck & ~np.isfinite(faulty)
    assert infinite.any() and np.all(np.abs(values[infinite]) >= 1)
    np.testing.assert_array_equal(gradient, np.where(struck, 0.0, 1.0))


def test_activation_bit_training_runs_through_the_bounds_of_range_fat():
    """--method=range_fat: bounds after every layer, then fault-aware training against
    transient bit flips in their outputs; the loss stays finite and the clips stay."""
    model = tiny_models.dense_classifier(features=6, hidden=32, classes=3)
    images, labels = tiny_models.own_labels(model, 512)
    config = harden.HardenConfig(
        method="range_fat",
        epochs=2,
        batch_size=64,
        fault_kinds=("activation_bit", "weight"),
        fault_max_rate=0.2,
        range_examples=512,
    )
    config.validate()
    hardened, record = harden.harden(model, config, harden.TrainingData(images, labels))
    history = record["phases"]["finetune"]["history"]
    assert len(history) == 2 and all(np.isfinite(epoch["loss"]) for epoch in history)
    assert "hidden" in record["bounds"]
    assert any(isinstance(layer, fault_layers.ActivationClip) for layer in hardened.layers)
    assert not np.array_equal(
        hardened.get_layer("hidden").kernel.numpy(), model.get_layer("hidden").kernel.numpy()
    )


def test_activation_bit_training_is_refused_where_an_output_is_not_bounded():
    model = tiny_models.dense_classifier(features=6, hidden=16, classes=3)
    with pytest.raises(ValueError, match=r"outputs of \['hidden'\] reach the next layer unbounded"):
        trainers.ClassifierTrainer(
            model, fault_aware_kinds=("activation_bit",), fault_aware_max_rate=0.1
        )
    with pytest.raises(ValueError, match="use --method=range_fat"):
        harden.HardenConfig(method="aftt_fat", fault_kinds=("activation_bit",)).validate()


def test_training_faults_sit_where_campaigns_put_each_kind():
    """Node masks right after the convolution (0 passes a ReLU unchanged), transient
    faults past the ReLU layer that alone reads it (converters fuse it: the stored value
    is the activated one), as `targets.output_point` places them for campaigns."""
    from aftt_tf.runtimes import targets

    inputs = keras.Input((8, 8, 1))
    hidden = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    hidden = keras.layers.ReLU(name="relu")(hidden)
    outputs = keras.layers.Dense(3, name="out")(keras.layers.Flatten(name="flat")(hidden))
    model = keras.Model(inputs, outputs)
    trainer = trainers.ClassifierTrainer(
        model,
        fault_aware_kinds=("node", "activation_value"),
        fault_aware_max_rate=0.1,
        fault_aware_value=5.0,
    )
    names = [layer.name for layer in trainer.node_view.layers]
    assert names.index("conv_training_fault") == names.index("conv") + 1
    assert names.index("conv_training_activation_value") == names.index("relu") + 1
    for kind, point in (("node", "conv"), ("activation_value", "relu")):
        assert targets.output_point(model, "conv", kinds.get(kind)) == point


def test_range_fat_bounds_every_output_activation_bit_training_strikes():
    """A linear convolution (the paper's fmnist_cnn has one) has no activation to bound:
    range_fat bounds its output too when training draws activation_bit, and only then."""
    inputs = keras.Input((8, 8, 1))
    hidden = keras.layers.Conv2D(4, 3, activation="relu", name="conv_1")(inputs)
    hidden = keras.layers.Conv2D(4, 3, name="conv_2")(hidden)  # Linear.
    hidden = keras.layers.MaxPooling2D(name="pool")(hidden)
    outputs = keras.layers.Dense(3, name="logits")(keras.layers.Flatten(name="flat")(hidden))
    model = keras.Model(inputs, outputs)
    images = np.random.default_rng(0).random((256, 8, 8, 1)).astype(np.float32)
    labels = np.argmax(np.asarray(model(images)), -1)
    data = harden.TrainingData(images, labels)
    config = harden.HardenConfig(
        method="range_fat",
        epochs=1,
        batch_size=64,
        fault_kinds=("activation_bit",),
        fault_max_rate=0.1,
        range_examples=256,
    )
    hardened, record = harden.harden(model, config, data)
    assert set(record["bounds"]) == {"conv_1", "conv_2"}
    assert np.isfinite(record["phases"]["finetune"]["history"][0]["loss"])
    weights = harden.HardenConfig(**{**config.__dict__, "fault_kinds": ("weight",)})
    _, record = harden.harden(model, weights, data)
    assert set(record["bounds"]) == {"conv_1"}  # As range: activations only.
