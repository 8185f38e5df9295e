""".tflite files read with numpy and ai-edge-litert only (no TensorFlow): weights, I/O, predictions.

The file is read once into memory and parsed with LiteRT's flatbuffer schema. Every
weight-bearing operator with constant weights (FULLY_CONNECTED, CONV_2D,
DEPTHWISE_CONV_2D, TRANSPOSE_CONV, CONV_3D, GATHER, EMBEDDING_LOOKUP;
stored, or float16 behind DEQUANTIZE) belongs to a `TFLiteLayer`: where its weight and
bias bytes sit in the file, their shape, type and quantization, the Keras layout of
its kernel, and where the layer's output is. Export (layer maps, clean accuracies) and
the TFLite fault runtime both read files this way.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import struct
from pathlib import Path

import numpy as np
from ai_edge_litert import schema_py_generated as schema

_BUILTIN = schema.BuiltinOperator
_NUMPY_TYPES = {
    schema.TensorType.FLOAT32: np.float32,
    schema.TensorType.FLOAT16: np.float16,
    schema.TensorType.INT16: np.int16,
    schema.TensorType.INT64: np.int64,
    schema.TensorType.INT8: np.int8,
    schema.TensorType.INT32: np.int32,
    schema.TensorType.UINT8: np.uint8,
}


@dataclasses.dataclass(frozen=True)
class _OperatorSpec:
    """Where a weight-bearing operator keeps its weights, data input and bias."""

    kind: str
    weights_input: int
    data_input: int
    bias_input: int | None


_WEIGHT_OPERATORS = {
    _BUILTIN.FULLY_CONNECTED: _OperatorSpec("fully_connected", 1, 0, 2),
    _BUILTIN.CONV_2D: _OperatorSpec("conv_2d", 1, 0, 2),
    _BUILTIN.DEPTHWISE_CONV_2D: _OperatorSpec("depthwise_conv_2d", 1, 0, 2),
    _BUILTIN.TRANSPOSE_CONV: _OperatorSpec("transpose_conv", 1, 2, 3),
    _BUILTIN.CONV_3D: _OperatorSpec("conv_3d", 1, 0, 2),
    _BUILTIN.GATHER: _OperatorSpec("gather", 0, 1, None),
    _BUILTIN.EMBEDDING_LOOKUP: _OperatorSpec("embedding_lookup", 1, 0, None),
}
SUPPORTED_OPERATORS = tuple(spec.kind.upper() for spec in _WEIGHT_OPERATORS.values())
# Elementwise activation operators: a layer's output passes through them when they carry
# the layer's own name (a Keras Dense(activation="sigmoid") is FULLY_CONNECTED + LOGISTIC).
_ACTIVATIONS = {
    _BUILTIN.LOGISTIC,
    _BUILTIN.TANH,
    _BUILTIN.RELU,
    _BUILTIN.RELU6,
    _BUILTIN.RELU_N1_TO_1,
    _BUILTIN.RELU_0_TO_1,
    _BUILTIN.ELU,
    _BUILTIN.HARD_SWISH,
    _BUILTIN.LEAKY_RELU,
    _BUILTIN.GELU,
    _BUILTIN.EXP,
    _BUILTIN.SOFTMAX,
    _BUILTIN.LOG_SOFTMAX,
}
_REQUANTIZE = {_BUILTIN.QUANTIZE, _BUILTIN.DEQUANTIZE}
# Activations whose output is what a layer stores, fused or not (Keras: ReLU, ReLU6, tanh).
_STORED_ACTIVATIONS = {_BUILTIN.RELU, _BUILTIN.RELU6, _BUILTIN.TANH}
_ZERO_PRESERVING_OPERATORS = {
    _BUILTIN.RELU,
    _BUILTIN.RELU6,
    _BUILTIN.RELU_N1_TO_1,
    _BUILTIN.RELU_0_TO_1,
    _BUILTIN.TANH,
    _BUILTIN.LEAKY_RELU,
    _BUILTIN.ELU,
    _BUILTIN.HARD_SWISH,
    _BUILTIN.GELU,
}


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # Fallback for machines with TensorFlow but no ai-edge-litert.
        from tensorflow.lite import Interpreter  # type: ignore[no-redef]
    return Interpreter


@dataclasses.dataclass
class ConstantTensor:
    """A constant tensor stored in the flatbuffer: where its bytes are and what they mean."""

    index: int
    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype
    scales: np.ndarray  # Per channel (or one value); empty for float tensors.
    quantized_dimension: int
    zero_points: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize


# Keras kernel layout of each operator's stored weights: (keras shape from the file shape,
# the permutation that turns the Keras kernel into the file's layout; None: same flat order).
_LAYOUTS = {
    "fully_connected": (lambda s: (s[1], s[0]), (1, 0)),  # File (O, I), Keras (I, O).
    "conv_2d": (lambda s: (s[1], s[2], s[3], s[0]), (3, 0, 1, 2)),  # OHWI vs HWIO.
    "transpose_conv": (lambda s: (s[1], s[2], s[0], s[3]), (2, 0, 1, 3)),  # OHWI vs HWOI.
    "conv_3d": (lambda s: tuple(s), None),  # DHWIO in both.
    "gather": (lambda s: tuple(s), None),  # (vocabulary, dimension) in both.
    "embedding_lookup": (lambda s: tuple(s), None),
    # A per-channel constant of an elementwise MUL/ADD/SUB: (1, ..., C) in the file, (C,)
    # in Keras (a normalisation layer's gamma or beta).
    "elementwise": (lambda s: (int(np.prod(s)),), None),
}
# Axis of the Keras kernel that indexes filters (output channels; depthwise: input channels).
_FILTER_AXES = {"conv_2d": -1, "conv_3d": -1, "transpose_conv": -2, "depthwise_conv_2d": -2}


@dataclasses.dataclass
class OperatorKernel:
    """The constant weights of one weight-bearing operator, in the file and as Keras sees them."""

    operator_index: int
    operator: str  # 'fully_connected', 'conv_2d', 'depthwise_conv_2d', 'transpose_conv', ...
    weights: ConstantTensor
    input_channels: int = 0  # Of the operator's input (depthwise: C of C * multiplier).
    subgraph: int = 0  # 0: the main graph; else a WHILE/IF body (operator indices are local).

    @property
    def keras_kernel_shape(self) -> tuple[int, ...]:
        shape = self.weights.shape
        if self.operator == "depthwise_conv_2d":  # File (1, H, W, C*M), Keras (H, W, C, M).
            _, height, width, channels = shape
            inputs = self.input_channels or channels
            return (height, width, inputs, channels // inputs)
        return _LAYOUTS[self.operator][0](shape)

    @property
    def filter_axis(self) -> int | None:
        return _FILTER_AXES.get(self.operator)

    @functools.cached_property
    def _file_position_of_keras_index(self) -> np.ndarray:
        permutation = _LAYOUTS.get(self.operator, (None, None))[1]
        size = int(np.prod(self.weights.shape))
        if permutation is None:  # The same flat order in both layouts.
            return np.arange(size)
        keras_index = np.arange(size).reshape(self.keras_kernel_shape)
        file_order = keras_index.transpose(permutation).reshape(-1)
        inverse = np.empty_like(file_order)
        inverse[file_order] = np.arange(file_order.size)
        return inverse

    def keras_to_file_positions(self, keras_positions: np.ndarray) -> np.ndarray:
        """Flat indices in the file's layout of flat indices in the Keras kernel layout."""
        return self._file_position_of_keras_index[keras_positions]


