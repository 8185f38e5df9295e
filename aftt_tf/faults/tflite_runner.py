"""Fault campaigns on .tflite files, with numpy and ai-edge-litert only (no TensorFlow).

The file is read once into memory and parsed with LiteRT's flatbuffer schema. Each
Dense/Conv2D layer of the Keras classifier is a FULLY_CONNECTED or CONV_2D operator
whose weights and bias live in constant buffers; a trial restores the original
bytes of the touched buffers, writes the faulty values in the file's own
representation and builds an interpreter from the patched bytes (no re-read or
re-parse of the file). Fault positions come from the same sampler as the Keras
runtime, in the Keras layout, so one seed faults the same elements in both.

Representations:
* float32 weights: faulty value written as float32 (stuck-at-0 is 0.0);
* int8 weights are symmetric (zero-point 0), so stuck-at-0 is int8 0 = real 0; a
  stuck value is quantised with the element's channel scale; bit faults act on the
  int8 bits 0..7;
* int32 biases (int8 models): 0 is real 0; bit faults on bits 0..31.
* `node` faults (Dense only): unit j stuck at 0 is written as weight row j = 0 and
  bias j = 0, so its pre-activation is 0 and its output is act(0). This equals the
  Keras NodeFault (output held at 0) when act(0) = 0: fused NONE, RELU, RELU6,
  RELU_N1_TO_1 and TANH qualify, unless a LOGISTIC/EXP/SOFTMAX operator follows; other
  activations are refused. In int8
  models the accumulator is then 0, so the output is the zero-point, i.e. real 0.
  Per-position node faults in conv layers cannot be written into weights: refused.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from aftt_tf.faults import campaign, kinds, sampling
from aftt_tf.faults.campaign import FaultSpec
from aftt_tf.faults.kinds import FaultTargetError

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
    schema.TensorType.INT8: np.int8,
    schema.TensorType.INT32: np.int32,
    schema.TensorType.UINT8: np.uint8,
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

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize


@dataclasses.dataclass
class TFLiteLayer:
    """One FULLY_CONNECTED or CONV_2D operator, seen as a Keras layer."""

    name: str
    operator_index: int
    operator: str  # 'fully_connected' | 'conv_2d'
    weights: ConstantTensor
    bias: ConstantTensor | None
    zero_preserving: bool  # act(0) = 0, so node faults can be written into weights.

    @property
    def keras_kernel_shape(self) -> tuple[int, ...]:
        if self.operator == "fully_connected":
            out_units, in_units = self.weights.shape
            return (in_units, out_units)
        out_channels, height, width, in_channels = self.weights.shape
        return (height, width, in_channels, out_channels)

    @functools.cached_property
    def _file_position_of_keras_index(self) -> np.ndarray:
        permutation = (1, 0) if self.operator == "fully_connected" else (3, 0, 1, 2)
        keras_index = np.arange(int(np.prod(self.weights.shape))).reshape(self.keras_kernel_shape)
        file_order = keras_index.transpose(permutation).reshape(-1)
        inverse = np.empty_like(file_order)
        inverse[file_order] = np.arange(file_order.size)
        return inverse

    def keras_to_file_positions(self, keras_positions: np.ndarray) -> np.ndarray:
        """Flat indices in the file's layout of flat indices in the Keras kernel layout."""
        return self._file_position_of_keras_index[keras_positions]


def element_scales(tensor: ConstantTensor) -> np.ndarray:
    """Quantization scale of every element of a tensor, flat (1.0 for float tensors)."""
    size = int(np.prod(tensor.shape))
    if tensor.scales.size <= 1:
        return np.full(size, float(tensor.scales[0]) if tensor.scales.size else 1.0)
    shape = [1] * len(tensor.shape)
    shape[tensor.quantized_dimension] = -1
    return np.broadcast_to(tensor.scales.reshape(shape), tensor.shape).reshape(-1)


