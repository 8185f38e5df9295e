"""Fault campaigns on .tflite files, with numpy and ai-edge-litert only (no TensorFlow).

The file is read once into memory and parsed by `aftt_tf.runtimes.tflite_file`: each Keras layer
is one weight-bearing operator (or two: SeparableConv2D) whose weights and bias live in
constant buffers. A parameter-fault trial restores the original bytes of the touched
buffers, writes the faulty values in the file's own representation and builds an
interpreter from the patched bytes (no re-read or re-parse of the file). Fault
positions come from the same sampler as the Keras runtime, in the Keras layout, and are
mapped to each operator's layout (FC transposed, conv OHWI, depthwise 1HW(C*M),
transpose-conv OHWI, conv-3D DHWIO), so one seed faults the same elements in both.

Representations: float32 and float16 weights take the faulty value as stored floats;
integer weights (int8 per-channel or per-tensor, uint8, int16, int32 biases) take
stuck-at-0 as each element's zero point (real 0), a stuck value quantised with the
element's scale and zero point, and bit faults on the stored bits of their type.

Node faults hold a layer's output units at 0 exactly as the Keras NodeFault does: the
file is rewritten once with a mask multiplication after each targeted layer's output
(`tflite_nodes`), and a trial writes the mask.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import time
from typing import Any

import numpy as np

from aftt_tf.data import inputs
from aftt_tf.faults import (
    fault_map,
    kinds,
    placement,
    protection,
    sampling,
    selection,
    systolic,
    transient,
)
from aftt_tf.faults.spec import (
    CampaignModel,
    CellRunner,
    FaultSpec,
    FaultTargetError,
    cell_result,
    outcome_of,
    predictions,
)
from aftt_tf.runtimes import nan_semantics, tflite_file, tflite_nodes, tflite_transient
from aftt_tf.runtimes.tflite_file import (
    BatchedInterpreter,
    ConstantTensor,
    element_scales,
    element_zero_points,
)


def load(path) -> TFLiteModel:
    """The `runtimes` entry: a .tflite file (layer names from a manifest beside it)."""
    return TFLiteModel.load(path)


def payload(model: TFLiteModel) -> dict[str, Any]:
    """The `runtimes` entry: the file's bytes and its layer names (for a Ray worker)."""
    names = None
    if model.names_from == "manifest":
        names = {
            index: name
            for name, layer in model.layers.items()
            if not layer.subgraph  # Loop bodies are named by their scopes.
            for index in layer.operator_indices
        }
    return {"name": model.path.name, "content": model.content, "names": names}


def restore(payload: dict[str, Any]) -> TFLiteModel:
    return TFLiteModel(payload["name"], payload["names"], content=payload["content"])


