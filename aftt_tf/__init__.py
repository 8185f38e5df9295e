"""aftt-tf: Adversarial Fault Tolerant Training and fault campaigns for Keras 3.

Importing the package registers its serializable Keras objects, so
`keras.saving.load_model` can open every `.keras` file the package writes.
"""

__version__ = "0.1.0"
