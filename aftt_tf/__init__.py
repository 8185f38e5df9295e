"""aftt-tf: Adversarial Fault Tolerant Training and fault campaigns for Keras 3.

Importing the package registers its serializable Keras objects (the fault layers),
so `keras.saving.load_model` can open every `.keras` file the package writes. On an
edge device without Keras/TensorFlow the package still imports, for .tflite campaigns.
"""

__version__ = "0.1.0"

try:
    import keras as _keras  # noqa: F401
except ImportError:  # Edge device: numpy + ai-edge-litert only.
    pass
else:
    from aftt_tf.faults import layers as _fault_layers  # noqa: F401  (registration)
