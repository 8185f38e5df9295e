"""The small classifiers several tests fault: a Dense-ReLU-Dense network whose labels are
its own predictions on uniform inputs (clean accuracy 1, far above chance)."""

from __future__ import annotations

import keras
import numpy as np


def dense_classifier(
    features: int = 6, hidden: int = 8, classes: int = 3, seed: int = 0
) -> keras.Model:
    """Inputs in [0, 1] centred, a wide random hidden layer 'hidden', logits 'out'."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((features,))
    wide = keras.initializers.RandomNormal(stddev=1.0, seed=seed)
    layer = keras.layers.Dense(hidden, activation="relu", kernel_initializer=wide, name="hidden")
    output = keras.layers.Dense(classes, kernel_initializer=wide, name="out")
    return keras.Model(inputs, output(layer(inputs - 0.5)))


def own_labels(model: keras.Model, count: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Uniform inputs and the model's own predictions on them as labels."""
    images = np.random.default_rng(0).random((count, model.input_shape[-1])).astype(np.float32)
    return images, np.argmax(np.asarray(model(images)), -1)
