"""Quantization-aware training with tensorflow-model-optimization (tf_keras only).

tfmot rejects Keras 3 models, so the deployable network is rebuilt layer by layer in
tf_keras from the Keras 3 model, its weights copied, wrapped with `quantize_model`,
fine-tuned a few epochs and converted to a full-integer TFLite model. This is the
only module that imports tfmot / tf_keras; import it lazily.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np


def _tf_keras_layer(layer: keras.layers.Layer, tf_keras):
    """The tf_keras twin of a Keras 3 layer (the layer types of aftt_tf.training.networks)."""
    layers = tf_keras.layers
    if isinstance(layer, keras.layers.Dense):
        return layers.Dense(
            layer.units,
            activation=keras.activations.serialize(layer.activation),
            use_bias=layer.use_bias,
            name=layer.name,
        )
    if isinstance(layer, keras.layers.Conv2D):
        return layers.Conv2D(
            layer.filters,
            layer.kernel_size,
            strides=layer.strides,
            padding=layer.padding,
            activation=keras.activations.serialize(layer.activation),
            use_bias=layer.use_bias,
            name=layer.name,
        )
    if isinstance(layer, keras.layers.MaxPooling2D):
        return layers.MaxPooling2D(
            layer.pool_size, strides=layer.strides, padding=layer.padding, name=layer.name
        )
    if isinstance(layer, keras.layers.Flatten):
        return layers.Flatten(name=layer.name)
    if isinstance(layer, keras.layers.ReLU):
        return layers.ReLU(name=layer.name)
    if isinstance(layer, keras.layers.LeakyReLU):
        return layers.LeakyReLU(alpha=layer.negative_slope, name=layer.name)
    raise ValueError(
        f"QAT export cannot rebuild layer {layer.name!r} of type {type(layer).__name__} in tf_keras."
    )


def _loss(name: str, tf):
    if name == "crossentropy":
        import tf_keras

        return tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if name == "mse":

        def squared_error_of_softmax(labels, logits):
            one_hot = tf.one_hot(tf.cast(tf.reshape(labels, [-1]), tf.int32), tf.shape(logits)[-1])
            return tf.reduce_sum(tf.square(tf.nn.softmax(logits) - one_hot), axis=-1)

        return squared_error_of_softmax
    raise ValueError(f"Unknown QAT loss {name!r}; expected 'mse' or 'crossentropy'.")


def rebuild_in_tf_keras(model: keras.Model):
    """A tf_keras Sequential twin of a chain-shaped Keras 3 classifier, weights copied."""
    import tf_keras

    twin = tf_keras.Sequential(
        [tf_keras.Input(shape=model.input_shape[1:])]
        + [
            _tf_keras_layer(layer, tf_keras)
            for layer in model.layers
            if not isinstance(layer, keras.layers.InputLayer)
        ],
        name=model.name,
    )
    for layer in model.layers:
        if layer.weights:
            twin.get_layer(layer.name).set_weights([np.asarray(w.numpy()) for w in layer.weights])
    return twin


def quantization_aware_int8(
    model: keras.Model,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    representative,
    epochs: int = 2,
    examples: int = 0,
    learning_rate: float = 1e-4,
    seed: int = 0,
    loss: str = "mse",
) -> tuple[bytes, list[dict[str, Any]]]:
    """QAT fine-tuning then full-int8 conversion; returns (tflite bytes, per-epoch history).

    `loss` is the loss the classifier was trained with ('mse': paper Eq. 15, or
    'crossentropy'), so QAT does not pull the model towards another objective.
    """
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras

    twin = rebuild_in_tf_keras(model)
    check = np.random.default_rng(seed).uniform(size=(8, *model.input_shape[1:])).astype(np.float32)
    if not np.allclose(twin(check).numpy(), np.asarray(model(check)), atol=1e-4):
        raise RuntimeError("The tf_keras rebuild does not reproduce the Keras 3 classifier.")
    quantized = tfmot.quantization.keras.quantize_model(twin)
    quantized.compile(
        optimizer=tf_keras.optimizers.Adam(learning_rate),
        loss=_loss(loss, tf),
        metrics=["accuracy"],
    )
    order = np.random.default_rng(seed).permutation(len(train_labels))
    if examples:
        order = order[:examples]
    history = []
    if epochs:
        tf_keras.utils.set_random_seed(seed)
        result = quantized.fit(
            train_images[order].astype(np.float32) / 255.0,
            train_labels[order],
            batch_size=128,
            epochs=epochs,
            verbose=0,
            shuffle=True,
        )
        history = [
            {key: float(values[i]) for key, values in result.history.items()} for i in range(epochs)
        ]
    converter = tf.lite.TFLiteConverter.from_keras_model(quantized)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert(), history