class TFLiteModel(tflite_file.TFLiteFile, CampaignModel):
    """A parsed .tflite classifier as a campaign model (`spec.CampaignModel`)."""

    runtime = "tflite"

    def candidates(self) -> list[selection.Candidate]:
        """The file's weight operators as the shared selection rule sees them."""
        main = [layer for layer in self.layers.values() if not layer.subgraph]
        output_index = max(max(layer.all_operator_indices) for layer in main)
        return [
            selection.Candidate(
                name=layer.name,
                convolution=layer.filter_axis is not None,
                output=not layer.subgraph and max(layer.all_operator_indices) == output_index,
                node_faults=layer.node_tensor is not None,
                node_refusal=layer.node_refusal,
            )
            for layer in self.layers.values()
        ]

    @functools.cached_property
    def normalization(self) -> tuple[dict[str, tflite_file.TFLiteLayer], dict[str, str]]:
        """(normalisation constants as layers, {normalisation layer: layer folded into})."""
        return tflite_file.normalization_layers(self.content, self.layers)

    def _view(self, spec: FaultSpec) -> TFLiteModel | None:
        """This file with its normalisation constants among its layers, when `spec` asks
        for them (--include_normalization) and this is not that view already."""
        if not spec.selection.include_normalization or getattr(self, "_with_normalization", False):
            return None
        separate, _ = self.normalization  # Read from the weight layers, cached: the view keeps it.
        view = copy.copy(self)
        merged = {**self.layers, **separate}
        view.layers = dict(
            sorted(
                merged.items(),
                key=lambda item: (item[1].subgraph, min(item[1].all_operator_indices)),
            )
        )
        view._with_normalization = True
        return view

    def select_layers(self, spec: FaultSpec) -> list[str]:
        """Layers that `spec.kind` can fault in this file, after scope and --layers."""
        view = self._view(spec)
        if view is not None:
            return view.select_layers(spec)
        if spec.repair is not None:
            raise FaultTargetError(
                f"{self.path.name}: the repaired protocol retrains the model in every cell, "
                "and a .tflite cannot be trained. Repair the .keras (aftt-repair, or "
                "aftt-faults --repair_epochs on it), then export it."
            )
        names = selection.select(
            self.candidates(),
            spec.fault_kind,
            spec.selection.scope,
            spec.selection.layers,
            spec.selection.include_output_nodes,
            model_name=self.path.name,
            names_from="the export's manifest.json",
            exclude=spec.selection.exclude_layers,
        )
        self._check_targets(names, spec)
        kind = spec.fault_kind
        if spec.value.storage == "int8":
            stored = {k.weights.dtype.name for name in names for k in self.layers[name].kernels}
            if stored != {"int8"}:
                raise FaultTargetError(
                    f"--storage=int8 faults int8 kernel codes; {self.path.name} stores the "
                    f"targeted kernels as {'/'.join(sorted(stored))}. Run it without "
                    "--storage (faults act on what a file stores), or use the int8 export."
                )
        if kind.on_parameters and kind.bit_meaning and "weights" in spec.selection.targets:
            for name in names:
                bits = min(k.weights.dtype.itemsize for k in self.layers[name].kernels) * 8
                if spec.value.bit_position >= bits:
                    raise FaultTargetError(
                        f"bit_position {spec.value.bit_position} does not exist in the {bits}-bit "
                        f"weights of {name!r}; use 0..{bits - 1} or -1."
                    )
        if (
            kind.on_parameters
            and kind.takes_value
            and spec.value.stuck_value is not None
            and "weights" in spec.selection.targets
        ):
            for name in names:
                self._check_storable(name, spec)
        return names

    def _check_targets(self, names: list[str], spec: FaultSpec) -> None:
        """Each --targets entry must exist in the file (a float file has no int8 scales or
        zero points), and a bit position must exist in what it names."""
        widths = {"scales": 32, "zero_points": 8, "biases": None}
        for target in spec.selection.targets:
            if target == "weights":
                continue
            tensors = [t for name in names for t in metadata_tensors(self.layers[name], target)]
            if not tensors:
                raise FaultTargetError(
                    f"--targets={target}: the targeted layers of {self.path.name} hold no "
                    + (
                        "biases."
                        if target == "biases"
                        else "int8 quantization metadata (a float file); use the int8 or "
                        "dynamic-range export."
                    )
                )
            bits = widths[target] or min(t.dtype.itemsize for t in tensors) * 8
            if spec.fault_kind.bit_meaning and spec.value.bit_position >= bits:
                raise FaultTargetError(
                    f"bit_position {spec.value.bit_position} does not exist in the {bits}-bit "
                    f"{target.replace('_', ' ')}; use 0..{bits - 1} or -1."
                )

    def weight_storage(self, spec: FaultSpec) -> set[str]:
        """The storage types of the values `spec` faults (what a bit position means): the
        weights' types, or for transient faults the types of the layers' outputs."""
        view = self._view(spec)
        if view is not None:
            return view.weight_storage(spec)
        if spec.fault_kind.transient:
            return {
                tflite_file.tensor_type(self.content, self.layers[name].transient_tensor).name
                for name in self.select_layers(spec)
            }
        return {
            kernel.weights.dtype.name
            for name in self.select_layers(spec)
            for kernel in self.layers[name].kernels
        }

    def _check_storable(self, name: str, spec: FaultSpec) -> None:
        """FaultTargetError when an integer tensor of the layer cannot hold the stuck value
        (clamping it to the int8 range would measure another fault than the one asked)."""
        layer = self.layers[name]
        tensors = [kernel.weights for kernel in layer.kernels]
        if spec.selection.include_bias and layer.bias is not None:
            tensors.append(layer.bias)
        for tensor in tensors:
            if np.issubdtype(tensor.dtype, np.floating):
                continue
            scales = tflite_file.element_scales(tensor)
            zero_points = tflite_file.element_zero_points(tensor)
            info = np.iinfo(tensor.dtype)
            low = (max(info.min, -info.max) - zero_points) * scales
            high = (info.max - zero_points) * scales
            half_step = scales / 2
            if np.any(spec.value.stuck_value < low - half_step) or np.any(
                spec.value.stuck_value > high + half_step
            ):
                raise FaultTargetError(
                    f"stuck_value {spec.value.stuck_value:g} cannot be stored in the "
                    f"{tensor.dtype.name} weights of {name!r} in {self.path.name}: with their "
                    f"scales they hold only [{float(np.max(low)):.6g}, {float(np.min(high)):.6g}] "
                    "in every element (a larger value would be clamped, a different fault). "
                    "Pick a value in that range, or leave --stuck_value unset (each layer's "
                    "max |w|), or run the float .tflite."
                )

    def coverage(self, spec: FaultSpec) -> dict[str, Any]:
        """What the spec faults of the file's constant weights, and what it leaves out."""
        view = self._view(spec)
        if view is not None:
            return view.coverage(spec)
        targeted = self.select_layers(spec)
        normalization = {
            (layer.subgraph, index): name
            for name, layer in self.normalization[0].items()
            for index in layer.all_operator_indices
        }
        total = sum(op["weights"] for op in self.weight_operators)
        held = sum(
            op["weights"] for op in self.weight_operators if op.get("layer") in set(targeted)
        )
        left_out = [
            {**op, "reason": self._left_out_reason(op, spec, normalization)}
            for op in self.weight_operators
            if op.get("layer") not in targeted
        ]
        result = {
            "targeted_layers": targeted,
            "targeted_layers_weight_share": held / total if total else 0.0,
            "model_weight_elements": total,
            "left_out": left_out,
            "layer_names_from": self.names_from,
        }
        result.update(self._kind_coverage(spec, targeted))
        return result

    def _left_out_reason(self, op: dict[str, Any], spec: FaultSpec, normalization) -> str:
        """Why an operator with constants is not among the targets."""
        layer = self.layers.get(op.get("layer"))
        key = (op.get("subgraph", 0), op["operator_index"])
        if layer is None and key in normalization:
            return (
                f"per-channel scale/offset of {normalization[key]!r}: "
                "faulted with --include_normalization"
            )
        if layer is None:
            return _unsupported_reason(op["operator"])
        if spec.fault_kind.on_outputs and layer.node_tensor is None:
            return layer.node_refusal
        if spec.fault_kind.whole_filters and layer.filter_axis is None:
            return f"{layer.operator.upper()} has no filters (filter faults reach convolutions)"
        return "not selected by the fault kind, --layers, --exclude_layers or --scope"

    def _kind_coverage(self, spec: FaultSpec, targeted: list[str]) -> dict[str, Any]:
        """Coverage entries of normalisation targets, transient faults and --targets."""
        result: dict[str, Any] = {}
        if spec.selection.include_normalization:
            separate, folded = self.normalization
            result["normalization"] = {
                "separate": {  # The attributes each holds: a zero offset may be gone.
                    name: list(separate[name].keras_attributes)
                    for name in sorted(set(separate) & set(targeted))
                },
                "folded": folded,
                "holds": "separate: the per-channel constants of the file's MUL (gamma) and "
                "ADD/SUB (beta) operators; folded: a BatchNormalization the converter folded "
                "into a layer's kernel and bias, faulted only through that layer's weights",
            }
        if spec.fault_kind.transient:
            result["outputs"] = transient.output_coverage(
                {
                    name: int(np.prod(tflite_file.tensor_shape(self.content, index)[1:]))
                    for name in targeted
                    for index in [self.layers[name].transient_tensor]
                },
                self.weight_storage(spec),
            )
        if tuple(spec.selection.targets) != ("weights",):
            result["targets"] = {
                target: _target_coverage(self, targeted, target)
                for target in spec.selection.targets
            }
        return result

    @property
    def weight_operators(self) -> list[dict[str, Any]]:
        by_index = {
            (layer.subgraph, index): name
            for name, layer in self.layers.items()
            for index in layer.all_operator_indices
        }
        result = []
        for op in tflite_file.constant_operators(self.content):
            key = (op.get("subgraph", 0), op["operator_index"])
            if key in by_index:
                op = {**op, "layer": by_index[key]}
            result.append(op)
        return result

    def kernel_elements(self, spec: FaultSpec) -> dict[str, int]:
        """Kernel elements of each layer `spec` faults, in Keras layout (a kernel the
        converter stored twice counts twice: its copies would take separate faults), and
        its bias elements with --include_bias (a converter drops an all-zero bias)."""
        model = self._view(spec) or self
        layers = {name: model.layers[name] for name in model.select_layers(spec)}
        return {
            name: sum(int(np.prod(k.keras_kernel_shape)) for k in layer.kernels)
            + (int(np.prod(layer.bias.shape)) if spec.selection.include_bias and layer.bias else 0)
            for name, layer in layers.items()
        }

    def guarded(self) -> TFLiteModel:
        """This file with NaN guards (`nan_semantics.with_guards`): the same operators and
        layers, the inputs of pooling and max/min reductions as extra outputs. Itself
        when it has none (int8 files, models without pooling)."""
        if "_guarded" not in self.__dict__:
            content, guards = nan_semantics.with_guards(self.content)
            result = self
            if guards:
                result = TFLiteModel(self.path, self.layer_names, self.num_threads, content)
                plain = tflite_file.TFLiteFile(self.path, self.layer_names, content=self.content)
                if list(result.layers) != list(plain.layers):
                    raise RuntimeError(f"NaN guards changed the layers of {self.path}.")
                result.guards = guards
                result.output_shapes = self.output_shapes  # The model's own, not the guards.
            self.__dict__["_guarded"] = result
        return self.__dict__["_guarded"]

    def runner(
        self, spec: FaultSpec, images, labels, batch_size: int, transform=None
    ) -> TFLiteRunner:
        return TFLiteRunner(self._view(spec) or self, spec, images, labels, batch_size, transform)


