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


# Keras 3 layer types the tf_keras rebuild knows (Dropout and noise are stripped before).
_REBUILT = ("Dense", "Conv2D", "MaxPooling2D", "Flatten", "ReLU", "LeakyReLU", "InputLayer")


def unsupported_reason(model: keras.Model) -> str | None:
    """Why QAT cannot be done on `model` (None: it can): tfmot works on a tf_keras
    rebuild of a chain of the layer types in _REBUILT, which has no BatchNormalization,
    Rescaling or nested models. Checked before any work."""
    if not isinstance(model, (keras.Sequential, keras.Model)) or not hasattr(model, "layers"):
        return f"{type(model).__name__} is not a Sequential or Functional model"
    for layer in model.layers:
        kind = type(layer).__name__
        if kind in ("Dropout", "GaussianNoise", "GaussianDropout"):
            continue
        if kind not in _REBUILT:
            return (
                f"QAT rebuilds the model in tf_keras for tensorflow-model-optimization, which "
                f"here takes only {', '.join(_REBUILT[:-1])} layers; layer {layer.name!r} is a "
                f"{kind}"
            )
    return None


def _loss(name: str, tf, output_kind: str = "logits"):
    probabilities = output_kind == "probabilities"
    if name == "crossentropy":
        import tf_keras

        return tf_keras.losses.SparseCategoricalCrossentropy(from_logits=not probabilities)
    if name == "mse":

        def squared_error_of_softmax(labels, logits):
            one_hot = tf.one_hot(tf.cast(tf.reshape(labels, [-1]), tf.int32), tf.shape(logits)[-1])
            predicted = logits if probabilities else tf.nn.softmax(logits)
            return tf.reduce_sum(tf.square(predicted - one_hot), axis=-1)

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


def _fault_aware(quantized, max_rate: float, seed: int, tf, tf_keras, faulty_ranges: bool = False):
    """`quantized` trained with stuck-at-0 weight faults in the forward pass: each step
    draws a rate uniformly in [0, max_rate) and a fresh map (stateless in seed and step,
    as fault-aware training does); faulted weights compute as 0 and get no gradient, and
    are restored after the step, so the exported weights are the clean ones.

    The activation ranges (fake-quantization moving averages) are learned on a clean
    forward pass of the same batch unless `faulty_ranges`: ranges learned under faults
    are narrower and clip fault-free activations (the clean int8 accuracy drops)."""
    kernels = [v for v in quantized.trainable_variables if v.name.endswith("kernel:0")]
    kernel_ids = {id(v): i for i, v in enumerate(kernels)}

    class FaultAwareQAT(tf_keras.Model):
        def __init__(self):
            super().__init__()
            self.quantized = quantized

        def call(self, inputs, training=False):
            return self.quantized(inputs, training=training)

        def train_step(self, batch):
            images, labels = batch
            step = tf.cast(self.optimizer.iterations, tf.int32)
            rate = max_rate * tf.random.stateless_uniform([], seed=tf.stack([seed, step]))
            masks = [
                tf.cast(
                    tf.random.stateless_uniform(k.shape, seed=tf.stack([seed + 1 + i, step]))
                    >= rate,
                    k.dtype,
                )
                for i, k in enumerate(kernels)
            ]
            clean = [tf.identity(k) for k in kernels]
            if not faulty_ranges:
                self.quantized(images, training=True)  # Updates the ranges only.
            for kernel, mask in zip(kernels, masks, strict=True):
                kernel.assign(kernel * mask)
            with tf.GradientTape() as tape:
                logits = self.quantized(images, training=faulty_ranges)
                loss = self.compiled_loss(labels, logits)
            variables = self.quantized.trainable_variables
            gradients = tape.gradient(loss, variables)
            for kernel, value in zip(kernels, clean, strict=True):
                kernel.assign(value)
            gradients = [
                g * masks[kernel_ids[id(v)]] if id(v) in kernel_ids else g
                for g, v in zip(gradients, variables, strict=True)
            ]
            self.optimizer.apply_gradients(zip(gradients, variables, strict=True))
            self.compiled_metrics.update_state(labels, logits)
            return {metric.name: metric.result() for metric in self.metrics}

    return FaultAwareQAT()


