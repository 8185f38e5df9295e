"""What `aftt-sensitivity` runs: scores, their check against campaigns, protection plans
and their verification, written to one self-documenting directory.

OUT/
  config.json          the resolved configuration
  scores.json          per-layer table (ranked), top channels, float32 and int8 bit ranking,
                       the Spearman check against per-layer campaigns
  layers.csv           the per-layer table
  sensitivity.png/svg  per-layer estimate next to the measured campaign drops
  plans/plan_B.npz     the ranked plan of budget B, plans/random_B.npz its random baseline
  verification.json    paired campaigns: none / plan / random at each budget
  manifest.json        versions and sha256 of every file
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from aftt_tf import io_utils
from aftt_tf.campaigns import engine as campaign
from aftt_tf.campaigns import plots
from aftt_tf.data import frontend
from aftt_tf.faults import kinds
from aftt_tf.faults.spec import check_classifier_outputs
from aftt_tf.runtimes import keras_runner
from aftt_tf.sensitivity import scores as sensitivity

TARGET_LADDER = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


@dataclasses.dataclass(frozen=True)
class SensitivityConfig:
    model: str
    out: str
    data_options: frontend.DataOptions
    test_data: str = ""
    test_examples: int = 0
    examples: int = 512
    score_batch_size: int = 256
    hutchinson_samples: int = 16
    rate: float = 0.3
    score: str = "taylor"
    check_trials: int = 5
    check_seconds: float = 120.0
    budgets: tuple[float, ...] = (0.01, 0.05)
    target_accuracy: float | None = None
    fault: str = "weight"
    verify_rates: tuple[float, ...] = (0.3, 0.5)
    verify_trials: int = 10
    seed: int = 0
    allow_chance_accuracy: bool = False

    def validate(self) -> None:
        if not self.model or not self.out:
            raise ValueError("--model and --out are required.")
        if self.test_examples < 0:
            raise ValueError(
                f"--test_examples must be >= 0 (0: all), received {self.test_examples}."
            )
        if self.examples < 1:
            raise ValueError(f"--examples must be >= 1, received {self.examples}.")
        if self.score_batch_size < 1:
            raise ValueError(f"--score_batch_size must be >= 1, received {self.score_batch_size}.")
        if self.hutchinson_samples < 1:
            raise ValueError(
                f"--hutchinson_samples must be >= 1, received {self.hutchinson_samples}."
            )
        if not 0.0 < self.rate < 1.0:
            raise ValueError(f"--rate must be in (0, 1), received {self.rate}.")
        if self.score not in sensitivity.SCORES:
            raise ValueError(
                f"--score must be one of {', '.join(sensitivity.SCORES)}, received {self.score!r}."
            )
        for budget in self.budgets:
            if not (math.isfinite(budget) and 0.0 < budget < 1.0):
                raise ValueError(
                    f"--protect_budget values are shares of the weights in (0, 1), received {budget}."
                )
        if self.target_accuracy is not None and not 0.0 < self.target_accuracy <= 1.0:
            raise ValueError(
                f"--target_accuracy is a fraction in (0, 1], received {self.target_accuracy}."
            )
        protectable = kinds.names(per_element=True)
        if self.fault not in protectable:
            raise ValueError(
                f"--fault must be {', '.join(protectable)} (faults in weight elements a plan "
                f"can protect), received {self.fault!r}."
            )
        for rate in self.verify_rates:
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"--verify_rates are fractions in [0, 1], received {rate}.")
        if self.verify_trials < 2 or self.check_trials < 1:
            raise ValueError("--verify_trials must be >= 2 and --check_trials >= 1.")
        self.data_options.validate()


def run(config: SensitivityConfig) -> dict[str, Any]:
    """Scores, check, plans and verification; returns what scores.json holds."""
    config.validate()
    out = Path(config.out)
    io_utils.check_output_path(out)
    finished = _check_out(out, config)
    if finished is not None:  # This run, finished before: nothing to do.
        return finished
    prepared = _prepare(config)
    created = None
    try:
        with io_utils.locked_directory(out) as created:
            finished = _check_out(out, config)  # Again, now that no one else writes it.
            if finished is not None:
                return finished
            io_utils.empty_directory(out)  # Empty, or what a killed run of ours left.
            return _write(config, out, prepared)
    except io_utils.OutputError:
        raise  # Refused at the lock: nothing of ours was written.
    except BaseException:
        # --out was new or empty: a run that stops part-way leaves nothing half-written.
        io_utils.empty_directory(out)
        io_utils.remove_created(created, out)
        raise


# Every name a run writes in --out: a directory holding only these (and config.json,
# written first) is one of ours.
_OWN_FILES = {
    "config.json",
    "plans",
    "scores.json",
    "layers.csv",
    "sensitivity.png",
    "sensitivity.svg",
    "verification.json",
    "manifest.json",
}


def _staged(name: str) -> bool:
    """A file of ours being written when a run was killed (io_utils.atomic_path's
    '.STEM.*' beside it)."""
    return any(name.startswith(f".{Path(own).stem}.") for own in _OWN_FILES)


def _check_out(out: Path, config: SensitivityConfig) -> dict[str, Any] | None:
    """The finished run's scores when `out` holds one with this config; None when `out`
    is new, empty, or what a killed run of this command left (it starts over).
    OutputError for anything else: a user's files, another config's finished run."""
    if not out.exists() or not io_utils.entries(out):
        return None
    names = {name for name in io_utils.entries(out) if not _staged(name)}
    if not names <= _OWN_FILES or "config.json" not in names:
        raise io_utils.OutputError(
            f"--out {out} holds files aftt-sensitivity did not write "
            f"({', '.join(sorted(names - _OWN_FILES)[:5]) or 'no config.json'}); give a new "
            "or empty directory (nothing there is overwritten)."
        )
    if "manifest.json" not in names:
        return None  # Left by a run that was killed part-way: it starts over.
    recorded = io_utils.read_json(out / "config.json")
    if recorded != json.loads(json.dumps(_record(config))):
        raise io_utils.OutputError(
            f"--out {out} holds a finished run with another config; give a new directory "
            "(nothing there is overwritten)."
        )
    return io_utils.read_json(out / "scores.json")


@dataclasses.dataclass
class _Prepared:
    model: Any
    scores: list
    layers: list
    check: dict | None
    clean: float
    score_part: frontend.Examples
    test_part: frontend.Examples
    test_inputs: np.ndarray


def _prepare(config: SensitivityConfig) -> _Prepared:
    """Model and data checked, the scores, the layer table and its campaign check: all
    before anything is written."""
    model = keras_runner.load_model(config.model)
    adapter = keras_runner.KerasModel(model)
    check_classifier_outputs(adapter.output_shapes, config.model)
    output_kind = frontend.training_output_kind(model, config.model)
    score_part, test_part = _data(config, adapter)
    transform = config.data_options.transform(score_part.images)
    score_inputs = transform.apply(score_part.images).astype(np.float32)
    test_inputs = transform.apply(test_part.images).astype(np.float32)
    predicted = np.argmax(model.predict(test_inputs, verbose=0, batch_size=1000), -1)
    clean = float(np.mean(predicted == test_part.labels))
    if not config.allow_chance_accuracy:
        campaign.check_accuracy(clean, test_part.labels, config.model)
    sample = np.sort(
        np.random.default_rng(config.seed).permutation(len(score_inputs))[: config.examples]
    )
    logging.info("Scores from %d examples (%d probes).", len(sample), config.hutchinson_samples)
    scores = sensitivity.kernel_scores(
        model,
        score_inputs[sample],
        score_part.labels[sample],
        output_kind,
        config.hutchinson_samples,
        seed=config.seed,
        batch_size=config.score_batch_size,
    )
    layers = sensitivity.layer_table(scores, config.rate)
    check = None
    if config.check_seconds > 0:
        logging.info(
            "Checking the ranking with per-layer campaigns (%.0f s).", config.check_seconds
        )
        check = sensitivity.check_against_campaigns(
            model,
            layers,
            test_inputs,
            test_part.labels,
            config.rate,
            config.check_trials,
            config.check_seconds,
            config.seed,
        )
    return _Prepared(model, scores, layers, check, clean, score_part, test_part, test_inputs)


def _data(config: SensitivityConfig, adapter) -> tuple[frontend.Examples, frontend.Examples]:
    """(score data, test data): a built-in or TFDS source's train and test splits; a file
    split into a seeded 80% for scores and 20% held out for campaigns, unless --test_data."""
    source = frontend.resolve_source(config.data_options.data, config.model)
    builtin_or_tfds = ":" not in source or source.startswith("tfds:")
    if config.test_data:
        score_part = frontend.load(source, "train", config.data_options)
        test_part = frontend.load(config.test_data, "test", config.data_options)
    elif builtin_or_tfds:
        score_part = frontend.load(source, "train", config.data_options)
        test_part = frontend.load(source, "test", config.data_options)
    else:
        score_part, test_part = frontend.split_off(
            frontend.load(source, "train", config.data_options), 0.2, config.seed
        )
    for part in (score_part, test_part):
        frontend.check_fits(part, adapter.input_shape, adapter.num_outputs)
    if config.test_examples and config.test_examples < len(test_part.labels):
        chosen = np.sort(
            np.random.default_rng(config.seed).permutation(len(test_part.labels))[
                : config.test_examples
            ]
        )
        description = {**test_part.description, "sample": f"{len(chosen)} (seed {config.seed})"}
        test_part = frontend.Examples(
            test_part.images[chosen], test_part.labels[chosen], description, test_part.class_names
        )
    return score_part, test_part


def _write(config, out, prepared: _Prepared):
    model, scores, layers = prepared.model, prepared.scores, prepared.layers
    check, clean = prepared.check, prepared.clean
    score_part, test_part, test_inputs = (
        prepared.score_part,
        prepared.test_part,
        prepared.test_inputs,
    )
    io_utils.write_json(out / "config.json", _record(config))
    (out / "plans").mkdir(exist_ok=True)
    fingerprint = keras_runner.model_fingerprint(model)
    budgets = list(config.budgets)
    verification = {}
    files: dict[str, str] = {}
    for budget in budgets:
        verification[str(budget)] = _plan_and_verify(
            config, out, model, scores, budget, fingerprint, test_inputs, test_part.labels, files
        )
    target = None
    if config.target_accuracy is not None:
        target = _search_target(
            config, out, model, scores, fingerprint, test_inputs, test_part.labels, files
        )
    result = {
        "model": config.model,
        "clean_accuracy": clean,
        "score_data": score_part.description,
        "test_data": test_part.description,
        "examples_scored": min(config.examples, len(score_part.labels)),
        "rate": config.rate,
        "layers": layers,
        "channels": sensitivity.channel_table(scores, config.score),
        "bits": {
            "float32": sensitivity.bit_table(scores, "float32"),
            "int8": sensitivity.bit_table(scores, "int8"),
        },
        "check": check,
        "plans": {
            str(budget): {
                key: value
                for key, value in verification[str(budget)].items()
                if key in ("plan", "random", "cost", "accuracy", "paired_differences")
            }
            for budget in budgets
        },
        "target": target,
    }
    io_utils.write_json(out / "scores.json", result)
    io_utils.write_json(out / "verification.json", {"budgets": verification, "target": target})
    io_utils.write_text(out / "layers.csv", _csv(layers))
    _figure(layers, check, out / "sensitivity")
    artifacts = ["config.json", "scores.json", "verification.json", "layers.csv", "sensitivity.png"]
    artifacts += [f"plans/{Path(path).name}" for path in files.values()]
    io_utils.write_manifest(out, artifacts)
    return result


def _plan_and_verify(config, out, model, scores, budget, fingerprint, inputs, labels, files):
    meta = {"model_sha256": fingerprint, "model": config.model, "fault": config.fault}
    plan = sensitivity.build_plan(scores, budget, config.score, meta=meta)
    baseline = sensitivity.build_plan(scores, budget, seed=config.seed + 1, random=True, meta=meta)
    paths = {
        "plan": out / "plans" / f"plan_{budget:g}.npz",
        "random": out / "plans" / f"random_{budget:g}.npz",
    }
    plan.save(paths["plan"])
    baseline.save(paths["random"])
    files[f"plan_{budget}"], files[f"random_{budget}"] = str(paths["plan"]), str(paths["random"])
    logging.info("Verifying the %.2g%% plan against random protection.", 100 * budget)
    verified = sensitivity.verify(
        model,
        {"none": None, "plan": plan, "random": baseline},
        {key: str(path) for key, path in paths.items()},
        inputs,
        labels,
        config.fault,
        tuple(config.verify_rates),
        config.verify_trials,
        config.seed,
    )
    return {
        "plan": str(paths["plan"].relative_to(out)),
        "random": str(paths["random"].relative_to(out)),
        "cost": sensitivity.plan_cost(model, plan),
        **verified,
    }


def _search_target(config, out, model, scores, fingerprint, inputs, labels, files):
    """The smallest budget of the ladder whose verified mean accuracy at --rate reaches
    --target_accuracy (each step a paired campaign with the plan)."""
    for budget in TARGET_LADDER:
        meta = {"model_sha256": fingerprint, "model": config.model, "fault": config.fault}
        plan = sensitivity.build_plan(scores, budget, config.score, meta=meta)
        path = out / "plans" / f"target_{budget:g}.npz"
        plan.save(path)
        files[f"target_{budget}"] = str(path)
        verified = sensitivity.verify(
            model,
            {"plan": plan},
            {"plan": str(path)},
            inputs,
            labels,
            config.fault,
            (config.rate,),
            config.verify_trials,
            config.seed,
        )
        accuracy = verified["accuracy"]["plan"][str(config.rate)]
        logging.info("Budget %.3g: accuracy %.4f at rate %g.", budget, accuracy, config.rate)
        if accuracy >= config.target_accuracy:
            return {
                "target_accuracy": config.target_accuracy,
                "rate": config.rate,
                "budget": budget,
                "accuracy": accuracy,
                "plan": str(path.relative_to(out)),
                "cost": sensitivity.plan_cost(model, plan),
            }
    return {
        "target_accuracy": config.target_accuracy,
        "rate": config.rate,
        "budget": None,
        "reached": False,
        "largest_budget_tried": TARGET_LADDER[-1],
    }


def _record(config: SensitivityConfig) -> dict[str, Any]:
    values = dataclasses.asdict(config)
    values["data"] = values.pop("data_options")  # The key config.json has always had.
    values["budgets"] = list(config.budgets)
    values["verify_rates"] = list(config.verify_rates)
    return values


def _csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    columns = ["rank", "layer", "elements", "expected", *sensitivity.SCORES]
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _figure(layers, check, stem: Path) -> None:
    figure, axis = plots.subplots(figsize=(max(6, 0.35 * len(layers)), 4))
    names = [row["layer"] for row in layers]
    estimate = np.array([row["expected"] for row in layers])
    axis.bar(
        np.arange(len(names)),
        estimate / max(1e-12, np.max(np.abs(estimate))),
        label="estimate (scaled)",
    )
    if check:
        drops = {entry["layer"]: entry["drop"] for entry in check["drops"]}
        measured = [drops.get(name, np.nan) for name in names]
        top = max(1e-12, np.nanmax(np.abs(measured))) if any(np.isfinite(measured)) else 1.0
        axis.plot(
            np.arange(len(names)),
            np.array(measured) / top,
            "o",
            color="black",
            label="campaign drop (scaled)",
        )
    axis.set_xticks(np.arange(len(names)))
    axis.set_xticklabels(names, rotation=90, fontsize=7)
    axis.set_ylabel("relative sensitivity")
    axis.legend()
    plots.save_figure(figure, stem)