class PerRateTFLiteModel(CampaignModel):
    runtime = "tflite-per-rate"  # Not sent to Ray workers (no payload).

    """A deployment calibrated per chip: the chip whose fault rate was measured at r runs
    the int8 file calibrated for rate r (aftt-export tflite_int8_fault_calibrated with
    --fault_calibration_rates=r), a fault-free chip the plain file. A `CampaignModel`
    whose cell (rate, trial) runs on the file of its rate; the files must share their
    layers (the same network, quantized differently)."""

    def __init__(self, files: dict[float, TFLiteModel]):
        if not files:
            raise ValueError("PerRateTFLiteModel needs at least one file.")
        self.files = {float(rate): model for rate, model in sorted(files.items())}
        first = next(iter(self.files.values()))
        for rate, model in self.files.items():
            if _kernel_shapes(model) != _kernel_shapes(first) or (
                model.input_shape != first.input_shape
            ):
                raise ValueError(
                    f"The file for rate {rate:g} ({model.path}) has other layers or inputs "
                    f"than {first.path}; per-rate files must quantize one network."
                )
        self.path = first.path
        self.input_shape = first.input_shape
        self.num_outputs = first.num_outputs
        self.output_shapes = first.output_shapes

    def fingerprint(self) -> str:
        combined = {f"{rate:g}": model.fingerprint() for rate, model in self.files.items()}
        return hashlib.sha256(json.dumps(combined, sort_keys=True).encode()).hexdigest()

    def select_layers(self, spec: FaultSpec) -> list[str]:
        missing = [rate for rate in spec.rates if self._file_for(rate) is None]
        if missing:
            raise FaultTargetError(
                f"No file calibrated for rate(s) {missing}; per-rate deployments have "
                f"files for {list(self.files)}."
            )
        return next(iter(self.files.values())).select_layers(spec)

    def coverage(self, spec: FaultSpec) -> dict[str, Any]:
        return next(iter(self.files.values())).coverage(spec)

    def kernel_elements(self, spec: FaultSpec) -> dict[str, int]:
        return next(iter(self.files.values())).kernel_elements(spec)

    def weight_storage(self, spec: FaultSpec) -> set[str]:
        return set().union(*(model.weight_storage(spec) for model in self.files.values()))

    def _file_for(self, rate: float) -> TFLiteModel | None:
        return next((m for r, m in self.files.items() if abs(r - rate) < 1e-9), None)

    def runner(self, spec: FaultSpec, images, labels, batch_size: int, transform=None):
        return _PerRateRunner(self, spec, images, labels, batch_size, transform)


