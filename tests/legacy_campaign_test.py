"""Campaign directories written by an earlier head (tests/legacy_campaigns.py, commit
1d2ec9d) resume with zero recomputed cells, and every cell recomputed from scratch by
today's code has the same numbers: restructuring the fault model changed no key and no
value."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests import legacy_campaigns

ROOT = Path(__file__).parent / "data" / "legacy_campaigns"


def _cells(path: Path) -> list[dict]:
    cells = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(cells, key=lambda c: (c["model"], c["group"], c["rate"], c["trial"]))


@pytest.mark.parametrize(
    "name, model_file, spec",
    legacy_campaigns.CAMPAIGNS,
    ids=[c[0] for c in legacy_campaigns.CAMPAIGNS],
)
def test_a_campaign_of_the_earlier_head_resumes_and_recomputes_to_the_same_cells(
    name, model_file, spec, tmp_path
):
    legacy = ROOT / "campaigns" / name
    written = (legacy / "cells.jsonl").read_text()
    cells = _cells(legacy / "cells.jsonl")
    assert {cell["spec_key"] for cell in cells} == {legacy_campaigns.spec_of(spec).key()}
    resumed = tmp_path / "resumed"
    shutil.copytree(legacy, resumed)
    legacy_campaigns.run(ROOT, name, model_file, spec, resumed)
    assert (resumed / "cells.jsonl").read_text() == written  # No cell evaluated again.
    fresh = tmp_path / "fresh"
    legacy_campaigns.run(ROOT, name, model_file, spec, fresh)
    assert _cells(fresh / "cells.jsonl") == cells
