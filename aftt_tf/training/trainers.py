"""Trainers: small subclassed `keras.Model`s that own sub-networks and implement one algorithm.

`AdversarialAutoencoder` runs Algorithm 1 of the paper (Game 1 and Game 2) on every
batch; `ClassifierTrainer` runs supervised fine-tuning with the paper's squared-error
loss (or cross-entropy), the L1/L2 baselines and fault-aware training. Neither is the
deployable artifact: the classifier Functional model they update is.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from aftt_tf import methods
from aftt_tf.faults import kinds
from aftt_tf.runtimes import layers as fault_layers
from aftt_tf.runtimes import registry, targets
from aftt_tf.vocabulary import CLASSIFICATION_LOSSES, REGULARIZATIONS


def _replica_scale(loss: tf.Tensor) -> tf.Tensor:
    """Divides a per-replica mean loss so that the optimizer's all-reduce SUM gives the mean."""
    return loss / tf.distribute.get_replica_context().num_replicas_in_sync


def _mean_metrics(*names: str) -> dict[str, keras.metrics.Mean]:
    return {name: keras.metrics.Mean(name=name) for name in names}


# Game 2's priors: the paper's zero-mean Gaussian, and its rectification max(0, z) for a
# latent read after a ReLU (non-negative), which a zero-mean Gaussian cannot match.
PRIORS = ("gaussian", "rectified_gaussian")


