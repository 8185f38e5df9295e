"""Names every wing of the package shares, defined once and importable without TensorFlow.

Flag definitions and config validation read these tuples, so parsing a command line
never imports TensorFlow; the modules that do the work import them from here too.
"""

from __future__ import annotations

from aftt_tf import methods as _methods

# Training methods are objects (aftt_tf.methods); these tuples of their names, in the
# order the comparison trains and reports them, are derived from them.
METHODS = _methods.names(paper=True)
# Methods for the user's own model (aftt-train --model): the paper's and range restriction.
USER_METHODS = _methods.names()
METHOD_NAMES = {name: _methods.get(name).title for name in USER_METHODS}
PRETRAINING_METHODS = _methods.names(pretrains=True)
FAULT_AWARE_METHODS = _methods.names(fault_aware=True)
PENALTY_METHODS = tuple(n for n in USER_METHODS if _methods.get(n).penalty != "none")
CLASSIFICATION_LOSSES = ("mse", "crossentropy")
REGULARIZATIONS = ("none", "l1", "l2")

# The four paper architectures and the dataset each was designed for.
ARCHITECTURE_DATASETS = {
    "fmnist_mlp": "fashion_mnist",
    "fmnist_cnn": "fashion_mnist",
    "cifar10_conv7": "cifar10",
    "cifar10_conv3": "cifar10",
}
ARCHITECTURES = tuple(ARCHITECTURE_DATASETS)
ARCHITECTURES_WITH_CONVOLUTIONS = ("fmnist_cnn", "cifar10_conv7", "cifar10_conv3")

DATASETS = ("fashion_mnist", "mnist", "cifar10")
DATA_SOURCES = ("auto", "tfds", "local", "download")
_DATASET_SHAPES = {"fashion_mnist": (28, 28, 1), "mnist": (28, 28, 1), "cifar10": (32, 32, 3)}
# A model's input shape -> the built-in dataset used when none is named.
_DEFAULT_DATASET_OF_SHAPE = {(28, 28, 1): "fashion_mnist", (32, 32, 3): "cifar10"}

# The classifier's layers that form the head (see aftt_tf.training.networks); every other
# layer is the feature extractor. Fault scopes 'head'/'extractor' follow this split.
HEAD_LAYER_NAMES = ("head_dense", "logits")

# Fault vocabulary (fault kinds are objects: aftt_tf.faults.kinds).
SCOPES = ("all", "extractor", "head")
SAMPLINGS = ("exact", "bernoulli")
BIT_MODES = ("flip", "stuck_at_1", "stuck_at_0")

# Where the comparisons (aftt-reproduce) measure a model: the .keras itself, or its int8
# .tflite (files run by the `faults.runtimes` registry's tflite runtime).
COMPARISON_RUNTIMES = ("keras", "int8")

# Export formats and the file each TFLite format is written to.
# What aftt-export writes by default; the fault-tolerant int8 variants are opt-in.
DEFAULT_EXPORT_FORMATS = ("saved_model", "tflite_float32", "tflite_int8", "tflite_int8_qat")
EXPORT_FORMATS = DEFAULT_EXPORT_FORMATS + ("tflite_int8_fault_calibrated", "tflite_int8_fault_qat")
TFLITE_FILES = {
    "tflite_float32": "model_float32.tflite",
    "tflite_int8": "model_int8.tflite",
    "tflite_int8_qat": "model_int8_qat.tflite",
    "tflite_int8_fault_calibrated": "model_int8_fault_calibrated.tflite",
    "tflite_int8_fault_qat": "model_int8_fault_qat.tflite",
}
# Files whose weights QAT changed (their layer map is checked by shape, not by value).
RETRAINED_TFLITE_FORMATS = ("tflite_int8_qat", "tflite_int8_fault_qat")


def input_shape_for(dataset: str) -> tuple[int, int, int]:
    """Image shape (height, width, channels) of a built-in dataset."""
    if dataset not in _DATASET_SHAPES:
        raise ValueError(
            f"Unknown dataset {dataset!r}; expected one of 'fashion_mnist', 'mnist', 'cifar10'."
        )
    return _DATASET_SHAPES[dataset]


def dataset_for_input_shape(shape: tuple[int, ...]) -> str | None:
    """The built-in dataset a model of this input shape is evaluated on by default."""
    return _DEFAULT_DATASET_OF_SHAPE.get(tuple(shape))


def in_scope(name: str, scope: str) -> bool:
    """Whether a classifier layer named `name` is in 'all', 'extractor' or 'head'."""
    if scope == "all":
        return True
    in_head = name in HEAD_LAYER_NAMES
    return in_head if scope == "head" else not in_head