def _kernel_shapes(model: TFLiteModel) -> dict[str, list[tuple[int, ...]]]:
    return {
        name: [kernel.keras_kernel_shape for kernel in layer.kernels]
        for name, layer in model.layers.items()
    }


class _PerRateRunner(CellRunner):
    """Cells of a `PerRateTFLiteModel`: each rate's cells run on that rate's file."""

    def __init__(self, model: PerRateTFLiteModel, spec, images, labels, batch_size, transform):
        self.model, self.arguments = model, (spec, images, labels, batch_size, transform)
        self.runners: dict[float, TFLiteRunner] = {}

    def evaluate_cell(self, rate: float, trial: int) -> dict[str, Any]:
        key = float(rate)
        if key not in self.runners:  # Built on first use: one file's inputs at a time.
            self.runners = {key: self.model._file_for(rate).runner(*self.arguments)}
        return self.runners[key].evaluate_cell(rate, trial)

    def close(self) -> None:
        for runner in self.runners.values():
            runner.close()
        self.runners = {}


class TFLiteRunner(CellRunner):
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
        if spec.fault_kind.non_finite and not model.guards:
            guarded = model.guarded()  # One NaN semantics with Keras (nan_semantics).
            if guarded is not model:
                model = guarded._view(spec) or guarded
        self.model = model
        self.spec = spec
        self.target_names = model.select_layers(spec)
        self._golden: np.ndarray | None = None
        self.refused: str | None = None
        self._pes = None
        self._plan, self._map_faults = _check_extras(model, spec, self.target_names)
        self.protected_counts: dict[str, int] = {}
        images = np.asarray(images)
        transform = transform or inputs.resolve("auto", dtype=images.dtype, sample=images)
        values = transform.apply(images)  # Model input values: never rescaled again.
        self.inputs = model.quantize_inputs(
            values.astype(np.float32) if values.dtype == np.uint8 else values
        )
        self.labels = np.asarray(labels)
        self.batch_size = min(batch_size, len(self.labels))
        self.content = model.content
        self.masks: dict[str, ConstantTensor] = {}
        if spec.fault_kind.family == kinds.OUTPUT:  # One rewrite: a mask after each output.
            points = {name: model.layers[name].node_tensor for name in self.target_names}
            self.content, self.masks = tflite_nodes.with_masks(model.content, points)
        self.split = self._transient_model() if spec.fault_kind.transient else None
        self._cell_faults = None
        self.buffer = bytearray(self.content)
        self.patch_seconds = 0.0  # Time spent writing faulty bytes (inject).
        self.build_seconds = 0.0  # Time spent building interpreters from patched bytes.

    def close(self) -> None:
        """Nothing to release: each cell builds its interpreter from the patched bytes."""

    def _transient_model(self) -> tflite_transient.SplitModel:
        """The file cut at the targeted outputs, every check made before any cell."""
        spec = self.spec
        points = {name: self.model.layers[name].transient_tensor for name in self.target_names}
        split = tflite_transient.SplitModel(self.model, points, self.batch_size)
        for name, width in split.widths.items():
            if spec.fault_kind.bit_meaning and spec.value.bit_position >= width:
                raise FaultTargetError(
                    f"bit_position {spec.value.bit_position} does not exist in the {width}-bit "
                    f"outputs of {name!r} in {self.model.path.name}; use 0..{width - 1} or -1."
                )
            if spec.fault_kind.takes_value:
                split.stored_value(name, spec.value.stuck_value)
        transient.check_size(spec, split.sizes, len(self.labels))
        return split

    def _inject_transient(self, rate: float, trial: int) -> dict[str, Any]:
        sizes, examples = self.split.sizes, len(self.labels)
        self._cell_faults = transient.plan_cell(
            self.spec, sizes, self.split.widths, examples, rate, trial
        )
        per_layer = {
            name: {"faulted": len(self._cell_faults[name]), "elements": examples * size}
            for name, size in sizes.items()
        }
        return {
            "faulted": sum(v["faulted"] for v in per_layer.values()),
            "elements": sum(v["elements"] for v in per_layer.values()),
            "per_layer": per_layer,
        }

    def _write(self, tensor: ConstantTensor, values: np.ndarray) -> None:
        self.buffer[tensor.offset : tensor.offset + tensor.nbytes] = np.ascontiguousarray(
            values, tensor.dtype
        ).tobytes()

    def _faulty_values(self, tensor: ConstantTensor, file_positions: np.ndarray, rng, bits=None):
        return faulty_values(self.content, tensor, file_positions, self.spec, rng, bits)

    def inject(self, rate: float, trial: int) -> dict[str, Any]:
        """Writes the faulty bytes of cell (rate, trial) into the in-memory model."""
        spec = self.spec
        if self.split is not None:
            return self._inject_transient(rate, trial)
        self.buffer[:] = self.content
        self._pes = systolic.cell_pes(spec, rate, trial)  # A systolic array's faulty PEs.
        return placement.cell_counts(
            self.target_names,
            lambda name: self._inject_layer(name, rate, trial),
            self.protected_counts,
            self._pes,
        )

    def _inject_layer(self, name: str, rate: float, trial: int) -> tuple[int, int]:
        spec = self.spec
        rng = sampling.trial_rng(spec.seed, spec.kind, name, rate, trial)
        if not spec.fault_kind.on_parameters:  # Held outputs (node faults).
            mask = self.masks[name]
            positions = placement.output_positions(spec, self._pes, mask.shape[1:], rate, rng)
            self._write(mask, tflite_nodes.mask_values(mask, positions))
            return len(positions), int(np.prod(mask.shape))
        count, elements = 0, 0
        if "weights" in spec.selection.targets:
            count, elements = self._inject_parameters(name, rate, trial, rng)
        for target in spec.selection.targets:
            if target != "weights":
                extra = self._inject_metadata(name, target, rate, trial)
                count, elements = count + extra[0], elements + extra[1]
        return count, elements

    def _inject_metadata(self, name: str, target: str, rate: float, trial: int):
        """Faults in one layer's biases, per-channel scales or output zero point, each
        tensor drawn from its own generator (labelled layer/target/index)."""
        spec = self.spec
        count = elements = 0
        for index, tensor in enumerate(metadata_tensors(self.model.layers[name], target)):
            size = int(np.prod(tensor.shape))
            rng = sampling.trial_rng(spec.seed, spec.kind, f"{name}/{target}/{index}", rate, trial)
            positions = sampling.sample_positions(size, rate, rng, spec.placement.sampling)
            if len(positions):
                if target == "zero_points":
                    values = _faulty_zero_points(self.content, tensor, positions, spec, rng)
                else:
                    values = self._faulty_values(tensor, positions, rng)
                self._write(tensor, values)
            count, elements = count + len(positions), elements + size
        return count, elements

    def _inject_parameters(self, name: str, rate: float, trial: int, rng) -> tuple[int, int]:
        """Parameter faults of one layer; kernel i > 0 draws from its own generator, as
        in the Keras runtime, so multi-operator layers fault the same elements."""
        spec, layer = self.spec, self.model.layers[name]

        rng_for = placement.kernel_generators(spec, name, layer.keras_attributes, rate, trial, rng)
        plan = placement.parameter_plan(
            spec,
            self._pes,
            self._plan,
            name,
            [kernel.keras_kernel_shape for kernel in layer.kernels],
            layer.filter_axes,
            layer.keras_attributes,
            int(np.prod(layer.bias.shape)) if layer.bias is not None else 0,
            rate,
            rng_for,
            (
                [kernel.weights.dtype.itemsize * 8 for kernel in layer.kernels],
                layer.bias.dtype.itemsize * 8 if layer.bias is not None else 32,
            ),
        )
        if self._plan is not None:
            self.protected_counts[name] = plan.protected
        extra = 0
        for index, kernel in enumerate(layer.kernels):
            positions = kernel.keras_to_file_positions(plan.kernel_positions[index])
            source = rng if index == 0 else rng_for(index)
            bits = None
            if plan.kernel_bits is not None:
                bits = sampling.BitMasks(positions, plan.kernel_bits[index].masks)
            values = self._faulty_values(kernel.weights, positions, source, bits)
            mapped = self._map_faults.get((name, layer.keras_attributes[index]))
            if mapped:  # The chip's known faults, on top of the sampled ones.
                where, reals = fault_map.overlay(mapped, kernel.keras_kernel_shape)
                extra += len(np.setdiff1d(where, plan.kernel_positions[index]))
                stored = kernel.keras_to_file_positions(where)
                values[stored] = _stored(kernel.weights, stored, reals)
            self._write(kernel.weights, values)
        mapped = self._map_faults.get((name, "bias"))
        if layer.bias is not None and (len(plan.bias_positions) or mapped):
            values = self._faulty_values(layer.bias, plan.bias_positions, rng, plan.bias_bits)
            if mapped:
                where, reals = fault_map.overlay(mapped, layer.bias.shape)
                extra += len(np.setdiff1d(where, plan.bias_positions))
                values[where] = _stored(layer.bias, where, reals)
            self._write(layer.bias, values)
        return plan.faulted + extra, plan.elements

    def logits(self) -> np.ndarray:
        """Float logits of the model as currently patched.

        With faults in quantization metadata the interpreter may refuse the edited file
        (XNNPACK rejects a zero scale, for one): the deployment would not
        run, so every inference of the cell is a detected error (NaN outputs, counted as
        non-finite), and `refused` says why. Weight faults never make a file invalid, so
        there a refusal is an error."""
        start = time.perf_counter()
        self.refused = None
        if self.split is not None:  # Transient faults: the pieces, faults between them.
            outputs = self.split.outputs(self.inputs, self._cell_faults, self.spec)
            return self.model.dequantize_outputs(outputs)
        try:
            interpreter = BatchedInterpreter(
                self.model, self.buffer, self.batch_size, self.model.guards
            )
            self.build_seconds += time.perf_counter() - start
            return self.model.dequantize_outputs(interpreter.outputs(self.inputs))
        except (RuntimeError, ValueError) as error:
            if set(self.spec.selection.targets) <= {"weights", "biases"}:
                raise
            self.refused = str(error).split("\n")[0][:300]
            return np.full((len(self.labels), self.model.num_outputs), np.nan, np.float32)

    def golden(self) -> np.ndarray:
        """Top-1 classes of the fault-free file (computed once): what SDC compares with."""
        if self._golden is None:
            # Once per file and inputs: the runners of a campaign's layer groups share it.
            cache = self.model.__dict__.setdefault("golden_cache", {})
            key = (
                hashlib.sha1(self.content).hexdigest(),
                hashlib.sha1(np.ascontiguousarray(self.inputs).tobytes()).hexdigest(),
            )
            if key not in cache:
                self.buffer[:] = self.content
                self._cell_faults = None
                cache[key] = predictions(self.logits())
            self._golden = cache[key]
        return self._golden

    def evaluate_cell(self, rate: float, trial: int) -> dict[str, Any]:
        golden = self.golden()
        start = time.perf_counter()
        counts = self.inject(rate, trial)
        self.patch_seconds += time.perf_counter() - start
        result = cell_result(rate, trial, outcome_of(self.logits(), self.labels, golden), counts)
        if self.spec.placement.fault_map:  # Rate 0 is the mapped chip, not the fault-free file.
            result["fault_free_accuracy"] = float(np.mean(golden == self.labels))
        if self.refused:
            result["runtime_refused"] = self.refused
        return result


