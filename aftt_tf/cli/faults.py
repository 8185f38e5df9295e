"""aftt-faults: Monte-Carlo fault campaigns on trained classifiers, with paired statistics.

    aftt-faults --model=runs/fmnist_mlp_aftt/classifier.keras --model=runs/fmnist_mlp_l2/classifier.keras \
        --fault=weight --rates=0,0.1,0.2,0.3,0.4,0.5,0.6,0.7 --trials=30 --seed=0 --out=campaigns/mlp_weight
"""

from __future__ import annotations

import logging

from absl import flags

from aftt_tf import vocabulary
from aftt_tf.cli import common, data_flags, executor_flags
from aftt_tf.faults import kinds

flags.DEFINE_multi_string(
    "model",
    [],
    "Classifier .keras file; repeat for a paired comparison. "
    "LABEL=PATH names the model in reports (default: its run directory).",
)
flags.DEFINE_string(
    "fault",
    "weight",
    "Fault kind: "
    + "; ".join(f"{kind.name}: {kind.summary}" for kind in map(kinds.get, kinds.names()))
    + ". A kind of your own: register it (aftt_tf.faults.kinds.register) in an --import module.",
)
flags.DEFINE_list(
    "rates",
    ["0", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7"],
    "Fractions of each targeted layer's elements to fault (transient faults: of its output "
    "values over all inferences; with --faults_per_inference, of the inferences struck); "
    "or 'cliff': 0 and the rates where the first --model keeps about 90%, 50% and 20% of "
    "its accuracy above chance (found before the campaign, recorded and printed).",
)
flags.DEFINE_integer("trials", 30, "Trials per rate (maximum when --target_margin is set).")
flags.DEFINE_integer("seed", 0, "Campaign seed: same seed, same fault positions on every model.")
flags.DEFINE_enum("scope", "all", vocabulary.SCOPES, "Which part of the classifier to fault.")
flags.DEFINE_list(
    "layers",
    [],
    "Fault only these layers: names, paths (backbone/conv1, mha/query) or glob patterns (block_*_depthwise, backbone/*).",
)
flags.DEFINE_list("exclude_layers", [], "Leave out these layers: names or glob patterns.")
flags.DEFINE_enum(
    "sampling",
    "exact",
    vocabulary.SAMPLINGS,
    "exact: round(rate*n) distinct elements; bernoulli: each element with prob. rate.",
)
flags.DEFINE_bool("include_bias", False, "Fault biases too.")
flags.DEFINE_list(
    "targets",
    ["weights"],
    "What parameter faults reach: weights, and in .tflite files scales (per-channel float32 "
    "scales of int8 kernels), zero_points (int8 zero point of each layer's output), biases.",
)
flags.DEFINE_string(
    "array",
    "",
    "ROWSxCOLS of a systolic array (e.g. 32x32): the rate is the share of faulty processing "
    "elements, placed by --dataflow on the weights or outputs they compute.",
)
flags.DEFINE_enum(
    "dataflow",
    "weight_stationary",
    ["weight_stationary", "output_stationary"],
    "--array: weight_stationary (stuck weight registers: --fault=weight, stuck_value, bit) "
    "or output_stationary (stuck-at-0 accumulators: --fault=node).",
)
flags.DEFINE_string(
    "fault_map",
    "",
    "A chip's fault map (.json/.csv; format in aftt_tf/faults/fault_map.py): its faults in "
    "every cell on top of the sampled ones (rate 0: the map alone).",
)
flags.DEFINE_string(
    "protected",
    "",
    "Protection plan (.npz from aftt-sensitivity): faults drawn on the weight elements it "
    "names are dropped (the rest are the unprotected campaign's, paired).",
)
flags.DEFINE_enum(
    "weights",
    "registered",
    ["registered", "all_trainable"],
    "registered: kernels of registered layer types, inside nested models and composite "
    "layers too (layers are named by path: backbone/conv1, mha/query); all_trainable: also "
    "every trainable variable of rank >= 2 of other layers (a layer of your own; or "
    "register it with aftt_tf.campaigns.register_layer in an --import module).",
)
flags.DEFINE_bool(
    "include_normalization",
    False,
    "Parameter faults also reach the scale (gamma) and offset (beta) of BatchNormalization, "
    "LayerNormalization and GroupNormalization layers (.tflite: the separate per-channel "
    "constants that hold them; a BatchNormalization folded into a layer is reported).",
)
flags.DEFINE_bool("include_output_nodes", False, "Allow node faults in the output layer.")
flags.DEFINE_float(
    "stuck_value",
    None,
    "Value of stuck_value faults (default: the layer's max |w|) and of activation_value "
    "faults (required there).",
)
flags.DEFINE_integer(
    "bit_position",
    -1,
    "Bit of bit and activation_bit faults, in the stored values (float32: 0..31, int8: "
    "0..7); -1: random per fault.",
)
flags.DEFINE_integer(
    "faults_per_inference",
    0,
    "Transient faults: each struck inference gets this many faults spread over every "
    "targeted output value (--rates: the share of inferences struck); 0: --rates per value.",
)
flags.DEFINE_enum("bit_mode", "flip", vocabulary.BIT_MODES, "Bit fault type.")
flags.DEFINE_enum(
    "storage",
    "float32",
    ["float32", "int8"],
    "What parameter faults strike: float32 (a .keras's variables; a file's kernels as it "
    "stores them) or int8 (a .keras simulates the per-channel symmetric int8 codes the "
    "converter stores, so its campaign faults the bits an int8 .tflite holds; a file must "
    "hold int8 kernels).",
)
flags.DEFINE_float(
    "target_margin", 0.0, "Size trials until the 95% CI half-width <= this (0: off)."
)
flags.DEFINE_bool("per_layer", False, "Sensitivity mode: fault one layer at a time.")
flags.DEFINE_bool(
    "per_layer_stats",
    False,
    "After the campaign, record per layer and rate the int8 activation range and distinct "
    "int8 levels of every full-int8 .tflite (and of the .keras it was exported from, with "
    "the file's scales): OUT/per_layer_stats.json.",
)
flags.DEFINE_integer(
    "repair_epochs",
    0,
    "The repaired protocol: each cell fine-tunes a copy of the .keras model around its faults "
    "(held fixed) for this many epochs, then evaluates it. 0: the deployed protocol.",
)
flags.DEFINE_float("repair_learning_rate", 1e-3, "Learning rate of the repairs.")
flags.DEFINE_float("repair_weight_decay", 5e-4, "Decoupled weight decay of the repairs.")
flags.DEFINE_enum("repair_optimizer", "rmsprop", ["rmsprop", "adam", "sgd"], "Repair optimizer.")
flags.DEFINE_integer("repair_batch_size", 128, "Batch size of the repairs.")
flags.DEFINE_integer("repair_train_examples", 0, "Training examples of the repairs (0: all).")
flags.DEFINE_enum("repair_loss", "crossentropy", ["crossentropy", "mse"], "Loss of the repairs.")
flags.DEFINE_string(
    "repair_data",
    "",
    "Training data of the repairs (same forms as --data; a built-in name trains on its "
    "training split); separate from the evaluation data. Default: the dataset the "
    "models' aftt-train run names.",
)
flags.DEFINE_integer("num_shards", 1, "Split cells across this many processes.")
flags.DEFINE_integer("shard_index", 0, "This process's shard.")
flags.DEFINE_list("merge", [], "Merge these shard directories into --out instead of running.")
flags.DEFINE_string(
    "dataset", "", "Built-in test data (older spelling of --data=NAME); see --data."
)
flags.DEFINE_string(
    "data",
    "",
    "Any test data: a built-in name, tfds:NAME:SPLIT, npz:PATH (arrays named by --npz_keys; "
    "labels integer or one-hot) or folder:PATH (PATH/<class>/*.jpg|png, classes alphabetical).",
)
flags.DEFINE_integer("test_examples", 0, "Use only this many test examples (0: all).")
flags.DEFINE_integer("batch_size", 2000, "Evaluation chunk size.")
flags.DEFINE_string("out", None, "Output directory (resumed if it holds the same campaign).")

FLAGS = flags.FLAGS


def _cliff() -> bool:
    """--rates=cliff: the rates where the first model keeps 90/50/20% (faults.cliff)."""
    return [rate.strip().lower() for rate in FLAGS.rates] == ["cliff"]


def _spec_from_flags():
    from aftt_tf.faults.spec import FaultSpec, RepairProtocol

    try:
        rates = (0.0,) if _cliff() else tuple(float(rate) for rate in FLAGS.rates)
    except ValueError:
        raise common.usage_error(
            f"--rates must be numbers in [0, 1] or 'cliff', received {FLAGS.rates}."
        ) from None
    return common.from_flags(
        FaultSpec,
        "trials seed scope layers exclude_layers sampling include_bias weights "
        "include_normalization protected fault_map array dataflow targets include_output_nodes "
        "stuck_value bit_position bit_mode storage faults_per_inference target_margin",
        kind=FLAGS.fault,
        rates=rates,
        repair=RepairProtocol(
            epochs=FLAGS.repair_epochs,
            learning_rate=FLAGS.repair_learning_rate,
            weight_decay=FLAGS.repair_weight_decay,
            optimizer=FLAGS.repair_optimizer,
            batch_size=FLAGS.repair_batch_size,
            train_examples=FLAGS.repair_train_examples,
            loss=FLAGS.repair_loss,
        )
        if FLAGS.repair_epochs
        else None,
    )


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise common.usage_error(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS.out:
        raise common.usage_error("--out is required: the campaign directory.")
    logging.getLogger().setLevel(logging.INFO)
    from aftt_tf.campaigns import campaign_lib, shards
    from aftt_tf.campaigns import engine as campaign
    from aftt_tf.data import datasets as data
    from aftt_tf.faults.spec import FaultTargetError
    from aftt_tf.io_utils import OutputError

    if FLAGS.merge:
        with common.usage_errors():
            results = shards.merge_shards(FLAGS.merge, FLAGS.out)
        _print_summary(results)
        return
    _check_statistics_flags()
    with common.usage_errors():  # A kind an --import module registers, then the spec.
        campaign_lib.import_kind_modules(data_flags.imports(), FLAGS.fault)
        spec = _spec_from_flags()
    # The config checks itself when made (files, directory, shards): usage errors too.
    with common.usage_errors(data.DataUnavailableError):
        config = common.from_flags(
            campaign_lib.CampaignConfig,
            "out dataset test_examples allow_chance_accuracy repair_data batch_size num_shards "
            "shard_index per_layer",
            models=tuple(FLAGS.model),
            spec=spec,
            data_options=data_flags.options(FLAGS.data),
            imports=data_flags.imports(),
            cliff=_cliff(),
            **executor_flags.values(),
        )
        models, test_data = _checked_models_and_data(config)
    from aftt_tf.campaigns.ray_executor import RayUnavailableError

    with common.refusals(
        FaultTargetError, OutputError, campaign.ChanceAccuracyError, RayUnavailableError
    ):
        results = campaign_lib.run(config, models, test_data)
    if FLAGS.num_shards == 1:
        _print_summary(results)
        if FLAGS.per_layer_stats:
            _print_statistics(campaign_lib.layer_statistics(config, models, test_data))
    print(f"Campaign directory: {FLAGS.out}")


def _checked_models_and_data(config):
    """The models and test data, every input check made (usage errors, before any work);
    the models wrapped for the repaired protocol when it is asked for."""
    from aftt_tf.campaigns import campaign_lib
    from aftt_tf.campaigns import engine as campaign

    models = campaign_lib.load_models(config)
    first = next(iter(models.values()))
    test_data, transform = campaign_lib.load_test_data(config, first)
    campaign.check_inputs(models, config.spec, test_data.images, test_data.labels, transform)
    if config.spec.repair is not None:
        models = _repairing(config, models)
    return models, test_data


def _check_statistics_flags() -> None:
    if FLAGS.per_layer_stats and (FLAGS.num_shards > 1 or FLAGS.per_layer):
        raise common.usage_error(
            "--per_layer_stats describes the whole campaign's models: run it without "
            "--num_shards (or on the merged campaign) and without --per_layer."
        )


def _repairing(config, models: dict) -> dict:
    """The .keras models wrapped for the repaired protocol, with the training data."""
    if config.executor != "local":
        raise ValueError("--repair_epochs runs locally; drop --executor=ray.")
    from aftt_tf.campaigns import campaign_lib
    from aftt_tf.runtimes import keras_runner
    from aftt_tf.training import repair

    train = campaign_lib.load_train_data(config, next(iter(models.values())))
    return {
        label: repair.RepairingModel(model.model, train.images, train.labels)
        if isinstance(model, keras_runner.KerasModel)
        else model  # A .tflite: its campaign refuses the protocol with the reason.
        for label, model in models.items()
    }


def _print_statistics(statistics: dict) -> None:
    """Distinct int8 levels per layer and rate (Keras twin in parentheses)."""
    for label, result in statistics["models"].items():
        print(f"{label}: distinct int8 levels per layer ({result['kind']} faults)")
        for layer in result["layers"]:
            cells = []
            for rate, entry in result["rates"].items():
                text = f"{100 * float(rate):g}%: {entry['tflite'][layer]['distinct_levels']:.0f}"
                if layer in entry.get("keras", {}):
                    text += f" ({entry['keras'][layer]['distinct_levels']:.0f})"
                cells.append(text)
            print(f"  {layer}: " + ", ".join(cells))
        for layer, reason in result.get("keras_left_out", {}).items():
            print(f"  {layer}: no Keras numbers ({reason})")
    for label, reason in statistics["not_described"].items():
        print(f"{label}: no per-layer int8 statistics ({reason})")


def _print_summary(results: dict) -> None:
    from aftt_tf.campaigns import console

    print("\n".join(console.summary_lines(results)))


def run() -> None:
    common.run(main, "aftt-faults", (__name__, data_flags.__name__, executor_flags.__name__))


if __name__ == "__main__":
    run()
