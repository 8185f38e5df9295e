"""*Where* faults go in a Keras model: which layers a fault kind may touch (the registry's
layer types, through the shared selection rule), and the apply/strip/bake functions that rewrite a
Sequential or Functional model with fault layers.
"""

from __future__ import annotations

import keras
import numpy as np

from aftt_tf.faults import kinds, selection
from aftt_tf.faults.spec import FaultTargetError
from aftt_tf.runtimes import layers as fault_layers
from aftt_tf.runtimes import registry

# Kept for callers that filter by type; the registry is the source of truth.
WEIGHT_LAYER_TYPES = tuple(t for entry in registry.REGISTRY for t in entry.types)


def rewritable(model: keras.Model) -> bool:
    """Whether fault layers can be inserted by cloning (Sequential and Functional models);
    subclassed models take parameter faults through their variables instead."""
    return isinstance(model, keras.Sequential) or _is_functional(model)


def _is_functional(model: keras.Model) -> bool:
    return registry.is_functional(model)


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
    """The model's top-level layers of registered types, in model order (the paper's
    flat networks); `sites` finds faultable layers everywhere."""
    return [layer for layer in model.layers if registry.layer_type(layer)]


def sites(model: keras.Model, weights: str = "registered") -> list[registry.Site]:
    """Every faultable layer of the model by path, nested ones included (registry.sites)."""
    return registry.sites(model, weights)


def _output_paths(model: keras.Model) -> set[str]:
    """Paths of the layers whose output is the model's output (through nested models)."""
    try:
        names = set(as_functional(model).output_names)
    except (AttributeError, ValueError):  # Subclassed: the last faultable layer.
        found = sites(model)
        return {found[-1].path} if found else set()
    result = set(names)
    for name in names:
        try:
            inner = model.get_layer(name)
        except ValueError:
            continue
        if isinstance(inner, keras.Model):
            result |= {f"{name}/{path}" for path in _output_paths(inner)}
    return result


def hidden_weight_layers(model: keras.Model, types: tuple[type, ...] = WEIGHT_LAYER_TYPES):
    """Top-level weight layers of `types` that do not produce the model's output."""
    outputs = _output_paths(model)
    return [
        layer
        for layer in weight_layers(model)
        if isinstance(layer, types) and layer.name not in outputs
    ]


def node_sites(model: keras.Model) -> list[registry.Site]:
    """Layers whose outputs node faults can hold at 0 (in Sequential/Functional graphs,
    nested ones included), the output layer left out."""
    outputs = _output_paths(model)
    return [s for s in sites(model) if s.in_graph and s.path not in outputs]


def candidates(model: keras.Model, weights: str = "registered") -> list[selection.Candidate]:
    """The model's faultable layers (by path) as the shared selection rule sees them."""
    outputs = _output_paths(model)
    graph = rewritable(model)
    result = []
    for entry in sites(model, weights):
        if not graph:
            refusal = (
                f"Faults in layer outputs (node, activation_bit, activation_value) go "
                f"through a layer inserted after {entry.path!r}, which needs a Sequential "
                f"or Functional model; {type(model).__name__} is subclassed. Use parameter "
                "faults (weight, filter, stuck_value, bit), or rebuild the model as a "
                "Functional one."
            )
        else:
            refusal = (
                f"Faults in the output of {entry.path!r}: it is computed inside a composite "
                f"layer or subclassed sub-model ({entry.path.rsplit('/', 1)[0]!r}), where no "
                "layer can be inserted after it. Use parameter faults, or --exclude_layers."
            )
        result.append(
            selection.Candidate(
                name=entry.path,
                convolution=entry.convolution,
                output=entry.path in outputs,
                node_faults=graph and entry.registered,
                node_refusal=refusal,
            )
        )
    return result


def layer_paths(model: keras.Model) -> list[str]:
    """Every layer's path (top-level names first), for error messages and globs."""
    names = [layer.name for layer in model.layers]
    return names + [path for path, _, _ in registry.weight_holders(model) if path not in names]