class TFLiteModel:
    """A parsed .tflite classifier; the campaign engine's adapter for TFLite files.

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
    ):
        self.path = Path(path)
        self.num_threads = num_threads
        self.content = _read_checked(self.path)
        self.layers = _parse_layers(self.content, layer_names or {})
        self._interpreter_type = _interpreter_class()
        self._check_runs()

    @classmethod
    def load(cls, path: str | Path, num_threads: int | None = None) -> TFLiteModel:
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
        self.output_quantization = interpreter.get_output_details()[0]["quantization"]

    def interpreter(self, content: bytes):
        return self._interpreter_type(model_content=bytes(content), num_threads=self.num_threads)

    def fingerprint(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    def select_layers(self, spec: FaultSpec) -> list[str]:
        """Layers that `spec.kind` can fault in this file, after scope and --layers."""
        if spec.kind == "filter":
            candidates = [layer for layer in self.layers.values() if layer.operator == "conv_2d"]
            if not candidates:
                raise FaultTargetError(
                    f"Filter faults need convolutions; {self.path.name} has none. Use weight or node faults."
                )
        elif spec.kind == "node":
            output_layer = max(self.layers.values(), key=lambda layer: layer.operator_index)
            candidates = [
                layer
                for layer in self.layers.values()
                if layer.operator == "fully_connected"
                and (spec.include_output_nodes or layer is not output_layer)
            ]
            if spec.layers:
                for name in spec.layers:
                    layer = self.layers.get(name)
                    if layer is not None and layer.operator == "conv_2d":
                        raise FaultTargetError(
                            f"Node faults in conv layer {name!r} hold single activation positions at 0; "
                            "rewriting weights cannot express that. Use filter faults, or Dense layers."
                        )
            bad = [
                layer.name
                for layer in candidates
                if not layer.zero_preserving and (not spec.layers or layer.name in spec.layers)
            ]
            if bad:
                raise FaultTargetError(
                    f"Node faults via zeroed weights need act(0) = 0, but layers {bad} use another "
                    "activation; restrict --layers to ReLU/linear/LeakyReLU layers."
                )
        else:
            candidates = list(self.layers.values())
        names = [layer.name for layer in candidates]
        if spec.layers:
            missing = [name for name in spec.layers if name not in self.layers]
            if missing:
                raise FaultTargetError(
                    f"Layers {missing} are not in the layer map of {self.path.name}; its layers are "
                    f"{sorted(self.layers)} (names come from the export's manifest.json)."
                )
            names = [name for name in names if name in spec.layers]
        names = [name for name in names if kinds.in_scope(name, spec.scope)]
        if not names:
            raise FaultTargetError(
                f"No layer of {self.path.name} takes {spec.kind!r} faults in scope {spec.scope!r}."
            )
        if spec.kind == "bit":
            for name in names:
                bits = self.layers[name].weights.dtype.itemsize * 8
                if spec.bit_position >= bits:
                    raise FaultTargetError(
                        f"bit_position {spec.bit_position} does not exist in the {bits}-bit "
                        f"weights of {name!r}; use 0..{bits - 1} or -1."
                    )
        return names

    def runner(self, spec: FaultSpec, images, labels, batch_size: int) -> TFLiteRunner:
        return TFLiteRunner(self, spec, images, labels, batch_size)

    def quantize_inputs(self, images: np.ndarray) -> np.ndarray:
        """Float images in [0, 1] (or uint8) as the model's input type."""
        images = np.asarray(images)
        if images.dtype == np.uint8:
            images = images.astype(np.float32) / 255.0
        if self.input_dtype == np.int8:
            scale, zero_point = self.input_quantization
            return np.clip(np.round(images / scale) + zero_point, -128, 127).astype(np.int8)
        return images.astype(self.input_dtype)

    def dequantize_outputs(self, outputs: np.ndarray) -> np.ndarray:
        scale, zero_point = self.output_quantization
        if outputs.dtype != np.float32 and scale:
            return (outputs.astype(np.float32) - zero_point) * scale
        return outputs.astype(np.float32)


class _BatchedInterpreter:
    """An interpreter resized to a fixed batch; the last batch is zero-padded."""

    def __init__(self, model: TFLiteModel, content: bytes, batch_size: int):
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
    model: TFLiteModel, images: np.ndarray, batch_size: int = 1000, content: bytes | None = None
) -> np.ndarray:
    """Float logits of a TFLite model on images (float in [0, 1] or uint8)."""
    inputs = model.quantize_inputs(images)
    interpreter = _BatchedInterpreter(model, content or model.content, min(batch_size, len(inputs)))
    return model.dequantize_outputs(interpreter.outputs(inputs))