# Keras attribute names of the kernels of multi-operator layers (fault positions of kernel
# i > 0 are drawn from a generator labelled with it, as in the Keras runtime).
_MULTI_OPERATOR_LAYERS = {
    ("depthwise_conv_2d", "conv_2d"): (
        "separable_conv_2d",
        ("depthwise_kernel", "pointwise_kernel"),
    ),
    # An unrolled LSTM/GRU/SimpleRNN (kernels shared by every step; see _recurrent_order).
    ("fully_connected", "fully_connected"): (
        "unrolled_recurrent",
        ("cell.kernel", "cell.recurrent_kernel"),
    ),
}


@dataclasses.dataclass
class TFLiteLayer:
    """One Keras layer in the file: one weight-bearing operator, or the operators that
    carry one Keras layer's name (SeparableConv2D: DEPTHWISE_CONV_2D then a 1x1 CONV_2D)."""

    name: str
    kernels: list[OperatorKernel]
    bias: ConstantTensor | None  # The last operator's (the layer's own bias).
    output_tensor: int = -1  # The last operator's output.
    scope: str | None = None  # The Keras name in the converter's tensor names, if any.
    bias_operator: int | None = None  # The separate ADD holding the bias, if any.
    node_tensor: int | None = None  # Where node faults hold the output at 0 (None: unknown).
    # Where transient faults corrupt the output: the node point, or past a ReLU/ReLU6/tanh
    # operator that alone reads it (as the Keras runtime places them; see
    # targets.output_point), so an unfused activation is on the same side in both.
    transient_tensor: int | None = None
    node_refusal: str | None = None  # Why node faults cannot be placed, when they cannot.
    shared_operators: list[int] = dataclasses.field(default_factory=list)
    # Quantization metadata (int8 files): each kernel's per-channel scales, and the zero
    # point of the tensor the layer's output is requantized to.
    scale_tensors: list[ConstantTensor] = dataclasses.field(default_factory=list)
    zero_point_tensor: ConstantTensor | None = None
    attributes: tuple[str, ...] | None = None  # Keras names of the kernels, when known.
    subgraph: int = 0  # The subgraph its operators are in (0: the main graph).

    @property
    def operator_index(self) -> int:
        return self.kernels[0].operator_index

    @property
    def operator_indices(self) -> list[int]:
        return [kernel.operator_index for kernel in self.kernels]

    @property
    def all_operator_indices(self) -> list[int]:
        """The weight operators and the separate bias ADD: every operator holding its weights."""
        extra = [] if self.bias_operator is None else [self.bias_operator]
        return self.operator_indices + extra + self.shared_operators

    @property
    def operator(self) -> str:
        kinds = tuple(kernel.operator for kernel in self.kernels)
        if len(kinds) == 1:
            return kinds[0]
        return _MULTI_OPERATOR_LAYERS.get(kinds, ("+".join(kinds), ()))[0]

    @property
    def weights(self) -> ConstantTensor:
        return self.kernels[0].weights

    @property
    def keras_attributes(self) -> tuple[str, ...]:
        if self.attributes is not None:
            return self.attributes
        kinds = tuple(kernel.operator for kernel in self.kernels)
        default = tuple(f"kernel_{index}" for index in range(len(kinds)))
        return (
            _MULTI_OPERATOR_LAYERS.get(kinds, ("", default))[1] if len(kinds) > 1 else ("kernel",)
        )

    @property
    def filter_axes(self) -> list[int | None]:
        """Filter axis per kernel: a multi-operator layer's filters are its last operator's
        output channels (SeparableConv2D's depthwise kernel has none, as in Keras)."""
        if self.attributes is not None:  # Normalisation constants: no filters.
            return [None] * len(self.kernels)
        if len(self.kernels) == 1:
            return [self.kernels[0].filter_axis]
        return [None] * (len(self.kernels) - 1) + [self.kernels[-1].filter_axis]

    @property
    def filter_axis(self) -> int | None:
        return next((axis for axis in self.filter_axes if axis is not None), None)

    @property
    def keras_kernel_shape(self) -> tuple[int, ...]:
        return self.kernels[0].keras_kernel_shape

    def keras_to_file_positions(self, keras_positions: np.ndarray) -> np.ndarray:
        return self.kernels[0].keras_to_file_positions(keras_positions)


def _per_element(tensor: ConstantTensor, values: np.ndarray, default: float) -> np.ndarray:
    size = int(np.prod(tensor.shape))
    if values.size <= 1:
        return np.full(size, values.reshape(-1)[0] if values.size else default)
    shape = [1] * len(tensor.shape)
    shape[tensor.quantized_dimension] = -1
    return np.broadcast_to(values.reshape(shape), tensor.shape).reshape(-1)


def element_scales(tensor: ConstantTensor) -> np.ndarray:
    """Quantization scale of every element of a tensor, flat (1.0 for float tensors)."""
    return _per_element(tensor, tensor.scales.astype(np.float64), 1.0).astype(np.float64)


