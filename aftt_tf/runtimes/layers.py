"""*How* faults act: registered Keras layers that hold fault state as non-trainable variables.

A parameter fault replaces selected kernel (and optionally bias) elements by a
value: effective = parameter * keep_mask + replacement, where keep_mask is 0 at a
faulted element and 1 elsewhere, and replacement holds the faulty value there (0
for stuck-at-0, a constant for stuck-at-value, the bit-corrupted value for bit
faults). A node fault multiplies a layer's output by one mask shared by every
sample of the batch. All masks start as "no fault" and are changed with `assign`,
so a compiled evaluation function is traced once for a whole campaign.
"""

from __future__ import annotations

import math

import keras
from keras import ops


class _ParameterFaultMixin:
    """Adds kernel/bias keep-masks and replacement values to a Dense or Conv2D layer."""

    def _build_fault_state(self) -> None:
        self.kernel_keep = self.add_weight(
            name="kernel_keep", shape=self.kernel.shape, initializer="ones", trainable=False
        )
        self.kernel_replacement = self.add_weight(
            name="kernel_replacement", shape=self.kernel.shape, initializer="zeros", trainable=False
        )
        if self.use_bias:
            self.bias_keep = self.add_weight(
                name="bias_keep", shape=self.bias.shape, initializer="ones", trainable=False
            )
            self.bias_replacement = self.add_weight(
                name="bias_replacement", shape=self.bias.shape, initializer="zeros", trainable=False
            )

    def _saved_variables(self) -> list:
        names = [
            "kernel",
            "bias",
            "kernel_keep",
            "kernel_replacement",
            "bias_keep",
            "bias_replacement",
        ]
        return [getattr(self, name) for name in names if getattr(self, name, None) is not None]

    # Dense saves only kernel and bias; fault state is saved too, in a fixed order.
    def save_own_variables(self, store):
        for index, variable in enumerate(self._saved_variables()):
            store[str(index)] = variable

    def load_own_variables(self, store):
        variables = self._saved_variables()
        if len(store.keys()) != len(variables):
            raise ValueError(
                f"Layer {self.name!r} expects {len(variables)} variables, the file has {len(store.keys())}."
            )
        for index, variable in enumerate(variables):
            variable.assign(store[str(index)])

    def faulty_kernel(self):
        return self.kernel * self.kernel_keep + self.kernel_replacement

    def faulty_bias(self):
        return self.bias * self.bias_keep + self.bias_replacement

    def clear_faults(self) -> None:
        self.kernel_keep.assign(ops.ones(self.kernel.shape))
        self.kernel_replacement.assign(ops.zeros(self.kernel.shape))
        if self.use_bias:
            self.bias_keep.assign(ops.ones(self.bias.shape))
            self.bias_replacement.assign(ops.zeros(self.bias.shape))


@keras.saving.register_keras_serializable(package="aftt_tf")
class FaultyDense(_ParameterFaultMixin, keras.layers.Dense):
    """Dense layer whose kernel and bias elements can be stuck at a value.

    Same arguments and output as `keras.layers.Dense`; with no fault assigned it
    computes exactly what Dense computes.
    """

    def build(self, input_shape):
        super().build(input_shape)
        self._build_fault_state()

    def call(self, inputs):
        outputs = ops.matmul(inputs, self.faulty_kernel())
        if self.use_bias:
            outputs = ops.add(outputs, self.faulty_bias())
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs


@keras.saving.register_keras_serializable(package="aftt_tf")
class FaultyConv2D(_ParameterFaultMixin, keras.layers.Conv2D):
    """Conv2D layer whose kernel/bias elements or whole filters can be stuck at a value."""

    def build(self, input_shape):
        super().build(input_shape)
        self._build_fault_state()

    def call(self, inputs):
        outputs = ops.conv(
            inputs,
            self.faulty_kernel(),
            strides=list(self.strides),
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            data_format=self.data_format,
        )
        if self.use_bias:
            outputs = ops.add(outputs, ops.reshape(self.faulty_bias(), (1,) * 3 + (-1,)))
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs


@keras.saving.register_keras_serializable(package="aftt_tf")
class NodeFault(keras.layers.Layer):
    """Holds hidden units at 0: multiplies activations by a mask shared by all samples.

    Args:
        target: name of the layer whose output this mask applies to (for reports).

    Input and output shape: (batch, ...); the mask has the input's shape without
    the batch dimension.
    """

    def __init__(self, target: str = "", **kwargs):
        super().__init__(**kwargs)
        self.target = target

    def build(self, input_shape):
        self.node_keep = self.add_weight(
            name="node_keep", shape=tuple(input_shape[1:]), initializer="ones", trainable=False
        )

    def call(self, inputs):
        return inputs * self.node_keep

    def clear_faults(self) -> None:
        self.node_keep.assign(ops.ones(self.node_keep.shape))

    def get_config(self):
        return {**super().get_config(), "target": self.target}


