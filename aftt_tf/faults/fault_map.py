"""Fault maps: the known faults of one chip (from its test, or written by a campaign
cell), applied in every cell of a campaign, a repair or the repaired protocol.

Formats (`load` reads either, by suffix):

JSON (`.json`)::

    {"format": "aftt-fault-map/1",
     "faults": [{"layer": "conv1", "attribute": "kernel", "index": 17,
                 "kind": "stuck_at_0"},
                {"layer": "backbone/conv2", "attribute": "kernel", "index": [1, 2, 0, 5],
                 "kind": "stuck_value", "value": 0.75}],
     "meta": {...}}

CSV (`.csv`), one fault per row, header ``layer,attribute,index,kind,value``; `index` is
a flat index or a multi-index joined by ``:`` (``1:2:0:5``).

`layer` is the layer path campaigns use, `attribute` the kernel ('kernel',
'depthwise_kernel', 'cell.recurrent_kernel'; 'bias' for biases), `index` a position in
the Keras layout of that tensor (flat, or one index per axis). Kinds: `stuck_at_0`, and
`stuck_value` with the real `value` the element holds. Every runtime writes the value in
its own representation (a `.tflite` quantizes it with the element's scale and zero
point), so one map faults the same elements everywhere. A map's faults come on top of the
campaign's sampled ones: rate 0 measures the map alone. No TensorFlow.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from aftt_tf import io_utils

FORMAT = "aftt-fault-map/1"
KINDS = ("stuck_at_0", "stuck_value")


@dataclasses.dataclass(frozen=True)
class MapFault:
    layer: str
    attribute: str
    index: tuple[int, ...]  # Flat (one entry) or one index per axis.
    kind: str  # A map entry's own vocabulary (KINDS), not a campaign's fault kind.
    value: float = 0.0

    @property
    def holds_value(self) -> bool:
        """Stuck at its own value (not at 0)."""
        return self.kind == "stuck_value"

    def flat(self, shape: tuple[int, ...]) -> int:
        """The flat index in a tensor of `shape`; ValueError when outside it."""
        size = int(np.prod(shape))
        if len(self.index) == 1:
            if not 0 <= self.index[0] < size:
                raise ValueError(
                    f"Fault map index {self.index[0]} of {self.layer}/{self.attribute} is "
                    f"outside its {size} elements (shape {tuple(shape)})."
                )
            return int(self.index[0])
        if len(self.index) != len(shape) or any(
            not 0 <= i < d for i, d in zip(self.index, shape, strict=True)
        ):
            raise ValueError(
                f"Fault map index {list(self.index)} of {self.layer}/{self.attribute} does "
                f"not fit its shape {tuple(shape)}."
            )
        return int(np.ravel_multi_index(self.index, shape))


class FaultMap:
    """A list of `MapFault`s with what they came from."""

    def __init__(self, faults: list[MapFault], meta: dict[str, Any] | None = None):
        self.faults = list(faults)
        self.meta = dict(meta or {})

    def by_tensor(self) -> dict[tuple[str, str], list[MapFault]]:
        result: dict[tuple[str, str], list[MapFault]] = {}
        for fault in self.faults:
            result.setdefault((fault.layer, fault.attribute), []).append(fault)
        return result

    def digest(self) -> str:
        text = json.dumps([dataclasses.asdict(f) for f in self.faults], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def save(self, path: str | Path) -> None:
        from aftt_tf import io_utils

        path = Path(path)
        if path.suffix == ".csv":
            buffer = io.StringIO()
            writer = csv.writer(buffer)
            writer.writerow(["layer", "attribute", "index", "kind", "value"])
            for fault in self.faults:
                index = ":".join(str(i) for i in fault.index)
                writer.writerow(
                    [fault.layer, fault.attribute, index, fault.kind, repr(fault.value)]
                )
            io_utils.write_text(path, buffer.getvalue())
            return
        io_utils.write_json(
            path,
            {
                "format": FORMAT,
                "faults": [
                    {
                        "layer": f.layer,
                        "attribute": f.attribute,
                        "index": f.index[0] if len(f.index) == 1 else list(f.index),
                        "kind": f.kind,
                        **({"value": f.value} if f.kind == "stuck_value" else {}),
                    }
                    for f in self.faults
                ],
                "meta": self.meta,
            },
        )


def load(path: str | Path) -> FaultMap:
    """Reads a map, with one-line errors naming the file and the entry that is wrong."""
    return _load_cached(*io_utils.file_version(path, "Fault map"))


def digest_of(path: str) -> str:
    return load(path).digest()


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, mtime: int, size: int) -> FaultMap:
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"Fault map {path} cannot be read: {error}.") from None
    if path.endswith(".csv"):
        entries, meta = _csv_entries(path, text), {}
    else:
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"Fault map {path} is not JSON ({error}).") from None
        except RecursionError:
            raise ValueError(
                f"Fault map {path} nests too deep to read as JSON; a map is a flat list of "
                "faults (see aftt_tf/faults/fault_map.py)."
            ) from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise ValueError(
                f"Fault map {path} does not say format {FORMAT!r}; see aftt_tf/faults/fault_map.py."
            )
        entries, meta = document.get("faults", []), document.get("meta", {})
        if not isinstance(entries, list):
            raise ValueError(f"Fault map {path}: 'faults' must be a list of faults.")
    faults = []
    for number, entry in enumerate(entries, start=1):
        faults.append(_fault(entry, f"{path} fault {number}"))
    if not faults:
        raise ValueError(f"Fault map {path} holds no faults.")
    seen: dict[tuple, int] = {}
    for number, fault in enumerate(faults, start=1):
        key = (fault.layer, fault.attribute, fault.index)
        if key in seen:
            raise ValueError(
                f"Fault map {path}: faults {seen[key]} and {number} name the same element "
                f"({fault.layer}/{fault.attribute} {list(fault.index)}); keep one."
            )
        seen[key] = number
    return FaultMap(faults, meta)


_CSV_HEADER = ("layer", "attribute", "index", "kind", "value")


def _csv_entries(path: str, text: str) -> list[dict[str, Any]]:
    """The CSV's rows as entries; a missing header or a bad index names file and row."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        raise ValueError(f"Fault map {path} is empty; see aftt_tf/faults/fault_map.py.")
    if [name.strip() for name in header] != list(_CSV_HEADER):
        raise ValueError(
            f"Fault map {path}: the first line must be the header "
            f"{','.join(_CSV_HEADER)}, found {','.join(header)!r}."
        )
    entries = []
    for number, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(_CSV_HEADER):
            raise ValueError(
                f"Fault map {path} line {number}: {len(row)} fields, the header has "
                f"{len(_CSV_HEADER)} ({','.join(_CSV_HEADER)})."
            )
        entry = dict(zip(_CSV_HEADER, row, strict=True))
        try:
            entry["index"] = [_csv_integer(i) for i in entry["index"].split(":")]
        except ValueError:
            raise ValueError(
                f"Fault map {path} line {number}: index {entry['index']!r} is not a flat "
                "index or integers joined by ':' (1:2:0:5)."
            ) from None
        if entry["value"] == "":
            del entry["value"]
        entries.append(entry)
    return entries


