"""Data: the datasets (TFDS, local files), the model input front end (resize, channels,
scaling, user transforms) and its checks. Imports no TensorFlow at import time.

- `datasets`: Fashion-MNIST and CIFAR-10 from TFDS or local files, with fingerprints.
- `frontend`: turns a dataset into what a given model takes (`DataOptions`, `load`, `resolve_source`).
- `inputs`: named and user input transforms (`--input_transform`).
"""
