"""`export_classifier`: SavedModel and TFLite (float32, int8 PTQ, int8 QAT) artifacts.

Every TFLite file starts from the SavedModel (QAT from its own tf_keras model) and
maps a named mode to converter settings. The export is written to a temporary
directory beside the destination and renamed into place at the end, so an
interrupted export leaves nothing half-written. `manifest.json` records versions,
hashes, I/O quantization, the Keras layer -> TFLite operator/tensor/buffer map used
by fault campaigns, and each artifact's clean test accuracy measured at export time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from aftt_tf import checks, io_utils, vocabulary
from aftt_tf.data import frontend
from aftt_tf.deploy import int8_converter
from aftt_tf.faults.spec import check_classifier_outputs, outcome_of
from aftt_tf.runtimes import keras_runner, targets, tflite_file
from aftt_tf.vocabulary import DEFAULT_EXPORT_FORMATS, TFLITE_FILES
from aftt_tf.vocabulary import EXPORT_FORMATS as FORMATS


@dataclasses.dataclass
class ExportConfig:
    """What to export and how.

    Attributes:
        model: path of the classifier.keras to export.
        out: export directory (created; refused if it exists unless overwrite).
        formats: subset of FORMATS.
        calibration_steps: batches of training data for int8 calibration.
        calibration_batch_size: images per calibration batch.
        qat_epochs: quantization-aware fine-tuning epochs.
        qat_examples: training examples used for QAT (0: all).
        dataset: a built-in dataset (older spelling of `data_options.data`).
        data_options: the data the manifest's accuracies are measured on, in any form (a
            built-in name or tfds:NAME: its test split; npz:PATH, folder:PATH; default:
            the dataset the model's aftt-train run names; without either: an error), its
            directories and input transform, as in aftt-faults.
        calibration_data: int8 calibration and QAT data (default: a built-in or TFDS
            dataset's training split; for a file, the same file, as recorded).
        allow_chance_accuracy: export even when the model is at chance level on the data.
        formats_given: False when `formats` are the defaults: a default format that
            cannot be made for this model is left out with the reason instead of refused.
        test_examples: test images for the accuracy in the manifest (0: all).
        overwrite: replace an existing export.
        seed: seed of QAT.
        fault_calibration_kind, fault_calibration_rates, fault_calibration_draws: the
            faults of tflite_int8_fault_calibrated's calibration (`FaultCalibration`).
        fault_qat_max_rate: tflite_int8_fault_qat's QAT draws stuck-at-0 weight faults
            at rates below this in every step.
    """

    model: str
    out: str
    formats: tuple[str, ...] = DEFAULT_EXPORT_FORMATS
    calibration_steps: int = 100
    calibration_batch_size: int = 32
    qat_epochs: int = 2
    qat_examples: int = 0
    qat_learning_rate: float = 1e-4
    dataset: str = ""
    test_examples: int = 0
    overwrite: bool = False
    seed: int = 0
    fault_calibration_kind: str = "weight"
    fault_calibration_rates: tuple[float, ...] = (0.0, 0.3, 0.6)
    fault_calibration_draws: int = 4
    fault_qat_max_rate: float = 0.6
    data_options: frontend.DataOptions = frontend.DataOptions()
    calibration_data: str = ""
    allow_chance_accuracy: bool = False
    formats_given: bool = True

    def fault_calibration(self):
        from aftt_tf.deploy.fault_calibration import FaultCalibration

        return FaultCalibration(
            kind=self.fault_calibration_kind,
            rates=tuple(float(rate) for rate in self.fault_calibration_rates),
            draws=self.fault_calibration_draws,
            seed=1000 + self.seed,
        )

    def validate(self) -> None:
        unknown = [name for name in self.formats if name not in FORMATS]
        if unknown or not self.formats:
            raise ValueError(
                f"Unknown export formats {unknown or '(none)'}; expected a subset of {', '.join(FORMATS)}."
            )
        for name in ("calibration_steps", "calibration_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, received {getattr(self, name)}.")
        for name in ("qat_epochs", "qat_examples", "test_examples"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, received {getattr(self, name)}.")
        if not (math.isfinite(self.qat_learning_rate) and self.qat_learning_rate > 0):
            raise ValueError(
                f"qat_learning_rate must be a finite number > 0, received {self.qat_learning_rate}."
            )
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, received {self.seed}.")
        self._check_fault_options()
        self.data_options.or_dataset(self.dataset).validate()
        if self.calibration_data:
            dataclasses.replace(self.data_options, data=self.calibration_data).validate()
        model = Path(self.model)
        checks.model_file(model)
        if model.suffix == ".tflite":
            raise ValueError(
                f"{model} is already a TFLite file; aftt-export converts a Keras classifier "
                "(.keras). Run fault campaigns on the .tflite with aftt-faults --model."
            )
        if model.suffix != ".keras":
            raise ValueError(
                f"{model} is not a .keras file; aftt-export takes a .keras classifier."
            )
        self._check_out()

    def _check_fault_options(self) -> None:
        if "tflite_int8_fault_calibrated" in self.formats:
            self.fault_calibration().validate()
        if "tflite_int8_fault_qat" in self.formats:
            if not 0.0 < self.fault_qat_max_rate < 1.0:
                raise ValueError(
                    f"fault_qat_max_rate must be in (0, 1), received {self.fault_qat_max_rate}."
                )
            if self.qat_epochs < 1:
                raise ValueError("tflite_int8_fault_qat trains: qat_epochs must be >= 1.")

    def _check_out(self) -> None:
        out = Path(self.out)
        io_utils.check_output_path(out)
        if not out.exists() or not io_utils.entries(out):
            return
        if not self.overwrite:
            raise FileExistsError(
                f"{self.out} already exists; pass --overwrite to replace it, or another --out."
            )
        if not is_export_directory(out):
            raise io_utils.OutputError(
                f"{out} is not an aftt-export directory (no manifest.json of an export); "
                "--overwrite replaces only exports. Choose another --out."
            )


def is_export_directory(path: Path) -> bool:
    """Whether `path` holds an export written by `export_classifier` (its manifest)."""
    manifest = path / "manifest.json"
    try:
        record = io_utils.read_json(manifest) if manifest.exists() else None
    except ValueError:
        return False
    return isinstance(record, dict) and {"source_model", "artifacts"} <= set(record)


@dataclasses.dataclass
class Prepared:
    """What an export reads before it writes anything: the models and the data, the data
    already made into model inputs (float32) by the recorded transform."""

    source: keras.Model
    model: keras.Model
    dataset: str
    data_source: str
    arrays: dict[str, tuple[np.ndarray, np.ndarray]]
    data_record: dict[str, Any] = dataclasses.field(default_factory=dict)
    left_out: dict[str, str] = dataclasses.field(default_factory=dict)


def prepare(config: ExportConfig) -> Prepared:
    """Validates `config`, loads the model and its data; raises before anything is written."""
    config.validate()
    source = keras_runner.load_model(config.model)
    # The manifest reports top-1 accuracies: defined for one (batch, classes) output only.
    adapter = keras_runner.KerasModel(source)
    check_classifier_outputs(adapter.output_shapes, config.model)
    left_out = _formats_left_out(config, source)
    model = deployable_classifier(source)
    options = config.data_options.or_dataset(config.dataset)
    named = options.data or _run_config(config).get("dataset", "")
    origin = frontend.resolve_source(named, config.model)
    test = frontend.load(origin, "test", options)
    calibration_source = config.calibration_data or origin
    calibration = frontend.load(calibration_source, "train", options)
    for examples in (test, calibration):
        frontend.check_fits(examples, adapter.input_shape, adapter.num_outputs)
    transform = options.transform(test.images)
    calibration_transform = options.transform(calibration.images)
    if calibration_transform.record() != transform.record():
        raise ValueError(
            f"The calibration data ({calibration.images.dtype}) and the test data "
            f"({test.images.dtype}) would get different input transforms "
            f"({calibration_transform.name} vs {transform.name}); store them alike or pass "
            "--input_transform explicitly."
        )
    arrays = {
        "train": (_model_inputs(transform, calibration.images), calibration.labels),
        "test": (_model_inputs(transform, test.images), test.labels),
    }
    if not config.allow_chance_accuracy:
        from aftt_tf.campaigns.engine import check_accuracy

        logits = source.predict(arrays["test"][0][:2000], batch_size=1000, verbose=0)
        clean = outcome_of(logits, arrays["test"][1][:2000]).accuracy
        check_accuracy(clean, arrays["test"][1][:2000], config.model)
    record = {
        "test": {**test.description, "examples": len(test.labels)},
        "calibration": {**calibration.description, "examples": len(calibration.labels)},
        "calibration_is_test_data": calibration_source == origin
        and ":" in origin
        and not origin.startswith("tfds:"),
        "input_transform": transform.record(),
        "output_kind": frontend.output_kind(source),
    }
    description = test.description.get("source", origin)
    return Prepared(source, model, origin, description, arrays, record, left_out)


def _model_inputs(transform, images: np.ndarray) -> np.ndarray:
    """Stored examples as the model's float32 inputs (the transform applied once)."""
    return np.asarray(transform.apply(images), np.float32)


def _formats_left_out(config: ExportConfig, model: keras.Model) -> dict[str, str]:
    """{format: reason} for requested QAT formats this model cannot take (tfmot needs a
    tf_keras rebuild of the model); ValueError when such a format was asked for by name."""
    from aftt_tf.deploy import qat

    wanted = [
        name for name in ("tflite_int8_qat", "tflite_int8_fault_qat") if name in config.formats
    ]
    reason = qat.unsupported_reason(model) if wanted else None
    if reason is None:
        return {}
    remedy = (
        f"{reason}. Remedy: leave {', '.join(wanted)} out of --formats (tflite_int8, the "
        "post-training int8 file, works for this model)"
    )
    if config.formats_given:
        raise ValueError(f"{', '.join(wanted)} cannot be exported: {remedy}.")
    return {name: remedy for name in wanted}


def deployable_classifier(model: keras.Model) -> keras.Model:
    """The model without fault layers and training-only layers (Dropout, noise). Faults
    that a model holds (a repaired chip's map) are baked in: weights at their effective
    values, node masks as constant multiplications; fault layers with no fault go away."""
    model = targets.bake_faults(model)
    training_only = (keras.layers.Dropout, keras.layers.GaussianNoise, keras.layers.GaussianDropout)

    def call_function(layer, *args, **kwargs):
        if isinstance(layer, training_only):
            return args[0]
        return layer(*args, **kwargs)

    clean = keras.models.clone_model(model, call_function=call_function)
    for layer in clean.layers:
        try:
            source = model.get_layer(layer.name)
        except ValueError:
            continue
        for target, value in zip(layer.weights, source.weights, strict=True):
            target.assign(value)
    return clean


def _run_config(config: ExportConfig) -> dict[str, Any]:
    """The aftt-train config.json beside the model, if there is one."""
    path = Path(config.model).parent / "config.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _representative_dataset(images: np.ndarray, steps: int, batch_size: int, seed: int):
    """Bounded generator over real training examples (seeded order): model inputs as
    they are when float, uint8 images as x / 255 (this project's built-in convention)."""
    order = np.random.default_rng(seed).permutation(len(images))
    scale = images.dtype == np.uint8

    def generator():
        for step in range(steps):
            index = order[(step * batch_size) % len(order) :][:batch_size]
            batch = images[index].astype(np.float32)
            yield [batch / 255.0 if scale else batch]

    return generator


def _convert(converter, mode: str, representative=None) -> bytes:
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if mode == "int8":
        int8_converter.full_int8(converter, representative)
    try:
        return converter.convert()
    except Exception as error:
        raise RuntimeError(
            f"TFLite conversion ({mode}) needs operators outside the builtin set or failed: {error}"
        ) from None


def layer_map(
    model: keras.Model, tflite: tflite_file.TFLiteFile, check_values: bool = True
) -> dict[str, dict[str, Any]]:
    """Keras weight layer -> TFLite operator(s), checked by shape and by value.

    Operators are matched to layers by the Keras names in the converter's tensor names,
    else in order. A layer may be several operators (SeparableConv2D: depthwise, then
    pointwise). A BatchNormalization that the converter folded into the layer before it
    is accounted for: the stored kernel must equal the unfolded or the folded one
    (folding scales whole output channels, so a stuck-at-0 element stays 0 in both).
    QAT files hold fine-tuned weights, so only shapes are checked for them.
    """
    operators = sorted(tflite.layers.values(), key=lambda layer: layer.operator_index)
    by_name = {site.path: site for site in targets.sites(model)}
    if tflite.names_from == "tensor names" and all(op.name in by_name for op in operators):
        by_operator = {op.name: op for op in operators}
        return {  # Keras model order, as campaigns list layers.
            path: _map_entry(model, site, by_operator[path], tflite, check_values)
            for path, site in by_name.items()
            if path in by_operator
        }
    else:
        keras_layers = list(by_name.values())
        if len(keras_layers) != len(operators):
            raise RuntimeError(
                f"{len(keras_layers)} Keras weight layers but {len(operators)} TFLite "
                "weight layers, and the operators' tensor names name no Keras layer."
            )
        pairs = list(zip(keras_layers, operators, strict=True))
    return {
        site.path: _map_entry(model, site, operator, tflite, check_values)
        for site, operator in pairs
    }


def _map_entry(model, site, layer, tflite, check_values: bool) -> dict[str, Any]:
    keras_layer = site.layer
    kernels = [np.asarray(variable.numpy()) for _, variable, _ in site.kernels]
    shapes = [kernel.keras_kernel_shape for kernel in layer.kernels]
    # Attention projections keep (in, heads, dim) kernels that the file holds as
    # (in, heads * dim) matrices: compared as the file's 2-D layout.
    kernels = [
        kernel.reshape(shape) if kernel.shape != shape and kernel.size == np.prod(shape) else kernel
        for kernel, shape in zip(kernels, shapes, strict=False)
    ]
    if [kernel.shape for kernel in kernels] != shapes:
        raise RuntimeError(
            f"Layer {site.path} {[k.shape for k in kernels]} does not match operators "
            f"{layer.operator_indices} {shapes}."
        )
    folds: dict[str, Any] = {}
    for index, (kernel, operator) in enumerate(zip(kernels, layer.kernels, strict=True)):
        values = tflite_file.real_values(tflite.content, operator.weights)
        stored = values[operator.keras_to_file_positions(np.arange(kernel.size))]
        stored = stored.reshape(kernel.shape)
        tolerance = _storage_tolerance(operator.weights, kernel)
        if not check_values or np.allclose(stored, kernel, atol=tolerance):
            continue
        last = index == len(kernels) - 1  # Folding scales the layer's output channels.
        for key, by, folded in _fold_candidates(model, keras_layer, kernel, last):
            bound = _storage_tolerance(operator.weights, folded)
            if np.allclose(stored, folded, atol=bound, rtol=1e-4):
                folds[key] = by
                break
        else:
            raise RuntimeError(
                f"Values of layer {site.path} differ from operator {operator.operator_index}."
            )
    return {
        "operator_index": layer.operator_index,
        "operator_indices": layer.operator_indices,
        "operator": layer.operator,
        "weights_tensor": layer.weights.index,
        "weights_tensors": [kernel.weights.index for kernel in layer.kernels],
        "weights_dtype": layer.weights.dtype.name,
        "bias_tensor": None if layer.bias is None else layer.bias.index,
        "bias_dtype": None if layer.bias is None else layer.bias.dtype.name,
        **({"subgraph": layer.subgraph} if layer.subgraph else {}),
        **folds,
    }


def _fold_candidates(model, layer, kernel: np.ndarray, last: bool):
    """(manifest key, what was folded, kernel) the converter may have stored instead of the
    Keras kernel: a following BatchNormalization (output channels, last kernel only), a
    node mask on the input (rows), a preceding Rescaling (input axis), Rescaling and
    BatchNormalization together. Each scales whole rows or channels, so an element that
    is stuck at 0 in Keras is 0 in the file too."""
    normalization, normalized = _folded_kernel(model, layer, kernel) if last else (None, None)
    mask, masked = _input_masked_kernel(model, layer, kernel)
    rescaling, rescaled = _rescaled_kernel(model, layer, kernel)
    if normalized is not None:
        yield "folded_batch_normalization", normalization, normalized
    if masked is not None:
        yield "folded_node_mask", mask, masked
    if rescaled is not None:
        yield "folded_rescaling", rescaling, rescaled
    if normalized is not None and rescaled is not None:
        _, both = _rescaled_kernel(model, layer, normalized)
        yield "folded_rescaling_and_batch_normalization", [rescaling, normalization], both


def _storage_tolerance(weights: tflite_file.ConstantTensor, kernel: np.ndarray) -> float:
    """How far stored values may be from the Keras kernel: float32 rounding, float16's
    half-precision step, or an integer storage's quantization step."""
    if weights.dtype == np.float32:
        return 1e-5
    if weights.dtype == np.float16:
        return 1e-3 * max(1.0, float(np.max(np.abs(kernel))))
    return float(np.max(weights.scales))


def _input_masked_kernel(model, layer, kernel: np.ndarray):
    """(mask layer, kernel with the rows of held-at-0 inputs zeroed) when a Dense layer
    reads a NodeFault's output: converters fold the constant mask into its weights."""
    from aftt_tf.runtimes import layers as fault_layers

    if not isinstance(layer, keras.layers.Dense) or kernel.ndim != 2:
        return None, None
    for candidate in model.layers:
        if isinstance(candidate, fault_layers.NodeFault) and candidate.output is layer.input:
            mask = np.asarray(candidate.node_keep.numpy()).reshape(-1)
            if mask.size == kernel.shape[0]:
                return candidate.name, kernel * mask[:, None]
    return None, None


def _rescaled_kernel(model, layer, kernel: np.ndarray):
    """(Rescaling name, kernel * its scale along the input axis) when a Rescaling layer
    feeds the layer directly (through an InputLayer-free chain); (None, None) otherwise.
    Scaling an element keeps a stuck-at-0 element at 0 in both kernels."""
    for candidate in _all_layers(model):
        if not isinstance(candidate, keras.layers.Rescaling):
            continue
        try:
            feeds = candidate.output is layer.input
        except (AttributeError, ValueError):
            continue
        if not feeds:
            continue
        scale = np.asarray(candidate.scale, np.float64)
        if scale.ndim and kernel.ndim >= 2:
            axis = kernel.ndim - 2  # Input axis: rows of Dense, in-channels of a convolution.
            shape = [1] * kernel.ndim
            shape[axis] = -1
            scale = scale.reshape(shape)
        return candidate.name, kernel * scale
    return None, None


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def _folded_kernel(model, layer, kernel: np.ndarray):
    """(BN name, kernel * gamma / sqrt(var + eps)) when a BatchNormalization reads the
    layer's output directly; (None, None) otherwise."""
    for candidate in _all_layers(model):
        if not isinstance(candidate, keras.layers.BatchNormalization):
            continue
        if candidate.input is not layer.output:
            continue
        gamma = np.asarray(candidate.gamma.numpy()) if candidate.scale else 1.0
        scale = gamma / np.sqrt(np.asarray(candidate.moving_variance.numpy()) + candidate.epsilon)
        if isinstance(layer, keras.layers.DepthwiseConv2D):  # Channels C * M over (C, M).
            scale = np.reshape(scale, kernel.shape[-2:])
        elif isinstance(layer, keras.layers.Conv2DTranspose):  # Kernel (H, W, out, in).
            scale = np.reshape(scale, (-1, 1))
        return candidate.name, kernel * scale
    return None, None


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Correct, finite predictions only: a NaN/Inf output is not a class."""
    return outcome_of(logits, labels).accuracy


def export_classifier(config: ExportConfig, prepared: Prepared | None = None) -> dict[str, Any]:
    """Exports per `config`; returns the manifest (also written to OUT/manifest.json).

    Everything is written into a staging directory beside OUT and renamed into place
    at the end, so an interrupted export leaves nothing half-written; a lock beside OUT
    keeps a second export to it out, and staging directories left by killed exports are
    removed when the next one starts.
    """
    prepared = prepared or prepare(config)
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with io_utils.DirectoryLock(out.parent / f".{out.name}.lock", str(out)):
        config.validate()  # Again, now that no other export can write there.
        _remove_stale_staging(out)
        return _export(config, prepared, out)


# Staging directories are named .NAME.aftt-staging-XXXX and hold this marker file with
# the export's name: only such directories are removed as leftovers of a killed export, so
# a user's .NAME.backup beside --out is never touched.
_STAGING_INFIX = ".aftt-staging-"
_STAGING_MARKER = ".aftt-export-staging"


def _remove_stale_staging(out: Path) -> None:
    for path in out.parent.glob(f".{out.name}{_STAGING_INFIX}*"):
        marker = path / _STAGING_MARKER
        if (
            path.is_dir()
            and not path.is_symlink()
            and marker.is_file()
            and not marker.is_symlink()
            and marker.read_text() == out.name
        ):
            logging.warning("Removing %s, left by an interrupted export.", path)
            shutil.rmtree(path)


def _new_staging(out: Path) -> Path:
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}{_STAGING_INFIX}", dir=out.parent))
    (staging / _STAGING_MARKER).write_text(out.name)
    return staging


def _export(config: ExportConfig, prepared: Prepared, out: Path) -> dict[str, Any]:
    source, model, arrays = prepared.source, prepared.model, prepared.arrays
    test_images, test_labels = arrays["test"]
    if config.test_examples:
        test_images = test_images[: config.test_examples]
        test_labels = test_labels[: config.test_examples]
    reference = np.asarray(model.predict(test_images, batch_size=1000, verbose=0))
    original = np.asarray(source.predict(test_images[:256], verbose=0))
    if not np.allclose(reference[:256], original, atol=1e-5):
        raise RuntimeError(
            "The stripped classifier does not reproduce the source model's predictions."
        )
    staging = _new_staging(out)
    try:
        test = _TestSet(test_images, test_labels, reference)
        artifacts, failed = _write_artifacts(config, prepared, arrays["train"], test, staging)
        if not artifacts:
            raise RuntimeError(
                "No format could be exported, so nothing was written: "
                + "; ".join(f"{name}: {reason}" for name, reason in failed.items())
            )
        manifest = _write_manifest(
            config, staging, artifacts, prepared, test, {**prepared.left_out, **failed}
        )
        (staging / _STAGING_MARKER).unlink()
        staging.chmod(0o755)  # mkdtemp creates it private; exports are meant to be shared.
        if out.exists():
            shutil.rmtree(out)  # validate() checked that it is an export (or empty).
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return manifest


@dataclasses.dataclass
class _TestSet:
    """Test inputs (the model's float32 inputs), labels and the deployable Keras model's
    outputs on them."""

    images: np.ndarray
    labels: np.ndarray
    keras_logits: np.ndarray


def _write_artifacts(
    config: ExportConfig,
    prepared: Prepared,
    train: tuple[np.ndarray, np.ndarray],
    test: _TestSet,
    staging: Path,
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Writes the SavedModel and each TFLite format into `staging`, each converted and
    checked on its own: (manifest entries of the files made, {format: why it failed}).
    One format failing never discards the others."""
    model = prepared.model
    artifacts: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    saved_model = staging / "saved_model"
    model.export(str(saved_model), format="tf_saved_model", verbose=False)
    if "saved_model" in config.formats:
        artifacts["saved_model"] = _saved_model_entry(saved_model, test)
    representative = _representative_dataset(
        train[0], config.calibration_steps, config.calibration_batch_size, config.seed
    )
    wanted = [
        name for name in TFLITE_FILES if name in config.formats and name not in prepared.left_out
    ]
    for name in wanted:
        path = staging / TFLITE_FILES[name]
        try:
            extra = _write_format(config, name, model, train, representative, staging)
            artifacts[path.name] = {**_tflite_entry(path, name, model, test), **extra}
        except Exception as error:  # A converter or check failure of this format alone.
            if path.exists():
                path.unlink()
            failed[name] = _failure_reason(name, error)
            logging.warning("%s was not exported: %s", name, failed[name])
    if "saved_model" not in config.formats:
        shutil.rmtree(saved_model)
    float_accuracy = artifacts.get("model_float32.tflite", {}).get("test_accuracy")
    for file_name in artifacts:
        if "int8" in file_name and float_accuracy is not None:
            artifacts[file_name]["accuracy_minus_float32"] = (
                artifacts[file_name]["test_accuracy"] - float_accuracy
            )
    return artifacts, failed


def _write_format(config, name: str, model, train, representative, staging: Path) -> dict:
    """Converts one TFLite format into staging; returns its manifest additions."""
    if name in ("tflite_float32", "tflite_int8"):
        converter = tf.lite.TFLiteConverter.from_saved_model(str(staging / "saved_model"))
        mode = "float32" if name == "tflite_float32" else "int8"
        (staging / TFLITE_FILES[name]).write_bytes(_convert(converter, mode, representative))
        return {}
    if name == "tflite_int8_qat":
        history = _write_qat(config, model, train, representative, staging, 0.0)
        return {"qat_history": history}
    if name == "tflite_int8_fault_qat":
        history = _write_qat(
            config, model, train, representative, staging, config.fault_qat_max_rate
        )
        return {
            "qat_history": history,
            "fault_qat": {"kind": "weight", "max_rate": config.fault_qat_max_rate},
        }
    from aftt_tf.deploy import fault_calibration

    content, record = fault_calibration.fault_calibrated_int8(
        str(staging / "saved_model"), representative, config.fault_calibration()
    )
    (staging / TFLITE_FILES[name]).write_bytes(content)
    return {"fault_calibration": record}


def _failure_reason(name: str, error: Exception) -> str:
    """Why a format failed, on one line, with what to do about it."""
    text = (getattr(error, "message", None) or str(error)).strip().splitlines()
    reason = f"{type(error).__name__}: {text[0] if text else ''}"
    if "Values of layer" in reason or "does not match operators" in reason:
        remedy = "the converter changed the layer's weights in a way the layer map does not know"
    elif name.endswith("qat"):
        remedy = "leave it out of --formats; tflite_int8 (post-training) is the int8 file"
    else:
        remedy = "the converter could not express the model with builtin operators"
    return f"{reason} ({remedy})"


def _write_qat(config, model, train, representative, staging: Path, fault_max_rate: float):
    """QAT (fault-aware when fault_max_rate > 0) and its file; returns the history."""
    from aftt_tf.deploy import qat

    content, history = qat.quantization_aware_int8(
        model,
        *train,
        representative,
        epochs=config.qat_epochs,
        examples=config.qat_examples,
        learning_rate=config.qat_learning_rate,
        seed=config.seed,
        loss=_run_config(config).get("classification_loss", "crossentropy"),
        fault_max_rate=fault_max_rate,
        output_kind=frontend.training_output_kind(model, config.model),
    )
    name = "tflite_int8_fault_qat" if fault_max_rate else "tflite_int8_qat"
    (staging / TFLITE_FILES[name]).write_bytes(content)
    return history


def _saved_model_entry(path: Path, test: _TestSet) -> dict[str, Any]:
    loaded = tf.saved_model.load(str(path))
    images = test.images
    outputs = np.concatenate(
        [
            np.asarray(loaded.serve(tf.constant(images[i : i + 1000])))
            for i in range(0, len(images), 1000)
        ]
    )
    return {
        "signature": "serving_default",
        "endpoint": "serve",
        "test_accuracy": _accuracy(outputs, test.labels),
        "max_abs_logit_difference_vs_keras": float(np.max(np.abs(outputs - test.keras_logits))),
    }


def _tflite_entry(path: Path, name: str, model: keras.Model, test: _TestSet) -> dict[str, Any]:
    tflite = tflite_file.TFLiteFile(path)
    logits = tflite_file.predict(tflite, test.images)
    interpreter = tflite.interpreter(tflite.content)
    return {
        "format": name,
        "test_accuracy": _accuracy(logits, test.labels),
        "max_abs_logit_difference_vs_keras": float(np.max(np.abs(logits - test.keras_logits))),
        "input": _io_detail(interpreter.get_input_details()[0]),
        "output": _io_detail(interpreter.get_output_details()[0]),
        "layers": layer_map(
            model, tflite, check_values=name not in vocabulary.RETRAINED_TFLITE_FORMATS
        ),
        "weight_operators_left_out": _left_out_operators(path),
    }


def _left_out_operators(path: Path) -> list[dict[str, Any]]:
    """Weight-bearing operators of the file that fault campaigns do not reach, with the
    reason (empty for files of the supported layer types): the manifest lists every
    weight-bearing operator, mapped to a layer above or here."""
    from aftt_tf.faults.spec import FaultSpec
    from aftt_tf.runtimes import tflite_runner

    coverage = tflite_runner.TFLiteModel(path).coverage(FaultSpec(kind="weight"))
    return coverage["left_out"]


def _write_manifest(
    config: ExportConfig,
    staging: Path,
    artifacts: dict[str, dict[str, Any]],
    prepared: Prepared,
    test: _TestSet,
    not_exported: dict[str, str],
) -> dict[str, Any]:
    io_utils.write_json(
        staging / "config.json",
        {
            **frontend.flat_record(dataclasses.asdict(config)),
            "dataset": prepared.dataset if prepared.dataset in vocabulary.DATASETS else "",
            "data_source": prepared.data_source,
        },
    )
    hashes = {
        str(path.relative_to(staging)): {
            "sha256": io_utils.sha256_file(path),
            "bytes": path.stat().st_size,
        }
        for path in sorted(staging.rglob("*"))
        if path.is_file() and path.name != _STAGING_MARKER
    }
    manifest = {
        "versions": io_utils.versions(),
        "source_model": {
            "path": str(Path(config.model).resolve()),
            "sha256": io_utils.sha256_file(config.model),
        },
        "dataset": prepared.dataset if prepared.dataset in vocabulary.DATASETS else None,
        "data": prepared.data_record,
        "test_examples": int(len(test.labels)),
        "keras_test_accuracy": _accuracy(test.keras_logits, test.labels),
        "artifacts": {name: {**artifacts[name], **hashes.get(name, {})} for name in artifacts},
        "not_exported": not_exported,
        "files": hashes,
    }
    io_utils.write_json(staging / "manifest.json", manifest)
    return manifest


def _io_detail(detail: dict[str, Any]) -> dict[str, Any]:
    scale, zero_point = detail["quantization"]
    return {
        "name": detail["name"],
        "shape": [int(d) for d in detail["shape"]],
        "dtype": np.dtype(detail["dtype"]).name,
        "scale": float(scale),
        "zero_point": int(zero_point),
    }
