""".tflite files read with numpy and ai-edge-litert only (no TensorFlow): weights, I/O, predictions.

The file is read once into memory and parsed with LiteRT's flatbuffer schema. Every
FULLY_CONNECTED or CONV_2D operator with constant weights is a `TFLiteLayer`: where
its weight and bias bytes sit in the file, their shape, type and quantization. Export
(layer maps, clean accuracies) and the TFLite fault runtime both read files this way.
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
_ZERO_PRESERVING_FUSED = {
    schema.ActivationFunctionType.NONE,
    schema.ActivationFunctionType.RELU,
    schema.ActivationFunctionType.RELU6,
    schema.ActivationFunctionType.RELU_N1_TO_1,
    schema.ActivationFunctionType.TANH,
}
# Separate activation operators with act(0) != 0 (a Keras Dense(activation="sigmoid")
# becomes FULLY_CONNECTED + LOGISTIC).
_NON_ZERO_PRESERVING_FOLLOWERS = {
    _BUILTIN.LOGISTIC,
    _BUILTIN.EXP,
    _BUILTIN.SOFTMAX,
    _BUILTIN.LOG_SOFTMAX,
}
_NUMPY_TYPES = {
    schema.TensorType.FLOAT32: np.float32,
    schema.TensorType.FLOAT16: np.float16,
    schema.TensorType.INT16: np.int16,
    schema.TensorType.INT64: np.int64,
    schema.TensorType.INT8: np.int8,
    schema.TensorType.INT32: np.int32,
    schema.TensorType.UINT8: np.uint8,
}
_WEIGHT_OPERATORS = {
    _BUILTIN.FULLY_CONNECTED: ("fully_connected", schema.FullyConnectedOptions),
    _BUILTIN.CONV_2D: ("conv_2d", schema.Conv2DOptions),
    _BUILTIN.DEPTHWISE_CONV_2D: ("depthwise_conv_2d", schema.DepthwiseConv2DOptions),
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


@dataclasses.dataclass
class TFLiteLayer:
    """One FULLY_CONNECTED or CONV_2D operator, seen as a Keras layer."""

    name: str
    operator_index: int
    operator: str  # 'fully_connected' | 'conv_2d' | 'depthwise_conv_2d'
    weights: ConstantTensor
    bias: ConstantTensor | None
    zero_preserving: bool  # act(0) = 0, so node faults can be written into weights.
    input_channels: int = 0  # Of the operator's input (depthwise: C of C * multiplier).

    @property
    def keras_kernel_shape(self) -> tuple[int, ...]:
        if self.operator == "fully_connected":
            out_units, in_units = self.weights.shape
            return (in_units, out_units)
        if self.operator == "depthwise_conv_2d":  # File (1, H, W, C*M), Keras (H, W, C, M).
            _, height, width, channels = self.weights.shape
            inputs = self.input_channels or channels
            return (height, width, inputs, channels // inputs)
        out_channels, height, width, in_channels = self.weights.shape
        return (height, width, in_channels, out_channels)

    @property
    def filter_axis(self) -> int | None:
        """Axis of the Keras kernel that indexes filters (None: no filters)."""
        return {"conv_2d": -1, "depthwise_conv_2d": -2}.get(self.operator)

    @functools.cached_property
    def _file_position_of_keras_index(self) -> np.ndarray:
        if self.operator == "depthwise_conv_2d":  # The same flat order in both layouts.
            return np.arange(int(np.prod(self.weights.shape)))
        permutation = (1, 0) if self.operator == "fully_connected" else (3, 0, 1, 2)
        keras_index = np.arange(int(np.prod(self.weights.shape))).reshape(self.keras_kernel_shape)
        file_order = keras_index.transpose(permutation).reshape(-1)
        inverse = np.empty_like(file_order)
        inverse[file_order] = np.arange(file_order.size)
        return inverse

    def keras_to_file_positions(self, keras_positions: np.ndarray) -> np.ndarray:
        """Flat indices in the file's layout of flat indices in the Keras kernel layout."""
        return self._file_position_of_keras_index[keras_positions]


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
        self.content = _read_checked(self.path) if content is None else _checked(content, path)
        self.layers, self.names_from = _parse_layers(self.content, layer_names or {})
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
                layer_names = {int(v["operator_index"]): k for k, v in entry["layers"].items()}
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
    """An interpreter resized to a fixed batch; the last batch is zero-padded."""

    def __init__(self, model: TFLiteFile, content: bytes, batch_size: int):
        self.interpreter = model.interpreter(content)
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
            results.append(self.interpreter.get_tensor(self.output_index)[:count].copy())
        return np.concatenate(results)


def predict(
    model: TFLiteFile, images: np.ndarray, batch_size: int = 1000, content: bytes | None = None
) -> np.ndarray:
    """Float logits of a TFLite model on images (float in [0, 1] or uint8)."""
    inputs = model.quantize_inputs(images)
    interpreter = BatchedInterpreter(model, content or model.content, min(batch_size, len(inputs)))
    return model.dequantize_outputs(interpreter.outputs(inputs))


def _read_checked(path: Path) -> bytes:
    if not path.exists():
        raise FileNotFoundError(f"Model file {path} does not exist.")
    return _checked(path.read_bytes(), path)


def _checked(content: bytes, path) -> bytes:
    if len(content) < 8 or not schema.Model.ModelBufferHasIdentifier(content, 0):
        raise ValueError(
            f"{path} is not a TFLite model (no 'TFL3' identifier); pass a .tflite written by aftt-export."
        )
    return content


