"""*Where* faults go: which layers of a classifier a fault kind may touch, and the
apply/strip pair that rewrites a Functional model with fault layers.
"""

from __future__ import annotations

import keras

from aftt_tf.faults import layers as fault_layers
from aftt_tf.faults.kinds import FAULT_KINDS, PARAMETER_KINDS, SCOPES, FaultTargetError, in_scope


def _is_parametric(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D))


def select_layers(
    model: keras.Model,
    kind: str,
    scope: str = "all",
    layer_names: tuple[str, ...] = (),
    include_output_nodes: bool = False,
) -> list[str]:
    """Names of the layers that `kind` faults, in model order.

    Parameter kinds target Dense and Conv2D layers ('filter': Conv2D only). 'node'
    targets the outputs of Dense/Conv2D layers; the output layer (logits) is left
    out unless `include_output_nodes`. `layer_names`, when given, restricts the
    selection and must name existing, faultable layers.
    """
    if kind not in FAULT_KINDS:
        raise FaultTargetError(
            f"Unknown fault kind {kind!r}; expected one of {', '.join(FAULT_KINDS)}."
        )
    if scope not in SCOPES:
        raise FaultTargetError(f"Unknown scope {scope!r}; expected one of {', '.join(SCOPES)}.")
    parametric = [layer for layer in model.layers if _is_parametric(layer)]
    if not parametric:
        raise FaultTargetError(f"Model {model.name!r} has no Dense or Conv2D layer to fault.")
    if kind == "filter":
        candidates = [layer for layer in parametric if isinstance(layer, keras.layers.Conv2D)]
        if not candidates:
            raise FaultTargetError(
                f"Filter faults need convolutions; model {model.name!r} has none. Use "
                "--fault=weight or --fault=node."
            )
    elif kind == "node":
        output_names = set(model.output_names)
        candidates = [
            layer for layer in parametric if include_output_nodes or layer.name not in output_names
        ]
    else:
        candidates = parametric
    names = [layer.name for layer in candidates]
    if layer_names:
        all_names = {layer.name for layer in model.layers}
        missing = [name for name in layer_names if name not in all_names]
        if missing:
            raise FaultTargetError(
                f"Layers {missing} do not exist in {model.name!r}; its layers are "
                f"{sorted(all_names)}."
            )
        wrong = [name for name in layer_names if name not in names]
        if wrong:
            raise FaultTargetError(
                f"Layers {wrong} cannot take {kind!r} faults; layers that can: {names}."
            )
        names = [name for name in names if name in layer_names]
    names = [name for name in names if in_scope(name, scope)]
    if not names:
        raise FaultTargetError(
            f"No layer of {model.name!r} takes {kind!r} faults in scope {scope!r}."
        )
    return names


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
        if not _is_parametric(layer):
            for target, value in zip(layer.weights, original.weights, strict=True):
                target.assign(value)


def fault_layer(model: keras.Model, target: str, kind: str) -> keras.layers.Layer:
    """The layer of a faulty model that holds the fault state for `target`."""
    return model.get_layer(f"{target}_node_fault" if kind == "node" else target)
