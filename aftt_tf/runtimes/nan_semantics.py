"""One NaN semantics for both runtimes: a NaN that reaches a pooling layer, a max/min
reduction or an elementwise Maximum/Minimum, or a value beyond 2**90 that reaches a
sigmoid, makes the whole inference non-finite.

Kernels disagree on a NaN inside a pooling window or a max/min reduction, and none of
them propagates it as IEEE 754-2019's maximum does (measured on a window or row holding
NaN): TensorFlow's MaxPool skips it and returns the largest other value; LiteRT's
XNNPACK MAX_POOL_2D and AVERAGE_POOL_2D return -inf or an order-dependent value (its
output clamp turns NaN into -inf); its REDUCE_MAX/REDUCE_MIN restart from the value
after the NaN; TensorFlow's reduce_max and average pooling return NaN. A -inf can then
vanish in a later ReLU, and an inference be counted as a class in one runtime and as a
detected error in the other. XNNPACK's MAXIMUM/MINIMUM return the other operand for a
NaN in one of them, by operand order. Its sigmoid (LOGISTIC, and so SiLU/swish)
returns NaN for most inputs between about 2.09e27 and 2.36e38, by value (TensorFlow: 0
or 1); such values come from exponent bit faults. No value can be matched across
kernels, so both runtimes count such an inference as IEEE propagation would count a NaN:
non-finite (a DUE).

Keras: a campaign of a kind that can make NaN puts the rule on its own model's layers
(`guard_layers`: the layers below and every sigmoid/SiLU activation set every output of
an inference whose input breaks the rule to NaN; instance attributes of the campaign's
copy, so nothing traced or exported elsewhere sees them; a subclassed model's own
layers get them back when the campaign closes). `.tflite`: the inputs of the operators
below become extra graph outputs (`with_guards`); an inference breaking the rule in any
of them has NaN outputs. Inf is left alone: every kernel measured agrees on it.
Measured and not covered (no layer of the test zoo computes them): XNNPACK's softplus
of a large input (inf vs the input), SELU and exp of NaN (finite vs NaN).
"""

from __future__ import annotations

import types

import numpy as np

# Sigmoid inputs at or beyond this magnitude count as non-finite.
SIGMOID_LIMIT = 2.0**90
# .tflite operators whose NaN handling is kernel-defined; the rule's limit on |x| (inf:
# NaN alone breaks it).
GUARDED_OPERATORS = {
    "MAX_POOL_2D": np.inf,
    "AVERAGE_POOL_2D": np.inf,
    "REDUCE_MAX": np.inf,
    "REDUCE_MIN": np.inf,
    "MAXIMUM": np.inf,
    "MINIMUM": np.inf,
    "LOGISTIC": SIGMOID_LIMIT,
}
# Keras layers computing them (class names; their subclasses are covered too).
GUARDED_LAYERS = (
    "MaxPooling1D",
    "MaxPooling2D",
    "MaxPooling3D",
    "AveragePooling1D",
    "AveragePooling2D",
    "AveragePooling3D",
    "GlobalMaxPooling1D",
    "GlobalMaxPooling2D",
    "GlobalMaxPooling3D",
    "Maximum",
    "Minimum",
)


def _broken_rows(values, limit: float):
    """Per inference (first axis): does `values` hold a NaN (or |x| >= limit)."""
    from keras import ops

    broken = ops.isnan(values)
    if limit != np.inf:
        broken = ops.logical_or(broken, ops.abs(values) >= limit)
    return ops.any(ops.reshape(broken, (ops.shape(values)[0], -1)), axis=1)


def _poisoned(outputs, broken):
    from keras import ops

    broken = ops.reshape(broken, (-1,) + (1,) * (len(outputs.shape) - 1))
    return ops.where(broken, ops.cast(float("nan"), outputs.dtype), outputs)


def _guarded_call(original):
    def call(self, inputs, *args, **kwargs):
        from keras import ops

        outputs = original(self, inputs, *args, **kwargs)
        tensors = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        broken = _broken_rows(tensors[0], np.inf)
        for tensor in tensors[1:]:
            broken = ops.logical_or(broken, _broken_rows(tensor, np.inf))
        return _poisoned(outputs, broken)

    return call


