"""*Where* faults go in a Keras model: which layers a fault kind may touch (the registry's
layer types, through the shared selection rule), and the apply/strip/bake functions that rewrite a
Sequential or Functional model with fault layers.
"""

from __future__ import annotations

import keras
import numpy as np

from aftt_tf.faults import layers as fault_layers
from aftt_tf.faults import registry, selection
from aftt_tf.faults.spec import FaultTargetError
from aftt_tf.vocabulary import PARAMETER_KINDS

# Kept for callers that filter by type; the registry is the source of truth.
WEIGHT_LAYER_TYPES = tuple(t for entry in registry.REGISTRY for t in entry.types)


def rewritable(model: keras.Model) -> bool:
    """Whether fault layers can be inserted by cloning (Sequential and Functional models);
    subclassed models take parameter faults through their variables instead."""
    return isinstance(model, keras.Sequential) or _is_functional(model)


def _is_functional(model: keras.Model) -> bool:
    from keras.src.models.functional import Functional  # No public name for the class.

    return isinstance(model, Functional) and not isinstance(model, keras.Sequential)


def as_functional(model: keras.Model) -> keras.Model:
    """A Sequential model as a Functional one sharing its layers (and weights); other
    models unchanged. Node faults and layer rewiring need a graph to call through."""
    if not isinstance(model, keras.Sequential):
        return model
    inputs = keras.Input(shape=model.input_shape[1:], dtype=model.inputs[0].dtype)
    outputs = inputs
    for layer in model.layers:
        outputs = layer(outputs)
    return keras.Model(inputs, outputs, name=model.name)


def weight_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The model's top-level layers of registered types, in model order. (Layers inside a
    nested model are not faulted; campaigns list them as left out.)"""
    return [layer for layer in model.layers if registry.layer_type(layer)]


def _output_names(model: keras.Model) -> set[str]:
    try:
        return set(as_functional(model).output_names)
    except (AttributeError, ValueError):  # Subclassed: the last weight layer.
        layers = weight_layers(model)
        return {layers[-1].name} if layers else set()


def hidden_weight_layers(model: keras.Model, types: tuple[type, ...] = WEIGHT_LAYER_TYPES):
    """Weight layers of `types` that do not produce the model's output (node-fault sites)."""
    outputs = _output_names(model)
    return [
        layer
        for layer in weight_layers(model)
        if isinstance(layer, types) and layer.name not in outputs
    ]


def candidates(model: keras.Model) -> list[selection.Candidate]:
    """The model's weight layers as the shared selection rule sees them."""
    outputs = _output_names(model)
    return [
        selection.Candidate(
            name=layer.name,
            convolution=registry.layer_type(layer).convolution,
            output=layer.name in outputs,
            node_faults=rewritable(model),
            node_refusal=(
                f"Node faults hold layer outputs at 0 through a layer inserted after "
                f"{layer.name!r}, which needs a Sequential or Functional model; "
                f"{type(model).__name__} is subclassed. Use parameter faults (weight, "
                "filter, stuck_value, bit), or rebuild the model as a Functional one."
            ),
        )
        for layer in weight_layers(model)
    ]


def select_layers(
    model: keras.Model,
    kind: str,
    scope: str = "all",
    layer_names: tuple[str, ...] = (),
    include_output_nodes: bool = False,
    exclude: tuple[str, ...] = (),
) -> list[str]:
    """Names of the layers that `kind` faults, in model order (see `selection.select`).

    Parameter kinds target every registered layer ('filter': convolutions only). 'node'
    targets the outputs of registered layers; the output layer is left out unless
    `include_output_nodes`. `layer_names` and `exclude` may be glob patterns.
    """
    if kind == "node" and not rewritable(model) and weight_layers(model):
        raise FaultTargetError(candidates(model)[0].node_refusal)
    return selection.select(
        candidates(model),
        kind,
        scope,
        layer_names,
        include_output_nodes,
        model_name=model.name,
        all_layer_names=[layer.name for layer in model.layers],
        exclude=exclude,
    )


