"""Where to spend protection: sensitivity scores without campaigns, checked against them,
and protection plans verified by paired campaigns.

Scores (per weight element of every faultable kernel, from a sample of the data):
- `gradient`: |g_i * w_i|, the first-order Taylor estimate of the loss change when w_i
  is stuck at 0 (FKeras' gradient score);
- `hessian`: 1/2 |h_ii| w_i^2, with the Hessian diagonal h estimated by Hutchinson's
  method (E[z * Hz], Rademacher z; Hessian-vector products by double backprop), or
  exactly for small models;
- `taylor`: their sum, a second-order bound on the loss change (the default ranking);
- `magnitude`: |w_i| (no data; the naive baseline).
Layers are ranked by the sum of their elements' scores (the loss change expected per
unit fault rate), channels (filters) by the sum over each filter, and bit positions by
the same second-order estimate with the value change a flip of that bit makes (float32
bits of the Keras weights; int8 bits of per-channel symmetric quantization, the
converter's weight scheme).

Plans protect the highest-scoring elements within a budget (a share of the weights);
`verify` runs paired campaigns without protection, with the plan and with random
protection of the same size (the same faults drawn in all three; `protection`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from aftt_tf.campaigns import statistics
from aftt_tf.faults import protection
from aftt_tf.faults.spec import FaultSpec
from aftt_tf.runtimes import keras_runner, registry

SCORES = ("taylor", "gradient", "hessian", "magnitude")
# Per-layer predictors compared with per-layer campaigns.
LAYER_SCORES = ("expected", *SCORES, *(f"{name}_mean" for name in SCORES))


@dataclasses.dataclass
class KernelScores:
    """Per-element quantities of one kernel (Keras layout)."""

    layer: str
    attribute: str
    weights: np.ndarray
    gradient: np.ndarray
    hessian_diagonal: np.ndarray
    filter_axis: int | None
    curvature: float = 0.0  # w^T H w over the layer's kernels (filled per layer).

    def score(self, name: str) -> np.ndarray:
        if name == "gradient":
            return np.abs(self.gradient * self.weights)
        if name == "hessian":
            return 0.5 * np.abs(self.hessian_diagonal) * self.weights**2
        if name == "taylor":
            return self.score("gradient") + self.score("hessian")
        if name == "magnitude":
            return np.abs(self.weights)
        raise ValueError(f"Unknown score {name!r}; expected one of {', '.join(SCORES)}.")

    def change_score(self, delta: np.ndarray) -> np.ndarray:
        """Second-order bound on the loss change of changing each element by `delta`."""
        with np.errstate(over="ignore", invalid="ignore"):
            value = np.abs(self.gradient * delta) + 0.5 * np.abs(self.hessian_diagonal) * delta**2
        return np.where(np.isfinite(value), value, np.inf)


def _loss_function(model: keras.Model, output_kind: str):
    def loss(inputs, labels):
        outputs = model(inputs, training=False)
        return tf.reduce_mean(
            keras.losses.sparse_categorical_crossentropy(
                labels, outputs, from_logits=output_kind == "logits"
            )
        )

    return loss


class _Derivatives:
    """Gradient and Hessian-vector products of the mean loss over the examples, computed
    chunk by chunk (memory of one chunk's activations, whatever the number of examples)
    and summed with each chunk's share: means add up exactly. Compiled once per chunk
    shape."""

    def __init__(self, model, variables, inputs, labels, output_kind: str, batch_size: int):
        self.variables = variables
        loss = _loss_function(model, output_kind)
        labels = np.asarray(labels).astype(np.int64)
        count = len(inputs)
        self.chunks = [
            (
                tf.constant(inputs[start : start + batch_size]),
                tf.constant(labels[start : start + batch_size]),
                min(batch_size, count - start) / count,
            )
            for start in range(0, count, batch_size)
        ]

        @tf.function(reduce_retracing=True)
        def gradients(x, y):
            with tf.GradientTape() as tape:
                value = loss(x, y)
            return tape.gradient(value, variables)

        @tf.function(reduce_retracing=True)
        def hessian_vector(x, y, vectors):
            with tf.GradientTape() as outer:
                with tf.GradientTape() as inner:
                    value = loss(x, y)
                grads = inner.gradient(value, variables)
                product = tf.add_n(
                    [tf.reduce_sum(g * v) for g, v in zip(grads, vectors, strict=True)]
                )
            return outer.gradient(product, variables)

        self._gradients, self._hessian_vector = gradients, hessian_vector

    def _summed(self, function, *extra) -> list[np.ndarray]:
        total = [np.zeros(v.shape, np.float64) for v in self.variables]
        for x, y, share in self.chunks:
            for index, value in enumerate(function(x, y, *extra)):
                total[index] += share * np.asarray(value, np.float64)
        return total

    def gradients(self) -> list[np.ndarray]:
        return self._summed(self._gradients)

    def hessian_vector(self, vectors: list[np.ndarray]) -> list[np.ndarray]:
        return self._summed(self._hessian_vector, [tf.constant(v, tf.float32) for v in vectors])

    def exact_diagonal(self) -> list[np.ndarray]:
        """One Hessian-vector product per weight: small models (tests) only."""
        total = sum(int(np.prod(v.shape)) for v in self.variables)
        if total > 5000:
            raise ValueError(
                f"exact_hessian needs one Hessian-vector product per weight ({total}); use "
                "Hutchinson's estimate (hutchinson_samples) for models this size."
            )
        diagonal = [np.zeros(v.shape, np.float64) for v in self.variables]
        for index, variable in enumerate(self.variables):
            for position in range(int(np.prod(variable.shape))):
                basis = [np.zeros(v.shape, np.float32) for v in self.variables]
                basis[index].reshape(-1)[position] = 1.0
                column = self.hessian_vector(basis)[index]
                diagonal[index].reshape(-1)[position] = column.reshape(-1)[position]
        return diagonal

    def hutchinson_diagonal(self, samples: int, seed: int) -> list[np.ndarray]:
        """E[z * Hz] over Rademacher probes z: an unbiased estimate of the diagonal."""
        rng = np.random.default_rng(seed)
        diagonal = [np.zeros(v.shape, np.float64) for v in self.variables]
        for _ in range(samples):
            probes = [rng.choice([-1.0, 1.0], size=v.shape) for v in self.variables]
            for index, (probe, product) in enumerate(
                zip(probes, self.hessian_vector(probes), strict=True)
            ):
                diagonal[index] += probe * product
        return [d / max(1, samples) for d in diagonal]

    def curvature(self, chosen: list[bool]) -> float:
        """w^T H w over the chosen variables (the others held at 0 in the vector)."""
        vectors = [
            np.asarray(v.numpy(), np.float64) if use else np.zeros(v.shape)
            for v, use in zip(self.variables, chosen, strict=True)
        ]
        products = self.hessian_vector(vectors)
        return float(sum(np.sum(v * p) for v, p in zip(vectors, products, strict=True)))


def kernel_scores(
    model: keras.Model,
    inputs: np.ndarray,
    labels: np.ndarray,
    output_kind: str = "logits",
    hutchinson_samples: int = 16,
    exact_hessian: bool = False,
    seed: int = 0,
    weights: str = "registered",
    batch_size: int = 256,
) -> list[KernelScores]:
    """Gradient and Hessian diagonal of the mean loss over (`inputs`, `labels`) for every
    faultable kernel, in model order, and each layer's w^T H w (the correlated part of
    the loss change when a share of its weights is zeroed at once; one product a layer).
    The examples are read `batch_size` at a time (the result does not depend on it)."""
    if len(inputs) == 0:
        raise ValueError("Sensitivity needs at least one example.")
    entries = [
        (site.path, label, variable, axis)
        for site in registry.sites(model, weights)
        for label, variable, axis in site.kernels
    ]
    if not entries:
        raise ValueError(
            f"{model.name!r} has no faultable kernel to score (see the campaign coverage for "
            "why; a layer of your own: register_layer or weights='all_trainable')."
        )
    variables = [variable for _, _, variable, _ in entries]
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, received {batch_size}.")
    derivatives = _Derivatives(model, variables, inputs, labels, output_kind, batch_size)
    gradients = derivatives.gradients()
    if exact_hessian:
        diagonal = derivatives.exact_diagonal()
    else:
        diagonal = derivatives.hutchinson_diagonal(hutchinson_samples, seed)
    curvatures = {
        path: derivatives.curvature([entry[0] == path for entry in entries])
        for path in dict.fromkeys(entry[0] for entry in entries)
    }
    return [
        KernelScores(
            path,
            label,
            np.asarray(variable.numpy(), np.float64),
            gradient,
            hessian,
            axis,
            curvatures[path],
        )
        for (path, label, variable, axis), gradient, hessian in zip(
            entries, gradients, diagonal, strict=True
        )
    ]


def expected_loss_change(kernels: list[KernelScores], rate: float) -> float:
    """Second-order estimate of the mean loss change when each element of these kernels
    is stuck at 0 independently with probability `rate`:
    -r g.w + 1/2 (r^2 w^T H w + r (1 - r) sum_i h_ii w_i^2)."""
    first = -rate * sum(float(np.sum(k.gradient * k.weights)) for k in kernels)
    diagonal = sum(float(np.sum(k.hessian_diagonal * k.weights**2)) for k in kernels)
    curvature = kernels[0].curvature if kernels else 0.0
    return first + 0.5 * (rate**2 * curvature + rate * (1 - rate) * diagonal)


def layer_table(
    scores: list[KernelScores], rate: float = 0.3, score: str = "expected"
) -> list[dict[str, Any]]:
    """Layers ranked (highest first) by `score`: 'expected', the second-order estimate
    of the loss change at fault rate `rate` (`expected_loss_change`), or the sum of an
    element score over the layer's kernels ('taylor', 'gradient', 'hessian',
    'magnitude'; each also reported per element as '<name>_mean')."""
    totals: dict[str, dict[str, Any]] = {}
    for kernel in scores:
        row = totals.setdefault(kernel.layer, {"layer": kernel.layer, "elements": 0})
        for name in SCORES:
            row[name] = row.get(name, 0.0) + float(np.sum(kernel.score(name)))
        row["elements"] += int(kernel.weights.size)
    for layer, row in totals.items():
        row["expected"] = expected_loss_change([k for k in scores if k.layer == layer], rate)
        row["rate"] = rate
        for name in SCORES:
            row[f"{name}_mean"] = row[name] / max(1, row["elements"])
    rows = sorted(totals.values(), key=lambda row: -row[score])
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return rows


def channel_table(scores: list[KernelScores], score: str = "taylor", top: int = 50):
    """The highest-scoring filters (convolution output channels) over every layer."""
    rows = []
    for kernel in scores:
        if kernel.filter_axis is None:
            continue
        values = kernel.score(score)
        axis = kernel.filter_axis % values.ndim
        per_filter = np.sum(values, axis=tuple(a for a in range(values.ndim) if a != axis))
        rows.extend(
            {
                "layer": kernel.layer,
                "attribute": kernel.attribute,
                "filter": int(i),
                score: float(v),
            }
            for i, v in enumerate(per_filter)
        )
    return sorted(rows, key=lambda row: -row[score])[:top]


def _flip_float32(values: np.ndarray, bit: int) -> np.ndarray:
    bits = values.astype(np.float32).view(np.uint32) ^ np.uint32(1 << bit)
    return bits.view(np.float32).astype(np.float64)


def _int8_delta(kernel: KernelScores, bit: int) -> np.ndarray:
    """Value change of flipping `bit` of each element's int8 code, per-channel symmetric
    quantization along the kernel's last axis (the converter's scheme for weights)."""
    weights = kernel.weights
    axis = -1 if weights.ndim > 1 else None
    reduce_axes = tuple(range(weights.ndim - 1)) if axis is not None else None
    scale = np.max(np.abs(weights), axis=reduce_axes, keepdims=True) / 127.0
    scale = np.where(scale > 0, scale, 1.0)
    codes = np.clip(np.round(weights / scale), -127, 127).astype(np.int8)
    flipped = (codes.view(np.uint8) ^ np.uint8(1 << bit)).view(np.int8)
    return (flipped.astype(np.float64) - codes.astype(np.float64)) * scale


def bit_table(scores: list[KernelScores], storage: str = "float32") -> list[dict[str, Any]]:
    """Bit positions ranked by the summed second-order estimate of flipping that bit in
    every weight (an infinite score: the flip makes a weight non-finite or enormous)."""
    bits = 32 if storage == "float32" else 8
    rows = []
    for bit in range(bits):
        total = 0.0
        for kernel in scores:
            if storage == "float32":
                delta = _flip_float32(kernel.weights, bit) - kernel.weights
            else:
                delta = _int8_delta(kernel, bit)
            total += float(np.sum(kernel.change_score(delta)))
        rows.append({"bit": bit, "storage": storage, "score": total})
    return sorted(rows, key=lambda row: -row["score"] if math.isfinite(row["score"]) else -math.inf)


def spearman(first: list[float], second: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN for fewer than two
    pairs or a constant side."""
    from scipy import stats

    if len(first) != len(second) or len(first) < 2:
        return float("nan")
    if np.ptp(np.asarray(first, np.float64)) == 0 or np.ptp(np.asarray(second, np.float64)) == 0:
        return float("nan")
    return float(stats.spearmanr(first, second).statistic)


