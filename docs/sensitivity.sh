#!/usr/bin/env bash
# The README's "Where to spend protection" tables: sensitivity scores, their rank
# correlation with per-layer campaigns, and protection plans of 1%, 5% and 10% of the
# weights against random protection of the same size, for the paper's MLP (fmnist_mlp,
# trained without regularisation for 10 supervised epochs) and a user-style CNN (the
# MobileNetV2 alpha 0.35 / CIFAR-10 base model of docs/harden_mobilenet.sh). Float32
# (Keras) weight faults at 30% and 50%, and int8 bit faults in the exported file with the
# same plans. Usage: bash docs/sensitivity.sh [OUT] (default results/sensitivity).
set -euo pipefail
OUT=${1:-results/sensitivity}
BIN=${BIN:-.venv/bin}
MOBILENET=${MOBILENET:-results/harden_mobilenet/base/classifier.keras}
mkdir -p "$OUT"
[ -f "$OUT/fmnist_mlp/metrics.json" ] || "$BIN/aftt-train" --flagfile=flags/fmnist_mlp.flags \
  --method=none --finetune_epochs=10 --out="$OUT/fmnist_mlp"
[ -f "$MOBILENET" ] || { echo "Run docs/harden_mobilenet.sh first (it trains $MOBILENET)."; exit 1; }
COMMON=(--protect_budget=0.01,0.05,0.1 --verify_rates=0.3,0.5 --verify_trials=10 --check_trials=5)
[ -f "$OUT/mlp/scores.json" ] || "$BIN/aftt-sensitivity" --model="$OUT/fmnist_mlp/classifier.keras" \
  --data=fashion_mnist "${COMMON[@]}" --check_seconds=300 --out="$OUT/mlp"
# The MobileNet is near chance at 30% weight faults: lower rates too.
[ -f "$OUT/mobilenet/scores.json" ] || "$BIN/aftt-sensitivity" --model="$MOBILENET" \
  --data=cifar10 --input_transform=symmetric --test_examples=2000 "${COMMON[@]}" \
  --verify_rates=0.05,0.1,0.3,0.5 --check_seconds=600 --out="$OUT/mobilenet"
# int8 bit faults with the same plans (positions are mapped to the file's layout).
export_int8() {  # $1 name, $2 model, $3.. data flags
  local name=$1 model=$2; shift 2
  [ -f "$OUT/${name}_export/model_int8.tflite" ] || "$BIN/aftt-export" --model="$model" "$@" \
    --formats=tflite_int8 --out="$OUT/${name}_export"
}
export_int8 mlp "$OUT/fmnist_mlp/classifier.keras" --data=fashion_mnist
export_int8 mobilenet "$MOBILENET" --data=cifar10 --input_transform=symmetric
for name in mlp mobilenet; do
  data=(--data=fashion_mnist); [ "$name" = mobilenet ] && data=(--data=cifar10 --input_transform=symmetric --test_examples=2000)
  for plan in none plan_0.01 random_0.01 plan_0.05 random_0.05 plan_0.1 random_0.1; do
    protected=(); [ "$plan" = none ] || protected=(--protected="$OUT/$name/plans/$plan.npz")
    [ -f "$OUT/${name}_int8_bits/$plan/results.json" ] || "$BIN/aftt-faults" \
      --model="$name=$OUT/${name}_export/model_int8.tflite" "${data[@]}" "${protected[@]}" \
      --fault=bit --rates=0,0.001,0.01,0.05 --trials=10 --out="$OUT/${name}_int8_bits/$plan"
  done
done
