import keras
import numpy as np
import pytest
import tensorflow as tf

from aftt_tf.data import datasets as data
from aftt_tf.training import networks, trainers


def _snapshot(model: keras.Model) -> list[np.ndarray]:
    return [np.array(w.numpy()) for w in model.weights]


def _changed(before, model) -> bool:
    return any(not np.array_equal(a, b.numpy()) for a, b in zip(before, model.weights, strict=True))


def _autoencoder(reconstruction_lr, discriminator_lr, adversarial_lr, seed=0):
    keras.utils.set_random_seed(seed)
    nets = networks.build_networks("fmnist_mlp")
    autoencoder = trainers.AdversarialAutoencoder(
        nets.extractor, nets.decoder, nets.discriminator, seed=seed
    )
    autoencoder.compile(
        reconstruction_optimizer=keras.optimizers.SGD(reconstruction_lr),
        discriminator_optimizer=keras.optimizers.SGD(discriminator_lr),
        adversarial_optimizer=keras.optimizers.SGD(adversarial_lr),
    )
    return nets, autoencoder


@pytest.mark.parametrize(
    "learning_rates, expected_to_move",
    [
        ((0.1, 0.0, 0.0), {"extractor", "decoder"}),  # Game 1 only.
        ((0.0, 0.1, 0.0), {"discriminator"}),  # Discriminator step only.
        ((0.0, 0.0, 0.1), {"extractor"}),  # Extractor's adversarial step only.
        ((0.1, 0.1, 0.1), {"extractor", "decoder", "discriminator"}),
    ],
)
def test_each_update_moves_exactly_its_players_variables(learning_rates, expected_to_move):
    # With every other player's learning rate at 0 (plain SGD), the variables that
    # move are exactly those the remaining update touches.
    nets, autoencoder = _autoencoder(*learning_rates)
    images = tf.random.stateless_uniform((16, 28, 28, 1), seed=(1, 2))
    before = {
        name: _snapshot(getattr(nets, name)) for name in ("extractor", "decoder", "discriminator")
    }
    logs = autoencoder.train_step(images)
    moved = {name for name in before if _changed(before[name], getattr(nets, name))}
    assert moved == expected_to_move
    assert set(logs) == {
        "reconstruction_loss",
        "discriminator_gain",
        "extractor_adversarial_loss",
        "discriminator_accuracy_real",
        "discriminator_accuracy_fake",
    }


def test_discriminator_steps_applies_k_updates():
    _, autoencoder = _autoencoder(0.0, 0.01, 0.0)
    autoencoder.discriminator_steps = 3
    autoencoder.train_step(tf.random.stateless_uniform((8, 28, 28, 1), seed=(3, 4)))
    assert int(autoencoder.discriminator_optimizer.iterations.numpy()) == 3
    assert int(autoencoder.adversarial_optimizer.iterations.numpy()) == 1
    assert int(autoencoder.reconstruction_optimizer.iterations.numpy()) == 1


def test_invalid_autoencoder_arguments():
    nets = networks.build_networks("fmnist_mlp")
    with pytest.raises(ValueError, match="prior_stddev must be > 0, received -1"):
        trainers.AdversarialAutoencoder(
            nets.extractor, nets.decoder, nets.discriminator, prior_stddev=-1
        )
    with pytest.raises(ValueError, match="discriminator_steps must be >= 1, received 0"):
        trainers.AdversarialAutoencoder(
            nets.extractor, nets.decoder, nets.discriminator, discriminator_steps=0
        )


def test_reconstruction_loss_falls_on_real_fashion_mnist(fashion_mnist_small):
    keras.utils.set_random_seed(0)
    nets = networks.build_networks("fmnist_mlp")
    autoencoder = trainers.AdversarialAutoencoder(
        nets.extractor, nets.decoder, nets.discriminator, seed=0
    )
    autoencoder.compile(
        reconstruction_optimizer=keras.optimizers.Adam(1e-3),
        discriminator_optimizer=keras.optimizers.Adam(5e-5),
        adversarial_optimizer=keras.optimizers.Adam(5e-5),
    )
    dataset, steps = data.train_dataset(fashion_mnist_small.train_images, None, 64, 0, 0, 3)
    history = autoencoder.fit(dataset, epochs=3, steps_per_epoch=steps, verbose=0).history
    losses = history["reconstruction_loss"]
    assert losses[-1] < 0.6 * losses[0], losses
    assert all(np.isfinite(history["discriminator_gain"]))