def _guarded_sigmoid(original):
    def function(x, *args, **kwargs):
        outputs = original(x, *args, **kwargs)
        if getattr(x, "shape", None) is None or len(x.shape) < 2:  # Not a layer's output.
            return outputs
        return _poisoned(outputs, _broken_rows(x, SIGMOID_LIMIT))

    function.__name__ = getattr(original, "__name__", "sigmoid")
    return function


# Activation functions computed with a sigmoid (by their Keras names).
_SIGMOID_FUNCTIONS = ("sigmoid", "silu", "swish")
_ACTIVATION_ATTRIBUTES = ("activation", "recurrent_activation")


def guard_layers(model) -> list[tuple[object, str, object]]:
    """Puts the rule on the layers of `model` (nested models, RNN cells and composite
    layers included): pooling, Maximum and Minimum layers and every sigmoid/SiLU
    activation. Instance attributes only, so no other model (and nothing traced or
    exported outside the campaign) sees it. Returns what `unguard` restores."""
    import keras

    guarded_types = tuple(getattr(keras.layers, name) for name in GUARDED_LAYERS)
    records: list[tuple[object, str, object]] = []
    for layer in _all_layers(model):
        if isinstance(layer, guarded_types) and "call" not in vars(layer):
            records.append((layer, "call", None))
            layer.call = types.MethodType(_guarded_call(type(layer).call), layer)
        for attribute in _ACTIVATION_ATTRIBUTES:
            function = vars(layer).get(attribute)
            if callable(function) and getattr(function, "__name__", "") in _SIGMOID_FUNCTIONS:
                records.append((layer, attribute, function))
                setattr(layer, attribute, _guarded_sigmoid(function))
    return records


def unguard(records: list[tuple[object, str, object]]) -> None:
    """Takes the rule off again (`guard_layers`' records)."""
    for layer, attribute, original in reversed(records):
        if original is None:
            delattr(layer, attribute)
        else:
            setattr(layer, attribute, original)


def _all_layers(model) -> list:
    """Every layer reachable from `model`: nested models, wrappers, RNN cells."""
    seen, order, stack = set(), [], [model]
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        order.append(layer)
        children = list(getattr(layer, "_layers", None) or [])
        if isinstance(getattr(layer, "layers", None), list):
            children += layer.layers
        for name in ("cell", "layer", "forward_layer", "backward_layer"):
            child = vars(layer).get(name)
            if child is not None and callable(child):
                children.append(child)
        stack.extend(reversed(children))
    return order


def with_guards(content: bytes) -> tuple[bytes, dict[int, float]]:
    """`content` with the float inputs of guarded operators of the main graph added to
    its outputs (after the model's own); returns (bytes, {guard tensor: limit}). The
    file is returned unchanged when it has none (an int8 file holds no NaN)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    graph = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    subgraph = graph.subgraphs[0]
    limits = {
        getattr(schema.BuiltinOperator, name): limit
        for name, limit in GUARDED_OPERATORS.items()
        if hasattr(schema.BuiltinOperator, name)
    }
    floats = {schema.TensorType.FLOAT32, schema.TensorType.FLOAT16}
    outputs = [int(t) for t in subgraph.outputs]
    guards: dict[int, float] = {}
    for operator in subgraph.operators:
        code = graph.operatorCodes[operator.opcodeIndex]
        builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
        if builtin not in limits:
            continue
        for tensor in (int(t) for t in operator.inputs):
            if tensor < 0 or subgraph.tensors[tensor].type not in floats:
                continue
            if _constant(graph, subgraph, tensor):
                continue
            guards[tensor] = min(guards.get(tensor, np.inf), limits[builtin])
    guards = {t: limit for t, limit in guards.items() if t not in outputs}
    if not guards:
        return content, {}
    subgraph.outputs = np.asarray(outputs + list(guards), np.int32)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(graph)), guards


def _constant(graph, subgraph, tensor: int) -> bool:
    buffer = graph.buffers[subgraph.tensors[tensor].buffer]
    data = getattr(buffer, "data", None)
    return (data is not None and len(data) > 0) or getattr(buffer, "offset", 0) > 1