def _csv_integer(text: str) -> int:
    text = text.strip()
    if not text.lstrip("-").isdigit():
        raise ValueError(text)
    return int(text)


def _integer(value: Any, where: str) -> int:
    """An index entry: an integer (not a bool, not 1.5)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, float) and value.is_integer() and not isinstance(value, bool):
            return int(value)
        raise ValueError(f"{where}: index entries must be integers, received {value!r}.")
    return int(value)


def _fault(entry: Any, where: str) -> MapFault:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: a fault is an object with layer, attribute, index, kind.")
    missing = [key for key in ("layer", "attribute", "index", "kind") if key not in entry]
    if missing:
        raise ValueError(
            f"{where}: needs layer, attribute, index and kind (value for stuck_value); "
            f"missing {', '.join(missing)}."
        )
    kind = entry["kind"]
    if kind not in KINDS:
        raise ValueError(f"{where}: kind {kind!r} is not one of {', '.join(KINDS)}.")
    raw = entry["index"]
    index = tuple(_integer(i, where) for i in (raw if isinstance(raw, list) else [raw]))
    if not index:
        raise ValueError(f"{where}: an empty index.")
    value = 0.0
    if kind == "stuck_value":
        if entry.get("value") in (None, ""):
            raise ValueError(
                f"{where}: a stuck_value fault needs its value (the real value the element "
                "holds); for an element stuck at 0 use kind stuck_at_0."
            )
        try:
            value = float(entry["value"])
        except (TypeError, ValueError):
            raise ValueError(f"{where}: value {entry['value']!r} is not a number.") from None
        if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
            raise ValueError(
                f"{where}: a stuck value must be a finite float32 value (|v| <= "
                f"{FLOAT32_MAX:.4g}), received {entry['value']}."
            )
    elif entry.get("value") not in (None, "", 0, 0.0, "0", "0.0"):
        raise ValueError(
            f"{where}: a stuck_at_0 fault holds 0, not value {entry['value']!r}; use kind "
            "stuck_value for another value."
        )
    return MapFault(str(entry["layer"]), str(entry["attribute"]), index, kind, value)


FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_fits(fault_map: FaultMap, shapes: dict[tuple[str, str], tuple[int, ...]], where: str):
    """Every fault names a tensor the campaign reaches and an element inside it, and no
    element twice (a flat and a multi-index of one element are the same element)."""
    for (layer, attribute), faults in fault_map.by_tensor().items():
        if (layer, attribute) not in shapes:
            known = sorted(f"{a}/{b}" for a, b in shapes)
            raise ValueError(
                f"The fault map names {layer}/{attribute}, which {where} does not fault "
                f"(its tensors: {known[:12]}{' ...' if len(known) > 12 else ''})."
            )
        seen: dict[int, MapFault] = {}
        for fault in faults:
            flat = fault.flat(shapes[(layer, attribute)])
            if flat in seen:
                raise ValueError(
                    f"The fault map names element {flat} of {layer}/{attribute} twice (as "
                    f"{list(seen[flat].index)} and {list(fault.index)}); one chip element "
                    "holds one fault: keep one entry."
                )
            seen[flat] = fault


def overlay(faults: list[MapFault], shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(flat positions, real values) of a tensor's map faults (stuck at 0: value 0)."""
    positions = np.array([f.flat(shape) for f in faults], np.int64)
    values = np.array([f.value if f.kind == "stuck_value" else 0.0 for f in faults])
    return positions, values