def select_layers(
    model: keras.Model,
    kind: str,
    scope: str = "all",
    layer_names: tuple[str, ...] = (),
    include_output_nodes: bool = False,
    exclude: tuple[str, ...] = (),
    weights: str = "registered",
) -> list[str]:
    """Paths of the layers that `kind` faults, in model order (see `selection.select`).

    Parameter kinds target every faultable layer, nested ones included ('filter':
    convolutions only). 'node' targets the outputs of faultable layers of
    Sequential/Functional graphs; the output layer is left out unless
    `include_output_nodes`. `layer_names` and `exclude` may be glob patterns
    ('backbone/*').
    """
    found = candidates(model, weights)
    if kinds.resolve(kind).on_outputs and not rewritable(model) and found:
        raise FaultTargetError(found[0].node_refusal)
    return selection.select(
        found,
        kind,
        scope,
        layer_names,
        include_output_nodes,
        model_name=model.name,
        all_layer_names=layer_paths(model),
        exclude=exclude,
    )


def apply_faults(
    model: keras.Model,
    kind: kinds.FaultKind | str,
    layer_names: list[str],
    weights: str = "registered",
) -> keras.Model:
    """A copy of `model` with fault layers at `layer_names` (paths), sharing no state.

    Parameter kinds replace Dense/Conv2D by FaultyDense/FaultyConv2D and wrap every other
    registered layer type in WeightFaults; 'node' inserts a NodeFault after each named
    layer. Nested Sequential/Functional models holding targets are rewritten the same
    way; layers inside composite layers (attention projections) and layers found only
    by weights='all_trainable' keep their class: their faults are written into the
    copy's variables (`keras_runner.FaultInjector`). Weights are copied; with no fault
    assigned the copy computes exactly what `model` computes. Sequential models are
    rewritten as Functional ones.
    """
    if not rewritable(model):
        raise FaultTargetError(
            f"{type(model).__name__} is a subclassed model: fault layers cannot be inserted "
            "into it. Its parameter faults are applied to its variables (see "
            "keras_runner.FaultInjector); node faults need a Functional model."
        )
    kind = kinds.resolve(kind)
    faulty = _apply(model, kind, set(layer_names), "")
    if kind.on_outputs:
        _attach_inner_node_faults(faulty, model, layer_names, kind)
    return faulty


def output_fault(kind: kinds.FaultKind, target: str, name: str):
    """The layer that faults `target`'s output: a NodeFault (node faults) or an
    ActivationFault (transient faults, `transient_layer`)."""
    if kind.transient:
        from aftt_tf.runtimes.transient_layer import ActivationFault

        return ActivationFault(target=target, name=f"{name}_activation_fault")
    return fault_layers.NodeFault(target=target, name=f"{name}_node_fault")


def _attach_inner_node_faults(faulty: keras.Model, model: keras.Model, names, kind) -> None:
    """Output faults on layers inside composite layers (attention projections): no layer
    can be inserted there, so the copy's sub-layer applies the fault layer to its own
    output (its `call` is wrapped; the user's model is never touched)."""
    inner = {s.path for s in sites(model) if not s.in_graph}
    attached = {}
    for path in names:
        if path not in inner:
            continue
        *containers, leaf = path.split("/")
        holder = faulty
        for part in containers:
            holder = _child(holder, part)
        layer = _child(holder, leaf)
        node_fault = output_fault(kind, path, leaf)
        original = layer.call

        def call(*args, _original=original, _node=node_fault, **kwargs):
            return _node(_original(*args, **kwargs))

        layer.call = call
        attached[path] = node_fault
    if attached:
        faulty._aftt_inner_node_faults = attached
        # Builds the masks now (their shapes are the sub-layers' outputs), outside any
        # compiled function.
        probe = np.zeros((1, *faulty.inputs[0].shape[1:]), faulty.inputs[0].dtype)
        faulty(probe, training=False)


