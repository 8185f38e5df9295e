"""The faultable Keras layer types and their weight tensors: one registry for every path
(campaigns, fault-aware training, export layer maps) and the statement of what is left out.

A layer type lists its kernels (the tensors parameter faults reach, in a fixed order) and,
for convolutions, the axis of each kernel that indexes its filters (output channels; for
depthwise kernels: input channels, each with all its multipliers). Biases are faulted
only with `include_bias`. Weights of other layer types (BatchNormalization's scale and
statistics, attention projections, ...) are not faulted and every campaign says so.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import numpy as np

L = keras.layers


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One faultable weight tensor of a layer type."""

    attribute: str  # Attribute path on the layer: "kernel", "cell.recurrent_kernel".
    filter_axis: int | None = None  # Axis of the filters that 'filter' faults remove.


@dataclasses.dataclass(frozen=True)
class LayerType:
    types: tuple[type, ...]
    kernels: tuple[Kernel, ...]
    bias: str | None = "bias"

    @property
    def convolution(self) -> bool:
        return any(kernel.filter_axis is not None for kernel in self.kernels)


_CONV = (Kernel("kernel", filter_axis=-1),)
REGISTRY = (
    LayerType((L.Dense, L.EinsumDense), (Kernel("kernel"),)),
    LayerType((L.Conv1D, L.Conv2D, L.Conv3D), _CONV),
    LayerType((L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose), (Kernel("kernel", -2),)),
    LayerType((L.DepthwiseConv1D, L.DepthwiseConv2D), (Kernel("kernel", -2),)),
    LayerType(
        (L.SeparableConv1D, L.SeparableConv2D),
        (Kernel("depthwise_kernel"), Kernel("pointwise_kernel", filter_axis=-1)),
    ),
    LayerType((L.Embedding,), (Kernel("embeddings"),), bias=None),
    LayerType(
        (L.LSTM, L.GRU, L.SimpleRNN),
        (Kernel("cell.kernel"), Kernel("cell.recurrent_kernel")),
        bias="cell.bias",
    ),
)
SUPPORTED_TYPE_NAMES = tuple(t.__name__ for entry in REGISTRY for t in entry.types)


def layer_type(layer: keras.layers.Layer) -> LayerType | None:
    """The registry entry of `layer` (subclasses count: FaultyDense is a Dense)."""
    for entry in REGISTRY:
        if isinstance(layer, entry.types):
            return entry
    return None


def variable(layer: keras.layers.Layer, attribute: str) -> Any:
    """The variable at an attribute path ("cell.kernel"), or None when absent."""
    value = layer
    for part in attribute.split("."):
        value = getattr(value, part, None)
        if value is None:
            return None
    return value


def kernels(layer: keras.layers.Layer) -> list[tuple[str, Any]]:
    """(attribute, variable) of each faultable kernel of `layer`, in registry order."""
    entry = layer_type(layer)
    if entry is None:
        return []
    return [(k.attribute, variable(layer, k.attribute)) for k in entry.kernels]


def bias(layer: keras.layers.Layer) -> Any:
    entry = layer_type(layer)
    return None if entry is None or entry.bias is None else variable(layer, entry.bias)


def flat_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer of the model, nested models flattened, in model order."""
    result = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            result.extend(flat_layers(layer))
        else:
            result.append(layer)
    return result


def weight_elements(layer: keras.layers.Layer) -> int:
    return int(sum(np.prod(weight.shape) for weight in layer.weights))


def coverage(
    model: keras.Model,
    targeted: list[str],
    include_bias: bool,
    reasons: dict[str, str],
    kind: str = "weight",
) -> dict[str, Any]:
    """What a campaign covers of the model's weights, and every weight-bearing layer left
    out with the reason (`reasons` names why a registered top-level layer is not
    targeted: scope, --layers, kind).

    `targeted_layers_weight_share` is the share of all weight elements (biases and
    normalisation parameters included) held by the targeted layers;
    `faulted_tensors_share` the share held by the tensors parameter faults can reach.
    """
    top_level = {layer.name for layer in model.layers}
    nested_in = {
        inner.name: layer.name
        for layer in model.layers
        if isinstance(layer, keras.Model)
        for inner in flat_layers(layer)
    }
    total = sum(weight_elements(layer) for layer in flat_layers(model))
    held = reached = 0
    left_out = []
    for layer in flat_layers(model):
        if not layer.weights:
            continue
        if layer.name in targeted:
            held += weight_elements(layer)
            reached += sum(int(np.prod(v.shape)) for _, v in kernels(layer))
            layer_bias = bias(layer)
            if include_bias and layer_bias is not None:
                reached += int(np.prod(layer_bias.shape))
            continue
        if layer.name not in top_level:
            reason = f"inside the nested model {nested_in.get(layer.name)!r}: faults reach top-level layers"
        elif layer_type(layer) is None:
            reason = (
                f"{type(layer).__name__} is not a faultable layer type (supported: "
                f"{', '.join(SUPPORTED_TYPE_NAMES)})"
            )
        else:
            reason = reasons.get(layer.name, "not selected")
        left_out.append(
            {
                "layer": layer.name,
                "type": type(layer).__name__,
                "weights": weight_elements(layer),
                "reason": reason,
            }
        )
    return {
        "targeted_layers": list(targeted),
        "targeted_layers_weight_share": held / total if total else 0.0,
        "faulted_tensors_share": (reached / total if total else 0.0) if kind != "node" else None,
        "model_weight_elements": total,
        "biases": "faulted" if include_bias else "not faulted (--include_bias faults them)",
        "left_out": left_out,
    }