class _Graph:
    """The first subgraph of a parsed model, with operator codes and tensor consumers."""

    def __init__(self, content: bytes):
        self.model = schema.Model.GetRootAs(content, 0)
        self.graph = self.model.Subgraphs(0)
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

    def weights(self, tensor_index: int) -> ConstantTensor | None:
        """A constant input, or the stored constant behind a DEQUANTIZE that produces it
        (float16 files keep their weights as float16 and dequantize them at run time)."""
        constant = self.constant(tensor_index)
        producer = self.producers.get(tensor_index)
        if constant is None and producer is not None and self.code(producer) == _BUILTIN.DEQUANTIZE:
            return self.constant(int(self.graph.Operators(producer).InputsAsNumpy()[0]))
        return constant

    def zero_preserving(self, op_index: int, options_class) -> bool:
        """act(0) = 0 for the fused activation and for any activation operator after it."""
        operator = self.graph.Operators(op_index)
        options = options_class()
        table = operator.BuiltinOptions()
        options.Init(table.Bytes, table.Pos)
        output = int(operator.OutputsAsNumpy()[0])
        followers = [self.code(i) for i in self.consumers.get(output, [])]
        return options.FusedActivationFunction() in _ZERO_PRESERVING_FUSED and not any(
            code in _NON_ZERO_PRESERVING_FOLLOWERS for code in followers
        )


_OPERATOR_NAMES = {
    value: name for name, value in vars(_BUILTIN).items() if not name.startswith("_")
}
# Operators whose constant inputs are shapes, indices or lookup tables, not weights.
_NOT_WEIGHTS = {"RESHAPE", "PAD", "PADV2", "MEAN", "SUM", "TRANSPOSE", "STRIDED_SLICE", "SLICE"}


def constant_operators(content: bytes) -> list[dict]:
    """Every operator with constant weight inputs (more than one element, float or
    integer), with how many weight elements it holds: what a fault campaign could reach."""
    graph = _Graph(content)
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
            if constant is not None and int(np.prod(constant.shape)) > 1:
                elements += int(np.prod(constant.shape))
        if elements:
            result.append({"operator_index": op_index, "operator": name, "weights": elements})
    return result


def _shape(tensor) -> tuple[int, ...]:
    shape = tensor.ShapeAsNumpy()
    return () if isinstance(shape, int) else tuple(int(d) for d in shape)  # 0: a scalar.


def _layer_name_of_tensor(name: str) -> str | None:
    """The Keras layer a converter's weight tensor belongs to: 'functional_1/conv_1/
    convolution' -> 'conv' (tracing appends one '_<n>' to each scope)."""
    parts = name.split(";")[0].split("/")
    if len(parts) < 3:
        return None
    return re.sub(r"_\d+$", "", parts[1]) or None


def _names_from_tensors(graph: _Graph, layers: dict[str, TFLiteLayer]) -> dict[int, str]:
    """Operator index -> Keras layer name from the weight tensors' names, when every
    operator maps to a distinct name; else {} (operators keep type-and-order names)."""
    names = {}
    for layer in layers.values():
        tensor_name = graph.graph.Tensors(layer.weights.index).Name().decode(errors="replace")
        names[layer.operator_index] = _layer_name_of_tensor(tensor_name)
    if None in names.values() or len(set(names.values())) != len(names):
        return {}
    return names


def _rename(layers: dict[str, TFLiteLayer], names: dict[int, str]) -> dict[str, TFLiteLayer]:
    result = {}
    for layer in layers.values():
        layer.name = names.get(layer.operator_index, layer.name)
        result[layer.name] = layer
    return result


def _parse_layers(
    content: bytes, layer_names: dict[int, str]
) -> tuple[dict[str, TFLiteLayer], str]:
    """FULLY_CONNECTED / CONV_2D / DEPTHWISE_CONV_2D operators with constant weights, in
    execution order, named by `layer_names` (an export manifest), else by the Keras layer
    names in the converter's tensor names, else by type and order ('conv_2d_0')."""
    try:
        graph = _Graph(content)
        layers: dict[str, TFLiteLayer] = {}
        counters = {kind: 0 for kind, _ in _WEIGHT_OPERATORS.values()}
        for op_index in range(graph.graph.OperatorsLength()):
            code = graph.code(op_index)
            if code not in _WEIGHT_OPERATORS:
                continue
            kind, options_class = _WEIGHT_OPERATORS[code]
            inputs = [int(t) for t in graph.graph.Operators(op_index).InputsAsNumpy()]
            weights = graph.weights(inputs[1])
            if weights is None:
                continue
            bias = graph.weights(inputs[2]) if len(inputs) > 2 else None
            zero_preserving = graph.zero_preserving(op_index, options_class)
            name = f"{kind}_{counters[kind]}"
            counters[kind] += 1
            channels = int(graph.graph.Tensors(inputs[0]).ShapeAsNumpy()[-1])
            layers[name] = TFLiteLayer(
                name, op_index, kind, weights, bias, zero_preserving, channels
            )
        from_tensors = {} if layer_names else _names_from_tensors(graph, layers)
        source = "manifest" if layer_names else "tensor names" if from_tensors else "type and order"
        layers = _rename(layers, layer_names or from_tensors)
    except (IndexError, KeyError, AttributeError, ValueError, TypeError, struct.error) as error:
        raise ValueError(
            f"The TFLite flatbuffer is corrupt or truncated ({type(error).__name__}: {error})."
        ) from None
    if not layers:
        raise ValueError(
            "The TFLite model has no FULLY_CONNECTED, CONV_2D or DEPTHWISE_CONV_2D operator "
            "with constant weights (stored, or float16 behind DEQUANTIZE)."
        )
    return layers, source
