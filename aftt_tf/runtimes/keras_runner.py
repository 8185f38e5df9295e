"""Keras runtime of fault campaigns: one faulty model, masks changed with `assign`.

`CampaignRunner` builds one faulty copy of a Sequential or Functional model (fault layers
from `targets.apply_faults`), compiles one evaluation function and, per trial, only
assigns new masks: one trace per campaign. When the first faulted layer is not the first
layer, the activations entering it are computed once and reused by every trial. A
subclassed model cannot be rewritten: its parameter faults are written into its own
variables per trial (the same values a mask would give) and the clean values are put
back when the campaign ends.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from aftt_tf import checks
from aftt_tf.data import inputs
from aftt_tf.faults import (
    fault_map,
    int8_storage,
    placement,
    protection,
    sampling,
    systolic,
    transient,
)
from aftt_tf.faults import spec as fault_spec
from aftt_tf.faults.spec import FaultSpec, FaultTargetError
from aftt_tf.runtimes import layers as fault_layers
from aftt_tf.runtimes import nan_semantics, registry, targets


def model_fingerprint(model: keras.Model) -> str:
    """sha256 of the architecture and every weight: identifies results across runs."""
    digest = hashlib.sha256(json.dumps(model.get_config(), sort_keys=True, default=str).encode())
    for weight in model.weights:
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()


def load_model(path: str | Path) -> keras.Model:
    """Loads a .keras classifier with a clear error for missing, foreign or corrupt files."""
    import aftt_tf.runtimes.layers  # noqa: F401  (registers fault layers)

    path = Path(path)
    checks.model_file(path)
    if path.suffix == ".tflite":
        raise ValueError(
            f"{path} is a .tflite file, and this step needs the Keras model: pass the .keras "
            "it was exported from (only aftt-faults runs .tflite files)."
        )
    if path.suffix != ".keras":
        raise ValueError(
            f"{path} is not a .keras or .tflite file; aftt-faults takes the classifier.keras of an "
            "aftt-train run or a .tflite file from aftt-export."
        )
    if path.is_dir() or not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is not a readable .keras archive (a .keras file is a zip written by "
            "model.save; this one is damaged, cut short or another format). Save it again."
        )
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as error:
        raise ValueError(
            f"{path} could not be read as a Keras model ({type(error).__name__}: "
            f"{_short(error)}). A model with custom classes needs their module imported "
            "first (--import=MODULE)."
        ) from None
    if not isinstance(model, keras.Model):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a Keras model.")
    return model


def _short(error: Exception) -> str:
    """An error's gist: Keras appends the whole layer config (kilobytes) to some errors."""
    import re

    text = str(error)
    missing = re.search(r"Could not locate class '([^']+)'", text)
    if missing:
        return f"the class {missing.group(1)!r} is not registered"
    text = text.split("\n")[0].split(" Full object config")[0]
    return text if len(text) <= 300 else text[:300] + " ..."


_IEEE_USERS = [0]  # Runners now holding `ieee_nan` on.


def ieee_nan(on: bool) -> None:
    """NaN propagates through ReLU in compiled functions while any runner of a kind that
    can make NaN values holds this on (reference counted).

    TensorFlow's graph optimizer fuses MatMul/Conv2D + BiasAdd + ReLU into one CPU kernel
    whose ReLU returns 0 for a NaN input, where the unfused ReLU, LiteRT and IEEE
    arithmetic return NaN: a NaN made by a bit fault would vanish inside the network
    and the inference be counted as a class (measured: 8% of the inferences of a small
    MLP at a 5% transient bit-30 rate were NaN in LiteRT and a class in Keras). The
    fusion ('remapping') is switched off while such campaigns run; its other passes stay.
    The campaign's own model also takes the NaN rule shared with the .tflite runtime
    (`nan_semantics.guard_layers`, in `CampaignRunner`)."""
    import tensorflow as tf

    before = _IEEE_USERS[0]
    _IEEE_USERS[0] = max(0, before + (1 if on else -1))
    if (before == 0) != (_IEEE_USERS[0] == 0):
        tf.config.optimizer.set_experimental_options({"remapping": _IEEE_USERS[0] == 0})


def load(path: Path) -> KerasModel:
    """The `runtimes` entry: a .keras file as a campaign model."""
    return KerasModel(load_model(path))