def element_zero_points(tensor: ConstantTensor) -> np.ndarray:
    """Quantization zero point of every element, flat (0 for float or symmetric tensors):
    the stored value that means real 0."""
    return _per_element(tensor, tensor.zero_points.astype(np.int64), 0).astype(np.int64)


def tensor_type(content: bytes, tensor_index: int) -> np.dtype:
    """The stored type of tensor `tensor_index` of the main graph."""
    graph = schema.Model.GetRootAs(content, 0).Subgraphs(0)
    return np.dtype(_NUMPY_TYPES[graph.Tensors(tensor_index).Type()])


def tensor_shape(content: bytes, tensor_index: int) -> tuple[int, ...]:
    """The shape of tensor `tensor_index` of the main graph as stored (batch 1)."""
    graph = schema.Model.GetRootAs(content, 0).Subgraphs(0)
    return _shape(graph.Tensors(tensor_index))


def read_values(content: bytes, tensor: ConstantTensor) -> np.ndarray:
    """A constant tensor's stored values (flat, in the file's layout and type)."""
    return np.frombuffer(content, tensor.dtype, int(np.prod(tensor.shape)), tensor.offset).copy()


def real_values(content: bytes, tensor: ConstantTensor) -> np.ndarray:
    """A constant tensor's real values (dequantized with each element's scale and zero
    point), flat."""
    values = read_values(content, tensor).astype(np.float64)
    if np.issubdtype(tensor.dtype, np.floating):
        return values
    return (values - element_zero_points(tensor)) * element_scales(tensor)


