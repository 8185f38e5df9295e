"""Fault campaigns on .tflite files, with numpy and ai-edge-litert only (no TensorFlow).

The file is read once into memory and parsed by `aftt_tf.tflite_file`. Each
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

import time
from typing import Any

import numpy as np

from aftt_tf import tflite_file
from aftt_tf.faults import inputs, sampling, selection
from aftt_tf.faults.spec import FaultSpec, FaultTargetError, cell_result
from aftt_tf.tflite_file import (
    BatchedInterpreter,
    ConstantTensor,
    element_scales,
    element_zero_points,
)

_CONV_NODE_REFUSAL = (
    "Node faults in conv layer {name!r} hold single activation positions at 0; rewriting "
    "weights cannot express that. Use filter faults, or Dense layers."
)


class TFLiteModel(tflite_file.TFLiteFile):
    """A parsed .tflite classifier as a campaign model (`spec.CampaignModel`)."""

    def candidates(self) -> list[selection.Candidate]:
        """The file's weight operators as the shared selection rule sees them."""
        output_index = max(layer.operator_index for layer in self.layers.values())
        return [
            selection.Candidate(
                name=layer.name,
                convolution=layer.filter_axis is not None,
                output=layer.operator_index == output_index,
                # Per-position node faults in conv layers cannot be written into weights.
                node_faults=layer.operator == "fully_connected",  # Conv outputs: positions.
                node_refusal=_CONV_NODE_REFUSAL.format(name=layer.name),
                zero_preserving=layer.zero_preserving,
            )
            for layer in self.layers.values()
        ]

    def select_layers(self, spec: FaultSpec) -> list[str]:
        """Layers that `spec.kind` can fault in this file, after scope and --layers."""
        names = selection.select(
            self.candidates(),
            spec.kind,
            spec.scope,
            spec.layers,
            spec.include_output_nodes,
            model_name=self.path.name,
            names_from="the export's manifest.json",
            exclude=spec.exclude_layers,
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

    def coverage(self, spec: FaultSpec) -> dict[str, Any]:
        """What the spec faults of the file's constant weights, and what it leaves out."""
        targeted = self.select_layers(spec)
        total = sum(op["weights"] for op in self.weight_operators)
        held = sum(
            op["weights"] for op in self.weight_operators if op.get("layer") in set(targeted)
        )
        left_out = []
        for op in self.weight_operators:
            if op.get("layer") in targeted:
                continue
            layer = self.layers.get(op.get("layer"))
            if layer is None:
                reason = (
                    f"{op['operator']} weights are not faulted by the TFLite runtime (it "
                    "faults FULLY_CONNECTED, CONV_2D and DEPTHWISE_CONV_2D)"
                )
            elif spec.kind == "node" and layer.operator != "fully_connected":
                reason = (
                    "node faults on convolution outputs hold single positions at 0, which "
                    "rewriting a .tflite's weights cannot express (the Keras runtime can)"
                )
            else:
                reason = "not selected by the fault kind, --layers, --exclude_layers or --scope"
            left_out.append({**op, "reason": reason})
        return {
            "targeted_layers": targeted,
            "targeted_layers_weight_share": held / total if total else 0.0,
            "model_weight_elements": total,
            "left_out": left_out,
            "layer_names_from": self.names_from,
        }

    @property
    def weight_operators(self) -> list[dict[str, Any]]:
        by_index = {layer.operator_index: name for name, layer in self.layers.items()}
        result = []
        for op in tflite_file.constant_operators(self.content):
            if op["operator_index"] in by_index:
                op = {**op, "layer": by_index[op["operator_index"]]}
            result.append(op)
        return result

    def runner(
        self, spec: FaultSpec, images, labels, batch_size: int, transform=None
    ) -> TFLiteRunner:
        return TFLiteRunner(self, spec, images, labels, batch_size, transform)


class TFLiteRunner:
    """Evaluates (rate, trial) cells of one spec on one TFLite model."""

    def __init__(
        self,
        model: TFLiteModel,
        spec: FaultSpec,
        images,
        labels,
        batch_size: int = 1000,
        transform: inputs.InputTransform | None = None,
    ):
        spec.validate()
        self.model = model
        self.spec = spec
        self.target_names = model.select_layers(spec)
        images = np.asarray(images)
        transform = transform or inputs.resolve("auto", dtype=images.dtype)
        values = transform.apply(images)  # Model input values: never rescaled again.
        self.inputs = model.quantize_inputs(
            values.astype(np.float32) if values.dtype == np.uint8 else values
        )
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
        return tflite_file.read_values(self.model.content, tensor)

    def _faulty_values(self, tensor: ConstantTensor, file_positions: np.ndarray, rng):
        return faulty_values(self.model.content, tensor, file_positions, self.spec.value_fault, rng)

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
                zero = element_zero_points(layer.weights).reshape(layer.weights.shape)
                weights[positions, :] = zero[positions, :]  # Real 0 in the file's encoding.
                self._write(layer.weights, weights)
                if layer.bias is not None:
                    bias = self._read(layer.bias)
                    bias[positions] = element_zero_points(layer.bias)[positions]
                    self._write(layer.bias, bias)
                count, elements = len(positions), units
            else:
                bias_size = int(np.prod(layer.bias.shape)) if layer.bias is not None else 0
                plan = sampling.plan_layer_fault(
                    [layer.keras_kernel_shape],
                    [layer.filter_axis],
                    bias_size,
                    spec.kind,
                    rate,
                    lambda index, rng=rng: rng,
                    spec.sampling,
                    spec.include_bias,
                )
                file_positions = layer.keras_to_file_positions(plan.kernel_positions[0])
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
        interpreter = BatchedInterpreter(self.model, self.buffer, self.batch_size)
        self.build_seconds += time.perf_counter() - start
        return self.model.dequantize_outputs(interpreter.outputs(self.inputs))

    def evaluate_cell(self, rate: float, trial: int) -> dict[str, Any]:
        start = time.perf_counter()
        counts = self.inject(rate, trial)
        self.patch_seconds += time.perf_counter() - start
        accuracy = float(np.mean(np.argmax(self.logits(), axis=-1) == self.labels))
        return cell_result(rate, trial, accuracy, counts)


def faulty_values(
    content: bytes,
    tensor: ConstantTensor,
    file_positions: np.ndarray,
    fault: sampling.ValueFault,
    rng: np.random.Generator,
) -> np.ndarray:
    """A constant tensor's stored values with `fault` at `file_positions`, in the file's
    own encoding: stuck-at-0 writes each element's zero point (real 0), a stuck value is
    quantised with the element's scale and zero point, bit faults flip stored bits."""
    values = tflite_file.read_values(content, tensor)
    floating = np.issubdtype(tensor.dtype, np.floating)
    if fault.kind == "zero":
        values[file_positions] = 0 if floating else element_zero_points(tensor)[file_positions]
    elif fault.kind == "value":
        value = fault.value
        if value is None:  # Stuck at the tensor's max |real value|.
            value = float(np.max(np.abs(tflite_file.real_values(content, tensor))))
        if floating:
            values[file_positions] = value
        else:
            scales = element_scales(tensor)[file_positions]
            zero_points = element_zero_points(tensor)[file_positions]
            info = np.iinfo(tensor.dtype)
            low = max(info.min, -info.max) if not zero_points.any() else info.min
            values[file_positions] = np.clip(np.round(value / scales) + zero_points, low, info.max)
    else:
        values[file_positions] = sampling.corrupt_bits(
            values[file_positions], rng, fault.bit_position, fault.bit_mode
        )
    return values
