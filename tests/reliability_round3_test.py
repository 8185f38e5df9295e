"""Reliability, round three (issue 30): silent wrong numbers, destructive outputs, a
traceback and a hang found by hostile inputs on the newest surfaces. Each test fails on
the behaviour reported. NaN/Inf parity of every layer type is in nan_parity_test.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from aftt_tf import io_utils
from aftt_tf.campaigns import engine as campaign
from aftt_tf.faults import fault_map, systolic
from aftt_tf.faults.spec import FaultSpec
from aftt_tf.reproduce import campaign_report
from aftt_tf.training import harden
from aftt_tf.training.config import MAX_EPOCHS
from tests import tiny_models

REPO = Path(__file__).resolve().parents[1]
L = keras.layers


def _model(seed: int = 0) -> keras.Model:
    return tiny_models.dense_classifier(seed=seed)


def _data(model, count: int = 64):
    return tiny_models.own_labels(model, count)


# Fault maps: one element once, every value checked, errors that name file and entry.


def _map(tmp_path, faults, name="map.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"format": fault_map.FORMAT, "faults": faults}))
    return path


def test_a_flat_and_a_multi_index_of_one_element_are_one_element(tmp_path):
    path = _map(
        tmp_path,
        [
            {"layer": "hidden", "attribute": "kernel", "index": 9, "kind": "stuck_at_0"},
            {
                "layer": "hidden",
                "attribute": "kernel",
                "index": [1, 1],
                "kind": "stuck_value",
                "value": 2.0,
            },
        ],
    )
    loaded = fault_map.load(path)
    with pytest.raises(ValueError, match=r"element 9 of hidden/kernel twice"):
        fault_map.check_fits(loaded, {("hidden", "kernel"): (6, 8)}, "this campaign")


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"kind": "stuck_value"}, "needs its value"),
        ({"kind": "stuck_value", "value": None}, "needs its value"),
        ({"index": 1.5}, "must be integers, received 1.5"),
        ({"index": True}, "must be integers, received True"),
        ({"index": [0, False]}, "must be integers, received False"),
        ({"kind": "stuck_value", "value": 1e39}, "finite float32"),
        ({"kind": "stuck_value", "value": "big"}, "is not a number"),
        ({"kind": "stuck_at_0", "value": 3.0}, "holds 0, not value 3.0"),
    ],
)
def test_map_entries_are_checked_when_read(tmp_path, entry, message):
    fault = {"layer": "hidden", "attribute": "kernel", "index": 3, "kind": "stuck_at_0", **entry}
    with pytest.raises(ValueError, match=message) as error:
        fault_map.load(_map(tmp_path, [fault]))
    assert "map.json fault 1" in str(error.value)


def test_csv_maps_name_the_header_file_and_line(tmp_path):
    headless = tmp_path / "headless.csv"
    headless.write_text("hidden,kernel,3,stuck_at_0,\n")
    with pytest.raises(ValueError, match="headless.csv: the first line must be the header"):
        fault_map.load(headless)
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "layer,attribute,index,kind,value\nhidden,kernel,3,stuck_at_0,\nhidden,kernel,1.5,stuck_at_0,\n"
    )
    with pytest.raises(ValueError, match=r"bad.csv line 3: index '1.5'"):
        fault_map.load(bad)
    good = tmp_path / "good.csv"
    good.write_text("layer,attribute,index,kind,value\nhidden,kernel,1:2,stuck_value,0.5\n")
    assert fault_map.load(good).faults[0].index == (1, 2)


def test_a_deep_json_map_is_named(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="deep.json"):
        fault_map.load(deep)


def test_a_map_campaign_reports_the_fault_free_accuracy_as_clean(tmp_path):
    """Rate 0 of a map campaign is the mapped chip; clean accuracy is the model's own and
    a chip at chance is a result, not a data error."""
    model = _model()
    images, labels = _data(model)
    faults = [
        {"layer": "hidden", "attribute": "kernel", "index": [i, j], "kind": "stuck_at_0"}
        for i in range(6)
        for j in range(8)
    ]
    spec = FaultSpec(kind="weight", rates=(0.0,), trials=1, fault_map=str(_map(tmp_path, faults)))
    results = campaign.run_campaign(
        {"m": model}, spec, images, labels, tmp_path / "out", progress=False
    )
    entry = results["summary"]["m"]["all"]
    assert entry["clean_accuracy"] == 1.0  # Labels are the model's own predictions.
    assert entry["mapped_chip_accuracy"] < 0.7


# Training: no split at the output, no NaN model hardened, no endless runs.


def test_the_output_layer_is_no_split_for_aftt():
    with pytest.raises(ValueError, match="leaves no layer with weights after it"):
        harden.split_models(_model(), "out")


def test_a_model_with_nan_weights_is_refused_before_training():
    model = _model()
    kernel = model.get_layer("hidden").kernel
    kernel.assign(np.where(np.arange(48).reshape(6, 8) == 5, np.nan, np.asarray(kernel)))
    with pytest.raises(ValueError, match=r"hold NaN or Inf \(.*hidden"):
        harden.check_model(model, harden.HardenConfig(method="none", epochs=1))


def test_training_that_ends_with_nan_weights_is_not_saved_as_hardened(monkeypatch):
    """Whatever made them (a diverged step a fused kernel hid), NaN weights after
    training are an error naming the variable, not a hardened model."""
    model = _model()
    images, labels = _data(model, 128)
    supervised = harden._supervised

    def diverging(model_, *args, **kwargs):
        result = supervised(model_, *args, **kwargs)
        model_.get_layer("out").bias.assign(np.full(3, np.nan, np.float32))
        return result

    monkeypatch.setattr(harden, "_supervised", diverging)
    config = harden.HardenConfig(method="none", epochs=1, batch_size=16)
    with pytest.raises(ValueError, match=r"none on .*hold NaN or Inf \(.*out.*training diverged"):
        harden.harden(model, config, harden.TrainingData(images, labels))


def test_epoch_counts_beyond_any_run_are_refused():
    with pytest.raises(ValueError, match=f"beyond {MAX_EPOCHS:,} epochs"):
        harden.HardenConfig(method="none", epochs=10**12).validate()


def test_protected_with_node_faults_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--fault_aware_kinds=weight with --protected"):
        harden.HardenConfig(method="fat", protected=str(tmp_path / "p.json")).validate()


def test_fault_kind_messages_name_the_flags():
    with pytest.raises(ValueError, match="--fault_aware_kinds=bogus"):
        harden.HardenConfig(method="fat", fault_kinds=("bogus",)).validate()
    with pytest.raises(ValueError, match="--fault_aware_max_rate"):
        harden.HardenConfig(method="fat", fault_max_rate=2.0).validate()


def test_batch_normalization_is_recorded_as_it_was():
    model = _model()
    images, labels = _data(model, 64)
    config = harden.HardenConfig(method="none", epochs=1, batch_size=16)
    _, record = harden.harden(model, config, harden.TrainingData(images, labels))
    assert record["batch_normalization"] == "none in the model"


def test_a_huge_systolic_array_is_refused_not_allocated():
    with pytest.raises(ValueError, match=r"10,000,000,000 PEs"):
        systolic.parse_array("100000x100000")
    assert systolic.parse_array("256x256") == (256, 256)


# aftt-report owns its output directory like every other binary.


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    model = _model()
    images, labels = _data(model)
    out = tmp_path_factory.mktemp("campaign") / "c"
    spec = FaultSpec(kind="weight", rates=(0.0, 0.5), trials=2)
    campaign.run_campaign({"m": model}, spec, images, labels, out, progress=False)
    return out


def test_report_never_overwrites_a_users_files(finished, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my notes")
    with pytest.raises(io_utils.OutputError, match="did not write"):
        campaign_report.write([finished], mine)
    assert (mine / "report.md").read_text() == "my notes"
    assert not (mine / "figures").exists()


def test_report_refuses_a_campaign_directory_as_out(finished):
    before = sorted(p.name for p in finished.iterdir())
    with pytest.raises(io_utils.OutputError, match="inside the campaign directory"):
        campaign_report.write([finished], finished)
    with pytest.raises(io_utils.OutputError, match="inside the campaign directory"):
        campaign_report.write([finished], finished / "report")
    assert sorted(p.name for p in finished.iterdir()) == before


def test_report_rewrites_its_own_output_and_refuses_a_directory_twice(finished, tmp_path):
    out = tmp_path / "report"
    campaign_report.write([finished], out)
    first = (out / "report.md").read_text()
    campaign_report.write([finished], out)  # Its own directory: written again.
    assert (out / "report.md").read_text() == first
    with pytest.raises(ValueError, match="given twice"):
        campaign_report.write([finished, Path(str(finished) + "/")], tmp_path / "other")


def test_report_of_a_running_campaign_says_so(finished, tmp_path):
    with io_utils.DirectoryLock(finished / io_utils.LOCK_FILE, str(finished)):
        markdown, _ = campaign_report.write([finished], tmp_path / "report")
    assert "Still running" in markdown.read_text()


def test_report_out_that_is_a_file_is_a_usage_error(finished, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    result = subprocess.run(
        [sys.executable, "-m", "aftt_tf.cli.report", str(finished), f"--out={target}"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "is a file" in result.stderr


# Pairing like for like.


def test_models_that_fault_other_layers_or_elements_are_not_paired():
    model = _model()
    images, labels = _data(model)
    spec = FaultSpec(kind="weight", rates=(0.0, 0.3), trials=2)
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6,))
    hidden = L.Dense(8, activation="relu", name="first")(inputs)
    renamed = keras.Model(inputs, L.Dense(3, name="out")(hidden))
    with pytest.raises(ValueError, match=r"do not fault the same layers .*'first'"):
        campaign.check_inputs({"a": model, "b": renamed}, spec, images, labels, "raw")
    hidden = L.Dense(16, activation="relu", name="hidden")(inputs)
    wider = keras.Model(inputs, L.Dense(3, name="out")(hidden))
    with pytest.raises(ValueError, match=r"96 kernel elements in layer 'hidden' and a 48"):
        campaign.check_inputs({"a": model, "b": wider}, spec, images, labels, "raw")
    campaign.check_inputs({"a": model, "b": _model(seed=2)}, spec, images, labels, "raw")


@pytest.fixture(scope="module")
def folded(tmp_path_factory):
    """A conv + BatchNormalization model and its float32 file (the converter folds it)."""
    from tests import conversion

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Conv2D(4, 3, name="conv"),
            L.BatchNormalization(name="bn"),
            L.ReLU(),
            L.Flatten(),
            L.Dense(3, name="out"),
        ]
    )
    bn = model.get_layer("bn")
    bn.set_weights([np.full(4, 2.0), np.full(4, 0.5), np.full(4, 0.1), np.full(4, 4.0)])
    images = np.random.default_rng(0).random((64, 8, 8, 1)).astype(np.float32)
    root = tmp_path_factory.mktemp("folded")
    path = conversion.tflite_files(model, root, "m", images, modes=("float32",))["float32"]
    return model, path, images


def test_a_map_value_the_file_stores_folded_is_refused_in_the_file(folded, tmp_path):
    from aftt_tf.data import inputs
    from aftt_tf.faults.spec import FaultTargetError
    from aftt_tf.runtimes import tflite_runner

    model, path, images = folded
    labels = np.argmax(np.asarray(model(images)), -1)
    value = {"layer": "conv", "attribute": "kernel", "index": 3, "kind": "stuck_value"}
    spec = FaultSpec(
        kind="weight",
        rates=(0.0,),
        layers=("conv",),
        fault_map=str(_map(tmp_path, [{**value, "value": 0.75}])),
    )
    tflite = tflite_runner.TFLiteModel(path)
    with pytest.raises(FaultTargetError, match="folds BatchNormalization 'bn' into 'conv'"):
        tflite.runner(spec, images, labels, 64, inputs.resolve("raw"))
    zero = dict(value, kind="stuck_at_0")
    spec = FaultSpec(
        kind="weight",
        rates=(0.0,),
        layers=("conv",),
        fault_map=str(_map(tmp_path, [zero], "zero.json")),
    )
    tflite.runner(spec, images, labels, 64, inputs.resolve("raw"))  # 0 stays 0 when folded.


# Inputs named before any heavy work.


def test_a_directory_given_as_model_is_named(tmp_path):
    from aftt_tf.runtimes import keras_runner

    (tmp_path / "run").mkdir()
    _model().save(tmp_path / "run" / "classifier.keras")
    with pytest.raises(ValueError, match=r"is a directory; .* holds classifier.keras"):
        keras_runner.load_model(tmp_path / "run")


def test_a_model_of_two_inputs_is_named_not_blamed_on_the_data():
    from aftt_tf.runtimes import keras_runner

    a, b = keras.Input((4,)), keras.Input((2,))
    joined = L.Concatenate()([a, b])
    model = keras.Model([a, b], L.Dense(3)(joined))
    with pytest.raises(ValueError, match="takes 2 inputs"):
        _ = keras_runner.KerasModel(model).input_shape


def test_an_npz_spec_carries_its_own_keys(tmp_path):
    from aftt_tf.data import datasets as data

    np.savez(tmp_path / "test.npz", x_test=np.zeros((4, 6), np.float32), y_test=np.arange(4))
    loaded = data.load_evaluation_data(f"npz:{tmp_path / 'test.npz'}:x_test,y_test")
    assert loaded.images.shape == (4, 6) and list(loaded.labels) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="two names"):
        data.npz_spec("test.npz:a,b,c", ("x", "y"))


def test_missing_files_and_modules_are_named_before_tensorflow(tmp_path):
    """The campaign config's checks name a missing model, --data file or --import module
    without importing TensorFlow (which takes a minute under load)."""
    script = f"""