class TFLiteFile:
    """A parsed .tflite classifier: its weight layers, I/O quantization and interpreter.

    Args:
        path: the .tflite file.
        layer_names: Keras layer name per operator index (from the export manifest);
            without it layers are named by type and order ('fully_connected_0', ...).
        num_threads: interpreter threads.
    """

    def __init__(
        self,
        path: str | Path,
        layer_names: dict[int, str] | None = None,
        num_threads: int | None = None,
        content: bytes | None = None,
    ):
        self.path = Path(path)
        self.num_threads = num_threads
        self.layer_names = layer_names
        self.guards: dict[int, float] = {}  # NaN guard tensors (faults.nan_semantics), if any.
        self.content = _read_checked(self.path) if content is None else _checked(content, path)
        try:
            self.layers, self.names_from = _parse_layers(self.content, layer_names or {})
        except Exception as error:  # A cut or edited flatbuffer fails anywhere in parsing.
            raise ValueError(
                f"{self.path} is a damaged .tflite file: it starts like one but cannot be "
                f"parsed ({type(error).__name__}: {error}); export it again."
            ) from None
        self._interpreter_type = _interpreter_class()
        self._check_runs()

    @classmethod
    def from_bytes(cls, content: bytes, name: str = "model.tflite"):
        """A model from .tflite bytes in memory (layers named by type and order)."""
        return cls(name, content=bytes(content))

    @classmethod
    def load(cls, path: str | Path, num_threads: int | None = None):
        """Loads a .tflite; layer names come from a manifest.json beside it, if any."""
        path = Path(path)
        manifest_path = path.parent / "manifest.json"
        layer_names = None
        if manifest_path.exists():
            manifest = json.loads(manifest_path.read_text())
            entry = manifest.get("artifacts", {}).get(path.name, {})
            if "layers" in entry:
                layer_names = {  # The main graph's (loop bodies are named by scope).
                    int(index): name
                    for name, value in entry["layers"].items()
                    if not value.get("subgraph")
                    for index in value.get("operator_indices", [value["operator_index"]])
                }
        return cls(path, layer_names, num_threads)

    def _check_runs(self) -> None:
        try:
            interpreter = self.interpreter(self.content)
        except Exception as error:  # LiteRT raises plain RuntimeError/ValueError.
            raise ValueError(f"{self.path} could not be loaded by LiteRT ({error}).") from None
        detail = interpreter.get_input_details()[0]
        self.input_shape = tuple(int(d) for d in detail["shape"][1:])
        self.input_dtype = np.dtype(detail["dtype"])
        self.input_quantization = detail["quantization"]
        output = interpreter.get_output_details()[0]
        self.output_shapes = [
            tuple(int(d) for d in detail["shape"]) for detail in interpreter.get_output_details()
        ]
        self.output_quantization = output["quantization"]
        self.num_outputs = int(output["shape"][-1]) if len(output["shape"]) else None

    def interpreter(self, content: bytes):
        return self._interpreter_type(model_content=bytes(content), num_threads=self.num_threads)

    def fingerprint(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    def quantize_inputs(self, images: np.ndarray) -> np.ndarray:
        """Float images in [0, 1] (or uint8) as the model's input type."""
        images = np.asarray(images)
        if images.dtype == np.uint8:
            images = images.astype(np.float32) / 255.0
        if self.input_dtype == np.int8:
            scale, zero_point = self.input_quantization
            return np.clip(np.round(images / scale) + zero_point, -128, 127).astype(np.int8)
        if np.issubdtype(self.input_dtype, np.integer) and self.input_quantization[0]:
            scale, zero_point = self.input_quantization  # uint8, int16 (16x8) inputs.
            limits = np.iinfo(self.input_dtype)
            quantized = np.round(images / scale) + zero_point
            return np.clip(quantized, limits.min, limits.max).astype(self.input_dtype)
        return images.astype(self.input_dtype)

    def dequantize_outputs(self, outputs: np.ndarray) -> np.ndarray:
        scale, zero_point = self.output_quantization
        if outputs.dtype != np.float32 and scale:
            return (outputs.astype(np.float32) - zero_point) * scale
        return outputs.astype(np.float32)


class BatchedInterpreter:
    """An interpreter resized to a fixed batch; the last batch is zero-padded.

    `guards`: {tensor: limit} whose NaN (or |x| >= limit) makes an inference's outputs
    NaN (see `faults.nan_semantics`; extra graph outputs of `content`)."""

    def __init__(
        self, model: TFLiteFile, content: bytes, batch_size: int, guards: dict | None = None
    ):
        self.interpreter = model.interpreter(content)
        self.guards = dict(guards or {})
        self.input_index = self.interpreter.get_input_details()[0]["index"]
        self.output_index = self.interpreter.get_output_details()[0]["index"]
        self.interpreter.resize_tensor_input(self.input_index, [batch_size, *model.input_shape])
        self.interpreter.allocate_tensors()
        self.batch_size = batch_size

    def outputs(self, inputs: np.ndarray) -> np.ndarray:
        results = []
        for start in range(0, len(inputs), self.batch_size):
            chunk = inputs[start : start + self.batch_size]
            count = len(chunk)
            if count < self.batch_size:
                chunk = np.concatenate(
                    [chunk, np.zeros((self.batch_size - count, *chunk.shape[1:]), chunk.dtype)]
                )
            self.interpreter.set_tensor(self.input_index, chunk)
            self.interpreter.invoke()
            result = self.interpreter.get_tensor(self.output_index)[:count].copy()
            if self.guards:
                values = {g: self.interpreter.tensor(g)() for g in self.guards}
                poison_rows(result, self.guards, values)
                del values
            results.append(result)
        return np.concatenate(results)


def poison_rows(outputs: np.ndarray, guards: dict[int, float], values) -> None:
    """Sets to NaN the outputs of every inference (row) whose guard tensors break the
    NaN rule of `faults.nan_semantics` (`values`: tensor index -> batch)."""
    if not guards:
        return
    rows = np.zeros(len(outputs), bool)
    for index, limit in guards.items():
        tensor = values[index][: len(outputs)].reshape(len(outputs), -1)
        # A row's sum is NaN or infinite whenever the row holds a NaN: one pass without
        # a mask as large as the tensor; only such rows are looked at element by element.
        with np.errstate(over="ignore", invalid="ignore"):  # Overflow is what it looks for.
            sums = tensor.sum(axis=1, dtype=np.float32)
        suspect = np.flatnonzero(~np.isfinite(sums))
        if len(suspect):
            rows[suspect] |= np.isnan(tensor[suspect]).any(axis=1)
        if limit != np.inf:
            rows |= (tensor.max(axis=1) >= limit) | (tensor.min(axis=1) <= -limit)
    if rows.any():
        outputs[rows] = np.nan


def tensor_values(
    model: TFLiteFile, content: bytes, inputs: np.ndarray, indices
) -> dict[int, np.ndarray]:
    """The values of tensors `indices` (intermediate ones included) when `content` runs on
    `inputs` (already in the model's input type) as one batch."""
    interpreter = model._interpreter_type(
        model_content=bytes(content),
        num_threads=model.num_threads,
        experimental_preserve_all_tensors=True,
    )
    input_index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(input_index, [len(inputs), *model.input_shape])
    interpreter.allocate_tensors()
    interpreter.set_tensor(input_index, inputs)
    interpreter.invoke()
    return {index: interpreter.get_tensor(index) for index in indices}


def predict(
    model: TFLiteFile, images: np.ndarray, batch_size: int = 1000, content: bytes | None = None
) -> np.ndarray:
    """Float logits of a TFLite model on images (float in [0, 1] or uint8)."""
    inputs = model.quantize_inputs(images)
    interpreter = BatchedInterpreter(model, content or model.content, min(batch_size, len(inputs)))
    return model.dequantize_outputs(interpreter.outputs(inputs))


def _read_checked(path: Path) -> bytes:
    from aftt_tf import checks

    checks.model_file(path)
    return _checked(path.read_bytes(), path)


def _checked(content: bytes, path) -> bytes:
    if len(content) < 8 or not schema.Model.ModelBufferHasIdentifier(content, 0):
        raise ValueError(
            f"{path} is not a TFLite model (no 'TFL3' identifier); pass a .tflite written by aftt-export."
        )
    return content


class _Graph:
    """One subgraph of a parsed model (the main graph by default; others are the bodies
    and conditions of WHILE/IF operators), with operator codes and tensor consumers."""

    def __init__(self, content: bytes, subgraph: int = 0):
        self.model = schema.Model.GetRootAs(content, 0)
        self.subgraph = subgraph
        self.graph = self.model.Subgraphs(subgraph)
        self.base_address = np.frombuffer(content, np.uint8).__array_interface__["data"][0]
        self.codes = []
        for index in range(self.model.OperatorCodesLength()):
            code = self.model.OperatorCodes(index)
            self.codes.append(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()))
        self.consumers: dict[int, list[int]] = {}
        self.producers: dict[int, int] = {}
        for op_index in range(self.graph.OperatorsLength()):
            operator = self.graph.Operators(op_index)
            for tensor in operator.InputsAsNumpy():
                self.consumers.setdefault(int(tensor), []).append(op_index)
            for tensor in operator.OutputsAsNumpy():
                self.producers[int(tensor)] = op_index

    def code(self, op_index: int) -> int:
        return self.codes[self.graph.Operators(op_index).OpcodeIndex()]

    def constant(self, tensor_index: int) -> ConstantTensor | None:
        """The tensor's stored bytes, or None when it is not a constant."""
        if tensor_index < 0:
            return None
        tensor = self.graph.Tensors(tensor_index)
        buffer = self.model.Buffers(tensor.Buffer())
        if buffer.Offset() > 1:  # Large models keep buffers outside the flatbuffer.
            offset = int(buffer.Offset())
        else:
            data = buffer.DataAsNumpy()
            if isinstance(data, int) or data.size == 0:
                return None
            offset = int(data.__array_interface__["data"][0] - self.base_address)
        quantization = tensor.Quantization()
        scales = (
            np.asarray(quantization.ScaleAsNumpy(), np.float64)
            if quantization and quantization.ScaleLength()
            else np.empty(0)
        )
        return ConstantTensor(
            index=tensor_index,
            offset=offset,
            shape=_shape(tensor),
            dtype=np.dtype(_NUMPY_TYPES[tensor.Type()]),
            scales=scales,
            quantized_dimension=quantization.QuantizedDimension() if quantization else 0,
            zero_points=(
                np.asarray(quantization.ZeroPointAsNumpy(), np.int64)
                if quantization and quantization.ZeroPointLength()
                else np.zeros(0, np.int64)
            ),
        )

    def quantization_vector(self, tensor_index: int, field: str) -> ConstantTensor | None:
        """The quantization 'scale' (float32) or 'zero_point' (int64) vector of a tensor
        as a ConstantTensor over its bytes inside the flatbuffer (None when absent): the
        metadata an int8 deployment also stores, which faults can reach."""
        if tensor_index < 0:
            return None
        quantization = self.graph.Tensors(tensor_index).Quantization()
        if quantization is None:
            return None
        if field == "scale":
            length, data, dtype = quantization.ScaleLength(), quantization.ScaleAsNumpy, np.float32
        elif field == "zero_point":
            length, data, dtype = (
                quantization.ZeroPointLength(),
                quantization.ZeroPointAsNumpy,
                np.int64,
            )
        else:
            raise ValueError(f"Unknown quantization field {field!r}.")
        if not length:
            return None
        values = data()
        return ConstantTensor(
            index=tensor_index,
            offset=int(values.__array_interface__["data"][0] - self.base_address),
            shape=(int(length),),
            dtype=np.dtype(dtype),
            scales=np.empty(0),
            quantized_dimension=0,
        )

    def weights(self, tensor_index: int) -> ConstantTensor | None:
        """A constant input, or the stored constant behind a DEQUANTIZE that produces it
        (float16 files keep their weights as float16 and dequantize them at run time)."""
        constant = self.constant(tensor_index)
        producer = self.producers.get(tensor_index)
        if constant is None and producer is not None and self.code(producer) == _BUILTIN.DEQUANTIZE:
            return self.constant(int(self.graph.Operators(producer).InputsAsNumpy()[0]))
        return constant

    def tensor_name(self, tensor_index: int) -> str:
        return self.graph.Tensors(tensor_index).Name().decode(errors="replace")

    def output(self, op_index: int) -> int:
        return int(self.graph.Operators(op_index).OutputsAsNumpy()[0])

    def bias_add(self, op_index: int) -> tuple[int, ConstantTensor] | None:
        """A separate ADD of a constant per-channel vector that alone reads the operator's
        output: the layer's bias (Conv3D's, for instance, is not fused)."""
        output = self.output(op_index)
        readers = self.consumers.get(output, [])
        # Hops a requantization (a float op in an int8 file) and the RESHAPE back to
        # (batch, steps, units) of a Dense applied to a sequence (Tensordot).
        for hop in (_REQUANTIZE, (_BUILTIN.RESHAPE,), _REQUANTIZE):
            if len(readers) == 1 and self.code(readers[0]) in hop:
                output = self.output(readers[0])
                readers = self.consumers.get(output, [])
        if len(readers) != 1 or self.code(readers[0]) != _BUILTIN.ADD:
            return None
        shape = _shape(self.graph.Tensors(output))
        for tensor in self.graph.Operators(readers[0]).InputsAsNumpy():
            constant = self.weights(int(tensor)) if int(tensor) != output else None
            if constant is None:
                continue
            # A per-channel vector, or per (head, channel) of an attention projection
            # whose output was reshaped to (batch, steps, heads, channels).
            trailing = tuple(d for d in constant.shape)
            while trailing and trailing[0] == 1:
                trailing = trailing[1:]
            if trailing and shape[-len(trailing) :] == trailing and len(trailing) < len(shape):
                return readers[0], constant
        return None

    def _has_constant_input(self, op_index: int) -> bool:
        return any(
            self.constant(int(tensor)) is not None
            for tensor in self.graph.Operators(op_index).InputsAsNumpy()
        )

    def past_activation(self, tensor: int) -> int:
        """The output of a ReLU, ReLU6 or tanh operator that alone reads `tensor`, else
        `tensor`."""
        readers = self.consumers.get(tensor, [])
        if len(readers) == 1 and self.code(readers[0]) in _STORED_ACTIVATIONS:
            return self.output(readers[0])
        return tensor

    def node_point(self, op_index: int, scope: str | None) -> tuple[int | None, str | None]:
        """The tensor that holds a layer's output as the Keras runtime faults it, or
        (None, why) when the file does not tell.

        The Keras node fault holds the layer's output at 0: after the layer's activation,
        and after a BatchNormalization that reads the layer's output (converters fold it
        into the operator). From the operator's output, the point moves past a single
        consumer that carries the layer's own name (an activation operator, a bias ADD) or
        an unfolded BatchNormalization ('.../batchnorm/...').
        """
        tensor = self.output(op_index)
        readers = self.consumers.get(tensor, [])
        if len(readers) > 1 and scope is not None:
            rank = len(_shape(self.graph.Tensors(tensor)))
            for reader in readers:
                output = self.output(reader)
                if (
                    self.code(reader) == _BUILTIN.RESHAPE
                    and _within(self.tensor_name(output), scope)
                    and len(_shape(self.graph.Tensors(output))) > rank
                ):
                    return None, (
                        "the file computes this Dense on a sequence as one (batch * steps, "
                        "units) product that other layers read before it is reshaped, so "
                        "no mask can hold a unit of one step at 0 as Keras does"
                    )
        while len(self.consumers.get(tensor, [])) == 1:
            follower = self.consumers[tensor][0]
            code = self.code(follower)
            if code in _REQUANTIZE:  # A float operator in an int8 file: 0 stays real 0.
                tensor = self.output(follower)
                continue
            name = self.tensor_name(self.output(follower))
            if code == _BUILTIN.RESHAPE and scope is not None and _within(name, scope):
                # A Dense on a sequence (Tensordot): the (batch * steps, units) product is
                # reshaped back to (batch, steps, units), the output Keras faults.
                tensor = self.output(follower)
                continue
            elementwise = code in _ACTIVATIONS or (
                code in (_BUILTIN.ADD, _BUILTIN.MUL, _BUILTIN.SUB)
                and self._has_constant_input(follower)
            )
            if not elementwise:
                break
            if scope is None:
                if code in _ZERO_PRESERVING_OPERATORS:
                    break  # Holding its input or its output at 0 is the same.
                return None, (
                    f"the operator is followed by {_OPERATOR_NAMES.get(code, code)} and the "
                    "file's tensor names do not tell whether it belongs to the layer"
                )
            if not _within(name, scope) and "batchnorm" not in name.split("/"):
                break
            tensor = self.output(follower)
        return tensor, None