class TFLiteRunner:
    """Evaluates (rate, trial) cells of one spec on one TFLite model."""

    def __init__(self, model: TFLiteModel, spec: FaultSpec, images, labels, batch_size: int = 1000):
        spec.validate()
        self.model = model
        self.spec = spec
        self.target_names = model.select_layers(spec)
        self.inputs = model.quantize_inputs(images)
        self.labels = np.asarray(labels)
        self.batch_size = min(batch_size, len(self.labels))
        self.buffer = bytearray(model.content)
        self.patch_seconds = 0.0  # Time spent writing faulty bytes (inject).
        self.build_seconds = 0.0  # Time spent building interpreters from patched bytes.

    def _write(self, tensor: ConstantTensor, values: np.ndarray) -> None:
        self.buffer[tensor.offset : tensor.offset + tensor.nbytes] = np.ascontiguousarray(
            values, tensor.dtype
        ).tobytes()

    def _read(self, tensor: ConstantTensor) -> np.ndarray:
        return np.frombuffer(
            self.model.content, tensor.dtype, int(np.prod(tensor.shape)), tensor.offset
        ).copy()

    def _faulty_values(self, tensor: ConstantTensor, file_positions: np.ndarray, rng):
        values = self._read(tensor)
        fault = self.spec.value_fault
        if fault.kind == "zero":
            values[file_positions] = 0
        elif fault.kind == "value":
            value = fault.value
            if value is None:  # Stuck at the tensor's max |real value|.
                value = float(np.max(np.abs(self._real_values(tensor))))
            if tensor.dtype == np.float32:
                values[file_positions] = value
            else:
                scales = element_scales(tensor)[file_positions]
                limit = np.iinfo(tensor.dtype).max
                values[file_positions] = np.clip(np.round(value / scales), -limit, limit)
        else:
            values[file_positions] = sampling.corrupt_bits(
                values[file_positions], rng, fault.bit_position, fault.bit_mode
            )
        return values

    def _real_values(self, tensor: ConstantTensor) -> np.ndarray:
        values = self._read(tensor).astype(np.float64)
        return values if tensor.dtype == np.float32 else values * element_scales(tensor)

    def inject(self, rate: float, trial: int) -> dict[str, Any]:
        """Writes the faulty bytes of cell (rate, trial) into the in-memory model."""
        spec = self.spec
        self.buffer[:] = self.model.content
        per_layer, faulted, total = {}, 0, 0
        for name in self.target_names:
            layer = self.model.layers[name]
            rng = sampling.trial_rng(spec.seed, spec.kind, name, rate, trial)
            if spec.kind == "node":
                units = layer.weights.shape[0]
                positions = sampling.sample_positions(units, rate, rng, spec.sampling)
                weights = self._read(layer.weights).reshape(layer.weights.shape)
                weights[positions, :] = 0
                self._write(layer.weights, weights)
                if layer.bias is not None:
                    bias = self._read(layer.bias)
                    bias[positions] = 0
                    self._write(layer.bias, bias)
                count, elements = len(positions), units
            else:
                bias_size = int(np.prod(layer.bias.shape)) if layer.bias is not None else 0
                plan = sampling.plan_parameter_fault(
                    layer.keras_kernel_shape,
                    bias_size,
                    spec.kind,
                    rate,
                    rng,
                    spec.sampling,
                    spec.include_bias,
                )
                file_positions = layer.keras_to_file_positions(plan.kernel_positions)
                self._write(layer.weights, self._faulty_values(layer.weights, file_positions, rng))
                if layer.bias is not None and len(plan.bias_positions):
                    self._write(
                        layer.bias, self._faulty_values(layer.bias, plan.bias_positions, rng)
                    )
                count, elements = plan.faulted, plan.elements
            per_layer[name] = {"faulted": count, "elements": elements}
            faulted += count
            total += elements
        return {"faulted": faulted, "elements": total, "per_layer": per_layer}

    def logits(self) -> np.ndarray:
        """Float logits of the model as currently patched."""
        start = time.perf_counter()
        interpreter = _BatchedInterpreter(self.model, self.buffer, self.batch_size)
        self.build_seconds += time.perf_counter() - start
        return self.model.dequantize_outputs(interpreter.outputs(self.inputs))

    def evaluate_cell(self, rate: float, trial: int) -> dict[str, Any]:
        start = time.perf_counter()
        counts = self.inject(rate, trial)
        self.patch_seconds += time.perf_counter() - start
        accuracy = float(np.mean(np.argmax(self.logits(), axis=-1) == self.labels))
        return campaign.cell_result(rate, trial, accuracy, counts)


