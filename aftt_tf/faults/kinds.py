"""Fault vocabulary shared by the Keras and TFLite paths (no TensorFlow import)."""


class FaultTargetError(ValueError):
    """The requested fault cannot be placed on this model."""


FAULT_KINDS = ("weight", "filter", "node", "stuck_value", "bit")
SCOPES = ("all", "extractor", "head")
PARAMETER_KINDS = ("weight", "filter", "stuck_value", "bit")
# Classifier layers that belong to the head (see aftt_tf.networks); the rest is the extractor.
HEAD_LAYER_NAMES = ("head_dense", "logits")


def in_scope(name: str, scope: str) -> bool:
    """Whether a layer named `name` is in 'all', 'extractor' or 'head'."""
    if scope == "all":
        return True
    in_head = name in HEAD_LAYER_NAMES
    return in_head if scope == "head" else not in_head
