"""Every flagfile in flags/ parses into a valid config."""

from pathlib import Path

import pytest
from absl import flags
from absl.testing import flagsaver

from aftt_tf.cli import train as train_cli

FLAGFILES = sorted((Path(__file__).resolve().parents[1] / "flags").glob("*.flags"))


@pytest.mark.parametrize("path", FLAGFILES, ids=lambda p: p.name)
def test_flagfile_is_valid(path):
    assert path.read_text().startswith("#"), (
        "each flagfile starts with a comment naming its command"
    )
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["aftt-train", f"--flagfile={path}", "--out=/nonexistent"])
        config = train_cli.config_from_flags()
    assert config.architecture in path.name or path.name == "smoke.flags"


def test_all_paper_architectures_have_a_flagfile():
    names = {path.stem for path in FLAGFILES}
    assert {"fmnist_mlp", "fmnist_cnn", "cifar10_conv7", "cifar10_conv3", "smoke"} <= names