import sys
from aftt_tf.campaigns import campaign_lib
from aftt_tf.data.frontend import DataOptions
from aftt_tf.faults.spec import FaultSpec
def check(**kwargs):
    options = dict(models=("{tmp_path}/m.keras",), out="{tmp_path}/out", spec=FaultSpec())
    options.update(kwargs)
    try:
        campaign_lib.CampaignConfig(**options).validate()
    except (ValueError, FileNotFoundError) as error:
        print(error)
check()
open("{tmp_path}/m.keras", "w").close()
check(data_options=DataOptions(data="npz:{tmp_path}/none.npz"))
check(imports=("no_such_module_here",))
print("tensorflow" in sys.modules)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0, result.stderr[-2000:]
    assert "m.keras does not exist" in lines[0]
    assert "none.npz does not exist" in lines[1]
    assert "no module named 'no_such_module_here'" in lines[2]
    assert lines[3] == "False"


def test_a_plan_with_damaged_meta_names_the_file(tmp_path):
    from aftt_tf.faults import protection

    path = tmp_path / "plan.npz"
    np.savez(path, meta=np.frombuffer(b"\xff\xfe{", np.uint8), **{"h|kernel": np.zeros(3, bool)})
    with pytest.raises(ValueError, match=r"plan.npz: its 'meta' entry is not readable JSON"):
        protection.load(path)


