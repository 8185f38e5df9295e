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
import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

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


def resolve(
    name: str = "auto", scale: float | None = None, offset: float | None = None, dtype=None
) -> InputTransform:
    """The transform of a preset, an affine scale/offset, or 'MODULE:FUNCTION'; 'auto'
    is resolved against the data's dtype (uint8 -> 'unit', else 'raw')."""
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
        name = "unit" if np.dtype(dtype or np.uint8) == np.uint8 else "raw"
    if name not in _AFFINE:
        raise ValueError(
            f"Unknown input transform {name!r}; expected one of {', '.join(PRESETS)}, "
            "MODULE:FUNCTION, or --input_scale/--input_offset."
        )
    divisor, offset = _AFFINE[name]
    return InputTransform(name, divisor, offset)


def _import_function(spec: str) -> Callable[[np.ndarray], np.ndarray]:
    module_name, _, function_name = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise ValueError(
            f"Input transform {spec!r} could not be imported ({error}); give MODULE:FUNCTION "
            "of a module on the Python path."
        ) from None
    if not callable(function):
        raise ValueError(f"Input transform {spec!r} is not a function.")
    return function
