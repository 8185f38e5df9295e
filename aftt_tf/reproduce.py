"""`reproduce(config)`: the paper's whole comparison as one resumable pipeline.

Stages, each resumable (a re-run reuses what is finished):

1. train     OUT/train/<method>/ (l1, l2: OUT/train/<method>/lambda_<v>/ per grid value,
             the best by validation accuracy selected in selection.json); methods that
             pre-train share one finished pre-training when their configs agree on it.
2. export    OUT/export/<method>/model_int8.tflite (full-int8 PTQ, aftt-export layout).
3. campaigns OUT/campaigns/<kind>_<scope>_<runtime>/ (aftt-faults layout): every
             method in one paired campaign, identical fault positions for all.
4. report    OUT/report.md, OUT/report.html (self-contained), OUT/figures/,
             OUT/results.json (every number the report shows).

OUT/reproduce.json holds the resolved configuration; OUT/work_log.json says what
the last invocation ran and what it reused.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from aftt_tf import io_utils, networks
from aftt_tf.config import METHODS, TrainConfig
from aftt_tf.faults import kinds

ALL_METHODS = ("none", "l1", "l2", "fat", "aftt", "aftt_fat")
METHOD_NAMES = {
    "none": "no regularisation",
    "l1": "Lasso (L1)",
    "l2": "Tikhonov (L2)",
    "fat": "fault-aware training",
    "aftt": "AFTT (proposed)",
    "aftt_fat": "AFTT + fault-aware fine-tuning",
}
REPRODUCE_FAULTS = ("weight", "node", "filter")
RUNTIMES = ("keras", "int8")
RUNTIME_NAMES = {"keras": "Keras float32", "int8": "TFLite int8"}
# Paper section VI.D quotes 60% weight, 68% node and 40% filter faults.
DEFAULT_RATES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.68, 0.7)
HAS_CONVOLUTIONS = {
    "fmnist_mlp": False,
    "fmnist_cnn": True,
    "cifar10_conv3": True,
    "cifar10_conv7": True,
}
# Fields of TrainConfig that only the supervised phase reads: two pre-training methods
# whose configs agree on every other field pre-train identically.
SUPERVISED_FIELDS = (
    "method",
    "finetune_epochs",
    "learning_rate",
    "lr_schedule",
    "classification_loss",
    "freeze_extractor",
    "reg_lambda",
    "reg_lambda_grid",
    "fault_aware_kinds",
    "fault_aware_max_rate",
    "early_stopping_patience",
    "eval_batch_size",
    "test_examples",
)

# Paper Table II: (train, test, generalization error) in %. "Architecture 1" rows are
# fmnist_mlp and cifar10_conv7, "Architecture 2" rows fmnist_cnn and cifar10_conv3.
PAPER_TABLE_II = {
    "fmnist_mlp": {
        "none": (99.51, 89.42, 10.09),
        "l1": (98.42, 88.96, 9.46),
        "l2": (97.16, 88.52, 8.64),
        "aftt": (95.78, 90.25, 5.53),
    },
    "fmnist_cnn": {
        "none": (99.60, 90.94, 8.66),
        "l1": (96.98, 91.19, 5.79),
        "l2": (95.74, 90.61, 5.13),
        "aftt": (96.00, 91.55, 4.55),
    },
    "cifar10_conv7": {
        "none": (96.35, 86.11, 10.24),
        "l1": (79.95, 77.78, 2.17),
        "l2": (93.87, 87.21, 6.66),
        "aftt": (91.36, 87.58, 3.78),
    },
    "cifar10_conv3": {
        "none": (85.16, 81.71, 3.45),
        "l1": (83.90, 81.68, 2.22),
        "l2": (84.83, 81.71, 3.12),
        "aftt": (82.00, 80.87, 1.13),
    },
}
# Paper Table I (the architecture is not stated): lambda, train, test, gen. error in %.
PAPER_TABLE_I = (
    (0.0, 98.60, 88.90, 9.70),
    (1e-4, 97.84, 89.89, 7.95),
    (1e-3, 93.88, 88.86, 5.02),
    (0.1, 66.57, 65.74, 0.83),
)
# Paper section VI.D: (architecture, kind) -> (rate, quantity, {method: value in %}).
PAPER_FAULTS = {
    ("fmnist_mlp", "weight"): (0.6, "accuracy", {"aftt": 84.36, "l2": 81.66, "l1": 61.42}),
    ("fmnist_mlp", "node"): (0.68, "accuracy", {"aftt": 84.60, "l2": 78.51, "l1": 51.09}),
    ("fmnist_cnn", "filter"): (0.4, "drop", {"aftt": 12.58, "l2": 24.98, "l1": 30.44}),
}


class ReproduceError(RuntimeError):
    """The output directory holds a reproduction with another fixed configuration."""


@dataclasses.dataclass
class ReproduceConfig:
    """What `aftt-reproduce` trains, exports, faults and reports.

    Attributes:
        train: the shared training configuration (its `method`, `reg_lambda` and
            `reg_lambda_grid` are set per method).
        out: output directory.
        methods: subset of ALL_METHODS.
        l1_lambda_grid, l2_lambda_grid: penalty weights tried; the best by validation
            accuracy is the method's model (the paper tuned its baselines by grid search).
        faults: fault kinds (weight, node, filter); empty: weight and node, plus
            filter for convolutional networks.
        scopes: 'all' (every layer of the deployed classifier) and/or 'extractor'.
        runtimes: 'keras' (float32) and/or 'int8' (full-int8 TFLite export).
        rates, trials, campaign_seed: the paired campaigns.
        campaign_test_examples: test images per campaign cell (0: the whole test set).
        campaign_batch_size: evaluation chunk size.
        calibration_steps: batches of 32 training images for int8 calibration.
    """

    train: TrainConfig
    out: str
    methods: tuple[str, ...] = ALL_METHODS
    l1_lambda_grid: tuple[float, ...] = (1e-6, 1e-5, 1e-4)
    l2_lambda_grid: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3)
    faults: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ("all", "extractor")
    runtimes: tuple[str, ...] = RUNTIMES
    rates: tuple[float, ...] = DEFAULT_RATES
    trials: int = 20
    campaign_seed: int = 0
    campaign_test_examples: int = 0
    campaign_batch_size: int = 2000
    calibration_steps: int = 100

    def __post_init__(self):
        for name in ("methods", "faults", "scopes", "runtimes"):
            setattr(self, name, tuple(str(value) for value in getattr(self, name)))
        for name in ("l1_lambda_grid", "l2_lambda_grid", "rates"):
            setattr(self, name, tuple(float(value) for value in getattr(self, name)))
        if not self.faults:
            self.faults = ("weight", "node") + (
                ("filter",) if HAS_CONVOLUTIONS.get(self.train.architecture) else ()
            )

    def validate(self) -> None:
        """Raises ValueError naming the bad field, the value and what is expected."""
        self.train.validate()
        _subset("methods", self.methods, ALL_METHODS)
        _subset("faults", self.faults, REPRODUCE_FAULTS)
        _subset("scopes", self.scopes, ("all", "extractor"))
        _subset("runtimes", self.runtimes, RUNTIMES)
        if self.train.reg_lambda_grid:
            raise ValueError(
                "reg_lambda_grid is an aftt-train flag; aftt-reproduce takes "
                "--l1_lambda_grid and --l2_lambda_grid. Remove --reg_lambda_grid."
            )
        for method in ("l1", "l2"):
            grid = getattr(self, f"{method}_lambda_grid")
            if method in self.methods:
                if not grid:
                    raise ValueError(f"{method}_lambda_grid is empty; give at least one lambda.")
                bad = [value for value in grid if not (math.isfinite(value) and value > 0)]
                if bad or len(set(grid)) != len(grid):
                    raise ValueError(
                        f"{method}_lambda_grid must hold distinct finite values > 0, "
                        f"received {list(grid)}."
                    )
                if len(grid) > 1 and self.train.validation_fraction == 0:
                    raise ValueError(
                        f"{method}_lambda_grid selects by validation accuracy; set "
                        "validation_fraction > 0 or give one lambda."
                    )
        if "filter" in self.faults and not HAS_CONVOLUTIONS[self.train.architecture]:
            raise ValueError(
                f"Filter faults need convolutions; {self.train.architecture} has none. "
                "Drop 'filter' from --faults."
            )
        if not self.rates or any(not 0.0 <= rate <= 1.0 for rate in self.rates):
            raise ValueError(f"rates must be fractions in [0, 1], received {list(self.rates)}.")
        if len(set(self.rates)) != len(self.rates):
            raise ValueError(f"rates contain duplicates: {list(self.rates)}.")
        if not isinstance(self.trials, int) or self.trials < 2:
            raise ValueError(
                f"trials must be an integer >= 2 (a confidence interval needs two), "
                f"received {self.trials!r}."
            )
        for name in ("campaign_seed", "campaign_test_examples"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(
                    f"{name} must be an integer >= 0, received {getattr(self, name)!r}."
                )
        for name in ("campaign_batch_size", "calibration_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(
                    f"{name} must be an integer >= 1, received {getattr(self, name)!r}."
                )

    def fixed(self) -> dict[str, Any]:
        """What a resumed run must share with the first one (everything else may change)."""
        return {
            "train": self.train.as_dict(),
            "campaign_test_examples": self.campaign_test_examples,
            "calibration_steps": self.calibration_steps,
        }

    def as_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["train"] = self.train.as_dict()
        return values


def _subset(name: str, values: tuple[str, ...], valid: tuple[str, ...]) -> None:
    unknown = [value for value in values if value not in valid]
    if unknown or not values:
        raise ValueError(
            f"{name} {list(values)} must be a non-empty subset of {', '.join(valid)}"
            + (f"; unknown: {unknown}" if unknown else "")
            + "."
        )
    if len(set(values)) != len(values):
        raise ValueError(f"{name} contains duplicates: {list(values)}.")


def method_config(base: TrainConfig, method: str, reg_lambda: float = 0.0) -> TrainConfig:
    """The training config of one method (and lambda), as `aftt-train --method=...` builds it."""
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; expected one of {', '.join(METHODS)}.")
    config = dataclasses.replace(
        base, method=method, reg_lambda=reg_lambda, reg_lambda_grid=(), freeze_extractor=False
    )
    if config.pretrains:
        config.freeze_extractor = base.freeze_extractor
    return config


@dataclasses.dataclass
class TrainingUnit:
    method: str
    config: TrainConfig
    directory: Path


def training_units(config: ReproduceConfig) -> list[TrainingUnit]:
    """Every training run, in order: methods in ALL_METHODS order, lambdas as given."""
    out = Path(config.out) / "train"
    units = []
    for method in config.methods:
        if method in ("l1", "l2"):
            for reg_lambda in getattr(config, f"{method}_lambda_grid"):
                units.append(
                    TrainingUnit(
                        method,
                        method_config(config.train, method, reg_lambda),
                        out / method / f"lambda_{reg_lambda:g}",
                    )
                )
        else:
            units.append(TrainingUnit(method, method_config(config.train, method), out / method))
    return units


class _Progress:
    """Per-stage progress lines on stderr with an estimate of the time left.

    The estimate scales the seconds spent so far in this invocation by the cost still
    to do (FLOPs for training, cells for campaigns); work reused from an earlier
    invocation costs nothing and does not enter the rate.
    """

    def __init__(self, stage: str, total_cost: float, stream=sys.stderr):
        self.stage = stage
        self.total_cost = max(total_cost, 1e-12)
        self.done_cost = 0.0
        self.spent_cost = 0.0
        self.start = time.time()
        self.stream = stream
        self.last_print = 0.0

    def skip(self, cost: float) -> None:
        self.done_cost += cost

    def advance(self, cost: float, message: str = "", force: bool = True) -> None:
        self.done_cost += cost
        self.spent_cost += cost
        now = time.time()
        if not force and now - self.last_print < 15:
            return
        self.last_print = now
        elapsed = now - self.start
        remaining = self.total_cost - self.done_cost
        eta = elapsed / self.spent_cost * remaining if self.spent_cost > 0 else float("nan")
        self.print(
            f"{100 * self.done_cost / self.total_cost:5.1f}% done, {_duration(elapsed)} spent, "
            f"about {_duration(eta)} left" + (f" ({message})" if message else "")
        )

    def print(self, message: str) -> None:
        self.stream.write(f"[{self.stage}] {message}\n")
        self.stream.flush()


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def check_output_directory(config: ReproduceConfig) -> bool:
    """Refuses an OUT that holds another reproduction (or anything else); writes nothing.

    Returns True when resuming.
    """
    out = Path(config.out)
    if not out.exists() or not any(out.iterdir()):
        return False
    record = out / "reproduce.json"
    if not record.exists():
        # Finished aftt-train runs placed in OUT/train/<method>[/lambda_<v>] are adopted
        # (each is checked against its method's config below); anything else is refused.
        others = sorted(path.name for path in out.iterdir() if path.name != "train")
        if others:
            raise ReproduceError(
                f"{out} exists, holds {others} and no reproduce.json: it is not an "
                "aftt-reproduce directory. Choose another --out."
            )
        previous = config.fixed()
    else:
        previous = io_utils.read_json(record)["fixed"]
    previous["train"] = {**TrainConfig().as_dict(), **previous["train"]}
    current = config.fixed()
    differences = [
        f"{key}: {previous['train'].get(key)!r} -> {value!r}"
        for key, value in current["train"].items()
        if previous["train"].get(key) != value
    ] + [
        f"{key}: {previous.get(key)!r} -> {current[key]!r}"
        for key in current
        if key != "train" and previous.get(key) != current[key]
    ]
    if differences:
        raise ReproduceError(
            f"{out} holds a reproduction with another configuration ({'; '.join(differences)}). "
            "Methods, faults, scopes, runtimes, rates, trials and lambda grids may change "
            "between runs; these may not. Use another --out."
        )
    # Each training directory must hold its own config (or nothing) before any work.
    from aftt_tf import train_lib

    for unit in training_units(config):
        try:
            train_lib.check_run_directory(unit.directory, unit.config)
        except train_lib.RunDirectoryError as error:
            raise ReproduceError(str(error)) from None
    return True


def _pretrain_signature(config: TrainConfig) -> dict[str, Any]:
    return {k: v for k, v in config.as_dict().items() if k not in SUPERVISED_FIELDS}


def _pretrain_complete(directory: Path, config: TrainConfig) -> bool:
    state = directory / "checkpoints" / "pretrain" / "state.json"
    return (
        state.exists() and io_utils.read_json(state)["epochs_completed"] >= config.pretrain_epochs
    )


def _share_pretraining(unit: TrainingUnit, units: list[TrainingUnit]) -> str | None:
    """Copies a finished, identical pre-training from another method's run into `unit`'s.

    Returns the donor's method name, or None when there is nothing to share.
    """
    if not unit.config.pretrains or unit.config.pretrain_epochs == 0:
        return None
    checkpoints = unit.directory / "checkpoints"
    if (checkpoints / "finetune" / "state.json").exists() or _pretrain_complete(
        unit.directory, unit.config
    ):
        return None
    for donor in units:
        if donor is unit or not donor.config.pretrains:
            continue
        if _pretrain_signature(donor.config) != _pretrain_signature(unit.config):
            continue
        if not _pretrain_complete(donor.directory, donor.config):
            continue
        for sub in ("checkpoints", "tensorboard"):
            source = donor.directory / sub / "pretrain"
            if not source.exists():
                continue
            target = unit.directory / sub / "pretrain"
            staging = target.with_name(".pretrain.copy")
            if staging.exists():
                shutil.rmtree(staging)
            shutil.copytree(source, staging)
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        return donor.method
    return None


def _training_cost(config: TrainConfig, train_examples: int, pretrain_done: bool) -> float:
    """FLOPs of a training run (paper section VI.E model), for progress estimates."""
    from aftt_tf import complexity

    nets = networks.build_networks(config.architecture, config.dataset)
    costs = {
        name: complexity.model_complexity(getattr(nets, name))
        for name in ("classifier", "extractor", "decoder", "discriminator")
    }
    total = config.finetune_epochs * complexity.supervised_step_flops(costs["classifier"])
    if config.pretrains and not pretrain_done:
        total += config.pretrain_epochs * complexity.aae_step_flops(
            costs["extractor"], costs["decoder"], costs["discriminator"], config.discriminator_steps
        )
    return float(total * train_examples)


def train_stage(config: ReproduceConfig, splits, log: Callable[[dict], None]) -> dict[str, Any]:
    """Trains (or reuses) every unit; returns {method: {"model": path, "metrics": ...}}."""
    import keras

    from aftt_tf import train_lib

    units = training_units(config)
    train_examples = len(splits.train_labels)
    costs = []
    for unit in units:
        finished = (unit.directory / "metrics.json").exists()
        shared = any(
            d is not unit
            and d.config.pretrains
            and _pretrain_signature(d.config) == _pretrain_signature(unit.config)
            for d in units[: units.index(unit)]
        )
        costs.append(
            0.0
            if finished
            else _training_cost(
                unit.config,
                train_examples,
                _pretrain_complete(unit.directory, unit.config) or shared,
            )
        )
    keras.backend.clear_session()
    progress = _Progress("train", sum(costs) or 1.0)
    progress.print(
        f"{len(units)} training runs ({sum(1 for c in costs if c == 0)} already finished), "
        f"{sum(costs) / 1e12:.1f} TFLOP to go"
    )
    by_method: dict[str, list[tuple[TrainingUnit, dict]]] = {}
    for unit, cost in zip(units, costs, strict=True):
        label = unit.method + (
            f" lambda={unit.config.reg_lambda:g}" if unit.method in ("l1", "l2") else ""
        )
        if (unit.directory / "metrics.json").exists():
            metrics = io_utils.read_json(unit.directory / "metrics.json")
            log({"stage": "train", "unit": label, "action": "reused"})
            progress.print(f"{label}: reused {unit.directory}")
        else:
            train_lib.prepare_run_directory(unit.directory, unit.config)
            donor = _share_pretraining(unit, units)
            if donor:
                progress.print(f"{label}: pre-training reused from {donor} (identical config)")
            progress.print(f"{label}: training in {unit.directory}")
            metrics = train_lib.train_once(unit.config, unit.directory, splits)
            keras.backend.clear_session()
            log({"stage": "train", "unit": label, "action": "ran", "seconds": metrics["seconds"]})
            progress.advance(
                cost,
                f"{label}: test {100 * metrics['test_accuracy']:.2f}%, "
                f"gen. error {100 * metrics['generalization_error']:.2f}%",
            )
        by_method.setdefault(unit.method, []).append((unit, metrics))
    results = {}
    for method, runs in by_method.items():
        if method in ("l1", "l2"):
            selected_unit, selected = max(
                runs,
                # Never the test set: validate() requires a validation split for grids.
                key=lambda run: run[1]["validation_accuracy"] or 0.0,
            )
            sweep = [train_lib.sweep_row(metrics) for _, metrics in runs]
            io_utils.write_json(
                Path(config.out) / "train" / method / "selection.json",
                {
                    "selected_lambda": selected["reg_lambda"],
                    "selected_by": "validation_accuracy",
                    "sweep": sweep,
                },
            )
            results[method] = {
                "model": str(selected_unit.directory / "classifier.keras"),
                "metrics": selected,
                "sweep": sweep,
            }
        else:
            unit, metrics = runs[0]
            results[method] = {
                "model": str(unit.directory / "classifier.keras"),
                "metrics": metrics,
            }
    return results


def export_stage(
    config: ReproduceConfig, trained: dict[str, Any], log: Callable[[dict], None]
) -> dict[str, dict[str, Any]]:
    """Full-int8 TFLite export of every method's model (reused while its source is unchanged)."""
    from aftt_tf import export_lib

    progress = _Progress("export", len(trained))
    exports = {}
    for method, entry in trained.items():
        out = Path(config.out) / "export" / method
        manifest_path = out / "manifest.json"
        source_hash = io_utils.sha256_file(entry["model"])
        if (
            manifest_path.exists()
            and io_utils.read_json(manifest_path)["source_model"]["sha256"] == source_hash
        ):
            manifest = io_utils.read_json(manifest_path)
            log({"stage": "export", "unit": method, "action": "reused"})
            progress.skip(1)
            progress.print(f"{method}: reused {out}")
        else:
            manifest = export_lib.export_classifier(
                export_lib.ExportConfig(
                    model=entry["model"],
                    out=str(out),
                    formats=("tflite_int8",),
                    calibration_steps=config.calibration_steps,
                    data_dir=config.train.data_dir,
                    test_examples=config.train.test_examples,
                    overwrite=True,
                    seed=config.train.seed,
                )
            )
            log({"stage": "export", "unit": method, "action": "ran"})
            accuracy = manifest["artifacts"]["model_int8.tflite"]["test_accuracy"]
            progress.advance(1, f"{method}: int8 test accuracy {100 * accuracy:.2f}%")
        exports[method] = {
            "model": str(out / "model_int8.tflite"),
            "test_accuracy": manifest["artifacts"]["model_int8.tflite"]["test_accuracy"],
            "keras_test_accuracy": manifest["keras_test_accuracy"],
        }
    return exports


