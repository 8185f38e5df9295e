import json

import keras
import pytest
from absl import app, flags
from absl.testing import flagsaver

from aftt_tf import networks
from aftt_tf.cli import faults as faults_cli
from tests.conftest import requires_fashion_mnist


@pytest.fixture
def model_path(tmp_path):
    keras.utils.set_random_seed(0)
    path = tmp_path / "run" / "classifier.keras"
    path.parent.mkdir()
    networks.build_networks("fmnist_mlp").classifier.save(path)
    return path


def _run(argv):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["aftt-faults", *argv])
    faults_cli.main(["aftt-faults"])


@requires_fashion_mnist
def test_campaign_through_the_cli(model_path, tmp_path, capsys):
    out = tmp_path / "campaign"
    with flagsaver.flagsaver():
        _run(
            [
                f"--model=a={model_path}",
                f"--model=b={model_path}",
                "--fault=node",
                "--rates=0,0.5",
                "--trials=2",
                "--test_examples=300",
                f"--out={out}",
            ]
        )
    results = json.loads((out / "results.json").read_text())
    assert set(results["summary"]) == {"a", "b"}
    # Identical models under identical (paired) faults differ by exactly 0.
    assert all(row["mean_difference"] == 0 for row in results["paired_differences"]["a - b"])
    assert "paired difference a - b" in capsys.readouterr().out
    with flagsaver.flagsaver():  # Re-running skips every finished cell.
        _run(
            [
                f"--model=a={model_path}",
                f"--model=b={model_path}",
                "--fault=node",
                "--rates=0,0.5",
                "--trials=2",
                "--test_examples=300",
                f"--out={out}",
            ]
        )
    assert '"skipped_cells": 8' in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--rates=0,1.2"], "outside [0, 1]"),
        (["--rates=0,abc"], "--rates must be numbers"),
        (["--trials=0"], "trials must be an integer >= 1"),
        (["--fault=filter"], "Filter faults need convolutions"),
        (["--layers=conv_7"], "do not exist"),
        (["--num_shards=2", "--shard_index=2"], "shard_index must be in [0, num_shards)"),
    ],
)
def test_bad_input_is_refused_before_any_work(model_path, tmp_path, argv, message):
    out = tmp_path / "campaign"
    with flagsaver.flagsaver(), pytest.raises(app.UsageError) as error:
        _run([f"--model={model_path}", f"--out={out}", *argv])
    assert message in str(error.value)
    assert not out.exists()


def test_unknown_fault_kind_lists_valid_ones():
    with (
        flagsaver.flagsaver(),
        pytest.raises(flags.IllegalFlagValueError, match="weight|filter|node"),
    ):
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["aftt-faults", "--fault=cosmic"])


def test_bad_model_files(tmp_path):
    (tmp_path / "x.keras").write_text("not a zip")
    for path, message in (
        (tmp_path / "x.keras", "could not be read"),
        (tmp_path / "none.keras", "does not exist"),
    ):
        with flagsaver.flagsaver(), pytest.raises(app.UsageError, match=message):
            _run([f"--model={path}", f"--out={tmp_path / 'c'}"])
