"""Parameter count, weight memory and forward FLOPs (paper section VI.E).

Dense layer with n inputs and k outputs: (n + 1) k parameters and 2 n k
operations per sample (Eq. 18 and the text after it). Convolution with a w x h
kernel, c input and k output channels: (c w h + 1) k parameters and
2 c w h k * (output positions) operations; the paper writes the output size for
stride 1 and no padding, we use the layer's real output size so strides and
'same' padding are counted correctly. Pooling, activations and reshapes are not
counted, as in the paper.
"""

from __future__ import annotations

import dataclasses

import keras

from aftt_tf.runtimes import registry


@dataclasses.dataclass(frozen=True)
class Complexity:
    """Cost of one network: parameters, their memory, and forward FLOPs per sample."""

    parameters: int
    weight_bytes: int
    forward_flops: int

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def layer_forward_flops(layer: keras.layers.Layer) -> int:
    """Multiply-add operations (counted as 2 FLOPs) of one sample through one layer."""
    if isinstance(layer, keras.layers.Dense):
        kernel_inputs, units = layer.kernel.shape
        return 2 * int(kernel_inputs) * int(units)
    if isinstance(layer, keras.layers.Conv2D):
        kernel_height, kernel_width, in_channels, filters = (int(d) for d in layer.kernel.shape)
        _, out_height, out_width, _ = layer.output.shape
        return (
            2
            * kernel_height
            * kernel_width
            * in_channels
            * filters
            * int(out_height)
            * int(out_width)
        )
    return 0


def model_complexity(model: keras.Model, bits_per_parameter: int = 32) -> Complexity:
    """Complexity of a built Functional model (nested models are walked)."""
    layers = registry.flat_layers(model)
    return Complexity(
        parameters=int(model.count_params()),
        weight_bytes=int(model.count_params()) * bits_per_parameter // 8,
        forward_flops=sum(layer_forward_flops(layer) for layer in layers),
    )


def aae_step_flops(
    extractor: Complexity, decoder: Complexity, discriminator: Complexity, discriminator_steps: int
) -> int:
    """FLOPs per sample of one Algorithm 1 step as `AdversarialAutoencoder` runs it.

    A backward pass costs about twice its forward pass (gradients for inputs and
    weights). Game 1: extractor + decoder forward and backward (3 E + 3 Dec). Game 2:
    one extractor forward whose code z serves the k discriminator steps and the
    extractor step (E); each discriminator step runs D forward on a fake and a real
    batch and backward for its weights (6 Dis); the extractor step runs D forward,
    back-propagates through D to z (2 Dis) and through the extractor (2 E).
    """
    e, dec, dis = extractor.forward_flops, decoder.forward_flops, discriminator.forward_flops
    return 3 * e + 3 * dec + e + discriminator_steps * 6 * dis + 2 * dis + 2 * e


def supervised_step_flops(classifier: Complexity) -> int:
    """FLOPs per sample of one supervised step: forward plus a backward of twice its cost."""
    return 3 * classifier.forward_flops
