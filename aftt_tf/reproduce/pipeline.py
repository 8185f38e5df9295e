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

import contextlib
import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from aftt_tf import io_utils, vocabulary
from aftt_tf.data import frontend
from aftt_tf.progress import Progress
from aftt_tf.reproduce.config import (
    INT8_MODE_FORMATS,
    RUNTIME_NAMES,
    SUPERVISED_FIELDS,
    ReproduceConfig,
    TrainingUnit,
    campaign_name,
    int8_runtime,
    training_units,
)
from aftt_tf.training.config import TrainConfig
from aftt_tf.vocabulary import TFLITE_FILES

Log = Callable[[dict[str, Any]], None]


class ReproduceError(RuntimeError):
    """The output directory holds a reproduction with another fixed configuration."""


def check_output_directory(config: ReproduceConfig) -> bool:
    """Refuses an OUT that holds another reproduction (or anything else); writes nothing.

    Returns True when resuming.
    """
    out = Path(config.out)
    io_utils.check_output_path(out)
    if not out.exists() or not io_utils.entries(out):
        return False
    record = out / "reproduce.json"
    if not record.exists():
        # Finished aftt-train runs placed in OUT/train/<method>[/lambda_<v>] are adopted
        # (each is checked against its method's config below); anything else is refused.
        others = [name for name in io_utils.entries(out) if name != "train"]
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
    from aftt_tf.training import train_lib

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
    from aftt_tf.training import complexity, networks

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


def _training_costs(units: list[TrainingUnit], train_examples: int) -> list[float]:
    """FLOPs still to spend per unit (0 for finished ones; a shared pre-training once)."""
    costs = []
    for index, unit in enumerate(units):
        finished = (unit.directory / "metrics.json").exists()
        shared = any(
            other.config.pretrains
            and _pretrain_signature(other.config) == _pretrain_signature(unit.config)
            for other in units[:index]
        )
        pretrain_done = _pretrain_complete(unit.directory, unit.config) or shared
        costs.append(
            0.0 if finished else _training_cost(unit.config, train_examples, pretrain_done)
        )
    return costs


def _unit_label(unit: TrainingUnit) -> str:
    if unit.method in vocabulary.PENALTY_METHODS:
        return f"{unit.method} lambda={unit.config.reg_lambda:g}"
    return unit.method


def _train_unit(
    unit: TrainingUnit, units: list[TrainingUnit], splits, progress: Progress, cost: float, log: Log
) -> dict[str, Any]:
    """Trains one unit (reusing a finished run or a shared pre-training); returns its metrics."""
    import keras

    from aftt_tf.training import train_lib

    label = _unit_label(unit)
    if (unit.directory / "metrics.json").exists():
        log({"stage": "train", "unit": label, "action": "reused"})
        progress.print(f"{label}: reused {unit.directory}")
        return io_utils.read_json(unit.directory / "metrics.json")
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
        force=True,
    )
    return metrics


def train_stage(config: ReproduceConfig, splits, log: Log) -> dict[str, Any]:
    """Trains (or reuses) every unit; returns {method: {"model": path, "metrics": ...}}."""
    import keras

    units = training_units(config)
    costs = _training_costs(units, len(splits.train_labels))
    keras.backend.clear_session()
    progress = Progress("train", sum(costs) or 1.0)
    progress.print(
        f"{len(units)} training runs ({sum(1 for c in costs if c == 0)} already finished), "
        f"{sum(costs) / 1e12:.1f} TFLOP to go"
    )
    if config.executor == "ray":
        all_metrics = _train_units_on_ray(config, units, costs, splits, progress, log)
    else:
        all_metrics = [
            _train_unit(unit, units, splits, progress, cost, log)
            for unit, cost in zip(units, costs, strict=True)
        ]
    by_method: dict[str, list[tuple[TrainingUnit, dict]]] = {}
    for unit, metrics in zip(units, all_metrics, strict=True):
        by_method.setdefault(unit.method, []).append((unit, metrics))
    return {method: _method_result(config, method, runs) for method, runs in by_method.items()}


def _train_remotely(config: TrainConfig, directory: Path, splits) -> dict[str, Any]:
    """One training unit in a Ray worker process of its own (the task's only call)."""
    from aftt_tf.training import train_lib

    return train_lib.train_once(config, directory, splits)


