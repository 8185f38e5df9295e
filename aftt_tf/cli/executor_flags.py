"""Where the work runs: flags shared by aftt-faults and aftt-reproduce (no TensorFlow, no Ray)."""

from __future__ import annotations

from absl import flags

flags.DEFINE_enum(
    "executor",
    "local",
    ["local", "ray"],
    "local: this process. ray: on Ray workers (pip install 'aftt-tf[ray]'); this process "
    "still writes every result. --num_shards/--merge are for batch schedulers (SLURM arrays).",
)
flags.DEFINE_string(
    "ray_address",
    "",
    "Ray cluster to use (host:6379, ray://host:10001, auto); empty: start a local instance.",
)
flags.DEFINE_integer("ray_workers", 0, "Ray campaign actors (0: as many as the CPUs allow).")
flags.DEFINE_string(
    "resources_per_worker", "cpu=1", "What each Ray actor or training task reserves: cpu=N,gpu=M."
)

FLAGS = flags.FLAGS


def values() -> dict[str, object]:
    """The executor fields of a CampaignConfig or ReproduceConfig."""
    return {
        "executor": FLAGS.executor,
        "ray_address": FLAGS.ray_address,
        "ray_workers": FLAGS.ray_workers,
        "resources_per_worker": FLAGS.resources_per_worker,
    }