def apply_faults(model: keras.Model, kind: str, layer_names: list[str]) -> keras.Model:
    """A copy of `model` with fault layers at `layer_names`, sharing no state with it.

    Parameter kinds replace Dense/Conv2D by FaultyDense/FaultyConv2D and wrap every other
    registered layer type in WeightFaults; 'node' inserts a NodeFault after each named
    layer. Weights are copied; with no fault assigned the copy computes exactly what
    `model` computes. Sequential models are rewritten as Functional ones.
    """
    if not rewritable(model):
        raise FaultTargetError(
            f"{type(model).__name__} is a subclassed model: fault layers cannot be inserted "
            "into it. Its parameter faults are applied to its variables (see "
            "keras_runner.VariableFaultRunner); node faults need a Functional model."
        )
    model = as_functional(model)
    targets = set(layer_names)
    for layer in model.layers:
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            if layer.name in targets:
                raise FaultTargetError(f"{layer.name}: only channels_last layers are supported.")

    def clone_function(layer):
        clone = layer.__class__.from_config(layer.get_config())
        if kind not in PARAMETER_KINDS or layer.name not in targets:
            return clone
        for base, faulty in fault_layers.FAULTY_CLASSES.items():
            if type(layer) is base:
                return faulty.from_config(layer.get_config())
        paths = [kernel.attribute for kernel in registry.layer_type(layer).kernels]
        if registry.bias(layer) is not None:
            paths.append(registry.layer_type(layer).bias)
        return fault_layers.WeightFaults(clone, paths, name=layer.name)

    # A node fault holds the layer's output at 0 after a BatchNormalization that reads it
    # alone (converters fold it into the layer, so the .tflite's output is the normalised
    # one): both runtimes then fault the same values.
    node_sites = {normalization_after(model, name) or name: name for name in targets}

    def call_function(layer, *args, **kwargs):
        outputs = layer(*args, **kwargs)
        if kind == "node" and layer.name in node_sites:
            target = node_sites[layer.name]
            outputs = fault_layers.NodeFault(target=target, name=f"{target}_node_fault")(outputs)
        return outputs

    faulty = keras.models.clone_model(
        model, clone_function=clone_function, call_function=call_function
    )
    _copy_weights(model, faulty)
    return faulty


def _consumers(model: keras.Model) -> dict[str, list[keras.layers.Layer]]:
    """Layer name -> the layers that read its output, in a Functional model's graph (a
    Sequential model's chain: each layer is read by the next)."""
    result: dict[str, list[keras.layers.Layer]] = {}
    if isinstance(model, keras.Sequential):
        layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
        for layer, reader in zip(layers, layers[1:], strict=False):
            result[layer.name] = [reader]
        return result
    for nodes in model._nodes_by_depth.values():  # No public graph walk in Keras 3.
        for node in nodes:
            for tensor in node.input_tensors:
                producer = tensor._keras_history.operation
                result.setdefault(producer.name, []).append(node.operation)
    return result


def readers(model: keras.Model, name: str) -> list[keras.layers.Layer]:
    """The layers that read layer `name`'s output."""
    return _consumers(model).get(name, [])


def normalization_after(model: keras.Model, name: str) -> str | None:
    """The BatchNormalization that alone reads layer `name`'s output, if any."""
    readers = _consumers(model).get(name, [])
    if len(readers) == 1 and isinstance(readers[0], keras.layers.BatchNormalization):
        return readers[0].name
    return None


def strip_faults(model: keras.Model) -> keras.Model:
    """The fault-free model: fault layers replaced by their plain Keras layers, weights kept."""
    model = as_functional(model)

    def call_function(layer, *args, **kwargs):
        if isinstance(layer, fault_layers.NodeFault):
            return args[0]
        return layer(*args, **kwargs)

    clean = keras.models.clone_model(model, clone_function=_plain, call_function=call_function)
    _copy_weights(model, clean)
    return clean


