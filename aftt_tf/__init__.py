"""aftt-tf: Adversarial Fault Tolerant Training and fault campaigns for Keras 3.

Four wings on a shared ground floor; imports only point down the list:

- `cli/`: thin absl binaries (flags -> config -> one library call).
- `reproduce/`: the paper's comparison as one pipeline, and its report.
- `deploy/`: SavedModel and TFLite (float32, int8, QAT) exports.
- `training/`: configs, networks, trainers (AFTT games, baselines), resumable runs.
- `faults/`: fault injection and paired, resumable campaigns (Keras and TFLite).
- ground floor: `vocabulary` (shared names, no TensorFlow), `io_utils`, `progress`,
  `data`, `tflite_file` (a .tflite reader without TensorFlow).

Importing the package imports neither Keras nor TensorFlow, so flag parsing and .tflite
campaigns on edge devices stay light. `aftt_tf.faults.layers` registers the fault layers
for `keras.saving.load_model`; every loader in the package imports it.
"""

__version__ = "0.1.0"
