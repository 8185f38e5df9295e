"""The cells of a campaign in a fixed order, their split into shards (one process each,
for batch schedulers), and the merge of finished shards into one result.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aftt_tf import io_utils
from aftt_tf.campaigns import cell_log, outputs
from aftt_tf.faults.spec import FaultSpec


def cell_plan(spec: FaultSpec) -> list[tuple[float, int]]:
    """Every (rate, trial) cell in a fixed order."""
    return [(float(rate), trial) for rate in spec.rates for trial in range(spec.trials)]


def shard_cells(
    cells: list[tuple[float, int]], num_shards: int, shard_index: int
) -> list[tuple[float, int]]:
    """Deterministic round-robin share of the cells for one shard."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(
            f"shard_index must be in [0, num_shards) and num_shards >= 1; received "
            f"shard_index={shard_index}, num_shards={num_shards}."
        )
    return [cell for index, cell in enumerate(cells) if index % num_shards == shard_index]


# A record's fields and their types: anything else on a line is not a cell of ours.
def merge_shards(shard_dirs: list[str | Path], out_dir: str | Path) -> dict[str, Any]:
    """Combines the cells of shard directories (same spec and models) into one result."""
    metas = _shard_metas(shard_dirs)
    spec = FaultSpec.from_dict(metas[0]["spec"])
    shard_records = [
        record
        for directory, meta in zip(shard_dirs, metas, strict=True)
        for record in _complete_shard(Path(directory), meta, spec)
    ]
    out_dir = Path(out_dir)
    cell_log.check_campaign_directory(out_dir, spec.as_dict())
    meta = {
        **metas[0],
        "num_shards": 1,
        "shard_index": 0,
        "merged_from": [str(d) for d in shard_dirs],
    }
    with io_utils.DirectoryLock(out_dir / io_utils.LOCK_FILE, str(out_dir)):
        cell_log.check_campaign_directory(out_dir, spec.as_dict())
        # A merge only adds: cells already in --out (other rates, trials or models of the
        # same campaign) are kept; a cell measured twice must agree.
        existing = (
            cell_log.read_cells(out_dir / cell_log.CELLS_FILE)
            if (out_dir / cell_log.CELLS_FILE).exists()
            else []
        )
        merged = {cell_log.cell_key(c): c for c in cell_log.unique_cells(existing, str(out_dir))}
        for cell in shard_records:
            earlier = merged.setdefault(cell_log.cell_key(cell), cell)
            if earlier["accuracy"] != cell["accuracy"]:
                raise ValueError(
                    f"{out_dir} already holds {cell['model']} [{cell['group']}] rate "
                    f"{cell['rate']:g} trial {cell['trial']} with accuracy {earlier['accuracy']}, "
                    f"but a shard has {cell['accuracy']}: they are not the same campaign. "
                    "Merge into another --out."
                )
        ordered = sorted(
            merged.values(), key=lambda c: (c["model"], c["group"], c["rate"], c["trial"])
        )
        cell_log.claim(out_dir, spec.as_dict())
        with io_utils.atomic_path(out_dir / cell_log.CELLS_FILE) as temporary:
            temporary.write_text(
                "".join(io_utils.strict_json(c, sort_keys=True) + "\n" for c in ordered)
            )
        return outputs.write_outputs(out_dir, ordered, meta)


def _shard_metas(shard_dirs: list[str | Path]) -> list[dict[str, Any]]:
    """The shard.json of every shard; ValueError unless they are all the shards of one
    campaign."""
    metas = []
    for directory in shard_dirs:
        path = Path(directory) / "shard.json"
        if not path.exists():
            raise FileNotFoundError(f"{directory} is not a shard output (no shard.json).")
        metas.append(io_utils.read_json(path))
    keys = {
        (m["spec_key"], json.dumps(m["models"], sort_keys=True), m["num_shards"]) for m in metas
    }
    if len(keys) != 1:
        raise ValueError(
            "Shards come from different specs, models or shard counts; merge only one campaign."
        )
    if sorted(m["shard_index"] for m in metas) != list(range(metas[0]["num_shards"])):
        raise ValueError(
            f"Expected shards 0..{metas[0]['num_shards'] - 1}, got {sorted(m['shard_index'] for m in metas)}."
        )
    return metas


def _complete_shard(directory: Path, meta: dict[str, Any], spec: FaultSpec) -> list[dict]:
    """The cells of a finished shard; ValueError for a shard that was interrupted (a torn
    last record, or fewer cells than its share of the plan): merging it would report
    fewer trials without a word."""
    path = directory / cell_log.CELLS_FILE
    content = cell_log.read_no_follow(path) if path.exists() else b""
    if content and not content.endswith(b"\n"):
        raise ValueError(
            f"Shard {directory} ends in a torn record (it was interrupted); run the shard "
            "again with the same flags to finish it, then merge."
        )
    cells = cell_log.unique_cells(
        [c for c in cell_log.read_cells(path) if outputs.belongs(c, meta)], str(directory)
    )
    planned = set(shard_cells(cell_plan(spec), meta["num_shards"], meta["shard_index"]))
    by_group: dict[tuple[str, str], set] = {}
    for cell in cells:
        by_group.setdefault((cell["model"], cell["group"]), set()).add(
            (cell["rate"], cell["trial"])
        )
    for label in meta["models"]:
        groups = {group: done for (model, group), done in by_group.items() if model == label}
        missing = {group: len(planned - done) for group, done in groups.items()}
        if planned and (not groups or any(missing.values())):
            count = sum(missing.values()) if groups else len(planned)
            raise ValueError(
                f"Shard {directory} is missing {count} of its cells of {label!r} (it was "
                "interrupted or is still running); run the shard again with the same flags "
                "to finish it, then merge."
            )
    return cells