def _train_units_on_ray(config, units, costs, splits, progress: Progress, log: Log) -> list[dict]:
    """Every unit as a Ray task in a fresh worker process (TensorFlow trainings do not
    share a process well), each an ordinary resumable aftt-train run directory under
    OUT/train, so a killed cluster resumes where it stopped. Units whose pre-training an
    earlier unit shares wait for it and copy it, as in a local run. (Ray is connected by
    `_run_stages`.)"""
    from aftt_tf.campaigns import ray_executor
    from aftt_tf.training import train_lib

    ray = ray_executor.import_ray()
    ray_config = config.ray_config()
    remote = ray.remote(max_calls=1, max_retries=2)(_train_remotely).options(
        num_cpus=ray_config.cpus_per_worker, num_gpus=ray_config.gpus_per_worker
    )
    splits_ref = ray.put(splits)
    metrics: dict[int, dict] = {}
    for wave in _pretraining_waves(units):
        futures = {}
        for index in wave:
            unit, label = units[index], _unit_label(units[index])
            if (unit.directory / "metrics.json").exists():
                log({"stage": "train", "unit": label, "action": "reused"})
                progress.print(f"{label}: reused {unit.directory}")
                metrics[index] = io_utils.read_json(unit.directory / "metrics.json")
                continue
            train_lib.prepare_run_directory(unit.directory, unit.config)
            donor = _share_pretraining(unit, units)
            if donor:
                progress.print(f"{label}: pre-training reused from {donor} (identical config)")
            progress.print(f"{label}: training on Ray in {unit.directory}")
            futures[remote.remote(unit.config, unit.directory, splits_ref)] = index
        while futures:
            done, _ = ray.wait(list(futures), num_returns=1)
            index = futures.pop(done[0])
            label, metrics[index] = _unit_label(units[index]), ray.get(done[0])
            log({"stage": "train", "unit": label, "action": "ran", "executor": "ray"})
            progress.advance(
                costs[index],
                f"{label}: test {100 * metrics[index]['test_accuracy']:.2f}%, "
                f"gen. error {100 * metrics[index]['generalization_error']:.2f}%",
                force=True,
            )
    return [metrics[index] for index in range(len(units))]


def _pretraining_waves(units: list[TrainingUnit]) -> list[list[int]]:
    """Unit indices in two waves: the first unit of each identical pre-training (and units
    without one), then the units that copy a finished pre-training from it."""
    first, second, seen = [], [], set()
    for index, unit in enumerate(units):
        signature = json.dumps(_pretrain_signature(unit.config), sort_keys=True)
        if unit.config.pretrains and unit.config.pretrain_epochs and signature in seen:
            second.append(index)
        else:
            seen.add(signature)
            first.append(index)
    return [wave for wave in (first, second) if wave]


def _method_result(
    config: ReproduceConfig, method: str, runs: list[tuple[TrainingUnit, dict]]
) -> dict[str, Any]:
    """A method's model; for l1/l2 the grid point with the best validation accuracy."""
    from aftt_tf.training import train_lib

    if method not in vocabulary.PENALTY_METHODS:
        unit, metrics = runs[0]
        return {"model": str(unit.directory / "classifier.keras"), "metrics": metrics}
    sweep = [train_lib.sweep_row(metrics) for _, metrics in runs]
    selected_unit, selected = runs[train_lib.best_by_validation(sweep)]
    io_utils.write_json(
        Path(config.out) / "train" / method / "selection.json",
        {
            "selected_lambda": selected["reg_lambda"],
            "selected_by": "validation_accuracy",
            "sweep": sweep,
        },
    )
    return {
        "model": str(selected_unit.directory / "classifier.keras"),
        "metrics": selected,
        "sweep": sweep,
    }


def _export_config(config: ReproduceConfig, method: str, model: str, mode: str):
    """The aftt-export configuration of one method's int8 file in one mode."""
    from aftt_tf.deploy import export_lib

    directory = Path(config.out) / "export" / method
    if mode != "ptq":
        directory = Path(config.out) / f"export_{mode}" / method
    return export_lib.ExportConfig(
        model=model,
        out=str(directory),
        formats=(INT8_MODE_FORMATS[mode],),
        calibration_steps=config.calibration_steps,
        data_options=frontend.DataOptions(data_dir=config.train.data_dir),
        test_examples=config.train.test_examples,
        overwrite=True,
        seed=config.train.seed,
        qat_epochs=config.fault_qat_epochs,
        qat_examples=0,
        fault_calibration_rates=config.fault_calibration_rates,
        fault_qat_max_rate=config.fault_qat_max_rate,
    )


