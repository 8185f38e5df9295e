"""`compare(config)`: the paper's comparison on the user's own model and data
(`aftt-reproduce --model=FILE.keras --data=...`): every chosen method hardens the user's
model (`training.harden_run`), each result is exported to int8 (`deploy.export_lib`),
and paired campaigns measure every method on the same fault positions, in float32
(Keras) and int8 (.tflite), for the fault kinds that apply: weight and node always,
filter only with convolutions, stuck_value, bit and transient activation bit flips
(activation_bit) when `range` is compared (range restriction is meant for the last).
One report
(`campaign_report`) puts them side by side. Resumable: finished runs, exports and
campaign cells are reused.

    OUT/runs/<method>/        aftt-train --model run directories
    OUT/export_<method>/      their int8 exports
    OUT/campaigns/<runtime>_<kind>/   paired campaigns of every method
    OUT/report.md, report.html
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from aftt_tf import io_utils, methods, progress, vocabulary
from aftt_tf.data import frontend

RUNTIMES = vocabulary.COMPARISON_RUNTIMES


@dataclasses.dataclass(frozen=True)
class ComparisonConfig:
    """A comparison of methods on the user's model.

    Attributes:
        model: the user's trained .keras classifier.
        out: the comparison's directory.
        methods: harden methods compared (at least two).
        harden: the shared `harden.HardenConfig` (its method is replaced per run).
        data_options: training data and input transform (`frontend.DataOptions`).
        test_data: the campaigns' and exports' data (default: a built-in or TFDS test
            split; required for a file, so that nothing is measured on training data).
        faults: fault kinds ('' picks: weight, node, filter with convolutions, and
            stuck_value, bit and activation_bit when range is compared).
        rates, trials, seed: the campaigns (per kind, bit faults use `bit_rates`); with
            `cliff` (the default) the rates are found per campaign on the first
            method's model (about 90%, 50% and 20% of its accuracy above chance kept).
        bit_rates: rates of bit campaigns (bits are far more harmful per fault).
        transient_rates: rates of activation_bit campaigns (per output value).
        test_examples: campaign test examples (0: all).
        runtimes: 'keras' and/or 'int8'.
    """

    model: str
    out: str
    methods: tuple[str, ...]
    harden: Any
    data_options: frontend.DataOptions
    test_data: str = ""
    faults: tuple[str, ...] = ()
    rates: tuple[float, ...] = (0.0, 0.1, 0.3, 0.5)
    # Rates at the cliff of the first method's model (faults.cliff) instead of `rates`,
    # `bit_rates` and `transient_rates`: every kind compared where the plain model works.
    cliff: bool = True
    bit_rates: tuple[float, ...] = (0.0, 0.0001, 0.001)
    transient_rates: tuple[float, ...] = (0.0, 0.0001, 0.001)
    trials: int = 10
    seed: int = 0
    test_examples: int = 2000
    runtimes: tuple[str, ...] = RUNTIMES

    def validate(self) -> None:
        from aftt_tf.training.harden import HARDEN_METHODS

        unknown = [m for m in self.methods if m not in HARDEN_METHODS]
        if unknown or len(set(self.methods)) < 2:
            raise ValueError(
                f"--methods must name two or more of {', '.join(HARDEN_METHODS)} (a comparison); "
                f"received {list(self.methods)}."
            )
        bad = [r for r in self.runtimes if r not in RUNTIMES]
        if bad or not self.runtimes:
            raise ValueError(f"--runtimes must be a subset of {RUNTIMES}, received {bad}.")
        source = frontend.resolve_source(self.data_options.data, self.model)
        if not self.test_data and ":" in source and not source.startswith("tfds:"):
            raise ValueError(
                "--test_data is required with a training file: the campaigns and exports "
                "measure on data the methods were not trained on."
            )
        self.data_options.validate()
        for method in self.methods:  # Each run reads its own options.
            self.harden.for_method(method).validate()
        unused = set.intersection(
            *(
                set(dataclasses.replace(self.harden, method=m).unread_options())
                for m in self.methods
            )
        )
        if unused:
            raise ValueError(
                f"{sorted(unused)[0]} is read by none of --methods={','.join(self.methods)}; "
                "add a method that reads it or leave it out."
            )

    def test_source(self) -> str:
        return self.test_data or frontend.resolve_source(self.data_options.data, self.model)


def fault_kinds(config: ComparisonConfig, model) -> list[str]:
    """The kinds that apply to this model and comparison (see ComparisonConfig.faults)."""
    if config.faults:
        return list(config.faults)
    import keras

    from aftt_tf.runtimes import registry

    kinds = ["weight", "node"]
    if any(
        isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D))
        for layer in registry.flat_layers(model)
    ):
        kinds.append("filter")
    if any(methods.get(method).restricts_range for method in config.methods):
        kinds += ["stuck_value", "bit", "activation_bit"]  # What range restriction targets.
    return kinds


def compare(config: ComparisonConfig) -> dict[str, Any]:
    """Runs (or resumes) the comparison; returns {'report': path, 'verdicts': lines}."""
    from aftt_tf.reproduce import campaign_report
    from aftt_tf.runtimes import keras_runner

    config.validate()
    out = Path(config.out)
    io_utils.check_output_path(out)
    kinds = fault_kinds(config, keras_runner.load_model(config.model))
    int8 = "int8" in config.runtimes
    steps = len(config.methods) * (1 + int8) + len(config.runtimes) * len(kinds)
    step = _Steps(progress.Progress("aftt-reproduce --model", steps))
    runs = {method: step(f"{method} trained", _harden, config, method) for method in config.methods}
    exports = {}
    if int8:
        exports = {
            method: step(f"{method} exported", _export, config, method, run)
            for method, run in runs.items()
        }
    directories, verdicts = [], []
    for runtime in config.runtimes:
        files = runs if runtime == "keras" else exports
        for kind in kinds:
            directory = out / "campaigns" / f"{runtime}_{kind}"
            results = step(f"{runtime} {kind} campaign", _campaign, config, files, kind, directory)
            directories.append(directory)
            if results.get("verdict"):
                verdicts.append(f"{runtime}, {kind} faults: {results['verdict']['text']}")
    markdown, _ = campaign_report.write(directories, out, owner="aftt-reproduce --model")
    return {"report": str(markdown), "verdicts": verdicts, "kinds": kinds}


class _Steps:
    """Runs the comparison's steps (trainings, exports, campaigns) with overall progress
    and time left; a step found finished (resumed in under a second) costs nothing."""

    def __init__(self, bar: progress.Progress):
        self.bar = bar

    def __call__(self, message: str, function, *args):
        start = time.perf_counter()
        result = function(*args)
        if time.perf_counter() - start < 1.0:
            self.bar.skip(1.0)
        else:
            self.bar.advance(1.0, message, force=True)
        return result


def _harden(config: ComparisonConfig, method: str) -> Path:
    from aftt_tf.training import harden_run

    run = harden_run.HardenRunConfig(
        model=config.model,
        out=str(Path(config.out) / "runs" / method),
        harden=config.harden.for_method(method),
        data_options=config.data_options,
        test_data=config.test_data,
    )
    logging.info("Hardening with %s into %s", method, run.out)
    harden_run.run(run)
    return Path(run.out) / "classifier.keras"


def _export(config: ComparisonConfig, method: str, model: Path) -> Path:
    from aftt_tf.deploy import export_lib

    out = Path(config.out) / f"export_{method}"
    manifest = out / "manifest.json"
    if manifest.is_file():
        recorded = io_utils.read_json(manifest).get("source_model", {}).get("sha256")
        if recorded == io_utils.sha256_file(model):
            return out / "model_int8.tflite"
    options = config.data_options
    export_lib.export_classifier(
        export_lib.ExportConfig(
            model=str(model),
            out=str(out),
            formats=("tflite_int8",),
            data_options=dataclasses.replace(options, data=config.test_source()),
            calibration_data=options.data or "",
            test_examples=config.test_examples,
            overwrite=True,
        )
    )
    return out / "model_int8.tflite"


def _campaign(config: ComparisonConfig, files: dict[str, Path], kind: str, directory: Path):
    from aftt_tf.campaigns import campaign_lib
    from aftt_tf.faults import kinds
    from aftt_tf.faults.spec import FaultSpec

    fault_kind = kinds.get(kind)
    rates = config.rates
    if fault_kind.bit_meaning:  # Bits of values: the rates of bit and transient bit faults.
        rates = config.transient_rates if fault_kind.transient else config.bit_rates
    campaign = campaign_lib.CampaignConfig(
        models=tuple(f"{method}={path}" for method, path in files.items()),
        out=str(directory),
        spec=FaultSpec(kind=kind, rates=tuple(rates), trials=config.trials, seed=config.seed),
        data_options=dataclasses.replace(config.data_options, data=config.test_source()),
        test_examples=config.test_examples,
        cliff=config.cliff,
    )
    logging.info("Campaign %s", directory)
    return campaign_lib.run(campaign)