def payload(model: fault_spec.CampaignModel) -> dict[str, Any]:
    """The `runtimes` entry: the model saved as .keras bytes (for a Ray worker)."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "model.keras"
        model.model.save(path)
        return {"content": path.read_bytes()}


def restore(payload: dict[str, Any]) -> KerasModel:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "model.keras"
        path.write_bytes(payload["content"])
        return KerasModel(load_model(path))


class KerasModel(fault_spec.CampaignModel):
    """A Keras classifier (Sequential, Functional or subclassed) as a campaign model."""

    runtime = "keras"

    def __init__(self, model: keras.Model):
        self.model = model

    @property
    def input_shape(self) -> tuple[int, ...]:
        inputs_ = getattr(self.model, "inputs", None) or []
        if len(inputs_) > 1:
            raise ValueError(
                f"{self.model.name!r} takes {len(inputs_)} inputs "
                f"({', '.join(str(tuple(i.shape[1:])) for i in inputs_)}); campaigns, "
                "training and export feed a classifier one input array. Wrap it in a model "
                "of one input that splits it (keras.Model(x, model(split(x))))."
            )
        try:
            return tuple(self.model.input_shape[1:])
        except AttributeError:  # A subclassed model loaded from a file, never called.
            config = self.model.get_build_config() or {}
            if "input_shape" not in config:
                raise ValueError(
                    f"{self.model.name!r} has no known input shape; build or call it once."
                ) from None
            return tuple(config["input_shape"][1:])

    @property
    def num_outputs(self) -> int | None:
        try:
            shape = self.model.output_shape
        except AttributeError:
            probe = np.zeros((1, *self.input_shape), self.model.input_dtype or "float32")
            shape = tuple(np.asarray(self.model(probe, training=False)).shape)
        return int(shape[-1]) if isinstance(shape, tuple) and shape[-1] else None

    @property
    def output_shapes(self) -> list[tuple[int | None, ...]]:
        """The shape of each model output, batch dimension included."""
        outputs = getattr(self.model, "outputs", None)
        if outputs:
            return [tuple(output.shape) for output in outputs]
        probe = np.zeros((1, *self.input_shape), self.model.input_dtype or "float32")
        result = self.model(probe, training=False)
        results = (
            result
            if isinstance(result, (list, tuple))
            else (list(result.values()) if isinstance(result, dict) else [result])
        )
        return [tuple(np.shape(value)) for value in results]

    def weight_storage(self, spec: FaultSpec) -> set[str]:
        """The storage types of the values `spec` faults (what a bit position means): the
        weights' types, or for transient faults the types of the layers' outputs."""
        names = set(self.select_layers(spec))
        if spec.value.storage == "int8":  # Simulated int8 codes (int8_storage).
            return {"int8"}
        if spec.fault_kind.transient:
            return {
                str(site.layer.compute_dtype)
                for site in registry.sites(self.model, spec.selection.site_weights)
                if site.path in names
            }
        return {
            str(np.dtype(variable.dtype).name)
            for site in registry.sites(self.model, spec.selection.site_weights)
            if site.path in names
            for _, variable, _ in site.kernels
        }

    def fingerprint(self) -> str:
        return model_fingerprint(self.model)

    def select_layers(self, spec: FaultSpec) -> list[str]:
        if tuple(spec.selection.targets) != ("weights",):
            raise FaultTargetError(
                f"--targets={','.join(spec.selection.targets)}: quantization scales, zero points and "
                "stored int8/int32 values exist in .tflite files, not in a Keras model; run "
                "this campaign on the exported file (biases with the kernels: --include_bias)."
            )
        names = targets.select_layers(
            self.model,
            spec.fault_kind,
            spec.selection.scope,
            spec.selection.layers,
            spec.selection.include_output_nodes,
            exclude=spec.selection.exclude_layers,
            weights=spec.selection.site_weights,
        )
        if spec.value.storage == "int8":
            _check_int8_simulated(self.model, names, spec.selection.site_weights)
        return names

    def coverage(self, spec: FaultSpec) -> dict[str, Any]:
        """What the spec faults of this model's weights, and what it leaves out and why."""
        targeted = self.select_layers(spec)
        reasons = {}
        for site in registry.sites(self.model, spec.selection.site_weights):
            if site.path not in targeted:
                reasons[site.path] = _reason_not_targeted(self.model, site.path, spec)
        result = registry.coverage(
            self.model,
            targeted,
            spec.selection.include_bias,
            reasons,
            spec.fault_kind,
            spec.selection.site_weights,
        )
        if spec.fault_kind.transient:
            found = {
                site.path: site.layer
                for site in registry.sites(self.model, spec.selection.site_weights)
            }
            result["outputs"] = transient.output_coverage(
                {name: _values_per_inference(found[name]) for name in targeted},
                self.weight_storage(spec),
            )
        return result

    def kernel_elements(self, spec: FaultSpec) -> dict[str, int]:
        """Kernel elements of each layer `spec` faults, and its bias elements with
        --include_bias (what a paired file must match)."""
        targeted = set(self.select_layers(spec))
        return {
            site.path: sum(int(np.prod(variable.shape)) for _, variable, _ in site.kernels)
            + (int(np.prod(site.bias[1].shape)) if spec.selection.include_bias and site.bias else 0)
            for site in registry.sites(self.model, spec.selection.site_weights)
            if site.path in targeted
        }

    def runner(
        self, spec: FaultSpec, images, labels, batch_size: int, transform=None
    ) -> CampaignRunner:
        if spec.repair is not None:
            raise FaultTargetError(
                "The repaired protocol needs training data: wrap the model in "
                "aftt_tf.training.repair.RepairingModel (aftt-faults --repair_epochs does)."
            )
        if not hasattr(self, "golden_cache"):
            self.golden_cache: dict[tuple, np.ndarray] = {}
        return CampaignRunner(
            self.model, spec, images, labels, batch_size, transform, self.golden_cache
        )