def _export_reusable(export_config, manifest_path: Path) -> bool:
    """A finished export of the same source model with the same options."""
    if not manifest_path.exists():
        return False
    manifest = io_utils.read_json(manifest_path)
    recorded = io_utils.read_json(manifest_path.parent / "config.json")
    options = dataclasses.asdict(export_config)
    keys = ["formats", "calibration_steps", "seed"]
    if "tflite_int8_fault_calibrated" in export_config.formats:
        keys += ["fault_calibration_kind", "fault_calibration_rates", "fault_calibration_draws"]
    if "tflite_int8_fault_qat" in export_config.formats:
        keys += ["qat_epochs", "qat_learning_rate", "fault_qat_max_rate"]
    same_source = manifest["source_model"]["sha256"] == io_utils.sha256_file(export_config.model)
    return same_source and all(
        json.dumps(recorded.get(key)) == json.dumps(options[key]) for key in keys
    )


def export_stage(
    config: ReproduceConfig, trained: dict[str, Any], log: Log
) -> dict[str, dict[str, Any]]:
    """Full-int8 TFLite exports of every method's model: PTQ, plus the other int8 modes
    (reused while the source model and the options are unchanged). Returns {method:
    PTQ entry with "modes": {runtime: entry}}."""
    from aftt_tf.deploy import export_lib

    modes = ["ptq"] + [m for m in config.int8_modes if m not in ("ptq", "chip_calibrated")]
    progress = Progress("export", len(trained) * len(modes))
    exports = {}
    for method, entry in trained.items():
        by_runtime = {}
        for mode in modes:
            export_config = _export_config(config, method, entry["model"], mode)
            out = Path(export_config.out)
            file_name = TFLITE_FILES[INT8_MODE_FORMATS[mode]]
            label = method if mode == "ptq" else f"{method} ({mode})"
            if _export_reusable(export_config, out / "manifest.json"):
                manifest = io_utils.read_json(out / "manifest.json")
                log({"stage": "export", "unit": label, "action": "reused"})
                progress.skip(1)
                progress.print(f"{label}: reused {out}")
            else:
                manifest = export_lib.export_classifier(export_config)
                log({"stage": "export", "unit": label, "action": "ran"})
                accuracy = manifest["artifacts"][file_name]["test_accuracy"]
                progress.advance(
                    1, f"{label}: int8 test accuracy {100 * accuracy:.2f}%", force=True
                )
            by_runtime[int8_runtime(mode)] = {
                "model": str(out / file_name),
                "test_accuracy": manifest["artifacts"][file_name]["test_accuracy"],
                "keras_test_accuracy": manifest["keras_test_accuracy"],
            }
        if "chip_calibrated" in config.int8_modes:
            by_runtime["int8_chip_calibrated"] = {
                **by_runtime["int8"],
                "files": _chip_exports(config, method, entry["model"], log),
            }
        exports[method] = {**by_runtime["int8"], "modes": by_runtime}
    return exports


CHIP_DRAWS = 2


def _chip_exports(config: ReproduceConfig, method: str, model: str, log: Log) -> dict:
    """{kind: {rate: path}}: per fault kind and nonzero rate, the int8 file calibrated
    under that kind of faults at that rate (OUT/export_chip_calibrated/<method>/), reused
    while the source model and the options are unchanged."""
    out = Path(config.out) / "export_chip_calibrated" / method
    kinds = list(config.faults)
    rates = [rate for rate in config.rates if rate > 0]
    record = {
        "source_sha256": io_utils.sha256_file(model),
        "calibration_steps": config.calibration_steps,
        "seed": config.train.seed,
        "draws": CHIP_DRAWS,
    }
    files = {kind: {rate: out / f"{kind}_{rate:g}.tflite" for rate in rates} for kind in kinds}
    manifest_path = out / "chip_manifest.json"
    manifest = io_utils.read_json(manifest_path) if manifest_path.exists() else {}
    if manifest.get("record") == record and all(
        f"{kind}_{rate:g}" in manifest.get("files", {}) for kind in kinds for rate in rates
    ):
        log({"stage": "export", "unit": f"{method} (chip_calibrated)", "action": "reused"})
        return {kind: {f"{r:g}": str(path) for r, path in by.items()} for kind, by in files.items()}
    written = _write_chip_files(config, model, files)
    io_utils.write_json(manifest_path, {"record": record, "files": written})
    log({"stage": "export", "unit": f"{method} (chip_calibrated)", "action": "ran"})
    return {kind: {f"{r:g}": str(path) for r, path in by.items()} for kind, by in files.items()}