def campaign_name(kind: str, scope: str, runtime: str) -> str:
    return f"{kind}_{scope}_{runtime}"


def _node_layers(model, scope: str) -> tuple[str, ...]:
    """Hidden fully connected layers in `scope`: where the paper puts node faults, and
    the node faults both runtimes can place identically."""
    import keras

    output_names = set(model.output_names)
    return tuple(
        layer.name
        for layer in model.layers
        if isinstance(layer, keras.layers.Dense)
        and layer.name not in output_names
        and kinds.in_scope(layer.name, scope)
    )


def campaign_stage(
    config: ReproduceConfig,
    trained: dict[str, Any],
    exports: dict[str, Any],
    test_images: np.ndarray,
    test_labels: np.ndarray,
    log: Callable[[dict], None],
) -> dict[str, dict[str, Any]]:
    """Runs every (kind, scope, runtime) campaign over all methods, paired; returns
    {name: results.json content, or {"skipped": reason}}."""
    from aftt_tf.faults import campaign, keras_runner, tflite_runner

    keras_models = {m: keras_runner.load_model(e["model"]) for m, e in trained.items()}
    reference = next(iter(keras_models.values()))
    plans = []
    for kind in config.faults:
        for scope in config.scopes:
            layers: tuple[str, ...] = ()
            if kind == "node":
                layers = _node_layers(reference, scope)
            for runtime in config.runtimes:
                name = campaign_name(kind, scope, runtime)
                if kind == "node" and not layers:
                    plans.append(
                        (name, None, f"no hidden fully connected layer in scope {scope!r}")
                    )
                    continue
                spec = campaign.FaultSpec(
                    kind=kind,
                    rates=config.rates,
                    trials=config.trials,
                    seed=config.campaign_seed,
                    scope=scope,
                    layers=layers,
                )
                plans.append((name, (runtime, spec), None))
    cells_per_campaign = len(config.rates) * config.trials * len(trained)
    progress = _Progress("campaigns", cells_per_campaign * len(plans))
    results = {}
    for name, plan, reason in plans:
        out = Path(config.out) / "campaigns" / name
        if plan is None:
            results[name] = {"skipped": reason}
            progress.skip(cells_per_campaign)
            progress.print(f"{name}: not run ({reason})")
            continue
        runtime, spec = plan
        if runtime == "keras":
            models = {m: keras_runner.KerasModel(model) for m, model in keras_models.items()}
        else:
            models = {m: tflite_runner.TFLiteModel.load(e["model"]) for m, e in exports.items()}
        try:
            for model in models.values():
                model.select_layers(spec)
        except kinds.FaultTargetError as error:
            results[name] = {"skipped": str(error)}
            progress.skip(cells_per_campaign)
            progress.print(f"{name}: not run ({error})")
            continue
        progress.print(f"{name}: {spec.kind} faults, scope {spec.scope}, {RUNTIME_NAMES[runtime]}")
        ran = 0

        def on_cell(cell, name=name):
            nonlocal ran
            ran += 1
            progress.advance(1, name, force=False)

        result = campaign.run_campaign(
            models,
            spec,
            test_images,
            test_labels,
            out,
            batch_size=config.campaign_batch_size,
            progress=False,
            on_cell=on_cell,
        )
        progress.skip(cells_per_campaign - ran)
        log(
            {
                "stage": "campaigns",
                "unit": name,
                "action": "ran" if ran else "reused",
                "cells_run": ran,
                "cells_skipped": result["skipped_cells"],
            }
        )
        if ran:
            progress.advance(0, f"{name} finished: {result['verdict']['text']}")
        else:
            progress.print(f"{name}: reused all {result['skipped_cells']} cells")
        results[name] = result
    return results


