"""Keras runtime of fault campaigns: one faulty model, masks changed with `assign`.

`CampaignRunner` builds one faulty copy of the model, compiles one evaluation
function and, per trial, only assigns new masks: one trace per campaign. When the
first faulted layer is not the first layer, the activations entering it are
computed once and reused by every trial.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from aftt_tf.faults import sampling, targets
from aftt_tf.faults.spec import FaultSpec, cell_result


def model_fingerprint(model: keras.Model) -> str:
    """sha256 of the architecture and every weight: identifies results across runs."""
    digest = hashlib.sha256(json.dumps(model.get_config(), sort_keys=True, default=str).encode())
    for weight in model.weights:
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()


def load_model(path: str | Path) -> keras.Model:
    """Loads a .keras classifier with a clear error for missing, foreign or corrupt files."""
    import aftt_tf.faults.layers  # noqa: F401  (registers fault layers)

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Model file {path} does not exist.")
    if path.suffix != ".keras":
        raise ValueError(
            f"{path} is not a .keras or .tflite file; aftt-faults takes the classifier.keras of an "
            "aftt-train run or a .tflite file from aftt-export."
        )
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as error:
        raise ValueError(
            f"{path} could not be read as a Keras model ({type(error).__name__}: {error})."
        ) from None
    if not isinstance(model, keras.Model):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a Keras model.")
    return model


class KerasModel:
    """A Keras classifier as a campaign model (`spec.CampaignModel`)."""

    def __init__(self, model: keras.Model):
        self.model = model

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.model.input_shape[1:])

    def fingerprint(self) -> str:
        return model_fingerprint(self.model)

    def select_layers(self, spec: FaultSpec) -> list[str]:
        return targets.select_layers(
            self.model, spec.kind, spec.scope, spec.layers, spec.include_output_nodes
        )

    def runner(self, spec: FaultSpec, images, labels, batch_size: int) -> CampaignRunner:
        return CampaignRunner(self.model, spec, images, labels, batch_size)


class CampaignRunner:
    """Evaluates one model under one FaultSpec; `evaluate_cell(rate, trial)` per trial.

    Args:
        model: clean Functional classifier (image -> logits).
        spec: the campaign.
        images: test images, float32 in [0, 1] or uint8 (scaled here).
        labels: integer labels.
        batch_size: evaluation chunk size.
    """

    def __init__(
        self,
        model: keras.Model,
        spec: FaultSpec,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int = 2000,
    ):
        spec.validate()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, received {batch_size}.")
        self.spec = spec
        self.target_names = targets.select_layers(
            model, spec.kind, spec.scope, spec.layers, spec.include_output_nodes
        )
        self.faulty = targets.apply_faults(model, spec.kind, self.target_names)
        self.fault_layers = {
            name: targets.fault_layer(self.faulty, name, spec.kind) for name in self.target_names
        }
        self.trace_count = 0
        self._parameters: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        images = np.asarray(images)
        # uint8 test images stay uint8 in memory (4x smaller) and are scaled per chunk.
        self._scale_uint8 = images.dtype == np.uint8
        self.num_examples = len(labels)
        probe = _as_float(images[: min(64, len(images))])
        self._suffix, self.prefix_layer = self._split_at_first_fault(probe)
        if self.prefix_layer is not None:
            self._scale_uint8 = False
        prefix_outputs = self._prefix_features(images, batch_size)
        self._chunks, self._chunk_labels, self._valid = _pad_chunks(
            prefix_outputs, labels, batch_size
        )
        self._count_correct = tf.function(self._count_correct_impl)

    def _split_at_first_fault(self, probe: np.ndarray):
        """Suffix model starting at the first faulted layer, if the network is a chain.

        Returns (suffix, prefix_layer_name or None). A prefix without weights (Flatten,
        reshapes) is not worth caching: its cached output would only cost memory. The
        split is checked numerically on a probe batch; a non-chain graph falls back to
        the whole faulty model.
        """
        layers = [
            layer for layer in self.faulty.layers if not isinstance(layer, keras.layers.InputLayer)
        ]
        first_name = self.target_names[0]
        index = next(i for i, layer in enumerate(layers) if layer.name == first_name)
        if not any(layer.weights for layer in layers[:index]):
            self._prefix = None
            return self.faulty, None
        prefix_output = layers[index - 1].output
        prefix = keras.Model(self.faulty.inputs[0], prefix_output)
        suffix_input = keras.Input(shape=prefix_output.shape[1:])
        x = suffix_input
        for layer in layers[index:]:
            x = layer(x)
        suffix = keras.Model(suffix_input, x)
        reference = np.asarray(self.faulty(probe, training=False))
        split = np.asarray(suffix(prefix(probe, training=False), training=False))
        if not np.allclose(reference, split, rtol=1e-5, atol=1e-5):
            self._prefix = None
            return self.faulty, None
        self._prefix = prefix
        return suffix, layers[index - 1].name

    def _prefix_features(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        if self._prefix is None:
            return images if self._scale_uint8 else images.astype(np.float32)
        features = np.empty((len(images), *self._prefix.output.shape[1:]), np.float32)
        for start in range(0, len(images), batch_size):
            chunk = _as_float(images[start : start + batch_size])
            features[start : start + len(chunk)] = np.asarray(self._prefix(chunk, training=False))
        return features

    def _count_correct_impl(self, chunks, chunk_labels, valid):
        self.trace_count += 1  # Python side effect: runs once per trace.
        correct = tf.constant(0, tf.int32)
        for index in tf.range(tf.shape(chunks)[0]):
            inputs = chunks[index]
            if self._scale_uint8:
                inputs = tf.cast(inputs, tf.float32) / 255.0
            logits = self._suffix(inputs, training=False)
            hits = tf.logical_and(
                tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), chunk_labels[index]),
                valid[index],
            )
            correct += tf.reduce_sum(tf.cast(hits, tf.int32))
        return correct

    def accuracy(self) -> float:
        """Accuracy of the faulty model with the masks as currently assigned."""
        correct = self._count_correct(self._chunks, self._chunk_labels, self._valid)
        return float(correct.numpy()) / self.num_examples

    def inject(self, rate: float, trial: int) -> dict[str, Any]:
        """Assigns the masks of cell (rate, trial); returns per-layer fault counts."""
        spec = self.spec
        per_layer, faulted, total = {}, 0, 0
        for name, layer in self.fault_layers.items():
            rng = sampling.trial_rng(spec.seed, spec.kind, name, rate, trial)
            if spec.kind == "node":
                size = int(np.prod(layer.node_keep.shape))
                positions = sampling.sample_positions(size, rate, rng, spec.sampling)
                keep = np.ones(size, np.float32)
                keep[positions] = 0.0
                layer.node_keep.assign(keep.reshape(layer.node_keep.shape))
                count, elements = len(positions), size
            else:
                count, elements = self._inject_parameters(layer, rate, rng)
            per_layer[name] = {"faulted": count, "elements": elements}
            faulted += count
            total += elements
        return {"faulted": faulted, "elements": total, "per_layer": per_layer}

    def _clean_parameters(self, layer) -> tuple[np.ndarray, np.ndarray]:
        """Host copies of a layer's kernel and bias, read once per campaign (they never change)."""
        if layer.name not in self._parameters:
            kernel = np.asarray(layer.kernel.numpy())
            bias = np.asarray(layer.bias.numpy()) if layer.use_bias else np.empty(0, np.float32)
            self._parameters[layer.name] = (kernel, bias)
        return self._parameters[layer.name]

    def _inject_parameters(self, layer, rate, rng) -> tuple[int, int]:
        spec = self.spec
        kernel, bias = self._clean_parameters(layer)
        plan = sampling.plan_parameter_fault(
            kernel.shape, bias.size, spec.kind, rate, rng, spec.sampling, spec.include_bias
        )
        keep, replacement = sampling.parameter_fault(
            kernel, plan.kernel_positions, spec.value_fault, rng
        )
        layer.kernel_keep.assign(keep)
        layer.kernel_replacement.assign(replacement)
        if layer.use_bias:
            keep, replacement = sampling.parameter_fault(
                bias, plan.bias_positions, spec.value_fault, rng
            )
            layer.bias_keep.assign(keep)
            layer.bias_replacement.assign(replacement)
        return plan.faulted, plan.elements

    def evaluate_cell(self, rate: float, trial: int) -> dict[str, Any]:
        counts = self.inject(rate, trial)
        accuracy = self.accuracy()
        return cell_result(rate, trial, accuracy, counts)


def _as_float(images: np.ndarray) -> np.ndarray:
    return (
        images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32)
    )


def _pad_chunks(features: np.ndarray, labels: np.ndarray, batch_size: int):
    """(num_chunks, batch, ...) tensors with a validity mask: one static shape, one trace."""
    count = len(labels)
    batch_size = min(batch_size, count)
    num_chunks = math.ceil(count / batch_size)
    padded = num_chunks * batch_size
    feature_array = np.zeros((padded, *features.shape[1:]), features.dtype)
    feature_array[:count] = features
    label_array = np.zeros(padded, np.int32)
    label_array[:count] = labels
    valid = np.zeros(padded, bool)
    valid[:count] = True
    shape = (num_chunks, batch_size)
    return (
        tf.constant(feature_array.reshape(*shape, *features.shape[1:])),
        tf.constant(label_array.reshape(shape)),
        tf.constant(valid.reshape(shape)),
    )