def _within(name: str, scope: str) -> bool:
    """Whether a tensor name lies in the layer scope `scope` ('mha/query'): its leading
    '_<n>'-suffixed components spell the scope's path."""
    for part in name.split(";"):
        components = part.split("/")
        if len(components) < 3:
            continue
        path = _scope_path(components, len(components))
        if path == scope or (path or "").startswith(scope + "/"):
            return True
    return False


_OPERATOR_NAMES = {
    value: name for name, value in vars(_BUILTIN).items() if not name.startswith("_")
}
# Operators whose constant inputs are shapes, indices or lookup tables, not weights.
_NOT_WEIGHTS = {"RESHAPE", "PAD", "PADV2", "MEAN", "SUM", "TRANSPOSE", "STRIDED_SLICE", "SLICE"}


_ELEMENTWISE = {_BUILTIN.MUL: "gamma", _BUILTIN.ADD: "beta", _BUILTIN.SUB: "beta"}
# Operators that compute statistics at run time: a scope holding one normalises its input
# (LayerNormalization, GroupNormalization), unlike constant affine preprocessing.
_STATISTICS = {_BUILTIN.MEAN, _BUILTIN.RSQRT, _BUILTIN.SQUARED_DIFFERENCE}


def _scope_of(name: str) -> str | None:
    """The Keras layer path of a tensor name, its last component (the op) left out."""
    components = name.split("/")
    return _scope_path(components, len(components) - 1) if len(components) > 2 else None