def test_fault_aware_training_with_nothing_to_fault_is_refused():
    inputs = keras.Input((6,))
    model = keras.Model(inputs, L.Softmax()(inputs[:, :3]))
    config = harden.HardenConfig(method="fat", fault_kinds=("weight",), epochs=1)
    with pytest.raises(ValueError, match="would train without faults"):
        harden.check_model(model, config)


def test_an_unrolled_recurrent_files_shared_kernels_count_once(tmp_path):
    """Every step of an unrolled GRU reads the same kernels: the file's coverage counts
    them once (it reported 28 steps' worth before)."""
    from aftt_tf.runtimes import tflite_runner
    from tests import conversion

    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 4))
    model = keras.Model(inputs, L.Dense(3, name="out")(L.GRU(8, unroll=True, name="gru")(inputs)))
    images = np.random.default_rng(0).random((16, 12, 4)).astype(np.float32)
    path = conversion.tflite_files(model, tmp_path, "gru", images, modes=("float32",))["float32"]
    coverage = tflite_runner.TFLiteModel(path).coverage(FaultSpec(kind="weight"))
    kernels = sum(int(np.prod(w.shape)) for w in model.weights if "kernel" in w.path)
    assert coverage["model_weight_elements"] == kernels


def test_the_stderr_filter_keeps_the_last_lines_of_a_native_abort():
    """A binary's stderr passes a filter of TensorFlow's noise; lines written right
    before a native abort still reach the user (a filter thread lost them)."""
    import os

    script = (
        "import os, sys\n"
        "from aftt_tf.cli import common\n"
        "common.quiet_tensorflow()\n"
        "os.write(2, b'I0000 00:00:1.0 123 port.cc:153] oneDNN noise\\n')\n"
        "for i in range(200):\n"
        "    os.write(2, b'last words %d\\n' % i)\n"
        "os.abort()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, cwd=REPO, env=env, timeout=60
    )
    assert result.returncode != 0
    assert b"last words 199" in result.stderr and b"oneDNN" not in result.stderr


def test_rate_zero_is_evaluated_once_per_model(tmp_path, monkeypatch):
    """Rate 0 faults nothing: one evaluation per model, recorded for every trial."""
    from aftt_tf.runtimes import keras_runner

    calls = []
    original = keras_runner.CampaignRunner.evaluate_cell

    def counted(self, rate, trial):
        calls.append((rate, trial))
        return original(self, rate, trial)

    monkeypatch.setattr(keras_runner.CampaignRunner, "evaluate_cell", counted)
    model = _model()
    images, labels = _data(model)
    spec = FaultSpec(kind="weight", rates=(0.0, 0.3), trials=4)
    campaign.run_campaign({"m": model}, spec, images, labels, tmp_path / "c", progress=False)
    assert [call for call in calls if call[0] == 0.0] == [(0.0, 0)]
    cells = (tmp_path / "c" / "cells.jsonl").read_text().splitlines()
    assert sum(json.loads(line)["rate"] == 0.0 for line in cells) == 4
