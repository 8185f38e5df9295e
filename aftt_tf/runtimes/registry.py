"""The faultable Keras layer types and their weight tensors: one registry for every path
(campaigns, fault-aware training, export layer maps) and the statement of what is left out.

A layer type lists its kernels (the tensors parameter faults reach, in a fixed order) and,
for convolutions, the axis of each kernel that indexes its filters (output channels; for
depthwise kernels: input channels, each with all its multipliers). Biases are faulted
only with `include_bias`. Weights of other layer types (BatchNormalization's scale and
statistics, ...) are not faulted and every campaign says so.

Layers are found everywhere in a model (`sites`): inside nested models (a backbone) and
inside composite layers that track sub-layers (MultiHeadAttention's query/key/value/output
projections, TimeDistributed, Bidirectional, a user's block), each named by its path
('backbone/conv1', 'mha/query'); a top-level layer's path is its name. A user's own layer
type joins with `register_layer`; `weights='all_trainable'` also faults every trainable
variable of rank >= 2 of layers no entry describes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import numpy as np

from aftt_tf.faults import kinds

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
BUILTIN_TYPE_NAMES = tuple(t.__name__ for entry in REGISTRY for t in entry.types)
_USER_ENTRIES: list[LayerType] = []  # register_layer(); looked up before the built-ins.
WEIGHT_CHOICES = ("registered", "all_trainable")
# Layers whose scale (gamma) and offset (beta) faults reach with include_normalization.
NORMALIZATION_TYPES = (L.BatchNormalization, L.LayerNormalization, L.GroupNormalization)


def register_layer(
    layer_class: type,
    kernels: tuple[str, ...] = ("kernel",),
    filter_axis: int | None = None,
    bias: str | None = None,
) -> None:
    """Makes a user's layer type faultable everywhere (campaigns, fault-aware training,
    repair, coverage): `kernels` are attribute paths of its weight tensors ("w",
    "cell.kernel"), `filter_axis` the axis of its filters (convolution-like layers: filter
    faults then remove whole filters of every kernel), `bias` the attribute of its bias.
    Call it from the module passed with `--import`. Registering a class again replaces
    its entry."""
    if not (isinstance(layer_class, type) and issubclass(layer_class, keras.layers.Layer)):
        raise TypeError(f"register_layer takes a keras.layers.Layer subclass, not {layer_class!r}.")
    if isinstance(kernels, str) or not kernels or not all(isinstance(k, str) for k in kernels):
        raise ValueError(
            f"kernels must be a non-empty tuple of attribute names, received {kernels!r}."
        )
    if filter_axis is not None and not isinstance(filter_axis, int):
        raise ValueError(f"filter_axis must be an integer axis or None, received {filter_axis!r}.")
    _USER_ENTRIES[:] = [e for e in _USER_ENTRIES if e.types != (layer_class,)]
    _USER_ENTRIES.append(
        LayerType((layer_class,), tuple(Kernel(k, filter_axis) for k in kernels), bias=bias)
    )


def supported_type_names() -> tuple[str, ...]:
    return tuple(t.__name__ for entry in _USER_ENTRIES for t in entry.types) + BUILTIN_TYPE_NAMES


def layer_type(layer: keras.layers.Layer) -> LayerType | None:
    """The registry entry of `layer` (subclasses count: FaultyDense is a Dense); a user's
    registration of the exact class comes first."""
    for entry in _USER_ENTRIES:
        if type(layer) in entry.types:
            return entry
    for entry in (*_USER_ENTRIES, *REGISTRY):
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


@dataclasses.dataclass
class Site:
    """A faultable layer somewhere in a model.

    Attributes:
        path: 'conv1' (top level), 'backbone/conv1' (nested model), 'mha/query'
            (sub-layer of a composite layer).
        layer: the layer object.
        in_graph: reached through Sequential/Functional models only, so fault layers can
            be inserted around it (node faults, mask layers); False inside composite
            layers and subclassed models (faults go into its variables).
        kernels: (label, variable, filter_axis) of each faulted weight tensor.
        bias: (label, variable) of its bias, or None.
        registered: described by a registry entry (else found by weights='all_trainable').
    """

    path: str
    layer: Any
    in_graph: bool
    kernels: list[tuple[str, Any, int | None]]
    bias: tuple[str, Any] | None
    registered: bool = True

    @property
    def convolution(self) -> bool:
        return any(axis is not None for _, _, axis in self.kernels)


def children(layer) -> list:
    """The sub-layers a layer tracks (a nested model's layers, in model order)."""
    if isinstance(layer, keras.Model):
        return [child for child in layer.layers if not isinstance(child, keras.layers.InputLayer)]
    return list(layer._flatten_layers(include_self=False, recursive=False))


def _own_trainable(layer, children) -> list:
    """Trainable variables of rank >= 2 that `layer` holds itself (not its children's)."""
    inner = {id(v) for child in children for v in child.weights}
    return [v for v in layer.trainable_weights if id(v) not in inner and len(v.shape) >= 2]


def sites(model: keras.Model, weights: str = "registered") -> list[Site]:
    """Every faultable layer of `model` with its path, in model order (see `Site`)."""
    base, _, extra = weights.partition("+")
    if base not in WEIGHT_CHOICES or extra not in ("", "normalization"):
        raise ValueError(
            f"weights must be one of {', '.join(WEIGHT_CHOICES)} (optionally "
            f"'+normalization'), received {weights!r}."
        )
    graph = _is_graph(model)
    result: list[Site] = []
    for child in children(model):
        _visit(child, child.name, graph, weights, result)
    return result


def sites_in(layer, weights: str = "registered") -> list[Site]:
    """The faultable layers of one layer of a model: itself when registered, else those it
    holds (a nested model's, a composite layer's sub-layers), paths from its name."""
    result: list[Site] = []
    _visit(layer, layer.name, False, weights, result)
    return result


def is_functional(model) -> bool:
    """A Functional model (a graph of layers), Sequential excluded. Keras exports no name
    for the class: it is found in the model's class hierarchy, without keras.src."""
    return not isinstance(model, keras.Sequential) and any(
        cls.__name__ == "Functional" and cls.__module__.startswith("keras")
        for cls in type(model).__mro__
    )


def _is_graph(model) -> bool:
    return isinstance(model, keras.Sequential) or is_functional(model)


def _visit(layer, path: str, in_graph: bool, weights: str, result: list[Site]) -> None:
    if isinstance(layer, keras.layers.InputLayer):
        return
    # A fault wrapper (WeightFaults) stands for the layer it wraps, under its name.
    inner = layer.layer if getattr(layer, "wraps_for_faults", False) else layer
    if weights.endswith("+normalization") and isinstance(inner, NORMALIZATION_TYPES):
        kernel_list = [
            (name, value, None)
            for name in ("gamma", "beta")
            if (value := getattr(inner, name, None)) is not None
        ]
        if kernel_list:  # Faults written into the variables (no mask layer holds them).
            result.append(Site(path, layer, False, kernel_list, None, registered=False))
        return
    entry = layer_type(inner)
    if entry is not None:
        kernel_list = [
            (k.attribute, variable(inner, k.attribute), k.filter_axis) for k in entry.kernels
        ]
        kernel_list = [k for k in kernel_list if k[1] is not None]
        layer_bias = bias(inner)
        if kernel_list:
            result.append(
                Site(
                    path,
                    layer,
                    in_graph,
                    kernel_list,
                    None if layer_bias is None else (entry.bias, layer_bias),
                )
            )
        return
    inner_layers = children(layer)
    child_graph = in_graph and isinstance(layer, keras.Model) and _is_graph(layer)
    if weights.startswith("all_trainable"):
        own = _own_trainable(layer, inner_layers)
        if own:
            kernel_list = [(_variable_label(layer, value), value, None) for value in own]
            result.append(Site(path, layer, False, kernel_list, None, registered=False))
    for child in inner_layers:
        _visit(child, f"{path}/{child.name}", child_graph, weights, result)


def _variable_label(layer, value) -> str:
    """A variable's name within its layer ('w'), for coverage and fault labels."""
    path = getattr(value, "path", value.name)
    prefix = f"{layer.name}/"
    return path.split(prefix, 1)[1] if prefix in path else value.name


def site(model: keras.Model, path: str, weights: str = "registered") -> Site:
    for candidate in sites(model, weights):
        if candidate.path == path:
            return candidate
    raise ValueError(f"No faultable layer {path!r} in {model.name!r}.")


def flat_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer of the model, nested models flattened, in model order."""
    result = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            result.extend(flat_layers(layer))
        else:
            result.append(layer)
    return result


def weight_holders(model: keras.Model) -> list[tuple[str, Any, int]]:
    """(path, layer, elements) of every layer that holds weights of its own (not held by a
    listed sub-layer): leaves of nested models and composite layers, registered layers
    whole (an LSTM with its cell), and a composite layer's own variables; the elements
    sum to the model's weight count."""
    result = []

    def visit(layer, path):
        if isinstance(layer, keras.layers.InputLayer):
            return
        inner_layers = [] if layer_type(layer) else children(layer)
        inner = {id(v) for child in inner_layers for v in child.weights}
        own = [v for v in layer.weights if id(v) not in inner]
        if own:
            result.append((path, layer, int(sum(np.prod(v.shape) for v in own))))
        for child in inner_layers:
            visit(child, f"{path}/{child.name}")

    for child in children(model):
        visit(child, child.name)
    return result


def weight_elements(layer: keras.layers.Layer) -> int:
    return int(sum(np.prod(weight.shape) for weight in layer.weights))


def _left_out_reason(layer, faultable: bool, reason: str) -> str:
    """Why a weight-bearing layer is not among a campaign's targets."""
    if faultable:
        return reason
    if isinstance(layer, NORMALIZATION_TYPES):
        return (
            f"{type(layer).__name__}: normalisation scale and offset are faulted with "
            "--include_normalization"
        )
    if layer_type(layer) is None:
        return (
            f"{type(layer).__name__} is not a faultable layer type (supported: "
            f"{', '.join(supported_type_names())}; a layer of your own: "
            "aftt_tf.campaigns.register_layer, or --weights=all_trainable)"
        )
    entry = layer_type(layer)
    return (
        f"registered with kernels {[k.attribute for k in entry.kernels]}, none of "
        f"which {type(layer).__name__} holds (check register_layer's kernels)"
    )


def coverage(
    model: keras.Model,
    targeted: list[str],
    include_bias: bool,
    reasons: dict[str, str],
    kind: kinds.FaultKind | str = "weight",
    weights: str = "registered",
) -> dict[str, Any]:
    """What a campaign covers of the model's weights, and every weight-bearing layer left
    out with the reason (`reasons` names why a faultable layer is not targeted: scope,
    --layers, kind). Layers are named by path ('backbone/conv1', 'mha/query').

    `targeted_layers_weight_share` is the share of all weight elements (biases and
    normalisation parameters included) held by the targeted layers;
    `faulted_tensors_share` the share held by the tensors parameter faults can reach.
    """
    found = {entry.path: entry for entry in sites(model, weights)}
    holders = weight_holders(model)
    total = sum(elements for _, _, elements in holders)
    held = reached = 0
    left_out = []
    for path, layer, elements in holders:
        if path in targeted:
            held += elements
            entry = found[path]
            reached += sum(int(np.prod(v.shape)) for _, v, _ in entry.kernels)
            if include_bias and entry.bias is not None:
                reached += int(np.prod(entry.bias[1].shape))
            continue
        reason = _left_out_reason(layer, path in found, reasons.get(path, "not selected"))
        left_out.append(
            {"layer": path, "type": type(layer).__name__, "weights": elements, "reason": reason}
        )
    return {
        "targeted_layers": list(targeted),
        "targeted_layers_weight_share": held / total if total else 0.0,
        "faulted_tensors_share": (reached / total if total else 0.0)
        if not kinds.resolve(kind).on_outputs
        else None,
        "model_weight_elements": total,
        "biases": "faulted" if include_bias else "not faulted (--include_bias faults them)",
        "weights": weights,
        "left_out": left_out,
    }
