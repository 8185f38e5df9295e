"""*Where* faults go: which layers of a classifier a fault kind may touch, and the
apply/strip pair that rewrites a Functional model with fault layers.
"""

from __future__ import annotations

import keras

from aftt_tf.faults import layers as fault_layers
from aftt_tf.faults import selection
from aftt_tf.faults.spec import FaultTargetError
from aftt_tf.vocabulary import PARAMETER_KINDS

# The Keras layer types whose kernels faults reach; FaultyDense/FaultyConv2D subclass them.
WEIGHT_LAYER_TYPES = (keras.layers.Dense, keras.layers.Conv2D)


def weight_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The model's layers that hold faultable kernels, in model order.

    The one registry every path uses: fault campaigns, fault-aware training, export layer
    maps and the reproduction's node-fault layers.
    """
    return [layer for layer in model.layers if isinstance(layer, WEIGHT_LAYER_TYPES)]


def hidden_weight_layers(model: keras.Model, types: tuple[type, ...] = WEIGHT_LAYER_TYPES):
    """Weight layers of `types` that do not produce the model's output (node-fault sites)."""
    output_names = set(model.output_names)
    return [
        layer
        for layer in weight_layers(model)
        if isinstance(layer, types) and layer.name not in output_names
    ]


def candidates(model: keras.Model) -> list[selection.Candidate]:
    """The model's weight layers as the shared selection rule sees them."""
    output_names = set(model.output_names)
    return [
        selection.Candidate(
            name=layer.name,
            convolution=isinstance(layer, keras.layers.Conv2D),
            output=layer.name in output_names,
        )
        for layer in weight_layers(model)
    ]


def select_layers(
    model: keras.Model,
    kind: str,
    scope: str = "all",
    layer_names: tuple[str, ...] = (),
    include_output_nodes: bool = False,
) -> list[str]:
    """Names of the layers that `kind` faults, in model order (see `selection.select`).

    Parameter kinds target Dense and Conv2D layers ('filter': Conv2D only). 'node'
    targets the outputs of Dense/Conv2D layers; the output layer (logits) is left
    out unless `include_output_nodes`.
    """
    return selection.select(
        candidates(model),
        kind,
        scope,
        layer_names,
        include_output_nodes,
        model_name=model.name,
        all_layer_names=[layer.name for layer in model.layers],
    )


def apply_faults(model: keras.Model, kind: str, layer_names: list[str]) -> keras.Model:
    """A copy of `model` with fault layers at `layer_names`, sharing no state with it.

    Parameter kinds replace Dense/Conv2D by FaultyDense/FaultyConv2D; 'node' inserts
    a NodeFault after each named layer. Weights are copied; with no fault assigned
    the copy computes exactly what `model` computes.
    """
    targets = set(layer_names)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D) and layer.name in targets:
            if layer.data_format != "channels_last":
                raise FaultTargetError(
                    f"{layer.name}: only channels_last convolutions are supported."
                )

    def clone_function(layer):
        config = layer.get_config()
        if kind in PARAMETER_KINDS and layer.name in targets:
            for base, faulty in fault_layers.FAULTY_CLASSES.items():
                if type(layer) is base:
                    return faulty.from_config(config)
        return layer.__class__.from_config(config)

    def call_function(layer, *args, **kwargs):
        outputs = layer(*args, **kwargs)
        if kind == "node" and layer.name in targets:
            outputs = fault_layers.NodeFault(target=layer.name, name=f"{layer.name}_node_fault")(
                outputs
            )
        return outputs

    faulty = keras.models.clone_model(
        model, clone_function=clone_function, call_function=call_function
    )
    _copy_weights(model, faulty)
    return faulty


def strip_faults(model: keras.Model) -> keras.Model:
    """The fault-free model: fault layers replaced by their plain Keras layers, weights kept."""

    def clone_function(layer):
        config = layer.get_config()
        if isinstance(layer, fault_layers.FaultyDense):
            return keras.layers.Dense.from_config(config)
        if isinstance(layer, fault_layers.FaultyConv2D):
            return keras.layers.Conv2D.from_config(config)
        return layer.__class__.from_config(config)

    def call_function(layer, *args, **kwargs):
        if isinstance(layer, fault_layers.NodeFault):
            return args[0]
        return layer(*args, **kwargs)

    clean = keras.models.clone_model(
        model, clone_function=clone_function, call_function=call_function
    )
    _copy_weights(model, clean)
    return clean


def _copy_weights(source: keras.Model, destination: keras.Model) -> None:
    """Copies kernels and biases (by layer name); fault state stays at its defaults."""
    for layer in destination.layers:
        try:
            original = source.get_layer(layer.name)
        except ValueError:
            continue  # An inserted NodeFault layer.
        for attribute in ("kernel", "bias"):
            if getattr(layer, attribute, None) is not None:
                getattr(layer, attribute).assign(getattr(original, attribute))
        if not isinstance(layer, WEIGHT_LAYER_TYPES):
            for target, value in zip(layer.weights, original.weights, strict=True):
                target.assign(value)


def fault_layer(model: keras.Model, target: str, kind: str) -> keras.layers.Layer:
    """The layer of a faulty model that holds the fault state for `target`."""
    return model.get_layer(f"{target}_node_fault" if kind == "node" else target)
