"""aftt-sensitivity: which layers, channels and bits matter, and a protection plan that
holds accuracy at the least cost, verified by paired campaigns.

    aftt-sensitivity --model=runs/fmnist_mlp_aftt/classifier.keras --data=fashion_mnist \
        --protect_budget=0.01,0.05 --verify_rates=0.3,0.5 --out=sensitivity/mlp
Then fault with the plan: aftt-faults ... --protected=sensitivity/mlp/plans/plan_0.01.npz
"""

from __future__ import annotations

import json
import logging

from absl import flags

from aftt_tf.cli import common, data_flags
from aftt_tf.faults import kinds

flags.DEFINE_string("model", None, "Classifier .keras file.")
flags.DEFINE_string("out", None, "New directory for scores, plans and their verification.")
flags.DEFINE_string(
    "data",
    "",
    "Data: a built-in name or tfds:NAME (scores from its training split, campaigns on its "
    "test split), npz:PATH or folder:PATH (a seeded 80% for scores, 20% for campaigns).",
)
flags.DEFINE_string("test_data", "", "Data of the campaigns instead (then --data is all scores).")
flags.DEFINE_integer("test_examples", 0, "Campaigns on a seeded sample of this many (0: all).")
flags.DEFINE_integer("examples", 512, "Examples the gradients and Hessian estimate read.")
flags.DEFINE_integer(
    "score_batch_size",
    256,
    "Examples per chunk of the gradient and Hessian-vector products (memory; the scores "
    "do not depend on it).",
)
flags.DEFINE_integer("hutchinson_samples", 16, "Rademacher probes of the Hessian diagonal.")
flags.DEFINE_float("rate", 0.3, "Fault rate of the per-layer estimate, check and target.")
flags.DEFINE_enum(
    "score", "taylor", ["taylor", "gradient", "hessian", "magnitude"], "Ranking of elements."
)
flags.DEFINE_integer("check_trials", 5, "Trials per layer of the per-layer campaign check.")
flags.DEFINE_float(
    "check_seconds", 120.0, "Time for the per-layer check (highest-ranked layers first; 0: off)."
)
flags.DEFINE_list("protect_budget", ["0.01", "0.05"], "Shares of the weights a plan protects.")
flags.DEFINE_float(
    "target_accuracy", None, "Also find the smallest budget whose plan holds this at --rate."
)
flags.DEFINE_enum("fault", "weight", kinds.names(per_element=True), "Faults of the verification.")
flags.DEFINE_list("verify_rates", ["0.3", "0.5"], "Fault rates of the verifying campaigns.")
flags.DEFINE_integer("verify_trials", 10, "Trials per rate of the verifying campaigns.")
flags.DEFINE_integer("seed", 0, "Seed of the sample, the probes, the random plans and faults.")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    common.check_arguments(argv, "model", "out")
    from aftt_tf.sensitivity.sensitivity_run import SensitivityConfig

    config = common.from_flags(
        SensitivityConfig,
        "model out test_data test_examples examples score_batch_size hutchinson_samples rate "
        "score check_trials check_seconds target_accuracy fault verify_trials seed "
        "allow_chance_accuracy",
        data_options=data_flags.options(FLAGS.data),
        budgets=common.numbers("protect_budget"),
        verify_rates=common.numbers("verify_rates"),
    )
    with common.usage_errors():
        config.validate()
    logging.getLogger().setLevel(logging.INFO)
    from aftt_tf.campaigns import campaign_lib
    from aftt_tf.data import datasets as data
    from aftt_tf.faults.spec import FaultTargetError
    from aftt_tf.io_utils import OutputError
    from aftt_tf.sensitivity import sensitivity_run

    with common.refusals(
        FaultTargetError, data.DataUnavailableError, FileNotFoundError, ValueError, OutputError
    ):
        campaign_lib.import_modules(data_flags.imports())
        result = sensitivity_run.run(config)
    print(_summary(result))
    print(f"Scores, plans and verification: {FLAGS.out}")


def _summary(result: dict) -> str:
    lines = [
        f"clean accuracy {result['clean_accuracy']:.4f}; layers by estimated loss change at rate {result['rate']}:"
    ]
    for row in result["layers"][:10]:
        lines.append(f"  {row['rank']:>3}. {row['layer']}: {row['expected']:.4g}")
    check = result.get("check")
    if check:
        rho = {
            k: v for k, v in check["spearman"].items() if k in ("expected", "taylor", "magnitude")
        }
        lines.append(
            f"Spearman with per-layer campaigns ({check['layers_checked']}/{check['layers']} layers): "
            + json.dumps({k: round(v, 3) if v == v else None for k, v in rho.items()})
        )
    bits = result["bits"]
    lines.append(
        "most sensitive bits: float32 "
        + ", ".join(str(row["bit"]) for row in bits["float32"][:3])
        + "; int8 "
        + ", ".join(str(row["bit"]) for row in bits["int8"][:3])
    )
    for budget, plan in result["plans"].items():
        cost = plan["cost"]
        lines.append(
            f"budget {float(budget):.2%} ({cost['weights_share']:.2%} of the weights, "
            f"+{cost['tmr_extra_macs_share']:.2%} MACs under TMR):"
        )
        for rate in plan["accuracy"]["none"]:
            row = {label: plan["accuracy"][label][rate] for label in ("none", "plan", "random")}
            difference = next(
                r for r in plan["paired_differences"]["plan - random"] if str(r["rate"]) == rate
            )
            lines.append(
                f"  rate {rate}: none {row['none']:.4f}, plan {row['plan']:.4f}, random "
                f"{row['random']:.4f}; plan - random {difference['mean']:+.4f} "
                f"[{difference['ci_low']:+.4f}, {difference['ci_high']:+.4f}]"
            )
    target = result.get("target")
    if target:
        lines.append(
            f"target {target['target_accuracy']:.4f} at rate {target['rate']}: "
            + (f"budget {target['budget']:.3g}" if target.get("budget") else "not reached")
        )
    return "\n".join(lines)


def run() -> None:
    common.run(main, "aftt-sensitivity", (__name__, data_flags.__name__))


if __name__ == "__main__":
    run()
