"""A user's own layer module, as passed with `--import=tests.own_layers`: it defines a
weight-bearing layer and registers it with aftt-tf's fault registry."""

from __future__ import annotations

import keras

import aftt_tf.campaigns


class UsersDense(keras.layers.Layer):
    """A weight-bearing layer of the user's own: `add_weight` kernel and bias."""

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.w = self.add_weight(name="w", shape=(input_shape[-1], self.units))
        self.b = self.add_weight(name="b", shape=(self.units,), initializer="zeros")

    def call(self, inputs):
        return keras.ops.matmul(inputs, self.w) + self.b

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable("aftt_tests")
class OwnDense(UsersDense):
    """Registered below with register_layer."""


@keras.saving.register_keras_serializable("aftt_tests")
class UnregisteredDense(UsersDense):
    """The same layer, never registered: reached only by weights='all_trainable'."""


aftt_tf.campaigns.register_layer(OwnDense, kernels=("w",), bias="b")
