"""aftt-tf: Adversarial Fault Tolerant Training and fault campaigns for Keras 3.

Packages from the top floor down; imports only point down the list:

- `cli/`: thin absl binaries (flags -> config -> one library call).
- `reproduce/`: the paper's comparison and the user-model comparison, and their reports.
- `deploy/`: SavedModel and TFLite (float32, int8, QAT) exports.
- `training/`: configs, networks, trainers (AFTT games, baselines), hardening, repair.
- `sensitivity/`: sensitivity scores and protection plans.
- `campaigns/`: paired, resumable fault campaigns; `evaluate` from Python.
- `runtimes/`: Keras and TFLite runtimes behind one interface.
- `faults/`: the fault model (kinds, spec, sampling, placement); no TensorFlow.
- `data/`: datasets and the model input front end.
- ground floor: `vocabulary` (shared names, no TensorFlow), `methods`, `io_utils`,
  `progress`, `checks`.

Importing the package imports neither Keras nor TensorFlow, so flag parsing and .tflite
campaigns on edge devices stay light. `aftt_tf.runtimes.layers` registers the fault layers
for `keras.saving.load_model`; every loader in the package imports it.
"""

__version__ = "0.1.0"