def _normalizing_scopes(graph: _Graph) -> set[str]:
    """Scopes of the operators that compute statistics at run time."""
    return {
        scope
        for op_index in range(graph.graph.OperatorsLength())
        if graph.code(op_index) in _STATISTICS
        for part in graph.tensor_name(graph.output(op_index)).split(";")
        if (scope := _scope_of(part)) is not None
    }


def normalization_layers(
    content: bytes, weight_layers: dict[str, TFLiteLayer]
) -> tuple[dict[str, TFLiteLayer], dict[str, str]]:
    """The per-channel constants of elementwise MUL (scale: 'gamma') and ADD/SUB (offset:
    'beta') operators of layers that hold no weight operator, as layers named by the
    Keras scope in their tensor names (a LayerNormalization's gamma and beta, an unfolded
    BatchNormalization's folded scale and offset), and {normalisation layer: the weight
    layer it was folded into} read from the weight layers' fused output names."""
    graph = _Graph(content)
    taken = set(weight_layers) | {layer.scope for layer in weight_layers.values()}
    normalizing = _normalizing_scopes(graph)
    groups: dict[str, list[tuple[str, OperatorKernel]]] = {}
    for op_index in range(graph.graph.OperatorsLength()):
        attribute = _ELEMENTWISE.get(graph.code(op_index))
        inputs = [int(t) for t in graph.graph.Operators(op_index).InputsAsNumpy()]
        if attribute is None or len(inputs) != 2:
            continue
        constants = [(t, c) for t in inputs if (c := graph.weights(t)) is not None]
        if len(constants) != 1 or int(np.prod(constants[0][1].shape)) <= 1:
            continue  # A scalar is no per-channel parameter.
        index, tensor = constants[0]
        name = graph.tensor_name(index).split(";")[0]
        scope = _scope_of(name)
        if scope is None or scope in taken:
            continue
        if scope not in normalizing and "batchnorm" not in name.split("/"):
            continue  # Rescaling, Normalization (preprocessing): constants, no statistics.
        groups.setdefault(scope, []).append(
            (attribute, OperatorKernel(op_index, "elementwise", tensor))
        )
    layers = {}
    for scope, entries in groups.items():
        entries.sort(key=lambda entry: entry[0] != "gamma")  # Keras order: gamma, beta.
        names = [attribute for attribute, _ in entries]
        if len(set(names)) != len(names):
            continue  # Two scales in one scope: which is Keras's gamma is not known.
        layer = TFLiteLayer(scope, [kernel for _, kernel in entries], None, scope=scope)
        layer.attributes = tuple(names)
        layer.output_tensor = graph.output(entries[-1][1].operator_index)
        layer.node_refusal = f"{scope!r} holds normalisation constants: parameter faults only."
        layers[scope] = layer
    folded = {}
    for name, layer in weight_layers.items():
        for part in graph.tensor_name(layer.output_tensor).split(";"):
            components = part.split("/")
            if "batchnorm" in components[2:]:
                inner = _scope_path(components, components.index("batchnorm"))
                if inner and inner != layer.scope and inner not in folded:
                    folded[inner] = name
    return layers, folded


def constant_operators(content: bytes) -> list[dict]:
    """Every operator with constant weight inputs (more than one element, float or
    integer), with how many weight elements it holds: what a fault campaign could reach.
    Operators of WHILE/IF bodies carry their subgraph ('subgraph': k >= 1)."""
    result = []
    seen: set[tuple[int, int]] = set()  # Buffers read by several operators count once.
    for subgraph in range(schema.Model.GetRootAs(content, 0).SubgraphsLength()):
        for entry in _constant_operators(_Graph(content, subgraph), seen):
            result.append({**entry, "subgraph": subgraph} if subgraph else entry)
    return result


def _constant_operators(graph: _Graph, seen: set[tuple[int, int]]) -> list[dict]:
    """Operators holding weights no earlier operator read: the steps of an unrolled
    recurrent layer share its kernels, which are stored (and faulted) once."""
    result = []
    for op_index in range(graph.graph.OperatorsLength()):
        name = _OPERATOR_NAMES.get(graph.code(op_index), str(graph.code(op_index)))
        if name in _NOT_WEIGHTS or name == "DEQUANTIZE":  # Counted with their consumers.
            continue
        elements = 0
        for tensor in graph.graph.Operators(op_index).InputsAsNumpy():
            try:
                constant = graph.weights(int(tensor))
            except KeyError:  # A tensor type without weights (bool, string).
                continue
            if constant is None or int(np.prod(constant.shape)) <= 1:
                continue
            if name == "GATHER" and constant.dtype.kind == "i" and len(constant.shape) == 1:
                continue  # Indices into a shape (attention reshapes), not a lookup table.
            if (constant.offset, constant.nbytes) in seen:
                continue
            seen.add((constant.offset, constant.nbytes))
            elements += int(np.prod(constant.shape))
        if elements:
            result.append({"operator_index": op_index, "operator": name, "weights": elements})
    return result


def _shape(tensor) -> tuple[int, ...]:
    shape = tensor.ShapeAsNumpy()
    return () if isinstance(shape, int) else tuple(int(d) for d in shape)  # 0: a scalar.


