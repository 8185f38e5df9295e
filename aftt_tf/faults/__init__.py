"""Fault injection and campaigns: *where* faults go, *what* they are, *how* they act, and
the engine that measures accuracy under them with paired statistics.

- `spec`: `FaultSpec`, the cell record, the runtime interface (`CampaignModel`).
- `selection` (where, every runtime) and `targets` (where + apply/strip, Keras);
  `sampling` (what); `layers` (how: registered Keras layers holding the masks).
- `keras_runner`, `tflite_runner` (+ `tflite_nodes`, node-fault masks written into the
  flatbuffer): the runtimes; `runtimes` picks one for a model or file.
- `campaign` (engine: plan, resume, shards, outputs), `analysis` (summaries, paired
  differences, AUC, verdict), `statistics`, `plots`; `campaign_lib` (what aftt-faults runs);
  `ray_executor` (cells on Ray actors, `--executor=ray`; Ray is imported only there).

`spec`, `selection`, `sampling`, `statistics`, `analysis`, `campaign`, `runtimes` and
`tflite_runner` import no TensorFlow, so .tflite campaigns run on devices with numpy and
ai-edge-litert only. Importing `layers` (or any Keras-side module) registers the fault
layers, so `keras.saving.load_model` can read `.keras` files that hold them.

From Python: `evaluate(models, FaultSpec(...), (inputs, labels))` (see `api`).
"""

from aftt_tf.faults.api import CampaignResult, evaluate
from aftt_tf.faults.spec import FaultSpec


def register_layer(layer_class, kernels=("kernel",), filter_axis=None, bias=None) -> None:
    """Makes a layer type of your own faultable (see `registry.register_layer`); imports
    Keras only when called, so .tflite-only installs stay light."""
    from aftt_tf.faults import registry

    registry.register_layer(layer_class, kernels=kernels, filter_axis=filter_axis, bias=bias)


__all__ = ["CampaignResult", "FaultSpec", "evaluate", "register_layer"]
