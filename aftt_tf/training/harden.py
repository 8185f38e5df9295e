"""`harden(model, config, train, validation)`: make the user's own classifier more fault
tolerant with any of the project's training methods, keeping its architecture and
layer names.

Methods (one implementation each, shared with the paper's networks where they exist):
  none, l1, l2   fine-tuning with `trainers.ClassifierTrainer` (l1/l2: penalty on every
                 trained kernel).
  fat            fault-aware fine-tuning: stuck-at-0 weight and node faults drawn per step
                 on every faultable layer (`ClassifierTrainer(fault_aware_kinds=...)`).
  aftt           the paper's two games on the user's network: extractor = inputs -> the
                 `split_layer`'s output (flattened), a decoder and a discriminator made
                 for its shapes, `trainers.AdversarialAutoencoder`, then fine-tuning.
  aftt_fat       aftt, then fault-aware fine-tuning.
  range          activation range restriction (Ranger, Chen et al., DSN 2021; FT-ClipAct,
                 Hoang et al., DATE 2020): every activation is clipped to the bounds it
                 takes on the training data, by `ActivationClip` layers (TFLite: MINIMUM and
                 MAXIMUM builtins); optionally fine-tuned afterwards.

BatchNormalization: fault-aware training runs with every BatchNormalization frozen (its
moving statistics and scale/offset fixed, the layer in inference mode), the way a chip
runs it: statistics learned from faulty forward passes would be wrong for the clean
network (measured: 45.9% clean accuracy against 81.1% when they were learned that way),
and batch statistics of faulty activations normalise differently at training and at
deployment. From scratch (`from_scratch`), the first half of the epochs trains without
faults (statistics learned on clean passes), the second half fault-aware with them
frozen. Other methods train BatchNormalization as Keras does.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops

from aftt_tf import methods, vocabulary
from aftt_tf.data import datasets as data
from aftt_tf.data import frontend
from aftt_tf.data import inputs as input_transforms
from aftt_tf.faults import kinds
from aftt_tf.runtimes import registry, targets
from aftt_tf.runtimes.layers import RANGE_MODES, ActivationClip
from aftt_tf.training import phases, trainers
from aftt_tf.training.config import FINETUNE_LEARNING_RATE

HARDEN_METHODS = methods.names()  # Every registered method (aftt_tf.methods).
RANGE_STATISTICS = ("max", "percentile")
PRETRAIN, FINETUNE, WARMUP = "pretrain", "finetune", "warmup"


@dataclasses.dataclass(frozen=True)
class HardenConfig:
    """How to harden a model.

    Attributes:
        method: one of HARDEN_METHODS.
        epochs: supervised epochs (fine-tuning; from scratch: all of training).
        from_scratch: re-initialise every weight first (default: start from the user's).
        learning_rate, batch_size, loss: the supervised phase (Adam; 'crossentropy' or
            'mse'); the loss reads logits or probabilities, as the model outputs.
        reg_lambda: penalty weight of l1/l2.
        fault_kinds, fault_max_rate: fault-aware training's kinds and maximum rate (each
            step draws one kind and a rate uniform in [0, fault_max_rate]).
        fault_value: the value activation_value training faults write into struck
            outputs (`ClassifierTrainer.fault_aware_value`).
        fault_clean_loss: fault-aware steps also take a fault-free pass and train on the
            mean of both losses (`ClassifierTrainer.fault_aware_clean_loss`).
        split_layer: aftt: the last layer of the feature extractor (default: the input
            of the final Dense block, see `default_split_layer`).
        pretrain_epochs: aftt: epochs of the two games.
        decoder_width: aftt: width of the generated decoder.
        prior: aftt: Game 2's prior. 'auto' fits it to the model's latent code before
            the games: a non-negative latent (after a ReLU) gets a rectified Gaussian
            max(0, z), z ~ N(0, s^2) with s = sqrt(2 E[x^2]), any other a Gaussian with
            s = sqrt(E[x^2]), so the prior has the latent's support and scale;
            'gaussian' or 'rectified_gaussian' with sigma = prior_stddev (the paper's
            networks: gaussian, 1.0).
        prior_stddev, discriminator_steps: aftt: an explicit prior's sigma, and D updates
            per batch.
        range_statistic: range: 'max' or 'percentile' of each activation on the data.
        range_mode: range: 'clip' (saturate at the bound, Ranger) or 'zero' (values
            outside the bounds become 0, FT-ClipAct).
        range_percentile: range: the percentile (e.g. 99.99) when statistic='percentile'.
        range_examples: range: training examples the bounds are read from (0: all).
        seed: initialisation, batch order and fault maps.
        weight_clip: '' (off), 'auto', 'Kstd' or a number: every kernel is held in [-b, b]
            through the supervised phases (after each step), b per layer (K standard
            deviations of its kernel at the start; 'auto': AUTO_CLIP_STDS) or the number
            for all. The
            int8 export's per-channel scales then follow the clipped weights (Stutz et
            al., MLSys 2021). Composes with every method.
    """

    method: str = "fat"
    epochs: int = 3
    from_scratch: bool = False
    learning_rate: float = FINETUNE_LEARNING_RATE
    batch_size: int = 128  # The CLI's (train_flags): Python and CLI runs are the same.
    loss: str = "crossentropy"
    reg_lambda: float = 1e-4
    fault_kinds: tuple[str, ...] = ("weight", "node")
    fault_max_rate: float = 0.5
    split_layer: str = ""
    pretrain_epochs: int = 3
    decoder_width: int = 256
    prior: str = "auto"
    prior_stddev: float = 1.0
    discriminator_steps: int = 1
    range_statistic: str = "max"
    range_mode: str = "clip"
    range_percentile: float = 99.99
    range_examples: int = 10000
    seed: int = 0
    protected: str = ""  # A protection plan: fault-aware training never faults its elements.
    # Weight clipping through training: '' off, 'auto' (per layer, AUTO_CLIP_STDS standard
    # deviations of its kernel when training starts), 'Kstd' (K of them, e.g. '2.5std') or
    # a bound for every layer ('0.1').
    weight_clip: str = ""
    # What fault-aware training faults: 'float32' weights or 'int8' codes (int8_storage,
    # straight-through): random bit error training with fault_kinds=('bit_error',).
    storage: str = "float32"
    fault_clean_loss: bool = False
    fault_value: float | None = None

    def unread_options(self) -> list[str]:
        """The options set away from their defaults that this config's method does not
        read (fault-aware training's, the games' prior), as their flags."""
        method = methods.get(self.method)
        return [
            flag
            for field, (trait, flag) in _METHOD_OPTIONS.items()
            if not getattr(method, trait) and getattr(self, field) != _DEFAULTS[field]
        ]

    def for_method(self, method: str) -> HardenConfig:
        """This config for `method`, the options it does not read at their defaults (a
        comparison shares one config among methods that read different options)."""
        config = dataclasses.replace(self, method=method)
        trait_of = methods.get(method)
        unread = {
            f: _DEFAULTS[f] for f, (t, _) in _METHOD_OPTIONS.items() if not getattr(trait_of, t)
        }
        return dataclasses.replace(config, **unread)

    def validate(self) -> None:
        """ValueError naming the first bad value (nothing is loaded yet)."""
        method = methods.get(self.method)  # ValueError naming the registered methods.
        if self.loss not in vocabulary.CLASSIFICATION_LOSSES:
            raise ValueError(f"loss must be one of {vocabulary.CLASSIFICATION_LOSSES}.")
        if self.epochs < 0 or self.pretrain_epochs < 0 or self.batch_size < 1:
            raise ValueError("epochs and pretrain_epochs must be >= 0, batch_size >= 1.")
        from aftt_tf.training.config import check_epochs

        clip_rule(self.weight_clip)  # ValueError for a bad --weight_clip.

        check_epochs("epochs", self.epochs)
        check_epochs("pretrain_epochs", self.pretrain_epochs)
        if self.epochs == 0 and method.trains:
            raise ValueError(f"--method={self.method} trains: --epochs must be >= 1.")
        if method.pretrains and self.pretrain_epochs < 1:
            raise ValueError(f"--method={self.method} needs --pretrain_epochs >= 1.")
        if self.prior not in ("auto", *trainers.PRIORS):
            raise ValueError(
                f"--prior must be auto, {' or '.join(trainers.PRIORS)}; received {self.prior!r}."
            )
        for name in ("learning_rate", "reg_lambda", "prior_stddev"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0) or (name != "reg_lambda" and not value):
                raise ValueError(f"{name} must be a finite number > 0, received {value}.")
        unread = self.unread_options()
        if unread:
            raise ValueError(
                f"{unread[0]} is not read by --method={self.method}: it is for "
                f"{_readers(unread[0])}."
            )
        if self.protected:
            from aftt_tf.faults import protection

            if any(kinds.get(name).on_outputs for name in self.fault_kinds):
                raise ValueError(
                    "--protected lists weight elements that never fault; node faults in "
                    "fault-aware training strike layer outputs, which a plan does not "
                    "cover. Pass --fault_aware_kinds=weight with --protected."
                )
            protection.load(self.protected)
        self._check_fault_aware()
        if self.range_mode not in RANGE_MODES:
            raise ValueError(f"range_mode must be one of {RANGE_MODES}, got {self.range_mode!r}.")
        if self.range_statistic not in RANGE_STATISTICS:
            raise ValueError(f"range_statistic must be one of {RANGE_STATISTICS}.")
        if not 50.0 < self.range_percentile <= 100.0:
            raise ValueError(f"range_percentile must be in (50, 100], got {self.range_percentile}.")
        if self.decoder_width < 1 or self.discriminator_steps < 1 or self.range_examples < 0:
            raise ValueError("decoder_width and discriminator_steps >= 1, range_examples >= 0.")

    def _check_fault_aware(self) -> None:
        """Fault kinds, storage and max rate of fault-aware training (`kinds.trainable`)."""
        if self.storage not in ("float32", "int8"):
            raise ValueError(f"--storage must be float32 or int8, received {self.storage!r}.")
        if not methods.get(self.method).fault_aware:
            return
        kinds.trainable(self.fault_kinds, "--fault_aware_kinds", self.storage, self.fault_max_rate)
        unbounded = [kinds.get(n) for n in self.fault_kinds if kinds.get(n).training_needs_bounds]
        if unbounded and not methods.get(self.method).restricts_range:
            raise ValueError(
                f"--fault_aware_kinds={','.join(self.fault_kinds)}: {unbounded[0].name}: "
                f"{unbounded[0].training_needs_bounds}; training against it needs each "
                "faulted output bounded first: use --method="
                f"{' or '.join(methods.names(restricts_range=True, fault_aware=True))} "
                "(activation range restriction, then fault-aware training)."
            )
        takes_value = [name for name in self.fault_kinds if kinds.get(name).takes_value]
        if any(kinds.get(name).transient for name in takes_value) and self.fault_value is None:
            raise ValueError(
                f"--fault_aware_kinds={','.join(self.fault_kinds)}: activation_value faults "
                "write a value into the struck outputs; give --fault_aware_value (e.g. 1e4, "
                "a large corrupted activation)."
            )
        if self.fault_value is not None and not any(
            kinds.get(name).transient and kinds.get(name).takes_value for name in self.fault_kinds
        ):
            raise ValueError(
                "--fault_aware_value is the value activation_value training writes; add "
                "activation_value to --fault_aware_kinds or leave it out."
            )
        if self.fault_value is not None and not math.isfinite(self.fault_value):
            raise ValueError(f"--fault_aware_value must be finite, received {self.fault_value}.")
        if not 0.0 < self.fault_max_rate < 1.0:
            raise ValueError(
                f"--fault_aware_max_rate must be in (0, 1), received {self.fault_max_rate}."
            )

    def as_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["fault_kinds"] = list(self.fault_kinds)
        if self.storage == "float32":  # Records of runs made before int8 training stay equal.
            values.pop("storage")
        if not self.weight_clip:  # Records of runs made before clipping existed stay equal.
            values.pop("weight_clip")
        if not self.fault_clean_loss:  # And those made before the clean term.
            values.pop("fault_clean_loss")
        if self.fault_value is None:  # And those made before transient training.
            values.pop("fault_value")
        if not methods.get(self.method).pretrains:  # Only the games read a prior.
            values.pop("prior")
        if self.protected:  # The plan's content too: another plan at that path is another run.
            from aftt_tf.faults import protection

            values["protected_sha256"] = protection.digest_of(self.protected)
        else:  # Records of runs made before plans existed stay equal.
            values.pop("protected")
        return values


# Options only some methods read: field -> (the method trait that reads it, its flag).
_METHOD_OPTIONS = {
    "protected": ("fault_aware", "--protected"),
    "storage": ("fault_aware", "--storage"),
    "fault_clean_loss": ("fault_aware", "--fault_aware_clean_loss"),
    "fault_value": ("fault_aware", "--fault_aware_value"),
    "prior": ("pretrains", "--prior"),
    "range_statistic": ("restricts_range", "--range_statistic"),
    "range_mode": ("restricts_range", "--range_mode"),
    "range_percentile": ("restricts_range", "--range_percentile"),
    "range_examples": ("restricts_range", "--range_examples"),
}
_DEFAULTS = {
    field.name: field.default
    for field in dataclasses.fields(HardenConfig)
    if field.name in _METHOD_OPTIONS
}


def _readers(flag: str) -> str:
    trait = next(t for t, f in _METHOD_OPTIONS.values() if f == flag)
    return "--method=" + " or ".join(methods.names(**{trait: True}))


def copy_model(model: keras.Model) -> keras.Model:
    """An independent copy with the same architecture, layer names and weights (the
    caller's model is never trained). Subclassed models go through a .keras round trip."""
    if targets.rewritable(model):
        copy = _clone(model)
        copy.set_weights(model.get_weights())
        return copy
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.keras"
        model.save(path)
        return keras.saving.load_model(path, compile=False)


def _clone(model: keras.Model, **kwargs) -> keras.Model:
    """`keras.models.clone_model` keeping the input layers' names (a Functional model's
    clone would otherwise get new ones)."""
    if isinstance(model, keras.Sequential):
        return keras.models.clone_model(model, **kwargs)
    inputs = [
        keras.Input(
            shape=tensor.shape[1:],
            dtype=tensor.dtype,
            name=tensor._keras_history[0].name,
        )
        for tensor in model.inputs
    ]
    return keras.models.clone_model(
        model, input_tensors=inputs if len(inputs) > 1 else inputs[0], **kwargs
    )


def check_model(model: keras.Model, config: HardenConfig) -> str:
    """ValueError for a model the method cannot take; returns its output kind."""
    from aftt_tf.faults.spec import check_classifier_outputs
    from aftt_tf.runtimes import keras_runner

    adapter = keras_runner.KerasModel(model)
    check_classifier_outputs(adapter.output_shapes, model.name)
    kind = frontend.training_output_kind(model, model.name)
    method = methods.get(config.method)
    if not targets.rewritable(model):
        if method.rewires:
            raise ValueError(
                f"{model.name} is a subclassed model: --method={config.method} rewires the "
                "network (clip layers, an extractor split), which needs a Sequential or "
                f"Functional model. Subclassed models take {', '.join(methods.names(rewires=False))} "
                "(weight faults, through the model's own variables)."
            )
        if method.fault_aware and _draws(config, "on_outputs"):
            raise ValueError(
                f"{model.name} is a subclassed model: node faults need its layer graph; "
                "pass --fault_aware_kinds=weight."
            )
    if method.fault_aware:
        hidden = [site for site in targets.node_sites(model) if site.in_graph]
        if _draws(config, "on_outputs") and targets.rewritable(model) and not hidden:
            raise ValueError(
                f"{model.name} has no hidden weight layer to hold node faults; pass "
                "--fault_aware_kinds=weight."
            )
        if _draws(config, "on_parameters") and not targets.sites(model):
            raise ValueError(
                f"{model.name} has no layer whose kernels weight faults reach (Dense, "
                "convolutions, recurrent, attention, registered layers): fault-aware "
                "training would train without faults. Register custom layers with "
                "aftt_tf.campaigns.register_layer (--import) or pick another method."
            )
    _check_finite_weights(model, f"{model.name} (before training)")
    if method.pretrains:
        split_models(model, config.split_layer or default_split_layer(model))
    return kind


def _draws(config: HardenConfig, family_trait: str) -> bool:
    """Whether fault-aware training draws a kind with this trait ('on_parameters',
    'on_outputs')."""
    return any(getattr(kinds.get(name), family_trait) for name in config.fault_kinds)


def _check_finite_weights(model: keras.Model, label: str) -> None:
    """ValueError naming the variables holding NaN/Inf: such a model is no classifier to
    harden, and a fused MatMul+BiasAdd+ReLU can hide the NaN in its outputs."""
    bad = [
        variable.path
        for variable in model.weights
        if np.issubdtype(np.dtype(variable.dtype), np.floating)
        and not np.all(np.isfinite(np.asarray(variable)))
    ]
    if bad:
        raise ValueError(
            f"{label}: {len(bad)} weight tensor(s) hold NaN or Inf ({', '.join(bad[:5])}"
            f"{' ...' if len(bad) > 5 else ''}). Before training: the model file is "
            "damaged or was saved after a diverged run. After: training diverged; lower "
            "--learning_rate (or --fault_aware_max_rate) and run again."
        )


def default_split_layer(model: keras.Model) -> str:
    """The layer whose output feeds the final Dense block: the last layer before the
    trailing run of Dense (and Dropout/activation) layers that ends the network."""
    layers = [
        layer
        for layer in targets.as_functional(model).layers
        if not isinstance(layer, keras.layers.InputLayer)
    ]
    tail = (keras.layers.Dense, keras.layers.Dropout, keras.layers.Activation, keras.layers.Softmax)
    index = len(layers) - 1
    while index > 0 and isinstance(layers[index], tail):
        index -= 1
    if index == len(layers) - 1 or index < 0:
        raise ValueError(
            f"{model.name} does not end in Dense layers, so there is no default extractor/"
            "head split; name the extractor's last layer with --split_layer."
        )
    return layers[index].name


def split_models(model: keras.Model, name: str) -> tuple[keras.Model, keras.Model]:
    """(extractor, head) sharing the model's layers: extractor = inputs -> `name`'s
    output; head = that output -> the model's output. ValueError when `name` does not
    exist or does not separate the graph (a branch around it)."""
    graph = model  # Sequential models built on an Input have the same graph API.
    try:
        layer = graph.get_layer(name)
    except ValueError:
        names = [layer.name for layer in graph.layers]
        raise ValueError(
            f"--split_layer {name!r} is no layer of {model.name}; its layers: {names}."
        ) from None
    extractor = keras.Model(graph.inputs, layer.output, name="extractor")
    latent = keras.Input(shape=layer.output.shape[1:], name="latent")
    x, after = latent, False
    for candidate in graph.layers:
        if candidate is layer:
            after = True
            continue
        if after and not isinstance(candidate, keras.layers.InputLayer):
            try:
                x = candidate(x)
            except Exception:  # A layer with several inputs (Add, Concatenate): not a chain.
                after = None
                break
    head = keras.Model(latent, x, name="head") if after else None
    if head is not None and not any(sub.weights for sub in head.layers):
        try:
            default = f" (default: {default_split_layer(model)!r})"
        except ValueError:
            default = ""
        raise ValueError(
            f"--split_layer {name!r} leaves no layer with weights after it in {model.name}: "
            "the latent code would be the model's own outputs (the games would reshape the "
            "predictions). Name the last layer of the feature extractor, before the "
            f"classifier head{default}."
        )
    probe = np.random.default_rng(0).uniform(size=(4, *graph.input_shape[1:])).astype("float32")
    if head is None or not np.allclose(
        np.asarray(head(extractor(probe))), np.asarray(graph(probe)), atol=1e-5, rtol=1e-4
    ):
        raise ValueError(
            f"--split_layer {name!r} does not separate {model.name}: the layers after it "
            "also read tensors from before it (a skip connection or a branch). Name a "
            "layer that every path from the input to the output goes through."
        )
    return extractor, head


def game_networks(
    extractor: keras.Model, input_shape: tuple[int, ...], width: int, image_range: float
) -> tuple[keras.Model, keras.Model, keras.Model]:
    """(flat extractor, decoder, discriminator) for the two games: the extractor's output
    flattened into the latent code; a decoder made for the latent and input shapes (Dense
    for vectors, Dense + upsampling convolutions for images) ending in the input's range;
    the discriminator of the paper's networks on the latent code."""
    from aftt_tf.training import networks

    flat = keras.layers.Flatten(name="latent_code")(extractor.output)
    flat_extractor = keras.Model(extractor.inputs, flat, name="flat_extractor")
    latent_dim = int(flat.shape[-1])
    code = keras.Input(shape=(latent_dim,), name="latent_code")
    x = keras.layers.Dense(width, activation="relu", name="decoder_dense")(code)
    if len(input_shape) == 3 and input_shape[0] % 4 == 0 and input_shape[1] % 4 == 0:
        height, breadth, channels = input_shape
        x = keras.layers.Dense(
            (height // 4) * (breadth // 4) * 32, activation="relu", name="decoder_grid"
        )(x)
        x = keras.layers.Reshape((height // 4, breadth // 4, 32), name="decoder_reshape")(x)
        for index in (1, 2):
            x = keras.layers.Conv2DTranspose(
                32, 3, strides=2, padding="same", activation="relu", name=f"decoder_up_{index}"
            )(x)
        x = keras.layers.Conv2D(channels, 3, padding="same", name="decoder_pixels")(x)
    else:
        x = keras.layers.Dense(int(np.prod(input_shape)), name="decoder_values")(x)
        x = keras.layers.Reshape(tuple(input_shape), name="decoder_reshape")(x)
    # Unit-range inputs end in a sigmoid like the paper's decoders; others are linear,
    # scaled to the inputs' range so the reconstruction loss keeps the paper's scale.
    if image_range == 1.0:
        x = keras.layers.Activation("sigmoid", name="reconstruction")(x)
    else:
        x = keras.layers.Rescaling(image_range, name="reconstruction")(x)
    decoder = keras.Model(code, x, name="decoder")
    return flat_extractor, decoder, networks.build_discriminator(latent_dim)


def _is_activation(layer) -> bool:
    activation = getattr(getattr(layer, "activation", None), "__name__", "")
    return (
        isinstance(layer, (keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU))
        or activation in ("relu", "relu6", "elu", "gelu", "silu", "swish", "leaky_relu")
        or (isinstance(layer, keras.layers.Activation) and activation not in ("linear", ""))
    )


def _node_tensors(graph: keras.Model, layer, side: str):
    """The tensors `layer` reads ('input') or makes ('output') in `graph` itself (a
    layer called in several graphs has a node in each)."""
    for nodes in graph._nodes_by_depth.values():  # No public graph walk in Keras 3.
        for node in nodes:
            if node.operation is layer:
                return node.input_tensors if side == "input" else node.output_tensors
    raise ValueError(f"Layer {layer.name!r} is not called in {graph.name!r}.")


def _nested(model: keras.Model) -> list[keras.Model]:
    return [
        layer
        for layer in model.layers
        if isinstance(layer, keras.Model) and targets.rewritable(layer)
    ]


def activation_points(model: keras.Model, top: bool = True) -> list[str]:
    """Layers whose outputs are activations to clip: ReLU-family layers and layers with
    a relu/relu6/elu/gelu/swish activation, inside nested models too (not the output)."""
    graph = targets.as_functional(model)
    outputs = {tensor._keras_history[0].name for tensor in graph.outputs}
    names = [
        layer.name
        for layer in graph.layers
        if _is_activation(layer) and not (top and layer.name in outputs)
    ]
    for sub in _nested(graph):
        names += activation_points(sub, top=False)
    if top and not names:
        raise ValueError(
            f"{model.name} has no activation layer to restrict (ReLU-family layers or "
            "layers with activation='relu', ...)."
        )
    if top and len(set(names)) != len(names):
        raise ValueError(
            f"{model.name} has activation layers of the same name in different nested "
            "models; rename them to restrict their ranges."
        )
    return names


class _Probe:
    """Reads the named activations (nested models included) of batches of inputs: one
    compiled inference pass per batch through each (nested) model's probe."""

    def __init__(self, model: keras.Model, names: set[str], reduce: bool):
        graph = targets.as_functional(model)
        self.own = [layer.name for layer in graph.layers if layer.name in names]
        self.reduce = reduce
        nested = _nested(graph)
        tensors = []
        for name in self.own:
            tensor = _node_tensors(graph, graph.get_layer(name), "output")[0]
            if reduce:  # Per-example min and max in the graph: two numbers leave it.
                axes = tuple(range(1, len(tensor.shape)))
                tensors += [ops.min(tensor, axis=axes), ops.max(tensor, axis=axes)]
            else:
                tensors.append(tensor)
        tensors += [_node_tensors(graph, sub, "input")[0] for sub in nested]
        self.model = keras.Model(graph.inputs, tensors) if tensors else None
        self.nested = [_Probe(sub, names, reduce) for sub in nested]

    def values(self, batch) -> dict[str, Any]:
        """{layer: its values} or, reducing, {layer: (min, max)} of the batch."""
        if self.model is None:
            return {}
        outputs = self.model.predict_on_batch(batch)
        outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
        width = 2 if self.reduce else 1
        result = {}
        for index, name in enumerate(self.own):
            if self.reduce:
                result[name] = (
                    float(np.min(outputs[2 * index])),
                    float(np.max(outputs[2 * index + 1])),
                )
            else:
                result[name] = outputs[index]
        rest = outputs[width * len(self.own) :]
        for probe, value in zip(self.nested, rest, strict=True):
            result.update(probe.values(value))
        return result


_PERCENTILE_SAMPLE = 1_000_000  # Values per activation kept for a percentile.


def activation_bounds(
    model: keras.Model,
    inputs: np.ndarray,
    config: HardenConfig,
    extra: tuple[str, ...] = (),
    batch_size: int = 500,
) -> dict[str, tuple[float, float]]:
    """{layer: (lower, upper)} of each activation (and of the `extra` layers' outputs) on
    `inputs` in one inference pass: the min and the max (running, nothing kept), or the
    percentile and its mirror (`range_statistic`, on a seeded sample of each one's
    values)."""
    names = list(dict.fromkeys([*activation_points(model), *extra]))
    count = config.range_examples or len(inputs)
    rng = np.random.default_rng(config.seed)
    sample = inputs[rng.permutation(len(inputs))[:count]]
    percentile = config.range_statistic == "percentile"
    probe = _Probe(model, set(names), reduce=not percentile)
    low = {n: np.inf for n in names}
    high = {n: -np.inf for n in names}
    kept: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for start in range(0, len(sample), batch_size):
        batch = probe.values(sample[start : start + batch_size])
        for name in names:
            if not percentile:
                low[name] = min(low[name], batch[name][0])
                high[name] = max(high[name], batch[name][1])
                continue
            value = np.asarray(batch[name])
            low[name] = min(low[name], float(value.min()))
            high[name] = max(high[name], float(value.max()))
            if percentile:
                share = _PERCENTILE_SAMPLE * batch_size / max(len(sample), 1) / value.size
                flat = value.reshape(-1)
                kept[name].append(flat if share >= 1 else rng.choice(flat, int(share * flat.size)))
    bounds = {}
    for name in names:
        lower, upper = low[name], high[name]
        if percentile:
            values = np.concatenate(kept[name])
            upper = float(np.percentile(values, config.range_percentile))
            lower = float(np.percentile(values, 100.0 - config.range_percentile))
        bounds[name] = (min(lower, 0.0) if low[name] >= 0 else lower, upper)
    return bounds


def _struck_points(model: keras.Model, config: HardenConfig) -> tuple[str, ...]:
    """The layers whose outputs fault-aware training strikes with a kind that needs
    bounds (activation_bit), where campaigns put it (`targets.output_point`): bounded
    too, so that every struck output is saturated before the next layer reads it (a
    linear convolution's output has no activation to bound). Empty for other kinds."""
    bounded = [
        kinds.get(name) for name in config.fault_kinds if kinds.get(name).training_needs_bounds
    ]
    if not (bounded and methods.get(config.method).fault_aware):
        return ()
    points = []
    for site in targets.node_sites(model):
        if not site.in_graph:
            continue  # Inside a composite layer: training cannot strike it either.
        *containers, leaf = site.path.split("/")
        holder = model
        for part in containers:
            holder = holder.get_layer(part)
        points.append(targets.output_point(targets.as_functional(holder), leaf, bounded[0]))
    return tuple(points)


def with_range_clips(
    model: keras.Model, bounds: dict[str, tuple[float, float]], mode: str = "clip"
) -> keras.Model:
    """The model with an ActivationClip after each bounded layer (named LAYER_range_clip),
    nested models rebuilt the same way, weights shared; a Sequential model stays
    Sequential."""

    def clip(name: str) -> ActivationClip:
        low, high = bounds[name]
        return ActivationClip(low, high, mode, name=f"{name}_range_clip")

    def clone_function(layer):
        if isinstance(layer, keras.Model) and targets.rewritable(layer):
            return with_range_clips(layer, bounds, mode)
        return layer

    if isinstance(model, keras.Sequential):
        layers: list[Any] = [keras.Input(model.input_shape[1:], dtype=model.inputs[0].dtype)]
        for layer in model.layers:
            layers.append(clone_function(layer))
            if layer.name in bounds:
                layers.append(clip(layer.name))
        return keras.Sequential(layers, name=model.name)

    def call_function(layer, *args, **kwargs):
        outputs = layer(*args, **kwargs)
        return clip(layer.name)(outputs) if layer.name in bounds else outputs

    return _clone(model, clone_function=clone_function, call_function=call_function)


def _batch_norms(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    return [
        layer
        for layer in registry.flat_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


def _reinitialise(model: keras.Model, seed: int) -> None:
    """Every weight drawn again by its layer's own initializer (`from_scratch`)."""
    keras.utils.set_random_seed(seed)
    fresh = _clone(model) if targets.rewritable(model) else None
    if fresh is None:
        raise ValueError("--from_scratch needs a Sequential or Functional model.")
    model.set_weights(fresh.get_weights())


@dataclasses.dataclass
class TrainingData:
    """Model inputs (already transformed, float32) and labels."""

    inputs: np.ndarray
    labels: np.ndarray


def harden(
    model: keras.Model,
    config: HardenConfig,
    train: TrainingData,
    validation: TrainingData | None = None,
    workdir: str | Path | None = None,
) -> tuple[keras.Model, dict[str, Any]]:
    """A hardened copy of `model` (the caller's model is untouched) and a record of what
    was done (phases, histories, bounds). With `workdir`, every phase checkpoints per
    epoch there and a re-run resumes; the same seed gives the same numbers."""
    config.validate()
    output_kind = check_model(model, config)
    if workdir is None:  # Checkpoints only for the length of the call.
        with tempfile.TemporaryDirectory(prefix="harden-") as folder:
            return _harden_in(model, config, train, validation, Path(folder), output_kind)
    return _harden_in(model, config, train, validation, Path(workdir), output_kind)


def _harden_in(model, config, train, validation, workdir: Path, output_kind: str):
    keras.utils.set_random_seed(config.seed)
    hardened = copy_model(model)
    if config.from_scratch:
        _reinitialise(hardened, config.seed)
    record: dict[str, Any] = {"method": config.method, "output_kind": output_kind, "phases": {}}
    method = methods.get(config.method)
    if method.pretrains:
        record["phases"][PRETRAIN] = _games(hardened, config, train, workdir)
    if method.restricts_range:
        struck = _struck_points(hardened, config)
        bounds = activation_bounds(hardened, train.inputs, config, struck)
        hardened = with_range_clips(hardened, bounds, config.range_mode)
        record["bounds"] = {name: list(value) for name, value in bounds.items()}
    fault_aware = method.fault_aware
    epochs = config.epochs
    if config.weight_clip:
        bounds = _clipped_kernels(hardened, config)
        fixed, stds = clip_rule(config.weight_clip)
        record["weight_clip"] = {
            "mode": "fixed" if fixed is not None else "per_layer_stds",
            "given": config.weight_clip,
            "stds": stds,
            "bounds": bounds,
        }
    if fault_aware and config.from_scratch and _batch_norms(hardened):
        warmup = max(1, epochs // 2)
        record["phases"][WARMUP] = _supervised(
            hardened, config, train, validation, workdir, output_kind, WARMUP, warmup, False
        )
        epochs -= warmup
    if epochs:
        record["phases"][FINETUNE] = _supervised(
            hardened, config, train, validation, workdir, output_kind, FINETUNE, epochs, fault_aware
        )
    _unclip(hardened)
    record["batch_normalization"] = _normalization_record(hardened, config, fault_aware)
    _check_finite_weights(hardened, f"{config.method} on {model.name}")
    return hardened, record


# 'auto' weight clipping: this many standard deviations of each kernel when training
# starts (about 0.3% of a Gaussian kernel's weights lie beyond it).
AUTO_CLIP_STDS = 3.0
_STDS_SUFFIX = "std"


def clip_rule(text: str) -> tuple[float | None, float | None]:
    """--weight_clip read as (a bound for every layer, standard deviations per layer);
    (None, None) when off. 'auto' is AUTO_CLIP_STDS standard deviations, '2.5std' is 2.5
    and '0.1' a bound of 0.1 for every kernel. ValueError for anything else."""
    if text == "":
        return None, None
    if text == "auto":
        return None, AUTO_CLIP_STDS
    stds = text.endswith(_STDS_SUFFIX)
    try:
        number = float(text.removesuffix(_STDS_SUFFIX) if stds else text)
    except ValueError:
        number = float("nan")
    if not (math.isfinite(number) and number > 0):
        raise ValueError(
            "--weight_clip must be 'auto', a positive number of standard deviations per "
            f"layer such as '2.5std', or a positive bound for every layer (e.g. 0.1), "
            f"received {text!r}."
        )
    return (None, number) if stds else (number, None)


def _clipped_kernels(model: keras.Model, config: HardenConfig) -> dict[str, float]:
    """Holds every faultable kernel of `model` in [-bound, bound] from now on (a variable
    constraint the optimizer applies after each step; the weights are clipped at once);
    returns the bounds per kernel. `_unclip` takes the constraints off."""
    bounds = {}
    fixed, stds = clip_rule(config.weight_clip)
    for site in registry.sites(model):
        for label, variable, _ in site.kernels:
            values = np.asarray(variable)
            bound = fixed if fixed is not None else stds * float(np.std(values))
            if not bound > 0:
                continue  # A constant kernel (all zeros): nothing to clip.
            variable.constraint = _Clip(bound)
            variable.assign(np.clip(values, -bound, bound))
            bounds[f"{site.path}/{label}" if label else site.path] = bound
    return bounds


def _unclip(model: keras.Model) -> None:
    for site in registry.sites(model):
        for _, variable, _ in site.kernels:
            if isinstance(variable.constraint, _Clip):
                variable.constraint = None


class _Clip:
    """Clips a variable to [-bound, bound] (a variable constraint)."""

    def __init__(self, bound: float):
        self.bound = bound

    def __call__(self, value):
        return ops.clip(value, -self.bound, self.bound)


def _normalization_record(model: keras.Model, config: HardenConfig, fault_aware: bool) -> str:
    """What happened to the model's BatchNormalization layers, as it happened."""
    if not _batch_norms(model):
        return "none in the model"
    parts = []
    if methods.get(config.method).pretrains:
        parts.append("frozen during the games (pre-training: their statistics kept)")
    if config.epochs == 0:
        parts.append("not trained by supervised epochs (--epochs=0)")
    elif fault_aware:
        parts.append("frozen during fault-aware training")
    else:
        parts.append("trained")
    return "; ".join(parts)


def _plan(config: HardenConfig):
    from aftt_tf.faults import protection

    return protection.load(config.protected) if config.protected else None


def _supervised(model, config, train, validation, workdir, output_kind, phase, epochs, faults):
    """One supervised phase (resumable per epoch in workdir/checkpoints/<phase>)."""
    frozen = [layer for layer in _batch_norms(model) if layer.trainable] if faults else []
    for layer in frozen:  # Inference mode, fixed statistics: as the chip runs it.
        layer.trainable = False
    try:
        graph = targets.as_functional(model) if targets.rewritable(model) else model
        trainer = trainers.ClassifierTrainer(
            graph,
            loss=config.loss,
            regularization=methods.get(config.method).penalty,
            reg_lambda=config.reg_lambda if methods.get(config.method).penalty != "none" else 0.0,
            fault_aware_kinds=tuple(config.fault_kinds) if faults else (),
            fault_aware_max_rate=config.fault_max_rate if faults else 0.0,
            fault_storage=config.storage,
            fault_aware_clean_loss=config.fault_clean_loss and faults,
            fault_aware_value=config.fault_value,
            seed=config.seed,
            output_kind=output_kind,
            protected=_plan(config) if faults else None,
        )
        optimizer = keras.optimizers.Adam(config.learning_rate)
        trainer.compile(optimizer=optimizer)
        state_variables = model.variables + phases.optimizer_variables(
            {"optimizer": optimizer}, {"optimizer": trainer.trainable_variables_list()}
        )
        state = phases.run_phase(
            phase,
            trainer,
            state_variables,
            lambda first, last: data.train_dataset(
                train.inputs,
                train.labels,
                config.batch_size,
                config.seed,
                first,
                last,
                transform=_IDENTITY,
            ),
            epochs,
            workdir,
            validation=data.eval_dataset(
                validation.inputs, validation.labels, 1000, transform=_IDENTITY
            )
            if validation is not None and len(validation.labels)
            else None,
        )
    finally:
        for layer in frozen:
            layer.trainable = True
    return {"epochs": state["epochs_completed"], "history": state["history"]}


# Data harden trains on are model inputs already.
_IDENTITY = input_transforms.resolve("raw")


def _games(model, config, train, workdir) -> dict[str, Any]:
    """Game 1 and Game 2 (`trainers.AdversarialAutoencoder`) on the model's extractor, with
    a prior fitted to its latent code (`choose_prior`) and its BatchNormalization layers
    frozen: the games train the extractor's weights, not the statistics the head reads."""
    split = config.split_layer or default_split_layer(model)
    extractor, _ = split_models(model, split)
    image_range = float(np.max(np.abs(train.inputs))) or 1.0
    image_range = 1.0 if image_range <= 1.0 and float(np.min(train.inputs)) >= 0 else image_range
    flat, decoder, discriminator = game_networks(
        extractor, tuple(model.input_shape[1:]), config.decoder_width, image_range
    )
    prior = choose_prior(flat, train.inputs, config)
    frozen = [layer for layer in _batch_norms(extractor) if layer.trainable]
    for layer in frozen:  # Inference mode: moving statistics stay as the head expects.
        layer.trainable = False
    try:
        autoencoder = trainers.AdversarialAutoencoder(
            flat,
            decoder,
            discriminator,
            prior_stddev=prior["stddev"],
            prior=prior["kind"],
            discriminator_steps=config.discriminator_steps,
            seed=config.seed,
            reconstruction_scale=1.0 / image_range,
        )
        rates = game_learning_rates(config)
        autoencoder.compile(
            reconstruction_optimizer=keras.optimizers.Adam(rates["reconstruction"]),
            discriminator_optimizer=keras.optimizers.Adam(rates["discriminator"]),
            adversarial_optimizer=keras.optimizers.Adam(rates["adversarial"]),
        )
        state_variables = autoencoder.variables + phases.optimizer_variables(
            autoencoder.optimizers, autoencoder.player_variables()
        )
        before = latent_moments(flat, train.inputs, prior)
        state = phases.run_phase(
            PRETRAIN,
            autoencoder,
            state_variables,
            lambda first, last: data.train_dataset(
                train.inputs, None, config.batch_size, config.seed, first, last, transform=_IDENTITY
            ),
            config.pretrain_epochs,
            workdir,
        )
    finally:
        for layer in frozen:
            layer.trainable = True
    return {
        "split_layer": split,
        "latent_dim": int(flat.output.shape[-1]),
        "epochs": state["epochs_completed"],
        "history": state["history"],
        "prior": prior,
        "learning_rates": game_learning_rates(config),
        "batch_normalization_frozen": [layer.name for layer in frozen],
        "latent_moments_before": before,
        "latent_moments_after": latent_moments(flat, train.inputs, prior),
    }


# The games' rates for a network trained from scratch (the paper's: supervised 1e-3).
_GAME_RATES = {"reconstruction": 1e-3, "discriminator": 5e-5, "adversarial": 1e-4}
_PAPER_LEARNING_RATE = 1e-3


def game_learning_rates(config: HardenConfig) -> dict[str, float]:
    """The games' Adam rates: the extractor's (reconstruction, adversarial) scaled as
    the supervised rate is scaled from the paper's 1e-3 (fine-tuning a trained model at
    1e-4 moves its extractor a tenth as far per step, in the games too); the new
    discriminator's rate as the paper's."""
    scale = config.learning_rate / _PAPER_LEARNING_RATE
    return {
        "reconstruction": _GAME_RATES["reconstruction"] * scale,
        "discriminator": _GAME_RATES["discriminator"],
        "adversarial": _GAME_RATES["adversarial"] * scale,
    }


def choose_prior(
    extractor: keras.Model, inputs: np.ndarray, config: HardenConfig, count: int = 1000
) -> dict[str, Any]:
    """Game 2's prior: {kind, stddev, why}. 'auto' reads the latent code of `count`
    training inputs: all >= 0 (a ReLU's output: no zero-mean Gaussian can match it) gives
    a rectified Gaussian, otherwise a Gaussian; sigma gives the prior the latent's second
    moment E[x^2] (a rectified N(0, s^2) has E = s^2 / 2)."""
    if config.prior != "auto":
        return {"kind": config.prior, "stddev": config.prior_stddev, "why": "--prior"}
    codes = _codes(extractor, inputs, count)
    second_moment = float(np.mean(codes**2))
    if not (math.isfinite(second_moment) and second_moment > 0):
        raise ValueError(
            f"The latent code at the split layer has mean square {second_moment} over "
            f"{len(codes)} training inputs: there is nothing for a prior to fit. Name "
            "another --split_layer, or pass --prior=gaussian --prior_stddev=S."
        )
    if float(codes.min()) >= 0:
        return {
            "kind": "rectified_gaussian",
            "stddev": math.sqrt(2 * second_moment),
            "why": f"auto: the latent is non-negative over {len(codes)} training inputs",
        }
    return {
        "kind": "gaussian",
        "stddev": math.sqrt(second_moment),
        "why": f"auto: the latent takes negative values over {len(codes)} training inputs",
    }


def _codes(extractor: keras.Model, inputs: np.ndarray, count: int) -> np.ndarray:
    codes = np.asarray(extractor.predict(inputs[:count], batch_size=500, verbose=0))
    return codes.reshape(len(codes), -1).astype(np.float64)


def latent_moments(
    extractor: keras.Model, inputs: np.ndarray, prior: dict[str, Any], count: int = 1000
) -> dict:
    """Moments of the latent code over `count` inputs and their distance to the prior:
    per dimension d with mean m_d and deviation s_d, the squared 2-Wasserstein distance
    of N(m_d, s_d^2) to a Gaussian with the prior's mean and deviation (a rectified
    N(0, sigma^2) has mean sigma / sqrt(2 pi) and variance sigma^2 (1/2 - 1/(2 pi))),
    averaged over dimensions."""
    codes = _codes(extractor, inputs, count)
    means, deviations = codes.mean(axis=0), codes.std(axis=0)
    sigma = float(prior["stddev"])
    prior_mean, prior_std = 0.0, sigma
    if prior["kind"] == "rectified_gaussian":
        prior_mean = sigma / math.sqrt(2 * math.pi)
        prior_std = sigma * math.sqrt(0.5 - 1 / (2 * math.pi))
    return {
        "mean": float(codes.mean()),
        "std": float(codes.std()),
        "minimum": float(codes.min()),
        "wasserstein2_to_prior": float(
            np.mean((means - prior_mean) ** 2 + (deviations - prior_std) ** 2)
        ),
    }