@keras.saving.register_keras_serializable(package="aftt_tf")
class WeightFaults(keras.layers.Wrapper):
    """Any layer whose weight tensors can be stuck at values: the masking layer for every
    registered layer type without a dedicated faulty class (depthwise, separable and
    transposed convolutions, EinsumDense, Embedding, recurrent layers, ...).

    For each named weight it holds a keep mask and a replacement; `call` runs the wrapped
    layer with effective = weight * keep + replacement substituted for the weight
    (`keras.StatelessScope`), so the wrapped layer's own computation is unchanged and
    a compiled evaluation function is traced once. The wrapper takes the wrapped layer's
    name, so fault positions and reports refer to the layer as the user named it.

    Args:
        layer: the layer to wrap (built or not).
        weights: attribute paths of the weights to fault ("kernel", "cell.kernel").
    """

    wraps_for_faults = True  # registry.sites: this wrapper stands for its layer.

    def __init__(self, layer: keras.layers.Layer, weights=("kernel",), **kwargs):
        kwargs.setdefault("name", layer.name)
        super().__init__(layer, **kwargs)
        self.weight_paths = tuple(weights)

    def weight(self, path: str):
        value = self.layer
        for part in path.split("."):
            value = getattr(value, part)
        return value

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        self.keeps, self.replacements = [], []
        for path in self.weight_paths:
            shape = self.weight(path).shape
            stem = path.replace(".", "_")
            self.keeps.append(
                self.add_weight(
                    name=f"{stem}_keep", shape=shape, initializer="ones", trainable=False
                )
            )
            self.replacements.append(
                self.add_weight(
                    name=f"{stem}_replacement", shape=shape, initializer="zeros", trainable=False
                )
            )
        self.built = True

    def call(self, inputs, *args, **kwargs):
        mapping = [
            (self.weight(path), self.weight(path) * keep + replacement)
            for path, keep, replacement in zip(
                self.weight_paths, self.keeps, self.replacements, strict=True
            )
        ]
        with keras.StatelessScope(state_mapping=mapping):
            return self.layer(inputs, *args, **kwargs)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def compute_output_spec(self, *args, **kwargs):
        # The wrapped layer's own answer: a user's layer may define neither method and
        # rely on Keras tracing its call.
        return self.layer.compute_output_spec(*args, **kwargs)

    def clear_faults(self) -> None:
        for keep, replacement in zip(self.keeps, self.replacements, strict=True):
            keep.assign(ops.ones(keep.shape))
            replacement.assign(ops.zeros(replacement.shape))

    def get_config(self):
        return {**super().get_config(), "weights": list(self.weight_paths)}


FAULTY_CLASSES = {keras.layers.Dense: FaultyDense, keras.layers.Conv2D: FaultyConv2D}


# Activation range restriction (aftt_tf.training.harden, method 'range'): registered here
# so that every loader of a .keras (which imports this module) can read a hardened model.
RANGE_MODES = ("clip", "zero")


@keras.saving.register_keras_serializable(package="aftt_tf")
class ActivationClip(keras.layers.Layer):
    """Activation range restriction of one tensor to [lower, upper]: 'clip' saturates
    values outside at the bound (Ranger, Chen et al., DSN 2021); 'zero' sets them to 0
    (FT-ClipAct, Hoang et al., DATE 2020: a channel corrupted by a faulty weight drops
    out instead of staying at its maximum). Two floats and a mode in the config: the
    layer round-trips through .keras and converts to TFLite builtins (MINIMUM/MAXIMUM,
    or comparisons and SELECT), float and int8."""

    def __init__(self, lower: float = 0.0, upper: float = 6.0, mode: str = "clip", **kwargs):
        super().__init__(**kwargs)
        if not (math.isfinite(lower) and math.isfinite(upper) and lower <= upper):
            raise ValueError(f"ActivationClip needs finite lower <= upper, got {lower}, {upper}.")
        if mode not in RANGE_MODES:
            raise ValueError(f"ActivationClip mode must be one of {RANGE_MODES}, got {mode!r}.")
        self.lower, self.upper, self.mode = float(lower), float(upper), mode

    def call(self, inputs):
        if self.mode == "clip":
            return ops.clip(inputs, self.lower, self.upper)
        inside = ops.logical_and(
            ops.greater_equal(inputs, self.lower), ops.less_equal(inputs, self.upper)
        )
        return ops.where(inside, inputs, ops.zeros_like(inputs))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "lower": self.lower,
            "upper": self.upper,
            "mode": self.mode,
        }