def _write_chip_files(config: ReproduceConfig, model: str, files: dict) -> dict[str, str]:
    """Writes the per-rate files (each complete before the manifest names it)."""
    import tempfile

    from aftt_tf.data import datasets as data
    from aftt_tf.deploy import export_lib, fault_calibration
    from aftt_tf.runtimes import keras_runner

    deployable = export_lib.deployable_classifier(keras_runner.load_model(model))
    arrays, _ = data.load_arrays(config.train.dataset, config.train.data_dir or None)
    representative = export_lib._representative_dataset(
        arrays["train"][0], config.calibration_steps, 32, config.train.seed
    )
    written = {}
    with tempfile.TemporaryDirectory() as staging:
        deployable.export(f"{staging}/saved_model", format="tf_saved_model", verbose=False)
        for kind, by_rate in files.items():
            contents = fault_calibration.per_rate_int8(
                f"{staging}/saved_model",
                representative,
                kind,
                tuple(by_rate),
                CHIP_DRAWS,
                1000 + config.train.seed,
            )
            for rate, path in by_rate.items():
                io_utils.write_bytes_atomic(path, contents[rate])
                written[f"{kind}_{rate:g}"] = io_utils.sha256_file(path)
    return written


def _node_layers(model, scope: str) -> tuple[str, ...]:
    """Hidden fully connected layers in `scope`: where the paper puts node faults, and
    the node faults both runtimes can place identically."""
    import keras

    from aftt_tf.runtimes import targets

    return tuple(
        layer.name
        for layer in targets.hidden_weight_layers(model, (keras.layers.Dense,))
        if vocabulary.in_scope(layer.name, scope)
    )


def _campaign_plans(config: ReproduceConfig, reference) -> list[tuple[str, Any, str | None]]:
    """(name, (runtime, spec) or None, reason not run) per kind x scope x runtime, then the
    repaired campaigns ('repaired' runtime: Keras float32 with a repair per cell)."""
    plans = []
    for kind in config.faults:
        for scope in config.scopes:
            layers, reason = _campaign_layers(config, reference, kind, scope)
            runs = []
            if "deployed" in config.protocols:
                runs += [(runtime, 0) for runtime in config.int8_runtimes()]
            if "repaired" in config.protocols:
                runs += [("repaired", epochs) for epochs in config.repair_epochs]
            for runtime, epochs in runs:
                name = campaign_name(
                    kind, scope, "keras" if epochs else runtime, config.variant, epochs
                )
                rates = config.repair_rates_for(kind) if epochs else config.rates
                if reason or not rates:
                    plans.append((name, None, reason or _no_repair_rates(config, kind)))
                    continue
                spec = _campaign_spec(config, kind, scope, layers, epochs)
                plans.append((name, (runtime, spec), None))
    return plans


def _no_repair_rates(config: ReproduceConfig, kind: str) -> str:
    return (
        f"the paper quotes no {kind} fault rate for {config.train.architecture}; give "
        "--repair_rates to repair these faults"
    )


def _campaign_layers(config: ReproduceConfig, reference, kind: str, scope: str):
    """(layer names or () for every layer the kind takes, reason the campaign cannot run)."""
    from aftt_tf.faults import kinds
    from aftt_tf.runtimes import targets

    fault_kind = kinds.get(kind)
    if fault_kind.on_outputs:  # The paper's node faults: hidden fully connected layers.
        layers = _node_layers(reference, scope)
        return layers, None if layers else f"no hidden fully connected layer in scope {scope!r}"
    if fault_kind.per_element and fault_kind.stuck_at_zero and config.weight_kernels == "4d":
        layers = tuple(
            layer.name
            for layer in targets.weight_layers(reference)
            if vocabulary.in_scope(layer.name, scope)
            and any(len(weight.shape) == 4 for weight in layer.weights[:1])
        )
        if not layers:
            return (), (
                f"--weight_kernels=4d: no 4-D (convolution) kernel in scope {scope!r}; the "
                "paper's Fig. 1 code would fault no weight of this network"
            )
        return layers, None
    return (), None


