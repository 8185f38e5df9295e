"""Every flagfile in flags/ parses into a valid config of the binary it is written for."""

from pathlib import Path

import pytest
from absl import flags
from absl.testing import flagsaver

from aftt_tf.cli import reproduce as reproduce_cli
from aftt_tf.cli import train_flags
from aftt_tf.training.config import TrainConfig

FLAGS_DIR = Path(__file__).resolve().parents[1] / "flags"
FLAGFILES = sorted(FLAGS_DIR.glob("*.flags"))
REPRODUCE_ONLY = "For aftt-reproduce only"


def _flag_names(path: Path) -> set[str]:
    return {
        line.split("=")[0].lstrip("-")
        for line in path.read_text().splitlines()
        if line.startswith("--")
    }


@pytest.mark.parametrize("path", FLAGFILES, ids=lambda p: p.name)
def test_flagfile_is_valid(path, monkeypatch):
    assert path.read_text().startswith("#"), (
        "each flagfile starts with a comment naming its command"
    )
    monkeypatch.chdir(FLAGS_DIR.parent)  # Nested --flagfile paths are relative to the repo.
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["aftt-reproduce", f"--flagfile={path}", "--out=/nonexistent"])
        train_config = train_flags.config_from_flags()
        reproduce_config = reproduce_cli.config_from_flags()
    assert reproduce_config.train == train_config
    assert train_config.architecture in path.name or path.name == "smoke.flags"
    train_fields = {field for field in TrainConfig.__dataclass_fields__} | {"flagfile"}
    if REPRODUCE_ONLY not in path.read_text():
        # aftt-train takes it too: it sets nothing but training flags.
        assert _flag_names(path) <= train_fields, _flag_names(path) - train_fields
    else:
        assert _flag_names(path) - train_fields


def test_all_paper_architectures_have_flagfiles():
    names = {path.stem for path in FLAGFILES}
    architectures = {"fmnist_mlp", "fmnist_cnn", "cifar10_conv7", "cifar10_conv3"}
    assert architectures | {"smoke", "fmnist_mlp_quick"} <= names
    assert {f"paper_{name}" for name in architectures} <= names
    for name in architectures:
        text = (FLAGS_DIR / f"paper_{name}.flags").read_text()
        assert "CPU" in text and "GPU" in text, f"paper_{name}.flags states its run times"