def _unsupported_reason(operator: str) -> str:
    if operator == "BATCH_MATMUL":
        return (
            "BATCH_MATMUL weights are not faulted: the converter turns Keras Dense/EinsumDense "
            "and constant matmuls into FULLY_CONNECTED, so no Keras layer maps to it"
        )
    reason = (
        f"{operator} weights are not faulted by the TFLite runtime (it faults "
        f"{', '.join(tflite_file.SUPPORTED_OPERATORS)})"
    )
    if operator == "UNIDIRECTIONAL_SEQUENCE_LSTM":
        reason += "; the LSTM's gate tensors are not mapped to the Keras kernels yet"
    return reason


def _check_extras(model: TFLiteModel, spec: FaultSpec, names: list[str]):
    """(protection plan, fault map by tensor) of a campaign on this file, each checked
    against the targeted layers, and --array layers checked: all before any cell."""
    if spec.placement.array and spec.fault_kind.on_parameters:
        for name in names:
            layer = model.layers[name]
            shapes = [k.keras_kernel_shape for k in layer.kernels]
            if systolic.unsupported(shapes, layer.filter_axes):
                raise FaultTargetError(systolic.refusal(name))
    plan = protection.load(spec.selection.protected) if spec.selection.protected else None
    if plan is not None:
        protection.check_plan_fits(
            plan,
            {
                (name, attribute): int(np.prod(kernel.keras_kernel_shape))
                for name in names
                for attribute, kernel in zip(
                    model.layers[name].keras_attributes, model.layers[name].kernels, strict=True
                )
            },
            f"the targeted layers of {model.path.name}",
        )
    mapped = {}
    if spec.placement.fault_map:
        loaded = fault_map.load(spec.placement.fault_map)
        shapes = {}
        for name in names:
            layer = model.layers[name]
            for attribute, kernel in zip(layer.keras_attributes, layer.kernels, strict=True):
                shapes[(name, attribute)] = tuple(kernel.keras_kernel_shape)
            if layer.bias is not None:
                shapes[(name, "bias")] = tuple(layer.bias.shape)
        fault_map.check_fits(loaded, shapes, f"this campaign on {model.path.name}")
        mapped = loaded.by_tensor()
        _check_map_storable(model, mapped)
    return plan, mapped


