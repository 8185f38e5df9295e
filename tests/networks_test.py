import keras
import numpy as np
import pytest

from aftt_tf.training import complexity, networks


@pytest.mark.parametrize(
    "architecture, image_shape, latent_dim",
    [
        ("fmnist_mlp", (28, 28, 1), 512),
        ("fmnist_cnn", (28, 28, 1), 800),
        ("cifar10_conv7", (32, 32, 3), 2048),
        ("cifar10_conv3", (32, 32, 3), 2048),
    ],
)
def test_shapes(architecture, image_shape, latent_dim):
    nets = networks.build_networks(architecture)
    images = np.random.default_rng(0).uniform(size=(3, *image_shape)).astype("float32")
    codes = nets.extractor(images)
    assert codes.shape == (3, latent_dim)
    assert nets.head(codes).shape == (3, 10)
    assert nets.classifier(images).shape == (3, 10)
    reconstruction = np.asarray(nets.decoder(codes))
    assert reconstruction.shape == (3, *image_shape)
    assert reconstruction.min() >= 0 and reconstruction.max() <= 1
    assert nets.discriminator(codes).shape == (3, 1)
    # The classifier shares its weights with extractor and head.
    np.testing.assert_allclose(
        nets.classifier(images), nets.head(nets.extractor(images)), rtol=1e-5, atol=1e-5
    )


def test_paper_layer_sizes():
    mlp = networks.build_networks("fmnist_mlp")
    dense_units = [
        layer.units for layer in mlp.classifier.layers if isinstance(layer, keras.layers.Dense)
    ]
    assert dense_units == [512, 1024, 512, 512, 10]
    cnn = networks.build_networks("fmnist_cnn")
    convs = [layer for layer in cnn.classifier.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [(c.filters, c.kernel_size) for c in convs] == [(20, (5, 5)), (50, (5, 5))]
    conv7 = networks.build_networks("cifar10_conv7")
    assert [c.filters for c in conv7.extractor.layers if isinstance(c, keras.layers.Conv2D)] == [
        64,
        128,
        256,
        512,
        256,
        128,
        128,
    ]
    decoder_dense = [
        layer.units for layer in mlp.decoder.layers if isinstance(layer, keras.layers.Dense)
    ]
    assert decoder_dense == [512, 512, 784]
    assert set(networks.HEAD_LAYER_NAMES) <= {layer.name for layer in mlp.classifier.layers}


def test_complexity_follows_paper_formulas():
    nets = networks.build_networks("fmnist_mlp")
    cost = complexity.model_complexity(nets.classifier)
    sizes = [784, 512, 1024, 512, 512, 10]
    pairs = list(zip(sizes[:-1], sizes[1:], strict=True))
    assert cost.parameters == sum((n + 1) * k for n, k in pairs)  # Eq. 18
    assert cost.forward_flops == sum(2 * n * k for n, k in pairs)
    assert cost.weight_bytes == 4 * cost.parameters
    cnn = complexity.model_complexity(networks.build_networks("fmnist_cnn").extractor)
    # conv 20 5x5 on 28x28x1 -> 24x24, conv 50 5x5x20 on 12x12 -> 8x8.
    assert cnn.forward_flops == 2 * 25 * 1 * 24 * 24 * 20 + 2 * 25 * 20 * 8 * 8 * 50
    assert cnn.parameters == (25 + 1) * 20 + (25 * 20 + 1) * 50  # Eq. 22


def test_unknown_architecture_lists_valid_ones():
    with pytest.raises(ValueError, match="fmnist_mlp, fmnist_cnn, cifar10_conv7, cifar10_conv3"):
        networks.build_networks("resnet50")