def _campaign_spec(config: ReproduceConfig, kind: str, scope: str, layers, repair_epochs: int):
    from aftt_tf.faults.spec import FaultSpec

    repaired = bool(repair_epochs)
    return FaultSpec(
        kind=kind,
        rates=config.repair_rates_for(kind) if repaired else config.rates,
        trials=(config.repair_trials or config.trials) if repaired else config.trials,
        seed=config.campaign_seed,
        scope=scope,
        layers=layers,
        sampling=config.sampling,
        repair=config.repair_protocol(repair_epochs) if repaired else None,
    )


def campaign_stage(
    config: ReproduceConfig,
    trained: dict[str, Any],
    exports: dict[str, Any],
    test_data: tuple[np.ndarray, np.ndarray],
    train_data: tuple[np.ndarray, np.ndarray],
    log: Log,
    executor: Any = None,
) -> dict[str, dict[str, Any]]:
    """Runs every (kind, scope, runtime) campaign over all methods, paired (on `executor`'s
    workers when given), then the repaired ones (on `train_data`); returns {name:
    results.json content, or {"skipped": reason}}."""
    from aftt_tf.runtimes import keras_runner

    keras_models = {m: keras_runner.load_model(e["model"]) for m, e in trained.items()}
    plans = _campaign_plans(config, next(iter(keras_models.values())))
    sizes = [
        len(trained) * (len(plan[1].rates) * plan[1].trials if plan else len(config.rates))
        for _, plan, _ in plans
    ]
    progress = Progress("campaigns", sum(sizes) or 1)
    results = {}
    for (name, plan, reason), size in zip(plans, sizes, strict=True):
        if plan is None:
            results[name] = {"skipped": reason}
            progress.skip(size)
            progress.print(f"{name}: not run ({reason})")
            continue
        runtime, spec = plan
        models = _runtime_models(runtime, keras_models, exports, train_data, spec.kind)
        results[name] = _run_one_campaign(
            config,
            name,
            (runtime, spec),
            models,
            test_data,
            progress,
            log,
            None if runtime == "repaired" else executor,
        )
    return results


def _runtime_models(
    runtime: str, keras_models: dict, exports: dict, train_data: tuple, kind: str = "weight"
):
    from aftt_tf.runtimes import keras_runner, tflite_runner

    if runtime == "repaired":
        from aftt_tf.training import repair

        return {m: repair.RepairingModel(model, *train_data) for m, model in keras_models.items()}
    if runtime == "keras":
        return {m: keras_runner.KerasModel(model) for m, model in keras_models.items()}
    if runtime == "int8_chip_calibrated":
        return {
            m: tflite_runner.PerRateTFLiteModel(
                {
                    0.0: tflite_runner.TFLiteModel.load(e["model"]),
                    **{
                        float(rate): tflite_runner.TFLiteModel.load(path)
                        for rate, path in e["modes"][runtime]["files"][kind].items()
                    },
                }
            )
            for m, e in exports.items()
        }
    return {
        m: tflite_runner.TFLiteModel.load(e["modes"][runtime]["model"]) for m, e in exports.items()
    }