def _check_map_storable(model: TFLiteModel, mapped) -> None:
    """A map's stuck value that an integer tensor cannot hold (beyond its scale's range)
    is refused naming the entry: clamping it would write another fault than the map's.
    So is a value the file stores in other units than Keras: a layer whose
    BatchNormalization the converter folded holds kernel x scale and a rewritten bias."""
    _, folded = model.normalization
    folded_into = {layer: norm for norm, layer in folded.items()}
    for (name, attribute), faults in mapped.items():
        layer = model.layers[name]
        if name in folded_into:
            changed = [f for f in faults if attribute == "bias" or f.holds_value]
            if changed:
                raise FaultTargetError(
                    f"The fault map holds {name}/{attribute} {list(changed[0].index)} "
                    f"{changed[0].kind}{f' {changed[0].value:g}' if changed[0].value else ''}, "
                    f"but {model.path.name} folds BatchNormalization "
                    f"{folded_into[name]!r} into {name!r}: the file stores kernel x scale "
                    "and a rewritten bias, so the same entry would be another fault than "
                    "in Keras. Run this map on the .keras model (or stuck_at_0 kernel "
                    "entries only, which folding keeps at 0)."
                )
        if attribute == "bias":
            tensor, shape = layer.bias, layer.bias.shape
            to_file = np.asarray
        else:
            kernel = layer.kernels[layer.keras_attributes.index(attribute)]
            tensor, shape, to_file = (
                kernel.weights,
                kernel.keras_kernel_shape,
                kernel.keras_to_file_positions,
            )
        if np.issubdtype(tensor.dtype, np.floating):
            continue
        where, reals = fault_map.overlay(faults, shape)
        stored = to_file(where)
        scales = element_scales(tensor)[stored]
        zero_points = element_zero_points(tensor)[stored]
        info = np.iinfo(tensor.dtype)
        low, high = (info.min - zero_points - 0.5) * scales, (info.max - zero_points + 0.5) * scales
        outside = np.flatnonzero((reals < low) | (reals > high))
        if len(outside):
            first = outside[0]
            raise FaultTargetError(
                f"The fault map holds {name}/{attribute} element {int(where[first])} stuck at "
                f"{reals[first]:g}, which its {tensor.dtype.name} storage in "
                f"{model.path.name} cannot hold (range [{low[first]:.6g}, {high[first]:.6g}]); "
                "clamping it would be another fault. Run the map on the float file."
            )