def _apply(model: keras.Model, kind: str, paths: set[str], prefix: str) -> keras.Model:
    model = as_functional(model)
    local = {p[len(prefix) :] for p in paths if p.startswith(prefix)}
    targets = {p for p in local if "/" not in p}
    nested = {
        layer.name
        for layer in model.layers
        if isinstance(layer, keras.Model)
        and rewritable(layer)
        and any(p.startswith(f"{layer.name}/") for p in local)
    }
    for layer in model.layers:
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            if layer.name in targets:
                raise FaultTargetError(f"{layer.name}: only channels_last layers are supported.")

    def clone_function(layer):
        if layer.name in nested:
            return _apply(layer, kind, paths, f"{prefix}{layer.name}/")
        clone = layer.__class__.from_config(layer.get_config())
        if not kind.on_parameters or layer.name not in targets:
            return clone
        if registry.layer_type(layer) is None:  # weights='all_trainable': in place.
            return clone
        for base, faulty in fault_layers.FAULTY_CLASSES.items():
            if type(layer) is base:
                return faulty.from_config(layer.get_config())
        paths_ = [kernel.attribute for kernel in registry.layer_type(layer).kernels]
        if registry.bias(layer) is not None:
            paths_.append(registry.layer_type(layer).bias)
        return fault_layers.WeightFaults(clone, paths_, name=layer.name)

    # A node fault holds the layer's output at 0 after a BatchNormalization that reads it
    # alone (converters fold it into the layer, so the .tflite's output is the normalised
    # one): both runtimes then fault the same values.
    node_sites_ = {output_point(model, name, kind): name for name in targets}

    def call_function(layer, *args, **kwargs):
        outputs = layer(*args, **kwargs)
        if kind.on_outputs and layer.name in node_sites_:
            target = node_sites_[layer.name]
            outputs = output_fault(kind, f"{prefix}{target}", target)(outputs)
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


def output_point(model: keras.Model, name: str, kind) -> str:
    """The layer after whose output `kind`'s fault on layer `name` sits: past a
    BatchNormalization and then a Rescaling that alone read it (folded by converters),
    and for transient
    faults also past a ReLU/ReLU6/tanh that alone reads that (fused by converters into
    the operator: the value a chip stores is the activated one). Stuck-at-0 node faults
    keep their place (0 passes through those activations unchanged)."""
    point = normalization_after(model, name) or name
    readers_ = _consumers(model).get(point, [])
    if len(readers_) == 1 and _folded_rescaling(model, point, readers_[0]):
        point = readers_[0].name
    if kind.transient:
        readers_ = _consumers(model).get(point, [])
        if len(readers_) == 1 and _fused_activation(readers_[0]):
            point = readers_[0].name
    return point


# Layers whose following scale and offset the converter folds (measured; so does a
# Dense on vectors, while a sequence Dense keeps them after its reshape).
_FOLDING_LAYERS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.DepthwiseConv2D)


def _folded_rescaling(model: keras.Model, point: str, reader) -> bool:
    """A Rescaling right after a linear convolution (or its folded batchnorm): the
    converter folds its scale and offset into the weights, so the stored output, where
    a .tflite's node faults sit, is the rescaled one."""
    if not isinstance(reader, keras.layers.Rescaling):
        return False
    layer = model.get_layer(point)
    if isinstance(layer, keras.layers.BatchNormalization):
        return True
    flat_dense = isinstance(layer, keras.layers.Dense) and len(layer.output.shape) == 2
    if not (isinstance(layer, _FOLDING_LAYERS) or flat_dense):
        return False
    activation = getattr(layer, "activation", None)
    return activation is not None and getattr(activation, "__name__", "") == "linear"


def _fused_activation(layer) -> bool:
    """An activation layer TFLite converters fuse into the operator before it."""
    if isinstance(layer, keras.layers.ReLU):
        config = layer.get_config()
        return (
            config.get("max_value") in (None, 6.0)
            and not config.get("negative_slope")
            and not config.get("threshold")
        )
    if isinstance(layer, keras.layers.Activation):
        return getattr(layer.activation, "__name__", "") in ("relu", "relu6", "tanh")
    return False


def normalization_after(model: keras.Model, name: str) -> str | None:
    """The BatchNormalization that alone reads layer `name`'s output, if any."""
    readers = _consumers(model).get(name, [])
    if len(readers) == 1 and isinstance(readers[0], keras.layers.BatchNormalization):
        return readers[0].name
    return None