# Op names that mark the weight-bearing part of a converter's tensor name.
_WEIGHT_OP_WORDS = {
    "MatMul",
    "BiasAdd",
    "convolution",
    "Conv2D",
    "Conv3D",
    "depthwise",
    "separable_conv2d",
    "conv_transpose",
    "GatherV2",
    "embedding_lookup",
    "Einsum",
    "einsum",
}


def _is_weight_word(word: str) -> bool:
    return re.sub(r"_?\d+$", "", word) in _WEIGHT_OP_WORDS


_CONTROL_FLOW_SCOPE = re.compile(r"^(while|cond)(_\d+)?$")


def _scope_path(components: list[str], stop: int) -> str | None:
    """The Keras layer path in a tensor name's components before index `stop`: tracing
    appends one '_<n>' to each layer scope ('backbone_1/conv1_1' -> 'backbone/conv1');
    the path ends at the first component without one (an op scope such as 'Tensordot')."""
    parts = []
    for component in components[1:stop]:
        if _CONTROL_FLOW_SCOPE.match(component):  # A loop's scope inside a layer.
            continue
        if not re.search(r"_\d+$", component):
            break
        parts.append(re.sub(r"_\d+$", "", component))
    if not parts:
        return re.sub(r"_\d+$", "", components[1]) or None
    return "/".join(parts) or None


def _layer_name_of_tensor(name: str) -> str | None:
    """The Keras layer a converter's tensor belongs to: 'functional_1/conv_1/convolution'
    -> 'conv', 'functional_1/backbone_1/conv1_1/convolution' -> 'backbone/conv1' (a
    nested layer's path). Fused names join several with ';'
    ('model/bn_1/batchnorm/mul_1;model/dw_1/depthwise'): the part with a weight op names
    the layer, else the first part (its top-level scope)."""
    found = _weight_op_scope(name)
    if found is not None:
        return found
    scopes = [
        re.sub(r"_\d+$", "", part.split("/")[1]) or None
        for part in name.split(";")
        if len(part.split("/")) >= 3
    ]
    return scopes[0] if scopes else None


def _weight_op_scope(name: str) -> str | None:
    """The layer path of a name only where a part of it has a weight op ('dense_1/MatMul')."""
    for part in name.split(";"):
        components = part.split("/")
        if len(components) < 3:
            continue
        for index, word in enumerate(components[2:], start=2):
            if _is_weight_word(word):
                return _scope_path(components, index)
    return None


def _operator_scope(graph: _Graph, op_index: int, weights: ConstantTensor) -> str | None:
    """The Keras layer of a weight operator from its weight tensor's or output's name."""
    weights_name = graph.tensor_name(weights.index)
    output_name = graph.tensor_name(graph.output(op_index))
    scope = (
        _weight_op_scope(weights_name)
        or _weight_op_scope(output_name)
        or _layer_name_of_tensor(weights_name)
    )
    # A recurrent layer's cell ('lstm/lstm_cell') is part of the layer Keras faults.
    if scope and "/" in scope and scope.rsplit("/", 1)[1] in _RECURRENT_CELLS:
        scope = scope.rsplit("/", 1)[0]
    return scope


_RECURRENT_CELLS = {"lstm_cell", "gru_cell", "simple_rnn_cell"}


@dataclasses.dataclass
class _Operator:
    kernel: OperatorKernel
    bias: ConstantTensor | None
    scope: str | None
    bias_operator: int | None = None  # A separate ADD that holds the bias.
    # Later operators reading the same weights tensor (an unrolled recurrent layer: one
    # kernel serves every step). The tensor is one layer's kernel, faulted once.
    shared: list[int] = dataclasses.field(default_factory=list)
    reads_sequence: bool = False  # Its data input is a step of the input sequence.


def _weight_operators(graph: _Graph) -> list[_Operator]:
    """Every operator of the supported kinds whose weights are constants, in order."""
    result = []
    by_weights: dict[int, _Operator] = {}
    for op_index in range(graph.graph.OperatorsLength()):
        spec = _WEIGHT_OPERATORS.get(graph.code(op_index))
        if spec is None:
            continue
        inputs = [int(t) for t in graph.graph.Operators(op_index).InputsAsNumpy()]
        weights = graph.weights(inputs[spec.weights_input])
        if weights is None or int(np.prod(weights.shape)) <= 1:
            continue
        if weights.index in by_weights:
            by_weights[weights.index].shared.append(op_index)
            continue
        bias_index = spec.bias_input
        bias = (
            graph.weights(inputs[bias_index]) if bias_index and len(inputs) > bias_index else None
        )
        data_shape = graph.graph.Tensors(inputs[spec.data_input]).ShapeAsNumpy()
        channels = int(data_shape[-1]) if not isinstance(data_shape, int) else 0
        kernel = OperatorKernel(op_index, spec.kind, weights, channels)
        bias_operator = None
        separate_bias = graph.bias_add(op_index) if bias is None else None
        if separate_bias is not None:
            bias_operator, bias = separate_bias
        scope = _operator_scope(graph, op_index, weights)
        producer = graph.producers.get(inputs[spec.data_input])
        reads_sequence = producer is not None and graph.code(producer) in _SEQUENCE_STEP_OPERATORS
        operator = _Operator(kernel, bias, scope, bias_operator, reads_sequence=reads_sequence)
        by_weights[weights.index] = operator
        result.append(operator)
    return _recurrent_order(result)


# Operators that take one step out of a sequence (an unrolled recurrent layer's input).
_SEQUENCE_STEP_OPERATORS = {
    _BUILTIN.UNPACK,
    _BUILTIN.STRIDED_SLICE,
    _BUILTIN.SLICE,
    _BUILTIN.GATHER,
    _BUILTIN.SPLIT,
}


def _recurrent_order(operators: list[_Operator]) -> list[_Operator]:
    """An unrolled recurrent layer is two shared FULLY_CONNECTED kernels under one scope:
    the input kernel (reads a step of the sequence) is put first and the recurrent kernel
    (reads the state) second, the Keras order (cell.kernel, cell.recurrent_kernel)."""
    result = list(operators)
    for index in range(len(result) - 1):
        first, second = result[index], result[index + 1]
        if (
            first.shared
            and second.shared
            and first.scope is not None
            and first.scope == second.scope
            and second.reads_sequence
            and not first.reads_sequence
        ):
            result[index], result[index + 1] = second, first
    return result