def _target_coverage(model: TFLiteModel, names: list[str], target: str) -> dict[str, Any]:
    """What one --targets entry holds in the targeted layers."""
    if target == "weights":
        tensors = [kernel.weights for name in names for kernel in model.layers[name].kernels]
        meaning = "kernel values as stored"
    else:
        tensors = [t for name in names for t in metadata_tensors(model.layers[name], target)]
        meaning = {
            "biases": "stored biases (int32 in int8 files)",
            "scales": "per-channel float32 scales of the int8 kernels",
            "zero_points": "int8 zero point of each layer's output tensor",
        }[target]
    return {
        "tensors": len(tensors),
        "elements": int(sum(int(np.prod(t.shape)) for t in tensors)),
        "dtypes": sorted({t.dtype.name for t in tensors}),
        "holds": meaning,
    }


def metadata_tensors(layer, target: str) -> list[ConstantTensor]:
    """A layer's tensors of one --targets entry other than 'weights'."""
    if target == "biases":
        return [] if layer.bias is None else [layer.bias]
    if target == "scales":
        return list(layer.scale_tensors)
    if target == "zero_points":
        return [] if layer.zero_point_tensor is None else [layer.zero_point_tensor]
    raise ValueError(f"Unknown target {target!r}.")


@dataclasses.dataclass
class _ZeroPointCodes:
    """Zero points are stored as int64 but held by the hardware as int8 (the activation
    type): faults act on those 8 bits, in code units; a value is clipped to int8."""

    values: np.ndarray

    def reals(self) -> np.ndarray:
        return self.values.astype(np.float64)  # |-128| is 128 (in int8 it overflows).

    def zero(self, positions: np.ndarray) -> np.ndarray:
        return np.zeros(len(positions), np.int8)

    def encode(self, value: float, positions: np.ndarray) -> np.ndarray:
        return np.full(len(positions), np.clip(np.round(value), -128, 127), np.int8)


