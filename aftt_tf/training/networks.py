"""The paper's four architectures (section VI.B) as Functional sub-networks.

Every architecture is split the way AFTT needs it: a feature *extractor* (trained
first as the encoder of an adversarial autoencoder), a classifier *head*, a
*decoder* (Game 1) and a *discriminator* (Game 2). The deployable classifier is
extractor + head; decoder and discriminator exist only during training.

Choices where the paper is silent (also listed in the README):

* The last layer of every extractor is linear. Its output is the latent code that
  the discriminator compares with samples of a Gaussian prior N(0, sigma^2 I); a
  ReLU there would make the code non-negative and the prior unreachable. All other
  hidden layers use the paper's activation (ReLU, LeakyReLU 0.1 for cifar10_conv7).
* fmnist_cnn: 'valid' convolutions as in LeNet (28 -> 24 -> 12 -> 8 -> 4), so the
  latent code is 4x4x50 = 800 values.
* cifar10_conv7: 'same' padding with stride 2 in layers 2, 4 and 6
  (32 -> 16 -> 8 -> 4); latent 4x4x128 = 2048 values.
* cifar10_conv3: 'same' padding, stride 2 in all three layers (32 -> 16 -> 8 -> 4);
  latent 4x4x128 = 2048 values.
* CIFAR decoder: the latent code is reshaped back to 4x4x128; four 3x3 convolutions
  [128, 64, 32, 3], the first three each followed by bilinear x2 upsampling
  (4 -> 8 -> 16 -> 32). The paper's "four conv layers each followed by upsampling"
  would start from 2x2; with a 4x4 latent the fourth upsampling would overshoot.
* Discriminator: Dense 512-512 with LeakyReLU 0.2 and dropout 0.2, one logit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import keras
from keras import layers

from aftt_tf.vocabulary import (
    ARCHITECTURE_DATASETS,
    ARCHITECTURES,
    HEAD_LAYER_NAMES,
    input_shape_for,
)

NUM_CLASSES = 10

EXTRACTOR_NAME = "extractor"
HEAD_NAME = "head"
CLASSIFIER_NAME = "classifier"


@dataclasses.dataclass(frozen=True)
class Networks:
    """The sub-networks of one architecture, sharing weights where they overlap."""

    extractor: keras.Model
    head: keras.Model
    classifier: keras.Model
    decoder: keras.Model
    discriminator: keras.Model


def _fmnist_mlp_extractor(inputs: keras.KerasTensor) -> keras.KerasTensor:
    x = layers.Flatten(name="flatten")(inputs)
    x = layers.Dense(512, activation="relu", name="dense_1")(x)
    x = layers.Dense(1024, activation="relu", name="dense_2")(x)
    return layers.Dense(512, name="latent")(x)


def _fmnist_cnn_extractor(inputs: keras.KerasTensor) -> keras.KerasTensor:
    x = layers.Conv2D(20, 5, activation="relu", name="conv_1")(inputs)
    x = layers.MaxPooling2D(2, strides=2, name="pool_1")(x)
    x = layers.Conv2D(50, 5, name="conv_2")(x)
    x = layers.MaxPooling2D(2, strides=2, name="pool_2")(x)
    return layers.Flatten(name="latent")(x)


def _cifar10_conv7_extractor(inputs: keras.KerasTensor) -> keras.KerasTensor:
    filters = [64, 128, 256, 512, 256, 128, 128]
    strides = [1, 2, 1, 2, 1, 2, 1]
    x = inputs
    for index, (num_filters, stride) in enumerate(zip(filters, strides, strict=True), start=1):
        last = index == len(filters)
        x = layers.Conv2D(num_filters, 3, strides=stride, padding="same", name=f"conv_{index}")(x)
        if not last:
            x = layers.LeakyReLU(negative_slope=0.1, name=f"leaky_relu_{index}")(x)
    return layers.Flatten(name="latent")(x)


def _cifar10_conv3_extractor(inputs: keras.KerasTensor) -> keras.KerasTensor:
    filters = [64, 128, 128]
    x = inputs
    for index, num_filters in enumerate(filters, start=1):
        activation = None if index == len(filters) else "relu"
        x = layers.Conv2D(
            num_filters, 3, strides=2, padding="same", activation=activation, name=f"conv_{index}"
        )(x)
    return layers.Flatten(name="latent")(x)


_EXTRACTOR_BUILDERS: dict[str, Callable[[keras.KerasTensor], keras.KerasTensor]] = {
    "fmnist_mlp": _fmnist_mlp_extractor,
    "fmnist_cnn": _fmnist_cnn_extractor,
    "cifar10_conv7": _cifar10_conv7_extractor,
    "cifar10_conv3": _cifar10_conv3_extractor,
}
_HEAD_WIDTH = {"fmnist_mlp": 512, "fmnist_cnn": 512, "cifar10_conv7": 1024, "cifar10_conv3": 1024}


def _check_architecture(architecture: str) -> None:
    if architecture not in _EXTRACTOR_BUILDERS:
        raise ValueError(
            f"Unknown architecture {architecture!r}; expected one of {', '.join(ARCHITECTURES)}."
        )


def build_extractor(architecture: str, input_shape: tuple[int, int, int]) -> keras.Model:
    """Feature extractor q(x): image -> flat latent code."""
    _check_architecture(architecture)
    inputs = keras.Input(shape=input_shape, name="image")
    return keras.Model(inputs, _EXTRACTOR_BUILDERS[architecture](inputs), name=EXTRACTOR_NAME)


def build_head(architecture: str, latent_dim: int) -> keras.Model:
    """Classifier head: latent code -> class logits (softmax is applied by the loss)."""
    _check_architecture(architecture)
    inputs = keras.Input(shape=(latent_dim,), name="latent_code")
    hidden_name, logits_name = HEAD_LAYER_NAMES  # The names fault scopes know as the head.
    x = layers.Dense(_HEAD_WIDTH[architecture], activation="relu", name=hidden_name)(inputs)
    logits = layers.Dense(NUM_CLASSES, name=logits_name)(x)
    return keras.Model(inputs, logits, name=HEAD_NAME)


def build_decoder(
    architecture: str, latent_dim: int, output_shape: tuple[int, int, int]
) -> keras.Model:
    """Generative network p(x|z) of Game 1: latent code -> image in [0, 1]."""
    _check_architecture(architecture)
    inputs = keras.Input(shape=(latent_dim,), name="latent_code")
    if architecture.startswith("fmnist"):
        x = layers.Dense(512, activation="relu", name="decoder_dense_1")(inputs)
        x = layers.Dense(512, activation="relu", name="decoder_dense_2")(x)
        height, width, channels = output_shape
        x = layers.Dense(height * width * channels, activation="sigmoid", name="decoder_pixels")(x)
        outputs = layers.Reshape(output_shape, name="reconstruction")(x)
    else:
        x = layers.Reshape((4, 4, latent_dim // 16), name="decoder_reshape")(inputs)
        for index, num_filters in enumerate([128, 64, 32], start=1):
            x = layers.Conv2D(
                num_filters, 3, padding="same", activation="relu", name=f"decoder_conv_{index}"
            )(x)
            x = layers.UpSampling2D(2, interpolation="bilinear", name=f"decoder_upsample_{index}")(
                x
            )
        outputs = layers.Conv2D(
            output_shape[-1], 3, padding="same", activation="sigmoid", name="reconstruction"
        )(x)
    return keras.Model(inputs, outputs, name="decoder")


def build_discriminator(latent_dim: int, dropout_rate: float = 0.2) -> keras.Model:
    """Discriminator D of Game 2: latent code -> logit of 'drawn from the prior'."""
    inputs = keras.Input(shape=(latent_dim,), name="latent_code")
    x = inputs
    for index in (1, 2):
        x = layers.Dense(512, name=f"discriminator_dense_{index}")(x)
        x = layers.LeakyReLU(negative_slope=0.2, name=f"discriminator_leaky_relu_{index}")(x)
        x = layers.Dropout(dropout_rate, name=f"discriminator_dropout_{index}")(x)
    logit = layers.Dense(1, name="discriminator_logit")(x)
    return keras.Model(inputs, logit, name="discriminator")


def build_classifier(extractor: keras.Model, head: keras.Model) -> keras.Model:
    """Deployable classifier: image -> logits, sharing weights with extractor and head.

    The classifier is a flat Functional graph (not two nested models), so fault
    injection and export see every layer by name.
    """
    inputs = keras.Input(shape=extractor.input_shape[1:], name="image")
    x = inputs
    for layer in extractor.layers[1:] + head.layers[1:]:
        x = layer(x)
    return keras.Model(inputs, x, name=CLASSIFIER_NAME)


def build_networks(architecture: str, dataset: str | None = None) -> Networks:
    """All sub-networks of an architecture; `dataset` defaults to the paper's."""
    _check_architecture(architecture)
    dataset = dataset or ARCHITECTURE_DATASETS[architecture]
    shape = input_shape_for(dataset)
    extractor = build_extractor(architecture, shape)
    latent_dim = int(extractor.output_shape[-1])
    head = build_head(architecture, latent_dim)
    return Networks(
        extractor=extractor,
        head=head,
        classifier=build_classifier(extractor, head),
        decoder=build_decoder(architecture, latent_dim, shape),
        discriminator=build_discriminator(latent_dim),
    )
