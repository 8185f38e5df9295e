"""How stored examples become model inputs, and the user's own code: the flags every
binary that reads the user's data shares (aftt-faults, aftt-export, aftt-repair, and
aftt-train/aftt-reproduce with --model), and where local and TFDS data live. Each binary
defines its own --data (test or training data).
"""

from __future__ import annotations

from absl import flags

from aftt_tf.cli import common

flags.DEFINE_string(
    "data_dir", "", "Local raw data directory (IDX .gz files or the CIFAR-10 image folder)."
)
flags.DEFINE_string("tfds_data_dir", "", "tensorflow-datasets data directory (tfds: data).")
flags.DEFINE_list("npz_keys", ["x", "y"], "Names of the inputs and labels arrays of npz: data.")
flags.DEFINE_string(
    "input_transform",
    "auto",
    "Stored data -> model input: auto (x/255 for uint8 data, floats as stored; pixels in "
    "[0, 255] stored otherwise are refused), unit (x/255), raw, symmetric (x/127.5-1), or "
    "MODULE:FUNCTION (runs your code). Recorded with every result.",
)
flags.DEFINE_float("input_scale", None, "Affine input transform x * scale + offset instead.")
flags.DEFINE_float("input_offset", None, "Offset of the affine input transform.")
flags.DEFINE_bool(
    "allow_chance_accuracy",
    False,
    "Go on even when a model is at chance level on the data before any fault.",
)
flags.DEFINE_multi_string(
    "import",
    [],
    "Module to import first: runs its code (registers custom layers and models).",
)

FLAGS = flags.FLAGS


def options(data: str):
    """The `frontend.DataOptions` of these flags and `data`."""
    from aftt_tf.data.frontend import DataOptions

    return common.from_flags(
        DataOptions,
        "data_dir tfds_data_dir npz_keys input_transform input_scale input_offset",
        data=data,
    )


def imports() -> tuple[str, ...]:
    return tuple(FLAGS["import"].value)