# Layer types whose int8 codes `int8_storage` was checked against the converter's
# (tests/int8_storage_test.py): other layouts (attention, recurrent, separable,
# transposed kernels) may be quantised along other channels in the file.
INT8_SIMULATED = (keras.layers.Dense, keras.layers.Conv2D, keras.layers.DepthwiseConv2D)


def _check_int8_simulated(model: keras.Model, names: list[str], weights: str) -> None:
    """FaultTargetError naming the layers whose int8 codes --storage=int8 would simulate
    without having been checked against the converter's (a silent mismatch otherwise)."""
    found = {site.path: site.layer for site in registry.sites(model, weights)}
    unchecked = [
        f"{name} ({type(found[name]).__name__})"
        for name in names
        if type(found[name]) not in INT8_SIMULATED
    ]
    if unchecked:
        raise FaultTargetError(
            f"--storage=int8 simulates the converter's per-channel codes of Dense, Conv2D "
            f"and DepthwiseConv2D kernels; {', '.join(unchecked[:4])} may be quantised along "
            "other channels in the file. Leave them out with --exclude_layers (they then "
            "stay float32), or run the campaign on the int8 .tflite itself."
        )
    for name in names:  # A BatchNormalization folded where it cannot be seen: refused.
        targets.folded_normalization(model, name)


def _values_per_inference(layer) -> int | None:
    """Values of one inference's output of a layer (None: not known before it runs)."""
    try:
        return int(np.prod(layer.output.shape[1:]))
    except (AttributeError, ValueError, TypeError):
        return None


def _reason_not_targeted(model: keras.Model, name: str, spec: FaultSpec) -> str:
    """Why a registered layer is not among a campaign's targets."""
    try:
        targets.select_layers(
            model,
            spec.fault_kind,
            "all",
            (name,),
            spec.selection.include_output_nodes,
            weights=spec.selection.site_weights,
        )
    except ValueError as error:
        if spec.fault_kind.whole_filters:
            return "not a convolution: filter faults remove convolution filters"
        if "composite layer" in str(error):
            return "inside a composite layer: node faults go after layers of a model's graph"
        return "the output layer: faults in layer outputs leave it out (--include_output_nodes)"
    if spec.selection.layers and name not in targets.select_layers(
        model,
        spec.fault_kind,
        "all",
        spec.selection.layers,
        spec.selection.include_output_nodes,
        weights=spec.selection.site_weights,
    ):
        return "not named by --layers"
    if spec.selection.exclude_layers:
        plain = dataclasses.replace(spec, exclude_layers=())
        if name in KerasModel(model).select_layers(plain):
            return "excluded by --exclude_layers"
    return f"outside --scope={spec.selection.scope}"