def _start_ranges_from_data(quantized, twin, images: np.ndarray, tf_keras) -> None:
    """Starts each activation's fake-quantization range at its float range on `images`
    (tfmot starts every range at [-6, 6] and moves it by a 0.999 moving average: a short
    QAT otherwise spends its steps clipping activations larger than 6)."""
    probe = tf_keras.Model(twin.inputs, [layer.output for layer in twin.layers])
    outputs = probe(images, training=False)
    ranges = {
        layer.name: (min(0.0, float(np.min(out))), max(0.0, float(np.max(out))))
        for layer, out in zip(twin.layers, outputs, strict=True)
    }
    ranges["quantize_layer"] = (min(0.0, float(images.min())), max(0.0, float(images.max())))
    for wrapper in quantized.layers:
        name = wrapper.name.removeprefix("quant_")
        if name not in ranges:
            continue
        for weight in wrapper.non_trainable_weights:
            if weight.name.endswith(("post_activation_min:0", "quantize_layer_min:0")):
                weight.assign(ranges[name][0])
            elif weight.name.endswith(("post_activation_max:0", "quantize_layer_max:0")):
                weight.assign(ranges[name][1])


def _fit(trained, train_images, train_labels, epochs: int, examples: int, seed: int, tf_keras):
    """QAT fine-tuning on a seeded subset; returns the per-epoch history."""
    order = np.random.default_rng(seed).permutation(len(train_labels))
    if examples:
        order = order[:examples]
    history = []
    if epochs:
        tf_keras.utils.set_random_seed(seed)
        inputs = train_images[order].astype(np.float32)
        result = trained.fit(
            inputs / 255.0 if train_images.dtype == np.uint8 else inputs,
            train_labels[order],
            batch_size=128,
            epochs=epochs,
            verbose=0,
            shuffle=True,
        )
        history = [
            {key: float(values[i]) for key, values in result.history.items()} for i in range(epochs)
        ]
    return history


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
    fault_max_rate: float = 0.0,
    output_kind: str = "logits",
) -> tuple[bytes, list[dict[str, Any]]]:
    """QAT fine-tuning then full-int8 conversion; returns (tflite bytes, per-epoch history).

    `loss` is the loss the classifier was trained with ('mse': paper Eq. 15, or
    'crossentropy'), so QAT does not pull the model towards another objective.
    `fault_max_rate` > 0: fault-aware QAT (stuck-at-0 weight faults at rates below it in
    every training step; see `_fault_aware`).
    """
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras

    twin = rebuild_in_tf_keras(model)
    check = np.random.default_rng(seed).uniform(size=(8, *model.input_shape[1:])).astype(np.float32)
    if not np.allclose(twin(check).numpy(), np.asarray(model(check)), atol=1e-4):
        raise RuntimeError("The tf_keras rebuild does not reproduce the Keras 3 classifier.")
    quantized = tfmot.quantization.keras.quantize_model(twin)
    _start_ranges_from_data(
        quantized, twin, np.concatenate([batch[0] for batch in representative()]), tf_keras
    )
    trained = quantized
    if fault_max_rate:
        trained = _fault_aware(quantized, fault_max_rate, seed, tf, tf_keras)
    trained.compile(
        optimizer=tf_keras.optimizers.Adam(learning_rate),
        loss=_loss(loss, tf, output_kind),
        metrics=["accuracy"],
    )
    history = _fit(trained, train_images, train_labels, epochs, examples, seed, tf_keras)
    from aftt_tf.deploy import int8_converter

    converter = tf.lite.TFLiteConverter.from_keras_model(quantized)
    int8_converter.full_int8(converter, representative)
    return converter.convert(), history