def _run_one_campaign(
    config: ReproduceConfig,
    name: str,
    plan: tuple[str, Any],
    models: dict[str, Any],
    test_data: tuple[np.ndarray, np.ndarray],
    progress: Progress,
    log: Log,
    executor: Any = None,
) -> dict[str, Any]:
    """Runs (or resumes) one paired campaign; a model that cannot take it skips it."""
    runtime, spec = plan
    from aftt_tf.campaigns import engine as campaign
    from aftt_tf.faults.spec import FaultTargetError

    cells_per_campaign = len(spec.rates) * spec.trials * len(models)
    try:
        for model in models.values():
            model.select_layers(spec)
    except FaultTargetError as error:
        progress.skip(cells_per_campaign)
        progress.print(f"{name}: not run ({error})")
        return {"skipped": str(error)}
    progress.print(
        f"{name}: {spec.kind} faults, scope {spec.selection.scope}, {_where(runtime, spec)}"
    )
    ran = 0

    def on_cell(cell):
        nonlocal ran
        ran += 1
        progress.advance(1, name)

    result = campaign.run_campaign(
        models,
        spec,
        *test_data,
        Path(config.out) / "campaigns" / name,
        batch_size=config.campaign_batch_size,
        progress=False,
        on_cell=on_cell,
        executor=executor,
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
        verdict = (result.get("verdict") or {}).get("text", "one model: no comparison")
        progress.advance(0, f"{name} finished: {verdict}", force=True)
    else:
        progress.print(f"{name}: reused all {result['skipped_cells']} cells")
    return result


def statistics_stage(
    config: ReproduceConfig, trained: dict, exports: dict, test_images: np.ndarray, log: Log
) -> dict[str, Any]:
    """Per-layer int8 statistics under weight faults (scope all, the campaign's rates and
    seed, 3 fault maps, 500 test images) of every int8 file beside its Keras model;
    OUT/int8_stats/<method>_<runtime>.json, reused while the file is unchanged."""
    from aftt_tf.campaigns import int8_stats
    from aftt_tf.faults.spec import FaultSpec
    from aftt_tf.runtimes import keras_runner, tflite_runner

    spec = FaultSpec(kind="weight", rates=config.rates, trials=3, seed=config.campaign_seed)
    images = test_images[:500].astype(np.float32) / 255.0
    results = {}
    for method, entry in exports.items():
        keras_model = keras_runner.load_model(trained[method]["model"])
        for runtime, export in entry["modes"].items():
            if runtime not in config.int8_runtimes() or "files" in export:
                continue  # Per-rate files (chip_calibrated) are described by their rate.
            key = f"{method}, {RUNTIME_NAMES[runtime]}"
            path = Path(config.out) / "int8_stats" / f"{method}_{runtime}.json"
            digest = io_utils.sha256_file(export["model"])
            if path.exists() and io_utils.read_json(path).get("sha256") == digest:
                results[key] = io_utils.read_json(path)
                log({"stage": "int8_stats", "unit": key, "action": "reused"})
                continue
            model = tflite_runner.TFLiteModel.load(export["model"])
            result = int8_stats.diagnose(model, spec, images, 3, keras_model)
            results[key] = {**result, "sha256": digest, "file": export["model"]}
            io_utils.write_json(path, results[key])
            log({"stage": "int8_stats", "unit": key, "action": "ran"})
    return results


def _where(runtime: str, spec) -> str:
    if spec.repair:
        return f"Keras float32, each cell repaired for {spec.repair.epochs} epoch(s)"
    return RUNTIME_NAMES[runtime]


def reproduce(config: ReproduceConfig) -> dict[str, Any]:
    """Runs (or resumes) every stage; returns the report's results (also OUT/results.json).

    OUT is checked before any data is read and locked for the whole run.
    """
    config.validate()
    check_output_directory(config)
    from aftt_tf.training import train_lib

    splits = train_lib.load_config_splits(config.train)  # Missing data fails before writing.
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    with io_utils.DirectoryLock(out / io_utils.LOCK_FILE, str(out)):
        check_output_directory(config)  # Again, now that no one else can write.
        return _run_stages(config, splits, out)


@contextlib.contextmanager
def _ray_session(config: ReproduceConfig):
    """For executor='ray', a connection to the cluster (or a local instance started here)
    for the whole reproduction; nothing for a local run."""
    if config.executor != "ray":
        yield
        return
    from aftt_tf.campaigns import ray_executor

    started = ray_executor.connect(config.ray_config())
    try:
        yield
    finally:
        if started:
            ray_executor.import_ray().shutdown()
            ray_executor.stop_watchdog()


@contextlib.contextmanager
def _campaign_executor(config: ReproduceConfig):
    """The campaign actors of executor='ray' (started after training: they hold CPUs)."""
    if config.executor != "ray":
        yield None
        return
    from aftt_tf.campaigns import ray_executor

    with ray_executor.RayExecutor(config.ray_config()) as executor:
        yield executor


def _run_stages(config: ReproduceConfig, splits, out: Path) -> dict[str, Any]:
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
    with _ray_session(config):
        trained = train_stage(config, splits, log)
        exports = export_stage(config, trained, log) if "int8" in config.runtimes else {}
        test_images, test_labels = splits.test_images, splits.test_labels
        if config.campaign_test_examples:
            test_images = test_images[: config.campaign_test_examples]
            test_labels = test_labels[: config.campaign_test_examples]
        with _campaign_executor(config) as executor:
            campaigns = campaign_stage(
                config,
                trained,
                exports,
                (test_images, test_labels),
                (splits.train_images, splits.train_labels),
                log,
                executor,
            )
        statistics = (
            statistics_stage(config, trained, exports, test_images, log)
            if config.per_layer_stats and exports
            else {}
        )
    from aftt_tf.reproduce import report

    results = report.write(config, trained, exports, campaigns, len(test_labels), statistics)
    log({"stage": "report", "unit": "report", "action": "ran", "seconds": time.time() - started})
    return results