def _names(operators: list[_Operator], layer_names: dict[int, str]) -> tuple[list[str], str]:
    """A layer name per operator: from the export manifest, else from the converter's
    tensor names when they name every operator and operators that share a name form a
    known multi-operator layer, else by type and order ('conv_2d_0')."""
    indices = [op.kernel.operator_index for op in operators]
    if layer_names and all(index in layer_names for index in indices):
        return [layer_names[index] for index in indices], "manifest"
    scopes = [op.scope for op in operators]
    if None not in scopes and _groups_valid(operators, scopes):
        return scopes, "tensor names"
    return _type_and_order(operators, ""), "type and order"


def _type_and_order(operators: list[_Operator], prefix: str) -> list[str]:
    """'conv_2d_0', 'conv_2d_1', 'fully_connected_0', ... after `prefix`."""
    counters: dict[str, int] = {}
    names = []
    for op in operators:
        kind = op.kernel.operator
        names.append(f"{prefix}{kind}_{counters.get(kind, 0)}")
        counters[kind] = counters.get(kind, 0) + 1
    return names


def _groups_valid(operators: list[_Operator], names: list[str]) -> bool:
    """Operators sharing a name are consecutive and form a known multi-operator layer."""
    for name in set(names):
        positions = [i for i, n in enumerate(names) if n == name]
        kinds = tuple(operators[i].kernel.operator for i in positions)
        if len(kinds) > 1 and (
            kinds not in _MULTI_OPERATOR_LAYERS
            or positions != list(range(positions[0], positions[-1] + 1))
        ):
            return False
        if kinds == ("fully_connected", "fully_connected") and not all(
            operators[i].shared for i in positions
        ):
            return False  # Two matmuls under one name that are not an unrolled loop.
    return True


def _build_layers(
    graph: _Graph, operators: list[_Operator], names: list[str]
) -> dict[str, TFLiteLayer]:
    """The named operators of one subgraph as layers, with their outputs, quantization
    metadata and node points (a loop body's outputs take no node faults)."""
    layers: dict[str, TFLiteLayer] = {}
    for op, name in zip(operators, names, strict=True):
        layer = layers.get(name)
        if layer is None:
            layers[name] = TFLiteLayer(name, [op.kernel], op.bias, scope=op.scope)
            layers[name].subgraph = graph.subgraph
        else:  # The next operator of a multi-operator layer: its bias is the layer's.
            layer.kernels.append(op.kernel)
            layer.bias = op.bias
        layer = layers[name]
        layer.bias_operator = op.bias_operator
        layer.shared_operators.extend(op.shared)
    for layer in layers.values():
        layer.output_tensor = graph.output(layer.kernels[-1].operator_index)
        layer.scale_tensors = [
            scale
            for kernel in layer.kernels
            if (scale := graph.quantization_vector(kernel.weights.index, "scale")) is not None
            and kernel.weights.dtype.kind in "iu"
        ]
        zero_point = graph.quantization_vector(layer.output_tensor, "zero_point")
        if zero_point is not None and layer.kernels[-1].weights.dtype.kind in "iu":
            layer.zero_point_tensor = zero_point
        layer.node_refusal = _node_refusal(graph, layer)
        if layer.node_refusal is None:
            layer.node_tensor, why = graph.node_point(layer.kernels[-1].operator_index, layer.scope)
            if layer.node_tensor is not None:
                layer.transient_tensor = graph.past_activation(layer.node_tensor)
            if why:
                layer.node_refusal = (
                    f"Node faults on {layer.name!r}: {why}. Convert the file from the Keras "
                    "model (tensor names carry layer names), or use parameter faults or "
                    "--exclude_layers."
                )
    return layers


def _node_refusal(graph: _Graph, layer: TFLiteLayer) -> str | None:
    """Why no fault can be placed on a layer's output, before looking for its node point."""
    if graph.subgraph:
        return (
            f"Faults in the output of {layer.name!r}: it is computed inside subgraph "
            f"{graph.subgraph} (the body of a WHILE or IF operator), once per iteration; "
            "use parameter faults, or --exclude_layers."
        )
    if layer.shared_operators:
        return (
            f"Node faults on {layer.name!r}: its weights serve every step of an "
            "unrolled recurrent layer, whose output is a state carried from step to "
            "step; use parameter faults, or --exclude_layers."
        )
    return None


def _body_names(operators: list[_Operator], subgraph: int, taken: set[str]) -> list[str]:
    """Names of a WHILE/IF body's weight operators: the Keras scopes in their tensor
    names when they name every operator distinctly from the main graph's layers, else
    'subgraph_<k>/<kind>_<i>'."""
    scopes = [op.scope for op in operators]
    if None not in scopes and _groups_valid(operators, scopes) and not set(scopes) & taken:
        return scopes
    return _type_and_order(operators, f"subgraph_{subgraph}/")


def _parse_layers(
    content: bytes, layer_names: dict[int, str]
) -> tuple[dict[str, TFLiteLayer], str]:
    """Weight-bearing operators with constant weights as Keras layers, in execution order,
    named by `layer_names` (an export manifest), else by the Keras layer names in the
    converter's tensor names, else by type and order ('conv_2d_0'). Operators in the
    bodies of WHILE/IF operators (a Keras loop: `keras.ops.fori_loop`, `while_loop`) are
    layers too, after the main graph's, named by their tensor names' scopes."""
    try:
        graph = _Graph(content)
        operators = _weight_operators(graph)
        names, source = _names(operators, layer_names)
        layers = _build_layers(graph, operators, names)
        for subgraph in range(1, graph.model.SubgraphsLength()):
            inner = _Graph(content, subgraph)
            found = _weight_operators(inner)
            for op in found:
                op.kernel.subgraph = subgraph
            inner_names = _body_names(found, subgraph, set(layers))
            layers.update(_build_layers(inner, found, inner_names))
    except (IndexError, KeyError, AttributeError, ValueError, TypeError, struct.error) as error:
        raise ValueError(
            f"The TFLite flatbuffer is corrupt or truncated ({type(error).__name__}: {error})."
        ) from None
    if not layers:
        raise ValueError(
            f"The TFLite model has no weight-bearing operator with constant weights (stored, "
            f"or float16 behind DEQUANTIZE) of the supported kinds: {', '.join(SUPPORTED_OPERATORS)}."
        )
    return layers, source
