"""The fault model: what a fault is, where it may go and how positions are drawn. It
imports no TensorFlow and knows no runtime, so every runtime and trainer shares it.

- `spec`: `FaultSpec`, the cell record, the runtime interface (`CampaignModel`).
- `kinds`: every fault kind as a registered object (its traits, checks and how it changes
  stored values); `selection` (which layers and tensors), `sampling` (which positions),
  `placement` (counts and positions per tensor), `systolic` (array-shaped faults),
  `transient` (per-inference positions), `fault_map` (measured chip maps), `protection`
  (protection plans), `int8_storage` (the converter's int8 codes of a float weight).

Campaigns are in `aftt_tf.campaigns` (`evaluate`), runtimes in `aftt_tf.runtimes`.
"""

from aftt_tf.faults.spec import FaultSpec

_MOVED = {
    "evaluate": "aftt_tf.campaigns",
    "CampaignResult": "aftt_tf.campaigns",
    "register_layer": "aftt_tf.campaigns",
}


def __getattr__(name: str):
    if name in _MOVED:
        raise AttributeError(
            f"aftt_tf.faults.{name} moved to {_MOVED[name]}: "
            f"write `from {_MOVED[name]} import {name}`."
        )
    raise AttributeError(f"module 'aftt_tf.faults' has no attribute {name!r}")


__all__ = ["FaultSpec"]