def _faulty_zero_points(content, tensor, positions, spec: FaultSpec, rng) -> np.ndarray:
    """An output zero point's faults on its int8 code (`_ZeroPointCodes`)."""
    values = tflite_file.read_values(content, tensor)
    codes = _ZeroPointCodes(np.clip(values, -128, 127).astype(np.int8))
    return spec.fault_kind.corrupt(codes, positions, rng, spec).astype(np.int64)


def _stored(tensor: ConstantTensor, positions: np.ndarray, reals: np.ndarray) -> np.ndarray:
    """Real values in a tensor's own encoding: floats as they are, integers quantized
    with each element's scale and zero point (clipped to the type's range)."""
    if np.issubdtype(tensor.dtype, np.floating):
        return reals.astype(tensor.dtype)
    scales = element_scales(tensor)[positions]
    zero_points = element_zero_points(tensor)[positions]
    info = np.iinfo(tensor.dtype)
    return np.clip(np.round(reals / scales) + zero_points, info.min, info.max)


@dataclasses.dataclass
class TensorValues:
    """A constant tensor's stored values (`kinds.StoredValues`): floats as they are,
    integers with each element's scale and zero point."""

    content: bytes
    tensor: ConstantTensor
    values: np.ndarray = None

    def __post_init__(self):
        if self.values is None:
            self.values = tflite_file.read_values(self.content, self.tensor)

    @property
    def floating(self) -> bool:
        return bool(np.issubdtype(self.tensor.dtype, np.floating))

    def reals(self) -> np.ndarray:
        return tflite_file.real_values(self.content, self.tensor)

    def zero(self, positions: np.ndarray) -> np.ndarray:
        if self.floating:
            return np.zeros(len(positions), self.values.dtype)
        return element_zero_points(self.tensor)[positions]

    def encode(self, value: float, positions: np.ndarray) -> np.ndarray:
        if self.floating:
            return np.full(len(positions), value, self.values.dtype)
        scales = element_scales(self.tensor)[positions]
        zero_points = element_zero_points(self.tensor)[positions]
        info = np.iinfo(self.tensor.dtype)
        low = max(info.min, -info.max) if not zero_points.any() else info.min
        return np.clip(np.round(value / scales) + zero_points, low, info.max)


def faulty_values(
    content: bytes,
    tensor: ConstantTensor,
    file_positions: np.ndarray,
    spec: FaultSpec,
    rng: np.random.Generator,
    bits: sampling.BitMasks | None = None,
) -> np.ndarray:
    """A constant tensor's stored values with `spec`'s kind of fault at `file_positions`,
    in the file's own encoding (`TensorValues`): stuck-at-0 writes each element's zero
    point (real 0), a stuck value is quantised with the element's scale and zero point,
    bit faults flip stored bits; per-bit kinds flip `bits`."""
    stored = TensorValues(content, tensor)
    if bits is not None:
        return spec.fault_kind.corrupt_bits(stored, bits)
    return spec.fault_kind.corrupt(stored, file_positions, rng, spec)
