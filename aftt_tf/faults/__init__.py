"""Fault injection, split into *where* (`targets`), *what* (`sampling`) and *how* (`layers`).

`campaign` (the engine), `kinds`, `sampling`, `statistics` and `tflite_runner` import no
TensorFlow; `layers`, `targets` and `keras_runner` are the Keras side. Import the
submodule you need.
"""
