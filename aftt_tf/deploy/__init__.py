"""Deployment: SavedModel and TFLite (float32, int8 PTQ, int8 QAT) exports of a classifier.

- `export_lib`: `export_classifier`, the library behind `aftt-export` (manifest with
  hashes, I/O quantization, the Keras layer -> TFLite operator map, clean accuracies).
- `qat`: quantization-aware training, the only module that imports
  tensorflow-model-optimization and tf_keras (lazily).

The .tflite files are read with `aftt_tf.runtimes.tflite_file`, which the TFLite fault runtime
shares and which needs no TensorFlow.
"""