class AdversarialAutoencoder(keras.Model):
    """Unsupervised phase of AFTT (paper section V.A, Algorithm 1).

    Each `train_step` on a batch x performs, in order:

    1. Game 1: one step of the extractor q and decoder p on the reconstruction loss
       L_R = mean ||x - p(q(x))||^2 (pixel mean).
    2. Game 2, discriminator: `discriminator_steps` steps of D on the gain G_D, with
       real codes z' ~ N(0, prior_stddev^2 I) (or, `prior='rectified_gaussian'`,
       max(0, z') for a latent that is non-negative, after a ReLU) and fake codes
       z = q(x) (extractor fixed).
    3. Game 2, extractor: one step of q on L_G = -mean log D(q(x)) (D fixed).

    Each player has its own optimizer and updates only its own variables. The code
    z = q(x) of steps 2 and 3 is computed once, after step 1, under the extractor's
    tape: the extractor does not change between steps 2 and 3, so a second forward
    pass would recompute the same values.

    Args:
        extractor: Functional model image -> latent code.
        decoder: Functional model latent code -> image.
        discriminator: Functional model latent code -> one logit.
        prior_stddev: standard deviation sigma of the Gaussian prior.
        prior: 'gaussian' (the paper's) or 'rectified_gaussian' (max(0, z'): the
            distribution of a ReLU of a zero-mean Gaussian, for non-negative latents).
        discriminator_steps: k, discriminator updates per batch.
        seed: seed of the prior sampler.
        reconstruction_scale: the reconstruction error is multiplied by this before it
            is squared (1 / the inputs' range for inputs outside [0, 1]; 1 for the paper's).
    """

    def __init__(
        self,
        extractor: keras.Model,
        decoder: keras.Model,
        discriminator: keras.Model,
        prior_stddev: float = 1.0,
        discriminator_steps: int = 1,
        seed: int | None = None,
        reconstruction_scale: float = 1.0,
        prior: str = "gaussian",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if prior not in PRIORS:
            raise ValueError(f"prior must be one of {', '.join(PRIORS)}, received {prior!r}.")
        self.prior = prior
        self.reconstruction_scale = float(reconstruction_scale)
        if prior_stddev <= 0:
            raise ValueError(f"prior_stddev must be > 0, received {prior_stddev}.")
        if discriminator_steps < 1:
            raise ValueError(f"discriminator_steps must be >= 1, received {discriminator_steps}.")
        self.extractor = extractor
        self.decoder = decoder
        self.discriminator = discriminator
        self.prior_stddev = prior_stddev
        self.discriminator_steps = discriminator_steps
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.trackers = _mean_metrics(
            "reconstruction_loss",
            "discriminator_gain",
            "extractor_adversarial_loss",
            "discriminator_accuracy_real",
            "discriminator_accuracy_fake",
        )
        self.latent_dim = int(extractor.output_shape[-1])

    def compile(
        self,
        reconstruction_optimizer: keras.optimizers.Optimizer,
        discriminator_optimizer: keras.optimizers.Optimizer,
        adversarial_optimizer: keras.optimizers.Optimizer,
        **kwargs,
    ) -> None:
        """One optimizer per player: extractor+decoder (Game 1), D, extractor (Game 2)."""
        super().compile(**kwargs)
        self.reconstruction_optimizer = reconstruction_optimizer
        self.discriminator_optimizer = discriminator_optimizer
        self.adversarial_optimizer = adversarial_optimizer
        # Build optimizer state now, in the strategy scope of the caller: created lazily
        # inside a distributed train step it breaks under MirroredStrategy.
        for name, variables in self.player_variables().items():
            optimizer = self.optimizers[name]
            if not optimizer.built:
                optimizer.build(variables)

    @property
    def optimizers(self) -> dict[str, keras.optimizers.Optimizer]:
        return {
            "reconstruction_optimizer": self.reconstruction_optimizer,
            "discriminator_optimizer": self.discriminator_optimizer,
            "adversarial_optimizer": self.adversarial_optimizer,
        }

    def player_variables(self) -> dict[str, list[keras.Variable]]:
        """The variables each optimizer updates (used to build optimizers for resume)."""
        return {
            "reconstruction_optimizer": self.extractor.trainable_weights
            + self.decoder.trainable_weights,
            "discriminator_optimizer": self.discriminator.trainable_weights,
            "adversarial_optimizer": self.extractor.trainable_weights,
        }

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return list(self.trackers.values())

    def call(self, images, training=False):
        return self.decoder(self.extractor(images, training=training), training=training)

    def build(self, input_shape=None):
        # Sub-networks are Functional models and already built.
        self.built = True

    def _game_one(self, images):
        """Game 1: one step of extractor + decoder on the reconstruction error."""
        autoencoder_variables = self.extractor.trainable_weights + self.decoder.trainable_weights
        with tf.GradientTape() as tape:
            reconstruction = self.decoder(self.extractor(images, training=True), training=True)
            error = images - reconstruction
            if self.reconstruction_scale != 1.0:  # Inputs outside [0, 1]: the paper's scale.
                error = error * self.reconstruction_scale
            reconstruction_loss = ops.mean(ops.square(error))
            scaled_loss = _replica_scale(reconstruction_loss)
        gradients = tape.gradient(scaled_loss, autoencoder_variables)
        self.reconstruction_optimizer.apply(gradients, autoencoder_variables)
        return reconstruction_loss

    def train_step(self, data):
        images = data[0] if isinstance(data, tuple) else data
        batch_size = ops.shape(images)[0]

        reconstruction_loss = self._game_one(images)

        # Game 2. One forward pass of the updated extractor serves both players.
        with tf.GradientTape() as extractor_tape:
            fake_codes = self.extractor(images, training=True)
            fixed_fake_codes = ops.stop_gradient(fake_codes)
            for _ in range(self.discriminator_steps):
                real_codes = self.prior_stddev * keras.random.normal(
                    (batch_size, self.latent_dim), seed=self.seed_generator
                )
                if self.prior == "rectified_gaussian":
                    real_codes = ops.relu(real_codes)
                with tf.GradientTape() as discriminator_tape:
                    real_logits = self.discriminator(real_codes, training=True)
                    fake_logits = self.discriminator(fixed_fake_codes, training=True)
                    # G_D = -mean[log D(z') + log(1 - D(z))], from logits.
                    discriminator_gain = ops.mean(
                        keras.losses.binary_crossentropy(
                            ops.ones_like(real_logits), real_logits, from_logits=True
                        )
                    ) + ops.mean(
                        keras.losses.binary_crossentropy(
                            ops.zeros_like(fake_logits), fake_logits, from_logits=True
                        )
                    )
                    scaled_gain = _replica_scale(discriminator_gain)
                discriminator_variables = self.discriminator.trainable_weights
                gradients = discriminator_tape.gradient(scaled_gain, discriminator_variables)
                self.discriminator_optimizer.apply(gradients, discriminator_variables)
            # L_G = -mean log D(q(x)) with the discriminator just updated and held fixed.
            adversarial_logits = self.discriminator(fake_codes, training=True)
            adversarial_loss = ops.mean(
                keras.losses.binary_crossentropy(
                    ops.ones_like(adversarial_logits), adversarial_logits, from_logits=True
                )
            )
            scaled_loss = _replica_scale(adversarial_loss)
        extractor_variables = self.extractor.trainable_weights
        gradients = extractor_tape.gradient(scaled_loss, extractor_variables)
        self.adversarial_optimizer.apply(gradients, extractor_variables)

        self.trackers["reconstruction_loss"].update_state(reconstruction_loss)
        self.trackers["discriminator_gain"].update_state(discriminator_gain)
        self.trackers["extractor_adversarial_loss"].update_state(adversarial_loss)
        self.trackers["discriminator_accuracy_real"].update_state(
            ops.mean(ops.cast(real_logits > 0, "float32"))
        )
        self.trackers["discriminator_accuracy_fake"].update_state(
            ops.mean(ops.cast(fake_logits <= 0, "float32"))
        )
        return {name: tracker.result() for name, tracker in self.trackers.items()}


def weight_penalty(kernels: list[keras.Variable], regularization: str) -> tf.Tensor:
    """sum |w| (Lasso) or sum w^2 (Tikhonov) over kernels; biases are not penalised."""
    if regularization not in PENALTIES:
        raise ValueError(f"regularization must be 'l1' or 'l2', received {regularization!r}.")
    return ops.sum(ops.stack([ops.sum(PENALTIES[regularization](kernel)) for kernel in kernels]))


# The weight penalties a method's `penalty` names (aftt_tf.methods), defined here.
PENALTIES = {"l1": ops.abs, "l2": ops.square}


def classification_loss(
    labels: tf.Tensor, outputs: tf.Tensor, loss: str, output_kind: str = "logits"
) -> tf.Tensor:
    """Per-batch mean of L_C: ||softmax(logits) - onehot(y)||^2 (paper Eq. 15) or cross-entropy.

    `output_kind` says what the model returns: 'logits', or 'probabilities' (a final
    softmax), which are compared as they are (never a softmax of a softmax)."""
    probabilities = output_kind == "probabilities"
    if loss == "mse":
        one_hot = ops.one_hot(ops.cast(labels, "int32"), ops.shape(outputs)[-1])
        predicted = outputs if probabilities else ops.softmax(outputs)
        return ops.mean(ops.sum(ops.square(predicted - one_hot), axis=-1))
    if loss == "crossentropy":
        return ops.mean(
            keras.losses.sparse_categorical_crossentropy(
                labels, outputs, from_logits=not probabilities
            )
        )
    raise ValueError(
        f"classification loss must be one of {', '.join(CLASSIFICATION_LOSSES)}, received {loss!r}."
    )


def _check_classifier_options(
    loss, regularization, reg_lambda, fault_aware_kinds, fault_aware_max_rate, output_kind, storage
) -> None:
    """ValueError naming the first bad ClassifierTrainer option."""
    if output_kind not in ("logits", "probabilities"):
        raise ValueError(
            f"output_kind must be 'logits' or 'probabilities', received {output_kind!r}."
        )
    if fault_aware_kinds:
        kinds.trainable(fault_aware_kinds, storage=storage, max_rate=fault_aware_max_rate)
    if fault_aware_kinds and not 0.0 < fault_aware_max_rate < 1.0:
        raise ValueError(
            f"fault_aware_max_rate must be in (0, 1), received {fault_aware_max_rate}."
        )
    if loss not in CLASSIFICATION_LOSSES:
        raise ValueError(
            f"loss must be one of {', '.join(CLASSIFICATION_LOSSES)}, received {loss!r}."
        )
    if regularization not in REGULARIZATIONS:
        raise ValueError(
            f"regularization must be one of {', '.join(REGULARIZATIONS)}, "
            f"received {regularization!r}."
        )
    if reg_lambda < 0:
        raise ValueError(f"reg_lambda must be >= 0, received {reg_lambda}.")


class ClassifierTrainer(keras.Model):
    """Supervised fine-tuning of extractor + head, with the L1/L2 baselines.

    Total loss = L_C + reg_lambda * penalty(kernels of every trained layer). The
    penalty is added here rather than through `kernel_regularizer`, so the
    deployable classifier is the same graph for every method.

    Args:
        classifier: Functional model image -> logits.
        loss: 'mse' (paper Eq. 15) or 'crossentropy'.
        regularization: 'none', 'l1' or 'l2'.
        reg_lambda: weight of the penalty.
        frozen_layer_names: classifier layers that are not trained (the extractor,
            when fine-tuning only the head).
        fault_aware_kinds: fault-aware training (the dropout/DropConnect-style baseline
            of the fault-tolerance literature): every training step holds a fresh random
            set of stuck-at-0 faults of one of these kinds ('weight': kernel elements
            of every trained layer; 'node': outputs of the hidden Dense/Conv2D layers,
            per activation position like the campaigns' node faults). One fault map
            per step is shared by the whole batch, as a faulty chip would be, and
            nothing is rescaled (a stuck-at-0 fault is not inverted dropout).
        fault_aware_max_rate: each step draws its kind uniformly from
            `fault_aware_kinds` and its fault rate uniformly from [0, this], so the
            model sees the whole range a campaign evaluates.
        fault_aware_value: the value transient value faults write into the struck
            outputs ('activation_value': a corrupted activation, e.g. 1e4).
        fault_aware_clean_loss: each step's loss is the mean of the faulty pass's and a
            fault-free pass's (over the same stored weights: int8 codes with
            `fault_storage='int8'`), as random bit error training (RandBET, Stutz et al.
            2021) trains on clean and perturbed weights together, so clean accuracy is
            not traded away; a second forward and backward pass per step.
        seed: seed of the fault maps; step i's map depends only on (seed, i), so a
            resumed run draws the same faults as an uninterrupted one.
        output_kind: 'logits' or 'probabilities' (a final softmax): what the loss reads.
    """

    def __init__(
        self,
        classifier: keras.Model,
        loss: str = "mse",
        regularization: str = "none",
        reg_lambda: float = 0.0,
        frozen_layer_names: tuple[str, ...] = (),
        fault_aware_kinds: tuple[str, ...] = (),
        fault_aware_max_rate: float = 0.0,
        seed: int = 0,
        output_kind: str = "logits",
        protected=None,
        fault_storage: str = "float32",
        fault_aware_clean_loss: bool = False,
        fault_aware_value: float | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_classifier_options(
            loss,
            regularization,
            reg_lambda,
            fault_aware_kinds,
            fault_aware_max_rate,
            output_kind,
            fault_storage,
        )
        self.output_kind = output_kind
        self.classifier = classifier
        self.classification_loss_name = loss
        self.regularization = regularization
        self.reg_lambda = reg_lambda
        frozen = set(frozen_layer_names)
        self.trained_layers = [layer for layer in classifier.layers if layer.name not in frozen]
        self.trackers = _mean_metrics("loss", "classification_loss", "penalty")
        self.accuracy_tracker = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self.fault_aware_kinds = tuple(fault_aware_kinds)
        self.fault_aware_max_rate = float(fault_aware_max_rate)
        self.fault_seed = int(seed)
        self.fault_storage = fault_storage
        self.fault_aware_clean_loss = bool(fault_aware_clean_loss)
        self._set_up_faults(protected, fault_aware_value)

    def _set_up_faults(self, protected, value: float | None) -> None:
        """The kernels, node masks and transient layers fault-aware steps fault."""
        self.fault_kernels = []
        self.fault_axes: list[int | None] = []  # Each kernel's filter axis.
        self.protected_masks: list = []
        self.node_view = None
        self.node_masks = []
        self.transient_faults: list[_TransientTrainingFault] = []
        self._drawn_kinds = [kinds.get(name) for name in self.fault_aware_kinds]
        transient = [kind for kind in self._drawn_kinds if kind.transient]
        if any(kind.takes_value for kind in transient) and value is None:
            raise ValueError(
                "Fault-aware training against activation_value writes a value into the "
                "struck outputs: give fault_aware_value (--fault_aware_value, e.g. 1e4)."
            )
        if self.fault_aware_clean_loss and not self.fault_aware_kinds:
            raise ValueError(
                "fault_aware_clean_loss adds a fault-free pass to fault-aware steps; give "
                "fault_aware_kinds too."
            )
        if any(kind.on_parameters for kind in self._drawn_kinds):
            self._collect_fault_kernels(protected)
        if any(kind.on_outputs for kind in self._drawn_kinds):
            node = next(
                (kind for kind in self._drawn_kinds if kind.on_outputs and not kind.transient),
                None,
            )
            self.node_view, self.node_masks, self.transient_faults = _with_output_faults(
                self.classifier, node, transient, value
            )
        if self.fault_aware_kinds:
            _check_frozen_normalization(self.classifier)

    def _collect_fault_kernels(self, protected) -> None:
        """Every trained layer of a registered type, inside nested models too, in model
        order (the paper's flat networks: their weight layers, as before)."""
        entries = [
            (site.path, label, variable, axis)
            for layer in self.trained_layers
            for site in registry.sites_in(layer)
            for label, variable, axis in site.kernels
        ]
        self.fault_kernels = [variable for _, _, variable, _ in entries]
        self.fault_axes = [axis for _, _, _, axis in entries]
        self.protected_masks = _protected_masks([entry[:3] for entry in entries], protected)

    def trainable_variables_list(self) -> list[keras.Variable]:
        return [weight for layer in self.trained_layers for weight in layer.trainable_weights]

    def kernels(self) -> list[keras.Variable]:
        """The kernels the penalty reads: every trained layer's, nested models and
        composite layers (attention projections) included."""
        return [
            variable
            for layer in self.trained_layers
            for site in registry.sites_in(layer)
            for _, variable, _ in site.kernels
        ]

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return list(self.trackers.values()) + [self.accuracy_tracker]

    def call(self, images, training=False):
        return self.classifier(images, training=training)

    def build(self, input_shape=None):
        self.built = True

    def penalty(self) -> tf.Tensor:
        if self.regularization == "none" or self.reg_lambda == 0:
            return ops.convert_to_tensor(0.0)
        return self.reg_lambda * weight_penalty(self.kernels(), self.regularization)

    def total_loss(self, labels, logits) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """(total, classification, penalty) for a batch; exposed for tests."""
        data_loss = classification_loss(
            labels, logits, self.classification_loss_name, self.output_kind
        )
        penalty = self.penalty()
        return data_loss + penalty, data_loss, penalty

    def fault_mapping(self, step: tf.Tensor) -> list[tuple[keras.Variable, tf.Tensor]]:
        """(variable, value) pairs that put step `step`'s stuck-at-0 faults in place.

        Random numbers are stateless functions of (seed, step, tensor index): no
        random state to checkpoint, and every replica of a distributed step draws the
        same fault map. Kernel values are computed from the variables, so the
        gradient reaches the fault-free elements (and is 0 at the faulted ones).
        """
        step_seed = tf.stack([tf.constant(self.fault_seed, tf.int64), tf.cast(step, tf.int64)])
        draws = tf.random.stateless_uniform(
            [2], seed=tf.random.experimental.stateless_fold_in(step_seed, 0)
        )
        rate = draws[0] * self.fault_aware_max_rate
        kind_index = tf.minimum(
            tf.cast(draws[1] * len(self.fault_aware_kinds), tf.int32),
            len(self.fault_aware_kinds) - 1,
        )
        guards = list(self.protected_masks) or [None] * len(self.fault_kernels)
        steps = [
            kinds.TrainingStep(axis, guard, self.fault_storage)
            for axis, guard in zip(self.fault_axes, guards, strict=True)
        ] + [kinds.TrainingStep(output=True) for _ in self.node_masks]
        mapping = []
        for index, (variable, step_of) in enumerate(
            zip([*self.fault_kernels, *self.node_masks], steps, strict=True), start=1
        ):
            seed = tf.random.experimental.stateless_fold_in(step_seed, index)
            # Fault-free: the kernel as stored (int8: quantised), a node mask of ones.
            value = tf.ones_like(variable) if step_of.output else step_of.stored(variable)
            for position, kind in enumerate(self._drawn_kinds):
                if kind.on_outputs != step_of.output or kind.transient:
                    continue
                # Kernel faults are large: drawn only in the steps that draw their kind.
                value = tf.cond(
                    kind_index == position,
                    lambda v=variable, k=kind, s=seed, t=step_of: k.training_faults(v, rate, s, t),
                    lambda value=value: tf.identity(value),
                )
            mapping.append((variable, value))
        for index, layer in enumerate(self.transient_faults, start=len(mapping) + 1):
            drawn = kind_index == self._drawn_kinds.index(layer.kind)
            mapping.append((layer.rate, tf.where(drawn, rate, 0.0)))
            mapping.append((layer.seed, tf.random.experimental.stateless_fold_in(step_seed, index)))
        return mapping

    def clean_mapping(self) -> list[tuple[keras.Variable, tf.Tensor]]:
        """(variable, value) pairs of a fault-free pass over the same stored weights: the
        kernels as stored (int8: quantised, straight-through), node masks of ones."""
        mapping = [
            (variable, kinds.TrainingStep(axis, None, self.fault_storage).stored(variable))
            for variable, axis in zip(self.fault_kernels, self.fault_axes, strict=True)
        ]
        mapping += [(layer.rate, tf.zeros_like(layer.rate)) for layer in self.transient_faults]
        return mapping + [(mask, tf.ones_like(mask)) for mask in self.node_masks]

    def train_step(self, data):
        images, labels = data
        variables = self.trainable_variables_list()
        with tf.GradientTape() as tape:
            if self.fault_aware_kinds:
                mapping = self.fault_mapping(self.optimizer.iterations)
                model = self.node_view or self.classifier
                with keras.StatelessScope(state_mapping=mapping):
                    logits = model(images, training=True)
            else:
                logits = self.classifier(images, training=True)
            loss, data_loss, penalty = self.total_loss(labels, logits)
            if self.fault_aware_clean_loss:
                with keras.StatelessScope(state_mapping=self.clean_mapping()):
                    clean_logits = model(images, training=True)
                clean_loss = classification_loss(
                    labels, clean_logits, self.classification_loss_name, self.output_kind
                )
                data_loss = 0.5 * (data_loss + clean_loss)
                loss = data_loss + penalty
            scaled_loss = _replica_scale(loss)
        gradients = tape.gradient(scaled_loss, variables)
        self.optimizer.apply(gradients, variables)
        self.trackers["loss"].update_state(loss)
        self.trackers["classification_loss"].update_state(data_loss)
        self.trackers["penalty"].update_state(penalty)
        self.accuracy_tracker.update_state(labels, logits)
        return {metric.name: metric.result() for metric in self.metrics}

    def test_step(self, data):
        images, labels = data
        logits = self.classifier(images, training=False)
        loss, data_loss, penalty = self.total_loss(labels, logits)
        self.trackers["loss"].update_state(loss)
        self.trackers["classification_loss"].update_state(data_loss)
        self.trackers["penalty"].update_state(penalty)
        self.accuracy_tracker.update_state(labels, logits)
        return {metric.name: metric.result() for metric in self.metrics}


def _protected_masks(entries, protected) -> list:
    """Per fault kernel: None, or a constant 1/0 mask of the elements a protection plan
    (`faults.protection.ProtectionPlan`) covers, which fault-aware training never faults."""
    if protected is None:
        return [None] * len(entries)
    from aftt_tf.faults import protection

    protection.check_plan_fits(
        protected,
        {(path, label): int(np.prod(v.shape)) for path, label, v in entries},
        "the trained layers",
    )
    masks = []
    for path, label, variable in entries:
        indices = protected.indices(path, label)
        if indices is None:
            masks.append(None)
            continue
        mask = np.zeros(int(np.prod(variable.shape)), np.float32)
        mask[indices] = 1.0
        masks.append(tf.constant(mask.reshape(variable.shape), variable.dtype))
    return masks


def _check_frozen_normalization(classifier: keras.Model) -> None:
    """Fault-aware steps run under a StatelessScope, where a BatchNormalization's moving
    statistics would be computed from faulty passes and then silently dropped: refuse,
    naming the remedy (freeze them; `harden` does)."""
    trainable = [
        layer.name
        for layer in registry.flat_layers(classifier)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]
    if trainable:
        raise ValueError(
            f"Fault-aware training with trainable BatchNormalization layers {trainable}: their "
            "statistics would come from faulty passes. Freeze them (layer.trainable = False) "
            "or use aftt_tf.training.harden, which does."
        )


class _TransientTrainingFault(keras.layers.Layer):
    """Training only (never saved): a layer's outputs with a transient kind's faults,
    each inference (row) drawn anew through the kind (`FaultKind.training_outputs`); the
    trainer maps `rate` (0 in steps that draw another kind) and `seed` every step."""

    def __init__(self, kind: kinds.FaultKind, value: float | None, **kwargs):
        super().__init__(**kwargs)
        self.kind = kind
        self.value = 0.0 if value is None else float(value)

    def build(self, input_shape):
        self.rate = self.add_weight(name="rate", shape=(), initializer="zeros", trainable=False)
        self.seed = self.add_weight(
            name="seed", shape=(2,), initializer="zeros", dtype="int64", trainable=False
        )

    def call(self, inputs):
        # Steps that draw another kind (rate 0) skip the kind's random draws altogether.
        return ops.cond(
            self.rate > 0,
            lambda: self.kind.training_outputs(inputs, self.rate, self.seed, self.value),
            lambda: inputs,
        )


def _with_output_faults(
    classifier: keras.Model,
    node: kinds.FaultKind | None,
    transient: list[kinds.FaultKind],
    value: float | None,
) -> tuple[keras.Model, list[keras.Variable], list[_TransientTrainingFault]]:
    """A view of `classifier` that shares its layers (and weights) and faults the output
    of every hidden weight layer for fault-aware training: a node mask (stuck-at-0 node
    faults) when `node` (the stuck-at-0 output kind drawn) is given, and a `_TransientTrainingFault` per `transient` kind; layers of
    nested Sequential/Functional models (a backbone) included, as campaigns fault them.

    Each fault sits where campaigns put that kind (`targets.output_point`): after the
    layer, or after the BatchNormalization (and Rescaling) that alone reads it, since
    converters fold them in; transient faults also past a ReLU that alone reads that
    (converters fuse it). A Sequential model is viewed as a Functional one. A kind that
    needs bounds (`FaultKind.training_needs_bounds`) is refused unless the output it
    strikes is bounded next (the ActivationClip of range restriction reads it)."""
    hidden = [site.path for site in targets.node_sites(classifier) if site.in_graph]
    masks: list[keras.Variable] = []
    layers: list[_TransientTrainingFault] = []
    needs_bounds = [kind for kind in transient if kind.training_needs_bounds]
    unbounded: list[str] = []

    def fault_nodes(outputs, target: str, name: str, bounded: bool):
        node_fault = fault_layers.NodeFault(target=target, name=f"{name}_training_fault")
        outputs = node_fault(outputs)  # Builds the mask.
        masks.append(node_fault.node_keep)
        return outputs

    def fault_transient(outputs, target: str, name: str, bounded: bool):
        if needs_bounds and not bounded:
            unbounded.append(target)
        for kind in transient:
            layer = _TransientTrainingFault(kind, value, name=f"{name}_training_{kind.name}")
            outputs = layer(outputs)
            layers.append(layer)
        return outputs

    # Where each family's faults sit (one transient kind stands for all: they share it).
    faults = {}
    if node is not None:
        faults[node] = fault_nodes
    if transient:
        faults[transient[0]] = fault_transient
    view = _masked_view(classifier, "", hidden, faults)
    if unbounded:
        raise ValueError(
            f"Fault-aware training against {needs_bounds[0].name}: the outputs of "
            f"{unbounded[:5]} reach the next layer unbounded ({needs_bounds[0].name}: "
            f"{needs_bounds[0].training_needs_bounds}). Bound each struck output right "
            "after it: aftt_tf.training.harden with "
            f"method={' or '.join(methods.names(restricts_range=True, fault_aware=True))} "
            "puts an ActivationClip there (trainer.classifier must be that bounded model)."
        )
    return view, masks, layers


def _masked_view(model: keras.Model, prefix: str, hidden: list[str], faults: dict) -> keras.Model:
    """`model` rebuilt with `faults[kind](outputs, target, name, bounded)` applied at each
    hidden layer's output point for that kind (`targets.output_point`); `bounded`: the
    ActivationClip of range restriction reads that output next."""
    graph = targets.as_functional(model)
    local = [path[len(prefix) :] for path in hidden if path.startswith(prefix)]
    own = {path for path in local if "/" not in path}
    nested = {
        layer.name
        for layer in graph.layers
        if isinstance(layer, keras.Model)
        and targets.rewritable(layer)
        and any(path.startswith(f"{layer.name}/") for path in local)
    }
    points = {
        kind: {targets.output_point(graph, name, kind): name for name in own} for kind in faults
    }
    # Outputs that only an ActivationClip reads (range restriction's bound, right after).
    bounded = {
        point
        for kind_points in points.values()
        for point in kind_points
        if (read_by := targets.readers(graph, point))
        and all(isinstance(reader, fault_layers.ActivationClip) for reader in read_by)
    }

    def clone_function(layer):
        if layer.name in nested:
            return _masked_view(layer, f"{prefix}{layer.name}/", hidden, faults)
        return layer

    def call_function(layer, *args, **kwargs):
        outputs = layer(*args, **kwargs)
        for kind, fault in faults.items():
            if layer.name in points[kind]:
                name = points[kind][layer.name]
                outputs = fault(outputs, f"{prefix}{name}", name, layer.name in bounded)
        return outputs

    return keras.models.clone_model(
        graph, clone_function=clone_function, call_function=call_function
    )