def test_finetuning_reaches_sensible_accuracy(fashion_mnist_small):
    keras.utils.set_random_seed(0)
    nets = networks.build_networks("fmnist_mlp")
    trainer = trainers.ClassifierTrainer(nets.classifier, loss="mse")
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    splits = fashion_mnist_small
    dataset, steps = data.train_dataset(splits.train_images, splits.train_labels, 64, 0, 0, 5)
    trainer.fit(dataset, epochs=5, steps_per_epoch=steps, verbose=0)
    results = trainer.evaluate(
        data.eval_dataset(splits.test_images, splits.test_labels), verbose=0, return_dict=True
    )
    # 2k examples, 5 epochs: well above chance (10%); full training reaches ~89%.
    assert results["accuracy"] > 0.72, results


@pytest.mark.parametrize("regularization", ["l1", "l2"])
def test_penalty_adds_exactly_lambda_times_norm(regularization):
    keras.utils.set_random_seed(0)
    nets = networks.build_networks("fmnist_mlp")
    images = tf.random.stateless_uniform((8, 28, 28, 1), seed=(5, 6))
    labels = tf.constant([0, 1, 2, 3, 4, 5, 6, 7])
    plain = trainers.ClassifierTrainer(nets.classifier, loss="mse")
    reg_lambda = 1e-3
    penalised = trainers.ClassifierTrainer(
        nets.classifier, loss="mse", regularization=regularization, reg_lambda=reg_lambda
    )
    logits = nets.classifier(images)
    base, _, zero = plain.total_loss(labels, logits)
    total, data_loss, penalty = penalised.total_loss(labels, logits)
    kernels = [layer.kernel.numpy() for layer in nets.classifier.layers if hasattr(layer, "kernel")]
    assert len(kernels) == 5  # Biases are not penalised.
    norm = sum(np.abs(k).sum() if regularization == "l1" else np.square(k).sum() for k in kernels)
    assert float(zero) == 0.0
    np.testing.assert_allclose(float(data_loss), float(base), rtol=1e-6)
    np.testing.assert_allclose(float(penalty), reg_lambda * norm, rtol=1e-4)
    np.testing.assert_allclose(float(total), float(base) + reg_lambda * norm, rtol=1e-4)


def test_mse_loss_is_paper_equation_15():
    logits = tf.constant([[2.0, 0.0, -1.0]])
    probabilities = np.exp([2.0, 0.0, -1.0]) / np.exp([2.0, 0.0, -1.0]).sum()
    expected = np.sum(np.square(probabilities - np.array([0.0, 1.0, 0.0])))
    np.testing.assert_allclose(
        float(trainers.classification_loss(tf.constant([1]), logits, "mse")), expected, rtol=1e-6
    )


def test_frozen_extractor_is_not_trained():
    keras.utils.set_random_seed(0)
    nets = networks.build_networks("fmnist_mlp")
    frozen = tuple(
        layer.name
        for layer in nets.classifier.layers
        if layer.name not in networks.HEAD_LAYER_NAMES
    )
    trainer = trainers.ClassifierTrainer(nets.classifier, frozen_layer_names=frozen)
    trainer.compile(optimizer=keras.optimizers.SGD(0.5))
    before_extractor, before_head = _snapshot(nets.extractor), _snapshot(nets.head)
    trainer.train_step((tf.random.stateless_uniform((8, 28, 28, 1), seed=(7, 8)), tf.range(8)))
    assert not _changed(before_extractor, nets.extractor)
    assert _changed(before_head, nets.head)


def test_bad_trainer_arguments():
    nets = networks.build_networks("fmnist_mlp")
    with pytest.raises(ValueError, match="loss must be one of mse, crossentropy, received 'hinge'"):
        trainers.ClassifierTrainer(nets.classifier, loss="hinge")
    with pytest.raises(ValueError, match="regularization must be one of none, l1, l2"):
        trainers.ClassifierTrainer(nets.classifier, regularization="dropout")
    with pytest.raises(ValueError, match="reg_lambda must be >= 0, received -0.1"):
        trainers.ClassifierTrainer(nets.classifier, regularization="l2", reg_lambda=-0.1)
