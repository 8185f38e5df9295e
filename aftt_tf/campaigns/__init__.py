"""Fault campaigns: the engine that measures accuracy under faults with paired
statistics, resumably, on any runtime.

- `engine`: plan, resume, shards and outputs of one campaign; `campaign_lib`: what
  aftt-faults runs (data, models, cliff rates, executor); `api`: `evaluate` from Python.
- `analysis` (summaries, paired differences, AUC, verdicts), `statistics`, `plots`,
  `console`, `cliff` (rates where a model keeps 90/50/20% of its accuracy above chance),
  `int8_stats` (per-layer int8 activation statistics), `ray_executor` (cells on Ray
  actors; Ray is imported only there).

None of them imports TensorFlow, so .tflite campaigns run with numpy and ai-edge-litert.

From Python: `evaluate(models, FaultSpec(...), (inputs, labels))`.
"""

from aftt_tf.campaigns.api import CampaignResult, evaluate
from aftt_tf.faults.spec import FaultSpec


def register_layer(layer_class, kernels=("kernel",), filter_axis=None, bias=None) -> None:
    """Makes a layer type of your own faultable (see `runtimes.registry.register_layer`);
    imports Keras only when called, so .tflite-only installs stay light."""
    from aftt_tf.runtimes import registry

    registry.register_layer(layer_class, kernels=kernels, filter_axis=filter_axis, bias=bias)


__all__ = ["CampaignResult", "FaultSpec", "evaluate", "register_layer"]
