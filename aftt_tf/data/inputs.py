"""How test data becomes model input: an explicit, recorded transform. No TensorFlow.

A model trained on raw pixels (with its own `Rescaling` layer) and one trained on [0, 1]
images need different inputs; feeding the wrong one gives chance-level accuracy without
an error. The transform is named, applied the same way by every runtime, recorded in
results.json and part of the campaign's identity.

Presets: 'unit' (x / 255, our trained models), 'raw' (as stored), 'symmetric'
(x / 127.5 - 1), 'auto' ('unit' for uint8 data, 'raw' otherwise), or an affine
`scale`/`offset` (x * scale + offset), or 'MODULE:FUNCTION' (a numpy function of a batch).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from aftt_tf.checks import user_import

__all__ = [
    "InputTransform",
    "check_examples",
    "check_labels",
    "check_transform",
    "prepared",
    "resolve",
]

PRESETS = ("auto", "unit", "raw", "symmetric")
# (divisor, offset): x / divisor + offset; division keeps 'unit' bit-identical to x / 255.
_AFFINE = {"unit": (255.0, 0.0), "raw": (1.0, 0.0), "symmetric": (127.5, -1.0)}


@dataclasses.dataclass(frozen=True)
class InputTransform:
    """x -> x / divisor + offset, or a user function; `name` says which, for the record."""

    name: str = "auto"
    divisor: float = 1.0
    offset: float = 0.0
    function: Callable[[np.ndarray], np.ndarray] | None = None

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "divisor": self.divisor, "offset": self.offset}

    @property
    def identity(self) -> bool:
        return self.function is None and self.divisor == 1.0 and self.offset == 0.0

    def apply(self, batch: np.ndarray) -> np.ndarray:
        """The model input of a batch (float32, except identity on integer data: token ids)."""
        if self.function is not None:
            return np.asarray(self.function(batch))
        if self.identity:
            return batch if batch.dtype != np.float64 else batch.astype(np.float32)
        values = batch.astype(np.float32) / np.float32(self.divisor)
        return values + np.float32(self.offset) if self.offset else values


def check_examples(images: np.ndarray, labels: np.ndarray) -> None:
    """ValueError naming what is wrong with test inputs or labels, before any inference:
    no examples, strings, NaN/Inf inputs, labels that are not whole class indices."""
    if images.dtype.kind in "USOV":
        raise ValueError(
            f"The inputs have dtype {images.dtype} (text or objects), not numbers; store "
            "images or features as numeric arrays."
        )
    if len(images) == 0 or len(labels) == 0:
        raise ValueError("The test data hold no examples; give at least one.")
    if len(images) != len(labels):
        raise ValueError(
            f"{len(images)} inputs but {len(labels)} labels; give one label per example."
        )
    if images.dtype.kind == "f" and not np.all(np.isfinite(images)):
        bad = int(np.sum(~np.all(np.isfinite(images.reshape(len(images), -1)), axis=1)))
        raise ValueError(
            f"{bad} of {len(images)} inputs hold NaN or infinite values; clean the data "
            "(a fault campaign measures faults, not broken inputs)."
        )
    check_labels(labels)


def check_labels(labels: np.ndarray) -> None:
    """Labels must be whole, non-negative class indices (N,)."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(
            f"Labels of shape {labels.shape}: give integer labels (N,) (one-hot labels are "
            "converted when data are loaded from files)."
        )
    if labels.dtype.kind not in "iuf" or labels.dtype == np.bool_:
        raise ValueError(f"Labels have dtype {labels.dtype}; give integer class indices.")
    if labels.dtype.kind == "f" and not (
        np.all(np.isfinite(labels)) and np.all(np.mod(labels, 1) == 0)
    ):
        raise ValueError(
            "Labels hold fractions or NaN/Inf values; give integer class indices (soft or "
            "smoothed labels cannot be scored by top-1 accuracy)."
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= 2**31):
        raise ValueError(
            f"Labels range over [{labels.min():g}, {labels.max():g}]; class indices must be "
            "in [0, classes)."
        )