def check_against_campaigns(
    model: keras.Model,
    table: list[dict[str, Any]],
    inputs: np.ndarray,
    labels: np.ndarray,
    rate: float,
    trials: int,
    budget_seconds: float,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-layer campaign drops (one layer faulted at `rate`, `trials` trials) for as
    many layers as `budget_seconds` allows (highest-ranked first), and each score's
    Spearman correlation with them."""
    from aftt_tf.data import inputs as input_transforms

    raw = input_transforms.resolve("raw")
    start = time.perf_counter()
    clean = None
    measured = []
    for row in table:
        if measured and time.perf_counter() - start > budget_seconds:
            break
        spec = FaultSpec(
            kind="weight", rates=(0.0, rate), trials=trials, seed=seed, layers=(row["layer"],)
        )
        runner = keras_runner.KerasModel(model).runner(spec, inputs, labels, 1000, raw)
        if clean is None:
            clean = runner.evaluate_cell(0.0, 0)["accuracy"]
        accuracies = [runner.evaluate_cell(rate, trial)["accuracy"] for trial in range(trials)]
        runner.close()
        measured.append({"layer": row["layer"], "drop": clean - float(np.mean(accuracies))})
    by_layer = {row["layer"]: row for row in table}
    drops = [entry["drop"] for entry in measured]
    return {
        "rate": rate,
        "trials": trials,
        "clean_accuracy": clean,
        "layers_checked": len(measured),
        "layers": len(table),
        "drops": measured,
        "spearman": {
            name: spearman([by_layer[e["layer"]][name] for e in measured], drops)
            for name in LAYER_SCORES
        },
    }


def build_plan(
    scores: list[KernelScores],
    budget: float,
    score: str = "taylor",
    seed: int = 0,
    random: bool = False,
    meta: dict[str, Any] | None = None,
) -> protection.ProtectionPlan:
    """Protects round(budget * elements) weight elements: the highest-scoring ones, or
    (random=True) a uniformly random set of the same size, the baseline."""
    if not 0.0 <= budget <= 1.0 or not math.isfinite(budget):
        raise ValueError(
            f"The protection budget is a share of the weights in [0, 1], received {budget}."
        )
    sizes = [kernel.weights.size for kernel in scores]
    total = int(sum(sizes))
    count = int(round(budget * total))
    if random:
        chosen = np.random.default_rng(seed).choice(total, size=count, replace=False)
    else:
        flat = np.concatenate([kernel.score(score).reshape(-1) for kernel in scores])
        chosen = np.argsort(-flat, kind="stable")[:count]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    protected = {}
    for index, kernel in enumerate(scores):
        inside = chosen[(chosen >= offsets[index]) & (chosen < offsets[index + 1])]
        if len(inside):
            protected[(kernel.layer, kernel.attribute)] = np.sort(inside - offsets[index])
    record = {
        "chosen_by": "random" if random else score,
        "budget": budget,
        "protected_elements": count,
        "weight_elements": total,
        **(meta or {}),
    }
    return protection.ProtectionPlan(protected, record)


def plan_cost(model: keras.Model, plan: protection.ProtectionPlan, bits_per_weight: int = 32):
    """What a plan costs: its share of the faultable weights and bits, and the MACs triple
    modular redundancy adds (each protected weight computed twice more, once per use)."""
    uses = _uses_per_weight(model)
    extra = sum(
        2 * uses.get(layer, 1) * len(indices) for (layer, _), indices in plan.protected.items()
    )
    total_macs = sum(
        uses.get(site.path, 1) * int(np.prod(v.shape))
        for site in registry.sites(model)
        for _, v, _ in site.kernels
    )
    share = plan.count / max(1, plan.meta.get("weight_elements", plan.count))
    return {
        "weights_share": share,
        "bits": plan.count * bits_per_weight,
        "bits_share": share,
        "tmr_extra_macs": int(extra),
        "tmr_extra_macs_share": extra / max(1, total_macs),
    }


def _uses_per_weight(model: keras.Model) -> dict[str, int]:
    """How often each weight of a layer is used per inference: the output positions of a
    convolution, the steps of a Dense on a sequence, 1 for a Dense on a vector."""
    result = {}
    for site in registry.sites(model):
        try:
            shape = site.layer.output.shape
        except (AttributeError, ValueError):
            continue
        positions = int(np.prod([d for d in shape[1:-1] if d])) if len(shape) > 2 else 1
        result[site.path] = max(1, positions)
    return result


def verify(
    model: keras.Model,
    plans: dict[str, protection.ProtectionPlan | None],
    plan_files: dict[str, str],
    inputs: np.ndarray,
    labels: np.ndarray,
    kind: str,
    rates: tuple[float, ...],
    trials: int,
    seed: int = 0,
    check_cells: bool = True,
) -> dict[str, Any]:
    """Paired campaigns: the same faults drawn under each plan ('none': no protection),
    per-rate accuracy and the paired differences of each plan against 'none' and of the
    ranked plan against 'random'. With `check_cells`, every cell is checked to have
    faulted no protected element."""
    from aftt_tf.data import inputs as input_transforms

    raw = input_transforms.resolve("raw")
    accuracy: dict[str, dict[float, list[float]]] = {}
    for label in plans:
        spec = FaultSpec(
            kind=kind, rates=rates, trials=trials, seed=seed, protected=plan_files.get(label, "")
        )
        runner = keras_runner.KerasModel(model).runner(spec, inputs, labels, 1000, raw)
        accuracy[label] = {}
        for rate in rates:
            values = []
            for trial in range(trials):
                values.append(runner.evaluate_cell(rate, trial)["accuracy"])
                if check_cells and plans[label] is not None:
                    _check_untouched(runner, plans[label])
            accuracy[label][rate] = values
        runner.close()
    summary = {
        label: {str(rate): statistics.confidence_interval(v)[0] for rate, v in per_rate.items()}
        for label, per_rate in accuracy.items()
    }
    differences = {}
    pairs = [(label, "none") for label in plans if label != "none" and "none" in plans]
    if "plan" in plans and "random" in plans:
        pairs.append(("plan", "random"))
    for first, second in pairs:
        rows = []
        for rate in rates:
            delta = np.asarray(accuracy[first][rate]) - np.asarray(accuracy[second][rate])
            mean, _, half = statistics.confidence_interval(delta)
            rows.append({"rate": rate, "mean": mean, "ci_low": mean - half, "ci_high": mean + half})
        differences[f"{first} - {second}"] = rows
    return {
        "kind": kind,
        "trials": trials,
        "accuracy": summary,
        "per_trial": {
            label: {str(rate): values for rate, values in per_rate.items()}
            for label, per_rate in accuracy.items()
        },
        "paired_differences": differences,
    }


def _check_untouched(runner, plan: protection.ProtectionPlan) -> None:
    """No protected element of any targeted kernel holds a fault in this cell."""
    for name, tensors in runner.injector._tensors.items():
        for tensor in tensors:
            indices = plan.indices(name, tensor.attribute)
            if indices is None or tensor.bias:
                continue
            if tensor.keep is not None:
                keep = np.asarray(tensor.keep.numpy()).reshape(-1)
                replacement = np.asarray(tensor.replacement.numpy()).reshape(-1)
                if np.any(keep[indices] != 1.0) or np.any(replacement[indices] != 0.0):
                    raise AssertionError(f"A protected element of {name} was faulted.")
            else:
                clean = runner.injector._clean[name][tensors.index(tensor)].reshape(-1)
                value = np.asarray(tensor.variable.numpy()).reshape(-1)
                if np.any(value[indices] != clean[indices]):
                    raise AssertionError(f"A protected element of {name} was faulted.")


__all__ = [
    "SCORES",
    "KernelScores",
    "bit_table",
    "build_plan",
    "channel_table",
    "check_against_campaigns",
    "kernel_scores",
    "layer_table",
    "plan_cost",
    "spearman",
    "verify",
]