def _read_checked(path: Path) -> bytes:
    if not path.exists():
        raise FileNotFoundError(f"Model file {path} does not exist.")
    content = path.read_bytes()
    if len(content) < 8 or not schema.Model.ModelBufferHasIdentifier(content, 0):
        raise ValueError(
            f"{path} is not a TFLite model (no 'TFL3' identifier); pass a .tflite written by aftt-export."
        )
    return content


def _parse_layers(content: bytes, layer_names: dict[int, str]) -> dict[str, TFLiteLayer]:
    """FULLY_CONNECTED / CONV_2D operators with constant weights, in execution order."""
    try:
        model = schema.Model.GetRootAs(content, 0)
        graph = model.Subgraphs(0)
        base = np.frombuffer(content, np.uint8)
        base_address = base.__array_interface__["data"][0]
        codes = []
        for index in range(model.OperatorCodesLength()):
            code = model.OperatorCodes(index)
            codes.append(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()))
        consumers: dict[int, list[int]] = {}
        for op_index in range(graph.OperatorsLength()):
            for tensor in graph.Operators(op_index).InputsAsNumpy():
                consumers.setdefault(int(tensor), []).append(op_index)

        def constant(tensor_index: int) -> ConstantTensor | None:
            if tensor_index < 0:
                return None
            tensor = graph.Tensors(tensor_index)
            buffer = model.Buffers(tensor.Buffer())
            if buffer.Offset() > 1:  # Large models keep buffers outside the flatbuffer.
                offset = int(buffer.Offset())
            else:
                data = buffer.DataAsNumpy()
                if isinstance(data, int) or data.size == 0:
                    return None
                offset = int(data.__array_interface__["data"][0] - base_address)
            quantization = tensor.Quantization()
            scales = (
                np.asarray(quantization.ScaleAsNumpy(), np.float64)
                if quantization and quantization.ScaleLength()
                else np.empty(0)
            )
            return ConstantTensor(
                index=tensor_index,
                offset=offset,
                shape=tuple(int(d) for d in tensor.ShapeAsNumpy()),
                dtype=np.dtype(_NUMPY_TYPES[tensor.Type()]),
                scales=scales,
                quantized_dimension=quantization.QuantizedDimension() if quantization else 0,
            )

        layers: dict[str, TFLiteLayer] = {}
        counters = {"fully_connected": 0, "conv_2d": 0}
        for op_index in range(graph.OperatorsLength()):
            operator = graph.Operators(op_index)
            code = codes[operator.OpcodeIndex()]
            if code == _BUILTIN.FULLY_CONNECTED:
                kind, options = "fully_connected", schema.FullyConnectedOptions()
            elif code == _BUILTIN.CONV_2D:
                kind, options = "conv_2d", schema.Conv2DOptions()
            else:
                continue
            inputs = [int(t) for t in operator.InputsAsNumpy()]
            weights = constant(inputs[1])
            if weights is None:
                continue
            bias = constant(inputs[2]) if len(inputs) > 2 else None
            table = operator.BuiltinOptions()
            options.Init(table.Bytes, table.Pos)
            fused = options.FusedActivationFunction()
            output = int(operator.OutputsAsNumpy()[0])
            followers = [codes[graph.Operators(i).OpcodeIndex()] for i in consumers.get(output, [])]
            # act(0) = 0 for the fused activation and for any activation operator after it.
            zero_preserving = fused in _ZERO_PRESERVING_FUSED and not any(
                code in _NON_ZERO_PRESERVING_FOLLOWERS for code in followers
            )
            name = layer_names.get(op_index, f"{kind}_{counters[kind]}")
            counters[kind] += 1
            layers[name] = TFLiteLayer(name, op_index, kind, weights, bias, zero_preserving)
    except (IndexError, KeyError, AttributeError, ValueError, TypeError, struct.error) as error:
        raise ValueError(
            f"The TFLite flatbuffer is corrupt or truncated ({type(error).__name__}: {error})."
        ) from None
    if not layers:
        raise FaultTargetError(
            "The TFLite model has no FULLY_CONNECTED or CONV_2D layer with constant weights."
        )
    return layers
