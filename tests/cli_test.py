import json
import subprocess
import sys
from pathlib import Path

import pytest
from absl import app, flags
from absl.testing import flagsaver

from aftt_tf.cli import train as train_cli
from aftt_tf.cli import train_flags
from tests.conftest import requires_fashion_mnist

REPO = Path(__file__).resolve().parents[1]


def _parse(argv):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["aftt-train", *argv])


@requires_fashion_mnist
def test_smoke_flagfile_runs_through_the_cli(tmp_path):
    out = tmp_path / "smoke"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "aftt_tf.cli.train",
            f"--flagfile={REPO / 'flags/smoke.flags'}",
            f"--out={out}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout[result.stdout.index("{") : result.stdout.index("}") + 1])
    metrics = json.loads((out / "metrics.json").read_text())
    assert summary["test_accuracy"] == metrics["test_accuracy"]
    assert metrics["test_accuracy"] > 0.5
    # flags.txt reproduces the run: parsing it gives the same config.
    with flagsaver.flagsaver():
        _parse([f"--flagfile={out / 'flags.txt'}", f"--out={out}"])
        assert train_flags.config_from_flags().as_dict() == json.loads(
            (out / "config.json").read_text()
        )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batch_size=0"], "batch_size must be an integer >= 1, received 0"),
        (["--finetune_epochs=-1"], "finetune_epochs must be an integer >= 0, received -1"),
        (["--pretrain_epochs=-3"], "pretrain_epochs must be an integer >= 0, received -3"),
        (
            ["--method=l2", "--reg_lambda=-1"],
            "reg_lambda values must be finite and >= 0, received -1",
        ),
        (
            ["--method=l2", "--reg_lambda_grid=1e-4,abc"],
            "reg_lambda_grid must be comma-separated numbers",
        ),
        (["--method=none", "--reg_lambda_grid=1e-4"], "reg_lambda_grid selects the penalty weight"),
        (
            ["--dataset=imagenet"],
            "Unknown dataset 'imagenet'; expected one of fashion_mnist, mnist, cifar10",
        ),
        (["--architecture=fmnist_mlp", "--dataset=cifar10"], "expects (28, 28, 1) images"),
        (["--learning_rate=0"], "learning_rate must be a finite number > 0, received 0.0"),
        (["--validation_fraction=1.5"], "validation_fraction must be in [0, 1), received 1.5"),
        (["--method=none", "--freeze_extractor"], "only methods aftt, aftt_fat pre-train one"),
        (["--weight_clip=auto"], "--weight_clip is for your own model (--model)"),
        (["--method=fat", "--fault_aware_clean_loss"], "--fault_aware_clean_loss is for your own"),
        (["--method=fat", "--storage=int8"], "--storage is for your own model"),
    ],
)
def test_bad_input_is_refused_before_any_work(argv, message, tmp_path):
    with flagsaver.flagsaver():
        _parse([*argv, f"--out={tmp_path / 'run'}"])
        with pytest.raises(app.UsageError) as error:
            train_cli.main(["aftt-train"])
    assert message in str(error.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--method=magic"],
            "value should be one of <none|l1|l2|fat|aftt|aftt_fat|range|range_fat>",
        ),
        (
            ["--architecture=vgg16"],
            "value should be one of <fmnist_mlp|fmnist_cnn|cifar10_conv7|cifar10_conv3>",
        ),
        (["--strategy=tpu"], "value should be one of <default|mirrored|multi_worker_mirrored>"),
    ],
)
def test_unknown_choices_list_valid_ones(argv, message):
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        with pytest.raises(flags.IllegalFlagValueError, match=message.replace("|", r"\|")):
            flags.FLAGS(["aftt-train", *argv])


def test_out_is_required():
    with flagsaver.flagsaver():
        _parse([])
        with pytest.raises(app.UsageError, match="--out is required"):
            train_cli.main(["aftt-train"])


def test_missing_data_is_reported_before_the_run_directory_is_written(tmp_path):
    with flagsaver.flagsaver():
        _parse(
            [
                f"--data_dir={tmp_path / 'nowhere'}",
                "--data_source=local",
                f"--out={tmp_path / 'run'}",
            ]
        )
        with pytest.raises(app.UsageError, match="Could not load dataset 'fashion_mnist'"):
            train_cli.main(["aftt-train"])
    assert not (tmp_path / "run").exists()