def reproduce(config: ReproduceConfig) -> dict[str, Any]:
    """Runs (or resumes) every stage; returns the report's results (also OUT/results.json)."""
    config.validate()
    check_output_directory(config)
    from aftt_tf import train_lib

    splits = train_lib.load_config_splits(config.train)  # Missing data fails before writing.
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    io_utils.write_json(
        out / "reproduce.json", {"config": config.as_dict(), "fixed": config.fixed()}
    )
    work_log: list[dict[str, Any]] = []
    started = time.time()

    def log(entry: dict[str, Any]) -> None:
        work_log.append(entry)
        io_utils.write_json(out / "work_log.json", work_log)

    log({"stage": "start", "unit": "reproduce", "action": "ran"})
    logging.info("Data: %s from %s", splits.sizes(), splits.source)
    trained = train_stage(config, splits, log)
    exports = export_stage(config, trained, log) if "int8" in config.runtimes else {}
    test_images, test_labels = splits.test_images, splits.test_labels
    if config.campaign_test_examples:
        test_images = test_images[: config.campaign_test_examples]
        test_labels = test_labels[: config.campaign_test_examples]
    campaigns = campaign_stage(config, trained, exports, test_images, test_labels, log)
    from aftt_tf import reproduce_report

    results = reproduce_report.write(config, trained, exports, campaigns, len(test_labels))
    log({"stage": "report", "unit": "report", "action": "ran", "seconds": time.time() - started})
    return results