def resolve(
    name: str = "auto",
    scale: float | None = None,
    offset: float | None = None,
    dtype=None,
    sample: np.ndarray | None = None,
) -> InputTransform:
    """The transform of a preset, an affine scale/offset, or 'MODULE:FUNCTION'; 'auto'
    is resolved against the data's dtype (uint8 -> 'unit', else 'raw'), and refused for
    data (`sample`) that look like pixels in [0, 255] stored as floats or wider integers,
    whose meaning auto cannot tell (ValueError with the two choices)."""
    if scale is not None or offset is not None:
        scale = 1.0 if scale is None else float(scale)
        offset = 0.0 if offset is None else float(offset)
        if not (np.isfinite(scale) and np.isfinite(offset) and scale != 0):
            raise ValueError(
                f"--input_scale must be finite and non-zero and --input_offset finite; "
                f"received {scale} and {offset}."
            )
        return InputTransform(f"scale={scale:g},offset={offset:g}", 1.0 / scale, offset)
    if ":" in name:
        return InputTransform(name, function=_import_function(name))
    if name == "auto":
        name = _auto(np.dtype(dtype or np.uint8), sample)
    if name not in _AFFINE:
        raise ValueError(
            f"Unknown input transform {name!r}; expected one of {', '.join(PRESETS)}, "
            "MODULE:FUNCTION, or --input_scale/--input_offset."
        )
    divisor, offset = _AFFINE[name]
    return InputTransform(name, divisor, offset)


def _auto(dtype: np.dtype, sample: np.ndarray | None) -> str:
    if dtype == np.uint8:
        return "unit"
    if sample is None or not sample.size or dtype.kind not in "fiu":
        return "raw"
    pixels = sample.ndim >= 3 or dtype.kind == "f"  # (N, H, W[, C]); flat floats too.
    low, high = float(np.min(sample)), float(np.max(sample))
    if pixels and low >= 0 and 1.0 < high <= 255.0 and np.all(np.mod(sample, 1) == 0):
        raise ValueError(
            f"--input_transform=auto cannot tell how to feed these inputs: {dtype} values in "
            f"[{low:g}, {high:g}], whole numbers, look like pixels in [0, 255]. Pass "
            "--input_transform=unit (x / 255, a model trained on [0, 1] inputs) or "
            "--input_transform=raw (a model that scales its inputs itself, e.g. with a "
            "Rescaling layer)."
        )
    return "raw"


def _import_function(spec: str) -> Callable[[np.ndarray], np.ndarray]:
    module_name, _, function_name = spec.partition(":")
    module = user_import(module_name, f"Input transform {spec!r}")
    function = getattr(module, function_name, None)
    if function is None:
        raise ValueError(
            f"Input transform {spec!r}: module {module_name} has no {function_name!r}; give "
            "MODULE:FUNCTION of a module on the Python path."
        )
    if not callable(function):
        raise ValueError(f"Input transform {spec!r} is not a function.")
    return function


def check_transform(
    transform: InputTransform, images: np.ndarray, input_shape: tuple[int, ...]
) -> None:
    """Runs a user's MODULE:FUNCTION transform on two examples before any work: an
    exception, a result of another shape or with NaN/Inf is a ValueError naming it."""
    if transform.function is None:
        return
    try:
        result = np.asarray(transform.function(images[:2]))
    except Exception as error:  # The user's code.
        raise ValueError(
            f"Input transform {transform.name!r} raised {type(error).__name__}: {error} on "
            "the first two examples."
        ) from None
    expected = (min(2, len(images)), *input_shape)
    if result.shape != expected or result.dtype.kind not in "fiub":
        raise ValueError(
            f"Input transform {transform.name!r} returned {result.dtype} of shape "
            f"{result.shape} for the first two examples; the model takes shape {expected} "
            "(a batch in, a numeric batch of the model's input shape out)."
        )
    if result.dtype.kind == "f" and not np.all(np.isfinite(result)):
        raise ValueError(f"Input transform {transform.name!r} returned NaN or Inf values.")


def prepared(
    images: np.ndarray,
    labels: np.ndarray,
    transform: InputTransform | str,
    input_shapes: list[tuple[int, ...]],
) -> InputTransform:
    """Every check of test inputs before any work: the examples and labels, the transform
    (a name is resolved against the images: 'auto' looks at them) and, for a user's
    function, what it makes for each model's input shape. Returns the transform."""
    check_examples(images, labels)
    if isinstance(transform, str):
        transform = resolve(transform, dtype=images.dtype, sample=images)
    for shape in dict.fromkeys(input_shapes):
        check_transform(transform, images, shape)
    return transform
