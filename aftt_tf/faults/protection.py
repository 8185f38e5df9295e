"""Protection plans: which weight elements the hardware protects (ECC, triple modular
redundancy, a safer memory), so that faults drawn there never reach the model.

A plan is an `.npz` file: one int64 array of flat indices (Keras kernel layout) per
(layer path, kernel attribute), named `LAYER|ATTRIBUTE`, and a JSON `meta` entry (how it
was chosen, its budget, the model it was made for). Campaigns read it with
`FaultSpec.protected` (`aftt-faults --protected=FILE`): faults are drawn exactly as
without the plan and those that land on protected elements are dropped, so a protected
campaign is paired element for element with the unprotected one and the rate keeps its
meaning (raw faults per element of memory). No TensorFlow: `.tflite` campaigns read
plans too (positions are mapped to the file's layout like every other fault).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from aftt_tf import io_utils

_SEPARATOR = "|"


class ProtectionPlan:
    """Protected flat indices per (layer path, kernel attribute)."""

    def __init__(self, protected: dict[tuple[str, str], np.ndarray], meta: dict[str, Any]):
        self.protected = {
            key: np.unique(np.asarray(value, np.int64)) for key, value in protected.items()
        }
        self.meta = dict(meta)

    def indices(self, layer: str, attribute: str) -> np.ndarray | None:
        return self.protected.get((layer, attribute))

    @property
    def layers(self) -> list[str]:
        return sorted({layer for layer, _ in self.protected})

    @property
    def count(self) -> int:
        return int(sum(len(value) for value in self.protected.values()))

    def save(self, path: str | Path) -> None:
        """Writes the plan atomically (a temporary file renamed into place)."""
        path = Path(path)
        arrays = {
            f"{layer}{_SEPARATOR}{attribute}": v for (layer, attribute), v in self.protected.items()
        }
        arrays["meta"] = np.frombuffer(json.dumps(self.meta, sort_keys=True).encode(), np.uint8)
        temporary = path.with_name(f".{path.name}.tmp")
        with open(temporary, "wb") as file:
            np.savez(file, **arrays)
        os.replace(temporary, path)

    def digest(self) -> str:
        """sha256 of the protected positions: what a campaign's key depends on."""
        digest = hashlib.sha256()
        for (layer, attribute), value in sorted(self.protected.items()):
            digest.update(f"{layer}{_SEPARATOR}{attribute}:".encode())
            digest.update(np.ascontiguousarray(value).tobytes())
        return digest.hexdigest()


def load(path: str | Path) -> ProtectionPlan:
    """Reads a plan file, with one-line errors for a missing, foreign or damaged file."""
    return _load_cached(*io_utils.file_version(path, "Protection plan"))


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, mtime: int, size: int) -> ProtectionPlan:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except Exception as error:  # noqa: BLE001 - any unreadable file is the same error.
        raise ValueError(
            f"{path} is not a protection plan (an .npz written by aftt-sensitivity): "
            f"{type(error).__name__}: {error}"
        ) from None
    if "meta" not in arrays:
        raise ValueError(f"{path} is not a protection plan: it has no 'meta' entry.")
    try:
        meta = json.loads(arrays.pop("meta").tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ValueError(
            f"{path}: its 'meta' entry is not readable JSON ({type(error).__name__}); the "
            "plan is damaged. Write it again with aftt-sensitivity."
        ) from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: its 'meta' entry is not a JSON object; the plan is damaged.")
    protected = {}
    for name, value in arrays.items():
        if _SEPARATOR not in name or value.ndim != 1 or value.dtype.kind not in "iu":
            raise ValueError(
                f"{path}: entry {name!r} is not 'LAYER|ATTRIBUTE' with 1-D integer indices."
            )
        if value.size and value.min() < 0:
            raise ValueError(f"{path}: entry {name!r} has negative indices.")
        layer, attribute = name.split(_SEPARATOR, 1)
        protected[(layer, attribute)] = value
    return ProtectionPlan(protected, meta)


def digest_of(path: str) -> str:
    return load(path).digest()


def unprotected(positions: np.ndarray, protected: np.ndarray | None) -> np.ndarray:
    """The drawn positions that are not protected (order kept)."""
    if protected is None or not len(protected) or not len(positions):
        return positions
    return positions[~np.isin(positions, protected)]


def check_plan_fits(plan: ProtectionPlan, kernels: dict[tuple[str, str], int], where: str) -> None:
    """A plan naming a kernel the model lacks, or an index beyond a kernel's size, is an
    error (a plan for another model), never silently ignored."""
    for (layer, attribute), value in plan.protected.items():
        if (layer, attribute) not in kernels:
            known = sorted(f"{a}{_SEPARATOR}{b}" for a, b in kernels)
            raise ValueError(
                f"The protection plan names {layer}{_SEPARATOR}{attribute}, which {where} "
                f"does not have (its kernels: {known[:12]}{' ...' if len(known) > 12 else ''}); "
                "was it made for another model?"
            )
        if value.size and int(value.max()) >= kernels[(layer, attribute)]:
            raise ValueError(
                f"The protection plan's indices for {layer}{_SEPARATOR}{attribute} reach "
                f"{int(value.max())}, beyond its {kernels[(layer, attribute)]} elements in {where}."
            )
