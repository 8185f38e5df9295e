"""Node faults in a .tflite file: a constant mask multiplied into each faulted layer's output.

A node fault holds units of a layer's output at 0, in every layer type (dense units,
convolution output positions, embedding outputs). Rewriting weights cannot express
that for convolutions (one filter feeds every position), so the file is rewritten once
per campaign: after each targeted layer's output tensor (the node point, see
`tflite_file._Graph.node_point`) a MUL by a constant mask tensor of the output's shape
is inserted and every consumer reads the product. A trial writes 1s and 0s into the
masks' bytes and builds an interpreter from them; the weights are never touched.

The mask has the output's type; quantized outputs (int8, int16) get a mask with scale 1
and zero point 0 and a product with the output's own quantization, so the MUL is exact:
kept values are unchanged and faulted ones are the zero point, real 0.
"""

from __future__ import annotations

import copy

import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.tools import flatbuffer_utils

from aftt_tf.runtimes import tflite_file

_MASK_NAME = "aftt_node_fault_mask/"


def with_masks(
    content: bytes, points: dict[str, int]
) -> tuple[bytes, dict[str, tflite_file.ConstantTensor]]:
    """The file with a mask multiplication after each named node point tensor, and each
    layer's mask tensor (all ones: the file computes what `content` computes)."""
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    graph = model.subgraphs[0]
    opcode = _mul_opcode(model)
    mask_indices = {}
    for name, point in points.items():
        mask_indices[name] = _insert_mask(model, graph, opcode, point, name)
    rewritten = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    parsed = tflite_file._Graph(rewritten)
    masks = {name: parsed.constant(index) for name, index in mask_indices.items()}
    return rewritten, masks


def mask_values(mask: tflite_file.ConstantTensor, positions: np.ndarray) -> np.ndarray:
    """Mask contents that hold the flat `positions` of the output at 0."""
    values = np.ones(int(np.prod(mask.shape)), mask.dtype)
    values[positions] = 0
    return values


def _mul_opcode(model) -> int:
    for index, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == schema.BuiltinOperator.MUL:
            return index
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.MUL
    code.version = 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _insert_mask(model, graph, opcode: int, point: int, name: str) -> int:
    """Inserts `point * mask` right after the operator that produces `point`; returns the
    mask's tensor index."""
    source = graph.tensors[point]
    shape = [1, *[int(d) for d in source.shape[1:]]]
    mask_buffer = schema.BufferT()
    dtype = tflite_file._NUMPY_TYPES[source.type]
    mask_buffer.data = np.ones(int(np.prod(shape)), dtype).view(np.uint8)
    model.buffers.append(mask_buffer)
    mask = schema.TensorT()
    mask.shape, mask.type, mask.buffer = shape, source.type, len(model.buffers) - 1
    mask.name = _MASK_NAME + name
    product = copy.deepcopy(source)
    product.name = f"{_name(source)}/aftt_node_fault"
    scale = None if source.quantization is None else source.quantization.scale
    if scale is not None and len(scale):
        quantization = schema.QuantizationParametersT()
        quantization.scale, quantization.zeroPoint = [1.0], [0]
        mask.quantization = quantization
    graph.tensors.extend([mask, product])
    mask_index, product_index = len(graph.tensors) - 2, len(graph.tensors) - 1
    for operator in graph.operators:
        operator.inputs = [product_index if t == point else t for t in operator.inputs]
    graph.outputs = [product_index if t == point else t for t in graph.outputs]
    for signature in model.signatureDefs or []:
        for output in signature.outputs or []:
            if output.tensorIndex == point:
                output.tensorIndex = product_index
    multiply = schema.OperatorT()
    multiply.opcodeIndex = opcode
    multiply.inputs, multiply.outputs = [point, mask_index], [product_index]
    multiply.builtinOptionsType = schema.BuiltinOptions.MulOptions
    multiply.builtinOptions = schema.MulOptionsT()
    producer = next(
        (i for i, operator in enumerate(graph.operators) if point in list(operator.outputs)),
        -1,
    )
    graph.operators.insert(producer + 1, multiply)
    return mask_index


def _name(tensor) -> str:
    name = tensor.name
    return name.decode(errors="replace") if isinstance(name, bytes) else str(name)
