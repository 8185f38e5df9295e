"""Reliability, round two: what hostile or careless input gets (issue 20). Each case was a
destructive, silently wrong, crashing or hanging behaviour before; every test here fails
on that behaviour. The first round's cases are in failure_test.py.

Most cases run in this process on tiny models (the module takes seconds, not minutes);
the few that are about a binary's exit status run it as a subprocess.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from aftt_tf import io_utils
from aftt_tf.campaigns import campaign_lib, cell_log, ray_executor, shards
from aftt_tf.campaigns import engine as campaign
from aftt_tf.cli import common
from aftt_tf.data import datasets as data
from aftt_tf.data import inputs
from aftt_tf.deploy import export_lib
from aftt_tf.faults.spec import FaultSpec, outcome_of
from aftt_tf.training import phases
from aftt_tf.training.repair_config import RepairConfig

REPO = Path(__file__).resolve().parents[1]


def _model(seed: int = 0, outputs: int = 3) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs_ = keras.Input((6,))
    wide = keras.initializers.RandomNormal(stddev=1.0, seed=seed)
    hidden = keras.layers.Dense(8, activation="relu", kernel_initializer=wide, name="hidden")
    logits = keras.layers.Dense(outputs, kernel_initializer=wide, name="out")
    return keras.Model(inputs_, logits(hidden(inputs_ - 0.5)))


def _data(model: keras.Model, count: int = 64) -> tuple[np.ndarray, np.ndarray]:
    images = np.random.default_rng(0).random((count, 6)).astype(np.float32)
    return images, np.argmax(np.asarray(model(images)), -1)


SPEC = FaultSpec(kind="weight", rates=(0.0, 0.5), trials=2)


def _campaign(models, out, spec=SPEC, data_=None, **options):
    images, labels = data_ if data_ is not None else _data(next(iter(models.values())))
    return campaign.run_campaign(models, spec, images, labels, out, progress=False, **options)


# Destructive: files outside --out, a user's files beside it, finished cells.


def test_export_staging_clean_up_spares_the_users_files(tmp_path):
    out = tmp_path / "myexport"
    backup = tmp_path / ".myexport.backup"  # The user's, named like a staging directory was.
    (backup / "saved_model").mkdir(parents=True)
    unmarked = tmp_path / ".myexport.aftt-staging-user"  # Our pattern, no marker: kept.
    unmarked.mkdir()
    stale = export_lib._new_staging(out)  # What a killed export leaves.
    export_lib._remove_stale_staging(out)
    assert backup.is_dir() and (backup / "saved_model").is_dir() and unmarked.is_dir()
    assert not stale.exists()


@pytest.mark.parametrize("lock_name", [io_utils.LOCK_FILE, ".myexport.lock"])
def test_a_link_at_the_lock_is_refused_and_its_target_untouched(tmp_path, lock_name):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / lock_name).symlink_to(victim)
    with pytest.raises(io_utils.OutputError, match="symbolic link"):
        with io_utils.DirectoryLock(out / lock_name, str(out)):
            pass
    assert victim.read_text() == "precious\n"


def test_a_link_at_cells_jsonl_is_refused_and_its_target_untouched(tmp_path):
    model = _model()
    out = tmp_path / "campaign"
    _campaign({"m": model}, out)
    victim = tmp_path / "victim.jsonl"
    victim.write_bytes(b'{"a": 1}\n{"torn')
    (out / cell_log.CELLS_FILE).unlink()
    (out / cell_log.CELLS_FILE).symlink_to(victim)
    with pytest.raises(io_utils.OutputError, match="symbolic link"):
        _campaign({"m": model}, out)
    assert victim.read_bytes() == b'{"a": 1}\n{"torn'


def test_merge_into_a_finished_campaign_only_adds(tmp_path):
    model = _model()
    images, labels = _data(model)
    finished = tmp_path / "finished"
    _campaign({"m": model}, finished, FaultSpec(kind="weight", rates=(0.0, 0.2), trials=2))
    before = cell_log.read_cells(finished / cell_log.CELLS_FILE)
    other_rates = FaultSpec(kind="weight", rates=(0.5,), trials=2)
    shard_dirs = [tmp_path / f"shard{index}" for index in range(2)]
    for index, shard in enumerate(shard_dirs):
        campaign.run_campaign(
            {"m": model},
            other_rates,
            images,
            labels,
            shard,
            num_shards=2,
            shard_index=index,
            progress=False,
        )
    results = shards.merge_shards(shard_dirs, finished)
    after = cell_log.read_cells(finished / cell_log.CELLS_FILE)
    assert all(cell in after for cell in before)
    assert len(after) == len(before) + 2
    assert [row["rate"] for row in results["summary"]["m"]["all"]["per_rate"]] == [0, 0.2, 0.5]


# Silent wrong numbers.


def test_a_non_finite_output_is_never_a_class():
    outputs = np.array([[np.nan, 1.0], [5.0, 1.0], [np.inf, 0.0], [0.0, 2.0]])
    outcome = outcome_of(outputs, np.array([0, 0, 0, 0]))
    assert (outcome.correct, outcome.non_finite, outcome.examples) == (1, 2, 4)


def test_stuck_values_that_overflow_are_counted_as_non_finite(tmp_path):
    model = _model()
    images, labels = _data(model)
    images = 0.6 + 0.4 * images  # Every hidden sum positive: the stuck values overflow.
    labels = np.zeros_like(labels)  # Class 0 everywhere: argmax(NaN) = 0 would score 100%.
    spec = FaultSpec(kind="stuck_value", stuck_value=1e30, rates=(0.0, 1.0), trials=2)
    results = _campaign(
        {"m": model}, tmp_path / "c", spec, (images, labels), allow_chance_accuracy=True
    )
    rows = {row["rate"]: row for row in results["summary"]["m"]["all"]["per_rate"]}
    assert rows[1.0]["mean"] == 0.0
    assert rows[1.0]["non_finite"] == {"mean": 1.0, "ci_low": 1.0, "ci_high": 1.0}
    assert rows[0.0]["non_finite"]["mean"] == 0.0
    cells = cell_log.read_cells(tmp_path / "c" / cell_log.CELLS_FILE)
    assert {cell["non_finite"] for cell in cells if cell["rate"] == 1.0} == {1.0}


def test_bit_and_stuck_value_cells_of_before_outcomes_are_not_resumed():
    old_style = FaultSpec(kind="weight").key()
    assert FaultSpec(kind="weight").key() == old_style  # Stuck-at-0 keys are unchanged.
    bit = FaultSpec(kind="bit", bit_position=30)
    values = bit.as_dict()
    for name in ("trials", "rates", "target_margin", "min_trials", "exclude_layers", "repair"):
        values.pop(name)
    import hashlib

    key_before = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]
    assert bit.key() != key_before


@pytest.fixture(scope="module")
def int8_file(tmp_path_factory):
    import tensorflow as tf

    root = tmp_path_factory.mktemp("int8")
    model = _model()
    images, _ = _data(model, 128)
    model.export(str(root / "saved"), format="tf_saved_model", verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(root / "saved"))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([images[i : i + 1]] for i in range(64))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    path = root / "model_int8.tflite"
    path.write_bytes(converter.convert())
    return path


def test_an_int8_file_refuses_a_stuck_value_it_cannot_store(int8_file):
    from aftt_tf.faults.spec import FaultTargetError
    from aftt_tf.runtimes.tflite_runner import TFLiteModel

    model = TFLiteModel.load(int8_file)
    with pytest.raises(FaultTargetError, match="cannot be stored in the int8 weights"):
        model.select_layers(FaultSpec(kind="stuck_value", stuck_value=1e6))
    assert model.select_layers(FaultSpec(kind="stuck_value", stuck_value=0.01))


def test_swapped_labels_resume_under_the_models_content(tmp_path):
    first, second = _model(0), _model(1)
    images, labels = _data(first)
    out = tmp_path / "c"
    options = {"data_": (images, labels), "allow_chance_accuracy": True}
    original = _campaign({"a": first, "b": second}, out, **options)
    swapped = _campaign({"a": second, "b": first}, out, **options)
    assert swapped["skipped_cells"] == 8  # Every cell was measured already.
    assert swapped["summary"]["a"] == original["summary"]["b"]
    assert swapped["summary"]["b"] == original["summary"]["a"]
    assert swapped["models"] == {"a": original["models"]["b"], "b": original["models"]["a"]}
    cells = cell_log.read_cells(out / cell_log.CELLS_FILE)
    assert len(cells) == 8
    assert {(c["model"], c["model_hash"]) for c in cells} == set(swapped["models"].items())


def test_a_duplicated_record_is_counted_once(tmp_path, caplog):
    model = _model()
    out = tmp_path / "c"
    _campaign({"m": model}, out, FaultSpec(kind="weight", rates=(0.0, 0.5), trials=3))
    path = out / cell_log.CELLS_FILE
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines) + lines[-1])
    results = _campaign({"m": model}, out, FaultSpec(kind="weight", rates=(0.0, 0.5), trials=3))
    assert [row["trials"] for row in results["summary"]["m"]["all"]["per_rate"]] == [3, 3]
    assert "duplicate record" in caplog.text
    assert len(path.read_text().splitlines()) == 6


@pytest.mark.parametrize("line", ["{}", "5", '{"model": "m"}'])
def test_a_line_that_is_no_cell_record_is_a_one_line_error(tmp_path, line):
    model = _model()
    out = tmp_path / "c"
    _campaign({"m": model}, out)
    path = out / cell_log.CELLS_FILE
    path.write_text(line + "\n" + path.read_text())
    with pytest.raises(ValueError, match="line 1 is not a cell record"):
        _campaign({"m": model}, out)


def _shards(tmp_path, model, spec=SPEC):
    images, labels = _data(model)
    shard_dirs = [tmp_path / f"shard{index}" for index in range(2)]
    for index, shard in enumerate(shard_dirs):
        campaign.run_campaign(
            {"m": model},
            spec,
            images,
            labels,
            shard,
            num_shards=2,
            shard_index=index,
            progress=False,
        )
    return shard_dirs


def test_a_shard_with_a_torn_record_is_not_merged(tmp_path):
    shard_dirs = _shards(tmp_path, _model())
    path = shard_dirs[1] / cell_log.CELLS_FILE
    content = path.read_bytes()
    path.write_bytes(content[: len(content) - 20])  # Killed mid-record.
    with pytest.raises(ValueError, match="torn record"):
        shards.merge_shards(shard_dirs, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_a_shard_with_missing_cells_is_not_merged(tmp_path):
    shard_dirs = _shards(tmp_path, _model())
    path = shard_dirs[0] / cell_log.CELLS_FILE
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(ValueError, match="missing 1 of its cells"):
        shards.merge_shards(shard_dirs, tmp_path / "merged")


def _two_outputs():
    inputs_ = keras.Input((6,))
    return keras.Model(inputs_, [keras.layers.Dense(3)(inputs_), keras.layers.Dense(3)(inputs_)])


def _map_output():
    inputs_ = keras.Input((4, 4, 1))
    return keras.Model(inputs_, keras.layers.Conv2D(3, 1)(inputs_))


def _one_unit():
    inputs_ = keras.Input((6,))
    return keras.Model(inputs_, keras.layers.Dense(1)(keras.layers.Dense(4)(inputs_)))


@pytest.mark.parametrize(
    "build, shape, message",
    [
        (_two_outputs, (6,), "has 2 outputs"),
        (_map_output, (4, 4, 1), "output has shape"),
        (_one_unit, (6,), "has 1 unit"),
    ],
)
def test_models_without_one_class_output_are_refused(tmp_path, build, shape, message):
    images = np.random.default_rng(0).random((16, *shape)).astype(np.float32)
    with pytest.raises(ValueError, match=message):
        _campaign({"m": build()}, tmp_path / "c", data_=(images, np.zeros(16, np.int64)))
    assert not (tmp_path / "c").exists()


def test_export_of_a_model_without_class_outputs_is_refused(tmp_path):
    path = tmp_path / "regression.keras"
    _one_unit().save(path)
    config = export_lib.ExportConfig(model=str(path), out=str(tmp_path / "e"))
    with pytest.raises(ValueError, match="has 1 unit"):
        export_lib.prepare(config)


def _npz(tmp_path, images, labels, name="d.npz"):
    path = tmp_path / name
    np.savez(path, x=images, y=labels)
    return path


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.array([0.5, 1.0, 2.0, 1.0]), "fractions"),
        (np.array([0, 1, 2**32 + 1, 1], np.int64), "class indices must be in"),
        (np.array([[1, 0], [0, 0], [0, 1], [1, 0]]), "not one 1 among 0s"),
        (np.array(["a", "b", "c", "d"]), "give integer class indices"),
    ],
)
def test_bad_labels_are_refused_when_read(tmp_path, labels, message):
    path = _npz(tmp_path, np.zeros((4, 6), np.float32), labels)
    with pytest.raises(ValueError, match=message):
        data.load_evaluation_data(f"npz:{path}")


@pytest.mark.parametrize(
    "images, message",
    [
        (np.full((4, 6), np.nan, np.float32), "NaN or infinite"),
        (np.array([["a"] * 6] * 4), "text or objects"),
        (np.zeros((0, 6), np.float32), "holds no examples"),
    ],
)
def test_bad_inputs_are_refused_when_read(tmp_path, images, message):
    path = _npz(tmp_path, images, np.zeros(len(images), np.int64))
    with pytest.raises(ValueError, match=message):
        data.load_evaluation_data(f"npz:{path}")


@pytest.mark.parametrize("dtype, shape", [(np.float64, (8, 6)), (np.uint16, (8, 4, 4))])
def test_auto_refuses_pixels_stored_in_wider_types(dtype, shape):
    pixels = np.random.default_rng(0).integers(0, 256, shape).astype(dtype)
    with pytest.raises(ValueError, match="look like pixels in"):
        inputs.resolve("auto", dtype=pixels.dtype, sample=pixels)
    assert inputs.resolve("auto", dtype=np.uint8, sample=pixels.astype(np.uint8)).name == "unit"
    tokens = pixels.reshape(len(pixels), -1).astype(np.int32)  # (N, length): token ids.
    assert inputs.resolve("auto", dtype=tokens.dtype, sample=tokens).name == "raw"
    unit = pixels.astype(np.float32) / 255
    assert inputs.resolve("auto", dtype=unit.dtype, sample=unit).name == "raw"


def test_a_garbage_npz_is_named_without_pickles(tmp_path):
    path = tmp_path / "garbage.npz"
    path.write_bytes(os.urandom(256))
    with pytest.raises(ValueError, match="is not an .npz archive") as error:
        data.load_evaluation_data(f"npz:{path}")
    assert "pickle" not in str(error.value)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Writes MODULE.py into a fresh directory that becomes the current one."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd())])

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        sys.modules.pop(name, None)
        return name

    return write


@pytest.mark.parametrize(
    "source, message",
    [
        ("import sys\nsys.exit(0)\n", r"called sys.exit\(0\)"),
        ("raise KeyError('missing')\n", "failed: KeyError"),
        ("def broken(:\n", "failed: SyntaxError"),
    ],
)
def test_an_import_module_that_fails_is_one_error(user_module, source, message):
    name = user_module(f"user_{abs(hash(source)) % 10**6}", source)
    with pytest.raises(ValueError, match=message):
        campaign_lib.import_modules((name,))


def test_an_import_module_in_the_current_directory_is_found(user_module):
    name = user_module("user_layers_here", "VALUE = 42\n")
    campaign_lib.import_modules((name,))
    assert sys.modules[name].VALUE == 42


@pytest.mark.parametrize(
    "body, message",
    [
        ("raise RuntimeError('bad batch')", "raised RuntimeError: bad batch"),
        ("return batch[:, :3]", "returned float32 of shape"),
    ],
)
def test_a_transform_function_that_fails_is_refused_before_work(
    user_module, tmp_path, body, message
):
    name = user_module(
        f"transform_{abs(hash(body)) % 10**6}", f"def transform(batch):\n    {body}\n"
    )
    model = _model()
    transform = inputs.resolve(f"{name}:transform")
    with pytest.raises(ValueError, match=message):
        _campaign({"m": model}, tmp_path / "c", transform=transform)
    assert not (tmp_path / "c").exists()


def _png_folder(tmp_path):
    import tensorflow as tf

    root = tmp_path / "images"
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        image = np.full((4, 4, 3), 100 if name == "cat" else 200, np.uint8)
        (root / name / "a.png").write_bytes(tf.io.encode_png(image).numpy())
    return root


@pytest.mark.parametrize("damage", ["not_png", "link_to_directory", "truncated"])
def test_a_bad_image_file_is_named(tmp_path, damage):
    root = _png_folder(tmp_path)
    bad = root / "cat" / "b.png"
    if damage == "not_png":
        bad.write_text("this is text")
    elif damage == "link_to_directory":
        bad.symlink_to(root / "dog")
    else:
        bad.write_bytes((root / "cat" / "a.png").read_bytes()[:30])
    with pytest.raises(ValueError, match="b.png"):
        data.load_evaluation_data(f"folder:{root}")


# Limits and hangs.


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"trials": 1_000_000_000}, "more than 100000 per rate"),
        ({"rates": tuple(i / 2000 for i in range(1001))}, "more than the 1000"),
    ],
)
def test_campaign_size_is_bounded(changes, message):
    with pytest.raises(ValueError, match=message):
        FaultSpec(**changes).validate()


@pytest.mark.parametrize("address", ["127.0.0.1:1", "no-such-host.invalid:6379", "justahost"])
def test_an_unreachable_ray_address_fails_fast_naming_it(address):
    with pytest.raises(ray_executor.RayUnavailableError, match=address.split(":")[0]):
        ray_executor.check_reachable(address, timeout=2.0)


def test_a_worker_bigger_than_the_cluster_is_refused():
    config = ray_executor.config_from_flags("", 0, "cpu=1,gpu=1")
    with pytest.raises(ray_executor.RayUnavailableError, match="gpu=1 per worker"):
        ray_executor.check_resources(config, {"CPU": 2.0})


# Other: refused runs write nothing, messages name the cause.


def test_a_refused_campaign_leaves_nothing_and_the_corrected_run_goes_on(tmp_path):
    model = _model()
    images, labels = _data(model, 200)
    shuffled = np.random.default_rng(1).permutation(labels)  # Labels in another order.
    out = tmp_path / "new" / "campaign"
    with pytest.raises(campaign.ChanceAccuracyError):
        _campaign({"m": model}, out, data_=(images, np.zeros_like(shuffled)))
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(campaign.ChanceAccuracyError):
        _campaign({"m": model}, existing, data_=(images, np.zeros_like(shuffled)))
    assert os.listdir(existing) == []
    results = _campaign({"m": model}, out, data_=(images, labels))
    assert results["summary"]["m"]["all"]["clean_accuracy"] == 1.0


def test_a_second_model_at_chance_records_nothing_of_the_first(tmp_path):
    good, constant = _model(0), _model(1)
    constant.set_weights([np.zeros_like(w) for w in constant.get_weights()])  # Always class 0.
    images, labels = _data(good, 300)
    out = tmp_path / "c"
    with pytest.raises(campaign.ChanceAccuracyError, match="constant"):
        _campaign({"good": good, "constant": constant}, out, data_=(images, labels))
    assert not out.exists()


def test_repair_refuses_non_finite_learning_rates():
    for value in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite number > 0"):
            RepairConfig(model="m.keras", out="o", learning_rate=value).validate()


def test_a_full_disk_names_the_file(tmp_path):
    target = tmp_path / "results.json"
    with pytest.raises(OSError) as error:
        with io_utils.atomic_path(target):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert str(target) in common.describe_os_error(error.value)


def test_a_tensorflow_disk_error_is_one_line():
    import tensorflow as tf

    error = tf.errors.ResourceExhaustedError(None, None, "saved_model: No space left on device")
    message = common._tensorflow_error(error)
    assert "No space left" in message and "\n" not in message
    assert common._tensorflow_error(KeyError("x")) is None


def test_results_are_readable_as_the_umask_allows(tmp_path):
    io_utils.write_json(tmp_path / "r.json", {"a": 1})
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_damaged_model_files_are_named(tmp_path):
    from aftt_tf.runtimes import keras_runner, tflite_runner

    keras_file = tmp_path / "broken.keras"
    keras_file.write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="is not a readable .keras archive") as error:
        keras_runner.load_model(keras_file)
    assert "File not found" not in str(error.value)
    tflite = tmp_path / "model.tflite"
    tflite.write_bytes(b"\x1c\x00\x00\x00TFL3" + os.urandom(64))
    with pytest.raises(ValueError, match="model.tflite"):
        tflite_runner.TFLiteModel.load(tflite)
    with pytest.raises(ValueError, match="is a .tflite file, and this step needs the Keras"):
        keras_runner.load_model(tflite)


def test_half_written_checkpoints_are_removed(tmp_path):
    stale = tmp_path / ".variables.k3j2.npz"
    stale.write_bytes(b"\0" * 1024)
    kept = tmp_path / "variables.npz"
    kept.write_bytes(b"x")
    phases.remove_stale_temporaries(tmp_path)
    assert not stale.exists() and kept.exists()


@pytest.mark.slow
def test_repair_lock_refusal_exits_with_usage_status(tmp_path, model_path):
    from tests.conftest import fashion_mnist_available

    if not fashion_mnist_available():
        pytest.skip("Fashion-MNIST is not installed; run `make deps`.")
    out = tmp_path / "repair"
    with io_utils.DirectoryLock(out / io_utils.LOCK_FILE, str(out)):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "aftt_tf.cli.repair",
                f"--model={model_path}",
                f"--out={out}",
                "--train_examples=64",
                "--epochs=1",
                "--allow_chance_accuracy",  # An untrained model: the lock is the point.
            ],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO,
        )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "in use by another aftt process" in result.stderr
    assert "Traceback" not in result.stderr


def test_readme_says_what_import_runs():
    guide = (REPO / "docs" / "failures.md").read_text()
    assert "--import" in guide and "runs the module's code" in guide


def test_the_python_api_is_notebook_friendly():
    import matplotlib

    from aftt_tf.campaigns import evaluate

    backend = matplotlib.get_backend()
    model = _model()
    images, labels = _data(model)
    result = evaluate({"m": model}, SPEC, (images, labels))
    assert [(row["rate"], row["trials"]) for row in result.to_rows()] == [(0.0, 2), (0.5, 2)]
    assert "<table>" in result._repr_html_() and "m</td>" in result._repr_html_()
    figure = result.plot()
    assert type(figure).__name__ == "Figure" and matplotlib.get_backend() == backend
    frame = result.to_dataframe()
    assert list(frame["accuracy"]) == [row["accuracy"] for row in result.to_rows()]
    with pytest.raises(ValueError, match=r"Pass allow_chance_accuracy=True") as error:
        evaluate({"m": model}, SPEC, (images, np.zeros_like(labels)))
    assert "--" not in str(error.value)