def bake_faults(model: keras.Model) -> keras.Model:
    """The model a faulty chip computes, without fault layers where weights can hold it:
    each fault layer becomes its plain Keras layer with the effective weights (weight *
    keep + replacement), NodeFault layers stay where their mask holds a unit at 0 (they
    export as a constant multiplication) and are dropped where the mask is all ones. For
    a model without faults this is `strip_faults`."""
    model = as_functional(model)
    effective = {layer.name: _effective_weights(layer) for layer in model.layers}
    unfaulted_nodes = {
        layer.name
        for layer in model.layers
        if isinstance(layer, fault_layers.NodeFault) and _all_ones(layer)
    }

    def clone_function(layer):
        if isinstance(layer, fault_layers.NodeFault):
            return layer.__class__.from_config(layer.get_config())
        return _plain(layer)

    def call_function(layer, *args, **kwargs):
        if layer.name in unfaulted_nodes:
            return args[0]
        return layer(*args, **kwargs)

    baked = keras.models.clone_model(
        model, clone_function=clone_function, call_function=call_function
    )
    for layer in baked.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        source = model.get_layer(layer.name)
        if isinstance(layer, fault_layers.NodeFault):
            layer.node_keep.assign(source.node_keep)
            continue
        for target, value in zip(layer.weights, effective[layer.name], strict=True):
            target.assign(value)
    return baked


def _plain(layer: keras.layers.Layer) -> keras.layers.Layer:
    config = layer.get_config()
    if isinstance(layer, fault_layers.FaultyDense):
        return keras.layers.Dense.from_config(config)
    if isinstance(layer, fault_layers.FaultyConv2D):
        return keras.layers.Conv2D.from_config(config)
    if isinstance(layer, fault_layers.WeightFaults):
        return layer.layer.__class__.from_config(layer.layer.get_config())
    return layer.__class__.from_config(config)


def _all_ones(layer) -> bool:
    return bool(np.all(np.asarray(layer.node_keep.numpy()) == 1.0))


def _effective_weights(layer: keras.layers.Layer) -> list:
    """A layer's own weights (in its plain layer's order) with its faults applied."""
    if isinstance(layer, (fault_layers.FaultyDense, fault_layers.FaultyConv2D)):
        values = [
            layer.kernel.numpy() * layer.kernel_keep.numpy() + layer.kernel_replacement.numpy()
        ]
        if layer.use_bias:
            values.append(
                layer.bias.numpy() * layer.bias_keep.numpy() + layer.bias_replacement.numpy()
            )
        return values
    if isinstance(layer, fault_layers.WeightFaults):
        faulted = {
            id(registry.variable(layer.layer, path)): (keep, replacement)
            for path, keep, replacement in zip(
                layer.weight_paths, layer.keeps, layer.replacements, strict=True
            )
        }
        values = []
        for weight in layer.layer.weights:
            value = weight.numpy()
            if id(weight) in faulted:
                keep, replacement = faulted[id(weight)]
                value = value * keep.numpy() + replacement.numpy()
            values.append(value)
        return values
    return [weight.numpy() for weight in layer.weights]


def _own_weights(layer: keras.layers.Layer) -> list:
    """A layer's model weights without fault state (the wrapped layer's, for WeightFaults)."""
    if isinstance(layer, fault_layers.WeightFaults):
        return list(layer.layer.weights)
    if isinstance(layer, (fault_layers.FaultyDense, fault_layers.FaultyConv2D)):
        return [w for w in (layer.kernel, layer.bias) if w is not None]
    return list(layer.weights)


def _copy_weights(source: keras.Model, destination: keras.Model) -> None:
    """Copies every layer's model weights (by layer name); fault state stays at defaults."""
    for layer in destination.layers:
        if isinstance(layer, (keras.layers.InputLayer, fault_layers.NodeFault)):
            continue
        original = source.get_layer(layer.name)
        for target, value in zip(_own_weights(layer), _own_weights(original), strict=True):
            target.assign(value)


def fault_layer(model: keras.Model, target: str, kind: str) -> keras.layers.Layer:
    """The layer of a faulty model that holds the fault state for `target`."""
    return model.get_layer(f"{target}_node_fault" if kind == "node" else target)