def folded_normalization(model: keras.Model, path: str):
    """The BatchNormalization a converter folds into layer `path` (one that alone reads
    its output), looked up in the graph that holds the layer (a nested model's, for
    'backbone/conv1'); None when there is none. FaultTargetError when that graph cannot
    be read (a subclassed model or a composite layer) and holds BatchNormalization
    layers: which one folds into which layer is then unknown."""
    *containers, leaf = path.split("/")
    holder = model
    for part in containers:
        holder = _child(holder, part)
    if rewritable(holder):
        name = normalization_after(holder, leaf)
        return None if name is None else holder.get_layer(name)
    inner = holder._flatten_layers(include_self=False, recursive=True)
    if any(isinstance(layer, keras.layers.BatchNormalization) for layer in inner):
        raise FaultTargetError(
            f"{path}: {holder.name!r} is a subclassed model or composite layer holding "
            "BatchNormalization layers; which of them a converter folds into which layer "
            "(negating the stored int8 codes of channels with a negative scale) cannot be "
            "read from it. Run this campaign on the int8 .tflite itself, or save the model "
            "as a Functional one."
        )
    return None


def strip_faults(model: keras.Model) -> keras.Model:
    """The fault-free model: fault layers replaced by their plain Keras layers, weights kept."""
    model = as_functional(model)

    def call_function(layer, *args, **kwargs):
        if _is_output_fault(layer):
            return args[0]
        return layer(*args, **kwargs)

    def clone_function(layer):
        return strip_faults(layer) if isinstance(layer, keras.Model) else _plain(layer)

    clean = keras.models.clone_model(
        model, clone_function=clone_function, call_function=call_function
    )
    _copy_weights(model, clean)
    return clean


def bake_faults(model: keras.Model) -> keras.Model:
    """The model a faulty chip computes, without fault layers where weights can hold it:
    each fault layer becomes its plain Keras layer with the effective weights (weight *
    keep + replacement), NodeFault layers stay where their mask holds a unit at 0 (they
    export as a constant multiplication) and are dropped where the mask is all ones. For
    a model without faults this is `strip_faults`."""
    model = as_functional(model)
    effective = {
        layer.name: _effective_weights(layer)
        for layer in model.layers
        if not isinstance(layer, keras.Model)
    }
    unfaulted_nodes = {  # Transient faults are no part of a chip's permanent state.
        layer.name
        for layer in model.layers
        if (isinstance(layer, fault_layers.NodeFault) and _all_ones(layer))
        or (_is_output_fault(layer) and not isinstance(layer, fault_layers.NodeFault))
    }

    def clone_function(layer):
        if isinstance(layer, keras.Model):
            return bake_faults(layer)  # A nested model: baked with its own weights.
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
        if isinstance(layer, (keras.layers.InputLayer, keras.Model)):
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
        if isinstance(layer, keras.layers.InputLayer) or _is_output_fault(layer):
            continue
        original = source.get_layer(layer.name)
        if isinstance(layer, keras.Model) and isinstance(original, keras.Model):
            _copy_weights(original, layer)  # A nested model, rewritten or cloned.
            continue
        for target, value in zip(_own_weights(layer), _own_weights(original), strict=True):
            target.assign(value)


def fault_layer(model: keras.Model, target: str, kind: str) -> keras.layers.Layer:
    """The layer of a faulty model that holds the fault state for path `target`: its
    fault layer, or (inside a composite layer) the layer itself."""
    inner = getattr(model, "_aftt_inner_node_faults", {})
    kind = kinds.resolve(kind)
    if kind.on_outputs and target in inner:
        return inner[target]
    *containers, leaf = target.split("/")
    holder = model
    for part in containers:
        holder = _child(holder, part)
    suffix = "_activation_fault" if kind.transient else "_node_fault"
    return _child(holder, leaf + suffix if kind.on_outputs else leaf)


def _child(holder, name: str):
    if isinstance(holder, keras.Model):
        return holder.get_layer(name)
    for child in registry.children(holder):
        if child.name == name:
            return child
    raise ValueError(f"No layer {name!r} in {holder.name!r}.")


def _is_output_fault(layer) -> bool:
    """A NodeFault or an ActivationFault (by class name: no TensorFlow import here)."""
    return isinstance(layer, fault_layers.NodeFault) or type(layer).__name__ == "ActivationFault"


def is_fault_layer(layer) -> bool:
    return _is_output_fault(layer) or isinstance(
        layer,
        (
            fault_layers.FaultyDense,
            fault_layers.FaultyConv2D,
            fault_layers.WeightFaults,
            fault_layers.NodeFault,
        ),
    )