class CampaignRunner(fault_spec.CellRunner):
    """Evaluates one model under one FaultSpec; `evaluate_cell(rate, trial)` per trial.

    Args:
        model: clean classifier (input -> logits): Sequential, Functional or subclassed.
        spec: the campaign.
        images: test inputs as stored (uint8 images, floats, token ids).
        labels: integer labels.
        batch_size: evaluation chunk size.
        transform: `inputs.InputTransform` from stored data to model input (default:
            'auto', i.e. x / 255 for uint8 data).
    """

    def __init__(
        self,
        model: keras.Model,
        spec: FaultSpec,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int = 2000,
        transform: inputs.InputTransform | None = None,
        golden_cache: dict | None = None,
    ):
        self._golden_cache = golden_cache
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, received {batch_size}.")
        images = np.asarray(images)
        self.spec = spec
        self._ieee = spec.fault_kind.non_finite
        if self._ieee:
            ieee_nan(True)
        try:
            self._build(model, images, labels, batch_size, transform)
        except BaseException:
            self.close()
            raise

    def _build(self, model, images, labels, batch_size, transform) -> None:
        spec = self.spec
        self.transform = transform or inputs.resolve("auto", dtype=images.dtype, sample=images)
        self._data_digest = hashlib.sha1(np.ascontiguousarray(images).tobytes()).hexdigest()
        self.target_names = KerasModel(model).select_layers(spec)
        self.in_place = not targets.rewritable(model)
        if self.in_place:  # Subclassed: faults go into the model's own variables.
            self.faulty = model
        else:
            self.faulty = targets.apply_faults(
                model, spec.fault_kind, self.target_names, spec.selection.site_weights
            )
        if self._ieee:  # One NaN/Inf rule with the .tflite runtime, on this model only.
            self._nan_guards = nan_semantics.guard_layers(self.faulty)
        self._chunk_index = None
        if spec.fault_kind.transient:  # Per-inference faults: the loop's chunk index.
            self._chunk_index = tf.Variable(0, dtype=tf.int32, trainable=False)
            self.injector = TransientInjector(
                self.faulty, spec, self.target_names, self._chunk_index, len(labels)
            )
        else:
            self.injector = FaultInjector(self.faulty, spec, self.target_names, self.in_place)
        self.fault_layers = self.injector.fault_layers
        self.trace_count = 0
        self.num_examples = len(labels)
        # Stored inputs stay as they are in memory (uint8: 4x smaller) and are transformed
        # per chunk inside the compiled function; a prefix cache holds floats.
        self._graph_transform = self.transform.function is None
        self._suffix, self.prefix_layer = self._split_at_first_fault(
            self._model_input(images[: min(64, len(images))])
        )
        prefix_outputs = self._prefix_features(images, batch_size)
        self._chunks, self._chunk_labels, self._valid = _pad_chunks(
            prefix_outputs, labels, batch_size
        )
        if self._chunk_index is not None:
            self.injector.set_chunk_size(int(self._chunks.shape[1]))
        self._count_outcomes = tf.function(self._count_outcomes_impl)
        if spec.value.storage == "int8":  # The fault-free model holds its quantised kernels.
            self.injector.inject(0.0, 0)
        self._golden = self._golden_predictions()

    def _model_input(self, batch: np.ndarray) -> np.ndarray:
        values = self.transform.apply(batch)
        dtype = self.faulty.inputs[0].dtype if hasattr(self.faulty, "inputs") else None
        return values.astype(dtype or values.dtype)

    def _split_at_first_fault(self, probe: np.ndarray):
        """Suffix model starting at the first faulted layer, if the network is a chain.

        Returns (suffix, prefix_layer_name or None). A prefix without weights (Flatten,
        reshapes) is not worth caching: its cached output would only cost memory. The
        split is checked numerically on a probe batch; a non-chain graph falls back to
        the whole faulty model.
        """
        self._prefix = None
        if self.in_place:
            return self.faulty, None
        layers = [
            layer for layer in self.faulty.layers if not isinstance(layer, keras.layers.InputLayer)
        ]
        tops = {name.split("/")[0] for name in self.target_names}
        index = next(i for i, layer in enumerate(layers) if layer.name in tops)
        if not any(layer.weights for layer in layers[:index]):
            return self.faulty, None
        prefix_output = layers[index - 1].output
        prefix = keras.Model(self.faulty.inputs[0], prefix_output)
        x = suffix_input = keras.Input(shape=prefix_output.shape[1:], dtype=prefix_output.dtype)
        try:
            for layer in layers[index:]:
                x = layer(x)
        except Exception:  # noqa: BLE001 - a layer with several inputs (Add): not a chain.
            return self.faulty, None
        suffix = keras.Model(suffix_input, x)
        reference = np.asarray(self.faulty(probe, training=False))
        split = np.asarray(suffix(prefix(probe, training=False), training=False))
        if not np.allclose(reference, split, rtol=1e-5, atol=1e-5):
            return self.faulty, None
        self._prefix = prefix
        self._graph_transform = False
        return suffix, layers[index - 1].name

    def _prefix_features(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        if self._prefix is None:
            return images if self._graph_transform else self._model_input(images)
        features = np.empty((len(images), *self._prefix.output.shape[1:]), np.float32)
        for start in range(0, len(images), batch_size):
            chunk = self._model_input(images[start : start + batch_size])
            features[start : start + len(chunk)] = np.asarray(self._prefix(chunk, training=False))
        return features

    def _chunk_outputs(self, inputs_):
        """The faulty model's outputs on one chunk as stored (transformed here when the
        transform runs in the graph)."""
        if self._graph_transform and not self.transform.identity:
            inputs_ = tf.cast(inputs_, tf.float32) / self.transform.divisor
            if self.transform.offset:
                inputs_ = inputs_ + self.transform.offset
        return self._suffix(inputs_, training=False)

    def _predict_chunk(self, inputs_):
        """Top-1 classes of one chunk; -1 where an output is NaN/Inf (never a class)."""
        logits = self._chunk_outputs(inputs_)
        finite = tf.reduce_all(tf.math.is_finite(logits), axis=-1)
        predicted = tf.argmax(
            tf.where(tf.math.is_finite(logits), logits, tf.zeros_like(logits)),
            axis=-1,
            output_type=tf.int32,
        )
        return tf.where(finite, predicted, -tf.ones_like(predicted))

    def _golden_predictions(self) -> tf.Tensor:
        """The fault-free model's top-1 classes per chunk (faults are at their defaults
        when the runner is built): what silent data corruption is measured against.
        Computed once per model and data: the runners of one campaign's layer groups
        share it through the model's `golden_cache` (keyed by the chunks' content)."""
        key = None
        if self._golden_cache is not None:
            key = (self._data_digest, tuple(self._chunks.shape[:2]), repr(self.transform))
            if key in self._golden_cache:
                return tf.constant(self._golden_cache[key])
        predict = tf.function(
            lambda chunks: tf.map_fn(
                self._predict_chunk, chunks, fn_output_signature=tf.TensorSpec(None, tf.int32)
            )
        )
        golden = predict(self._chunks)
        if key is not None:
            self._golden_cache[key] = golden.numpy()
        return golden

    def _count_outcomes_impl(self, chunks, chunk_labels, valid, golden):
        """(correct, non-finite, masked) inferences: a row with a NaN/Inf output is never a
        class; masked: finite with the golden run's class."""
        self.trace_count += 1  # Python side effect: runs once per trace.
        correct = tf.constant(0, tf.int32)
        non_finite = tf.constant(0, tf.int32)
        masked = tf.constant(0, tf.int32)
        for index in tf.range(tf.shape(chunks)[0]):
            if self._chunk_index is not None:  # Transient faults: this chunk's positions.
                self._chunk_index.assign(index)
            predicted = self._predict_chunk(chunks[index])
            finite = tf.logical_and(predicted >= 0, valid[index])
            correct += tf.reduce_sum(
                tf.cast(tf.logical_and(tf.equal(predicted, chunk_labels[index]), finite), tf.int32)
            )
            masked += tf.reduce_sum(
                tf.cast(tf.logical_and(tf.equal(predicted, golden[index]), finite), tf.int32)
            )
            non_finite += tf.reduce_sum(
                tf.cast(tf.logical_and(predicted < 0, valid[index]), tf.int32)
            )
        return correct, non_finite, masked

    def logits(self) -> np.ndarray:
        """The faulty model's outputs for every example, with the faults as currently
        assigned (transient ones on their inferences): what the outcomes count."""
        if not hasattr(self, "_chunk_logits"):
            self._chunk_logits = tf.function(self._chunk_logits_impl)
        outputs = [
            np.asarray(self._chunk_logits(self._chunks[index], index))
            for index in range(int(self._chunks.shape[0]))
        ]
        return np.concatenate(outputs)[: self.num_examples]

    def _chunk_logits_impl(self, chunk, index):
        if self._chunk_index is not None:
            self._chunk_index.assign(index)
        return self._chunk_outputs(chunk)

    def outcome(self) -> fault_spec.Outcome:
        """Correct, non-finite and masked inferences with the faults as currently assigned."""
        correct, non_finite, masked = self._count_outcomes(
            self._chunks, self._chunk_labels, self._valid, self._golden
        )
        return fault_spec.Outcome(
            int(correct.numpy()), int(non_finite.numpy()), self.num_examples, int(masked.numpy())
        )

    def accuracy(self) -> float:
        """Accuracy of the faulty model with the faults as currently assigned."""
        return self.outcome().accuracy

    def inject(self, rate: float, trial: int) -> dict[str, Any]:
        """Assigns the faults of cell (rate, trial); returns per-layer fault counts."""
        return self.injector.inject(rate, trial)

    def evaluate_cell(self, rate: float, trial: int) -> dict[str, Any]:
        counts = self.inject(rate, trial)
        result = fault_spec.cell_result(rate, trial, self.outcome(), counts)
        if self.spec.placement.fault_map:  # Rate 0 is the mapped chip, not the fault-free model.
            result["fault_free_accuracy"] = self.fault_free_accuracy()
        return result

    def fault_free_accuracy(self) -> float:
        """Accuracy of the model without any fault (the golden run)."""
        golden = np.asarray(self._golden)
        correct = (golden == np.asarray(self._chunk_labels)) & np.asarray(self._valid)
        return float(correct.sum()) / self.num_examples

    def close(self) -> None:
        """Puts the clean values back into a subclassed model's variables."""
        if getattr(self, "injector", None) is not None:
            self.injector.close()
        if self._ieee:
            self._ieee = False
            ieee_nan(False)
            nan_semantics.unguard(getattr(self, "_nan_guards", []))


class FaultInjector:
    """Places the faults of (rate, trial) cells: into the fault layers of a faulty model
    (`targets.apply_faults`), or into a subclassed model's own variables (`in_place`).
    Positions come from `sampling` with the cell's generators, so every user of a cell
    (campaigns, repair) faults the same elements."""

    def __init__(self, faulty: keras.Model, spec: FaultSpec, target_names, in_place: bool):
        self.spec = spec
        self._faulty = faulty
        self._int8 = spec.value.storage == "int8"  # Kernels as int8 codes (int8_storage).
        self._codes: dict[tuple[str, int], int8_storage.Int8Codes] = {}
        found = {site.path: site for site in registry.sites(faulty, spec.selection.site_weights)}
        self.fault_layers, self._tensors = {}, {}
        for name in target_names:
            layer = (
                found[name].layer
                if in_place
                else targets.fault_layer(faulty, name, spec.fault_kind)
            )
            self.fault_layers[name] = layer
            if spec.fault_kind.on_parameters:  # A fault layer's masks, or the variables.
                self._tensors[name] = _fault_tensors(layer, found[name])
        self.in_place_targets = [
            name for name, ts in self._tensors.items() if any(t.keep is None for t in ts)
        ]
        self.in_place = bool(self.in_place_targets)
        self._clean: dict[str, list[np.ndarray]] = {}
        self._plan = protection.load(spec.selection.protected) if spec.selection.protected else None
        self.protected_counts: dict[str, int] = {}
        self._map_faults = {}
        self._pes = None
        if spec.placement.array and spec.fault_kind.on_parameters:  # Layers the array cannot hold.
            for name, tensors in self._tensors.items():
                kernels = [t for t in tensors if not t.bias]
                shapes = [tuple(t.variable.shape) for t in kernels]
                if systolic.unsupported(shapes, [t.filter_axis for t in kernels]):
                    raise FaultTargetError(systolic.refusal(name))
        if spec.placement.fault_map:
            loaded = fault_map.load(spec.placement.fault_map)
            fault_map.check_fits(
                loaded,
                {
                    (name, t.attribute): tuple(t.variable.shape)
                    for name, ts in self._tensors.items()
                    for t in ts
                },
                "this campaign (its targeted layers)",
            )
            self._map_faults = loaded.by_tensor()
        if self._plan is not None:
            protection.check_plan_fits(
                self._plan,
                {
                    (name, t.attribute): int(np.prod(t.variable.shape))
                    for name, ts in self._tensors.items()
                    for t in ts
                    if not t.bias
                },
                "the targeted layers of this model",
            )

    def check_masked(self, purpose: str) -> None:
        """Training around faults needs them in masks (the gradient of a stuck weight is
        then 0); faults written into variables (layers inside composite layers, layers
        found by weights='all_trainable') would be trained away: refuse, naming them."""
        if self.in_place_targets:
            patterns = sorted({name.rsplit("/", 1)[0] + "/*" for name in self.in_place_targets})
            raise FaultTargetError(
                f"{purpose} holds faults in fault layers, but {self.in_place_targets} take "
                "theirs in their own variables (inside composite layers, normalisation "
                "layers, or found by --weights=all_trainable), which training would move. Leave them out with "
                f"--exclude_layers={','.join(patterns)}."
            )

    def inject(self, rate: float, trial: int) -> dict[str, Any]:
        """Assigns the faults of cell (rate, trial); returns per-layer fault counts."""
        self._pes = systolic.cell_pes(self.spec, rate, trial)  # An array's faulty PEs.
        return placement.cell_counts(
            list(self.fault_layers),
            lambda name: self._inject_layer(name, rate, trial),
            self.protected_counts,
            self._pes,
        )

    def _inject_layer(self, name: str, rate: float, trial: int) -> tuple[int, int]:
        spec, layer = self.spec, self.fault_layers[name]
        rng = sampling.trial_rng(spec.seed, spec.kind, name, rate, trial)
        if spec.fault_kind.on_parameters:
            return self._inject_parameters(name, layer, rate, trial, rng)
        size = int(np.prod(layer.node_keep.shape))  # Held outputs (node faults).
        positions = placement.output_positions(spec, self._pes, layer.node_keep.shape, rate, rng)
        keep = np.ones(size, np.float32)
        keep[positions] = 0.0
        layer.node_keep.assign(keep.reshape(layer.node_keep.shape))
        return len(positions), size

    def _inject_parameters(self, name, layer, rate, trial, rng) -> tuple[int, int]:
        spec = self.spec
        tensors = self._tensors[name]
        if name not in self._clean:  # Host copies, read once per campaign.
            self._clean[name] = [np.asarray(t.variable.numpy()) for t in tensors]
        clean = self._clean[name]
        kernels = [i for i, t in enumerate(tensors) if not t.bias]
        bias = next((i for i, t in enumerate(tensors) if t.bias), None)
        attributes = tuple(tensors[i].attribute for i in kernels)
        rng_for = placement.kernel_generators(spec, name, attributes, rate, trial, rng)
        plan = placement.parameter_plan(
            spec,
            self._pes,
            self._plan,
            name,
            [clean[i].shape for i in kernels],
            [tensors[i].filter_axis for i in kernels],
            attributes,
            0 if bias is None else clean[bias].size,
            rate,
            rng_for,
            # Per-bit faults act on the values as faulted here: int8 codes, or the
            # float32 copies `placement.parameter_fault` corrupts (whatever the variable).
            ([8 if self._int8 else 32 for _ in kernels], 32),
        )
        if self._plan is not None:
            self.protected_counts[name] = plan.protected
        positions = dict(zip(kernels, plan.kernel_positions, strict=True))
        bits = dict(zip(kernels, plan.kernel_bits or [None] * len(kernels), strict=True))
        if bias is not None:
            positions[bias], bits[bias] = plan.bias_positions, plan.bias_bits
        extra = 0
        for index, tensor in enumerate(tensors):
            source = rng_for(kernels.index(index)) if index in kernels[1:] else rng
            if self._int8 and not tensor.bias:
                codes = self._int8_codes(name, index, tensor, clean[index])
                keep, replacement = placement.int8_kernel_fault(
                    codes, positions[index], spec.fault_kind, spec, source, bits[index]
                )
            else:
                keep, replacement = placement.parameter_fault(
                    clean[index], positions[index], spec.fault_kind, spec, source, bits[index]
                )
            mapped = self._map_faults.get((name, tensor.attribute))
            if mapped:  # The chip's known faults, on top of the sampled ones.
                where, values = fault_map.overlay(mapped, clean[index].shape)
                extra += len(np.setdiff1d(where, positions[index]))
                keep.reshape(-1)[where] = 0.0
                replacement.reshape(-1)[where] = values
            tensor.assign(keep, replacement, clean[index])
        return plan.faulted + extra, plan.elements

    def _int8_codes(self, name: str, index: int, tensor, clean: np.ndarray):
        """The kernel's int8 codes as the converter stores them, with the signs of a
        BatchNormalization it folds into the layer (read once per campaign)."""
        if (name, index) not in self._codes:
            signs = None
            layer = targets.folded_normalization(self._faulty, name)
            if layer is not None and tensor.attribute == "kernel":
                gamma = np.asarray(layer.gamma) if layer.scale else np.ones(clean.shape[-1])
                axes = int8_storage.channel_axes(clean.shape, tensor.filter_axis)
                signs = np.where(gamma < 0, -1.0, 1.0).reshape([clean.shape[a] for a in axes])
            self._codes[(name, index)] = int8_storage.quantize(clean, tensor.filter_axis, signs)
        return self._codes[(name, index)]

    def close(self) -> None:
        """Puts the clean values back into a subclassed model's variables."""
        for name, tensors in self._tensors.items():
            for tensor, values in zip(tensors, self._clean.get(name, []), strict=False):
                if tensor.keep is None:
                    tensor.variable.assign(values)


class TransientInjector:
    """Places the transient faults of (rate, trial) cells into the ActivationFault layers
    of a faulty model: the cell's (inference, element) pairs (`transient.plan_cell`, the
    same for every runtime) as positions within each evaluation chunk."""

    def __init__(self, faulty, spec: FaultSpec, target_names, chunk_index, num_examples):
        self.spec = spec
        self.fault_layers = {}
        for name in target_names:
            layer = targets.fault_layer(faulty, name, spec.fault_kind)
            layer.bind(spec.fault_kind, spec.value.bit_mode, spec.value.stuck_value, chunk_index)
            self.fault_layers[name] = layer
        self.sizes = {name: layer.elements for name, layer in self.fault_layers.items()}
        self.widths = {
            name: layer.width if spec.fault_kind.bit_meaning else 32
            for name, layer in self.fault_layers.items()
        }
        for name, width in self.widths.items():
            if spec.value.bit_position >= width:
                raise FaultTargetError(
                    f"bit_position {spec.value.bit_position} does not exist in the {width}-bit "
                    f"outputs of {name!r}; use 0..{width - 1} or -1."
                )
        self.num_examples = num_examples
        self.chunk_size = num_examples
        transient.check_size(spec, self.sizes, num_examples)

    def set_chunk_size(self, chunk_size: int) -> None:
        """The evaluation chunk (inferences per compiled step); refused when a chunk's
        values cannot be indexed with int32, before any inference runs."""
        largest = max(self.sizes.values())
        if chunk_size * largest >= 2**31:
            raise FaultTargetError(
                f"A chunk of {chunk_size} inferences of {largest} output values each "
                "cannot be indexed with int32; lower --batch_size."
            )
        self.chunk_size = chunk_size

    def inject(self, rate: float, trial: int) -> dict[str, Any]:
        plan = transient.plan_cell(
            self.spec, self.sizes, self.widths, self.num_examples, rate, trial
        )
        chunks = math.ceil(self.num_examples / self.chunk_size)
        per_layer, faulted, total = {}, 0, 0
        for name, faults in plan.items():
            chunk, row = np.divmod(faults.examples, self.chunk_size)
            positions = row * self.sizes[name] + faults.elements
            offsets = np.searchsorted(chunk, np.arange(chunks + 1))
            self.fault_layers[name].assign(positions, faults.bits, offsets)
            elements = self.num_examples * self.sizes[name]
            per_layer[name] = {"faulted": len(faults), "elements": elements}
            faulted, total = faulted + len(faults), total + elements
        return {"faulted": faulted, "elements": total, "per_layer": per_layer}

    def check_masked(self, purpose: str) -> None:
        raise FaultTargetError(
            f"{purpose} trains around permanent faults; transient faults last one inference."
        )

    def close(self) -> None:
        """Nothing to restore: transient faults never touch the model's variables."""


def faulty_copy(
    model: keras.Model, spec: FaultSpec, rate: float, trial: int
) -> tuple[keras.Model, dict[str, Any]]:
    """A copy of a Sequential/Functional `model` with fault layers holding the faults of
    cell (rate, trial) of a `spec` campaign, and the fault counts."""
    names = KerasModel(model).select_layers(spec)
    faulty = targets.apply_faults(model, spec.fault_kind, names, spec.selection.site_weights)
    injector = FaultInjector(faulty, spec, names, in_place=False)
    if spec.fault_kind.on_parameters:
        injector.check_masked("Repair")
    return faulty, injector.inject(rate, trial)


def cell_fault_map(model: keras.Model, spec: FaultSpec, rate: float, trial: int):
    """The faults of cell (rate, trial) of a `spec` campaign on `model` as a fault map
    (`fault_map.FaultMap`): every faulted element with the value it holds, so the map
    read back (`FaultSpec(fault_map=...)`, rate 0) faults exactly these elements."""
    from aftt_tf.faults import fault_map as maps

    if spec.value.storage != "float32":
        raise ValueError(
            f"A fault map holds real weight values; --storage={spec.value.storage} cells change "
            "every kernel element to its quantised value. Write maps of float32 campaigns."
        )
    names = KerasModel(model).select_layers(spec)
    in_place = not targets.rewritable(model)
    faulty = (
        model
        if in_place
        else targets.apply_faults(model, spec.fault_kind, names, spec.selection.site_weights)
    )
    injector = FaultInjector(faulty, spec, names, in_place)
    try:
        injector.inject(rate, trial)
        faults = []
        for name, tensors in injector._tensors.items():
            for index, tensor in enumerate(tensors):
                clean = injector._clean[name][index].reshape(-1)
                if tensor.keep is None:
                    value = np.asarray(tensor.variable.numpy()).reshape(-1)
                    where = np.flatnonzero(value != clean)
                else:
                    keep = np.asarray(tensor.keep.numpy()).reshape(-1)
                    value = np.asarray(tensor.replacement.numpy()).reshape(-1)
                    where = np.flatnonzero(keep == 0.0)
                if not np.all(np.isfinite(value[where])):
                    raise ValueError(
                        f"Cell (rate {rate:g}, trial {trial}) gives {name} non-finite values "
                        "(exponent bit faults); a fault map holds finite stuck values."
                    )
                for position in where:
                    held = float(value[position])
                    kind = "stuck_at_0" if held == 0.0 else "stuck_value"
                    faults.append(
                        maps.MapFault(name, tensor.attribute, (int(position),), kind, held)
                    )
    finally:
        injector.close()
    meta = {
        "spec_key": spec.key(),
        "rate": rate,
        "trial": trial,
        "model_sha256": model_fingerprint(model),
    }
    return maps.FaultMap(faults, meta)


class _FaultTensor:
    """One faultable tensor of a target layer and where its fault goes: into mask variables
    (rewritten models) or into the variable itself (subclassed models)."""

    def __init__(self, variable, attribute, filter_axis, bias, keep=None, replacement=None):
        self.variable, self.attribute = variable, attribute
        self.filter_axis, self.bias = filter_axis, bias
        self.keep, self.replacement = keep, replacement

    def assign(self, keep: np.ndarray, replacement: np.ndarray, clean: np.ndarray) -> None:
        if self.keep is None:
            self.variable.assign((clean * keep + replacement).astype(clean.dtype))
        else:
            self.keep.assign(keep)
            self.replacement.assign(replacement)


def _fault_tensors(layer, site: registry.Site) -> list[_FaultTensor]:
    """The faultable kernels (registry order) and bias of a target: the masks of its fault
    layer, or (a layer inside a composite layer, a subclassed model's layer, a layer found
    by weights='all_trainable') its own variables, written per trial."""
    if isinstance(layer, (fault_layers.FaultyDense, fault_layers.FaultyConv2D)):
        axis = -1 if isinstance(layer, keras.layers.Conv2D) else None
        result = [
            _FaultTensor(
                layer.kernel, "kernel", axis, False, layer.kernel_keep, layer.kernel_replacement
            )
        ]
        if layer.use_bias:
            result.append(
                _FaultTensor(
                    layer.bias, "bias", None, True, layer.bias_keep, layer.bias_replacement
                )
            )
        return result
    paths = [(label, variable, axis, False) for label, variable, axis in site.kernels]
    if site.bias is not None:
        paths.append((site.bias[0], site.bias[1], None, True))
    result = []
    for path, variable, axis, is_bias in paths:
        keep = replacement = None
        if isinstance(layer, fault_layers.WeightFaults):
            index = layer.weight_paths.index(path)
            keep, replacement = layer.keeps[index], layer.replacements[index]
            variable = registry.variable(layer.layer, path)
        result.append(_FaultTensor(variable, path, axis, is_bias, keep, replacement))
    return result


def _pad_chunks(features: np.ndarray, labels: np.ndarray, batch_size: int):
    """(num_chunks, batch, ...) tensors with a validity mask: one static shape, one trace."""
    count = len(labels)
    batch_size = min(batch_size, count)
    num_chunks = math.ceil(count / batch_size)
    padded = num_chunks * batch_size
    feature_array = np.zeros((padded, *features.shape[1:]), features.dtype)
    feature_array[:count] = features
    label_array = np.zeros(padded, np.int32)
    label_array[:count] = labels
    valid = np.zeros(padded, bool)
    valid[:count] = True
    shape = (num_chunks, batch_size)
    return (
        tf.constant(feature_array.reshape(*shape, *features.shape[1:])),
        tf.constant(label_array.reshape(shape)),
        tf.constant(valid.reshape(shape)),
    )
