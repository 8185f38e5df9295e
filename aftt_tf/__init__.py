"""aftt-tf: Adversarial Fault Tolerant Training and fault campaigns for Keras 3.

Importing the package registers its serializable Keras objects (the fault layers),
so `keras.saving.load_model` can open every `.keras` file the package writes.
"""

__version__ = "0.1.0"

from aftt_tf.faults import layers as _fault_layers  # noqa: E402,F401  (registration)
