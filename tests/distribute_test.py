"""MirroredStrategy on 2 logical CPUs, in a subprocess (devices must be set before TF starts)."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import numpy as np, tensorflow as tf, keras
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from aftt_tf.training import networks, trainers, train_lib
    strategy = train_lib.make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
    keras.utils.set_random_seed(0)
    with strategy.scope():
        nets = networks.build_networks("fmnist_mlp")
        autoencoder = trainers.AdversarialAutoencoder(
            nets.extractor, nets.decoder, nets.discriminator, seed=0)
        autoencoder.compile(keras.optimizers.Adam(1e-3), keras.optimizers.Adam(5e-5),
                            keras.optimizers.Adam(5e-5))
        classifier = trainers.ClassifierTrainer(nets.classifier)
        classifier.compile(optimizer=keras.optimizers.Adam(1e-3))
    images = np.random.default_rng(0).uniform(size=(64, 28, 28, 1)).astype("float32")
    labels = np.arange(64) % 10
    before = nets.discriminator.weights[0].numpy().copy()
    logs = autoencoder.fit(tf.data.Dataset.from_tensor_slices(images).batch(32), epochs=1, verbose=0)
    assert not np.array_equal(before, nets.discriminator.weights[0].numpy())
    assert all(np.isfinite(v[-1]) for v in logs.history.values())
    logs = classifier.fit(tf.data.Dataset.from_tensor_slices((images, labels)).batch(32), epochs=1, verbose=0)
    assert np.isfinite(logs.history["loss"][-1])
    print("MIRRORED_OK", strategy.num_replicas_in_sync)
    """
)


def test_mirrored_strategy_on_two_logical_cpus():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert "MIRRORED_OK 2" in result.stdout, result.stderr[-4000:]
