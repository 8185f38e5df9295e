#!/usr/bin/env bash
# The README's "Harden your own model" table: a MobileNetV2-style model (alpha 0.35, 32x32)
# on the CIFAR-10 images in ../shared/data/cifar10-jpeg, trained from scratch, then hardened
# with each method, exported to int8, and measured under weight, node, stuck-value and bit
# faults in float32 (Keras) and int8 (.tflite). Budget (2 CPU cores): base 6 epochs, each
# method 2 epochs (aftt_fat: 1 epoch of the games first), campaigns on 2,000 test images,
# 5 trials per rate. Usage: bash docs/harden_mobilenet.sh [OUT] (default results/harden_mobilenet).
set -euo pipefail
OUT=${1:-results/harden_mobilenet}
BIN=${BIN:-.venv/bin}
DATA=(--data=cifar10 --input_transform=symmetric)
mkdir -p "$OUT"
bash docs/mobilenet_base.sh "$OUT"
# name:method[:extra flags]; range_zero: bounds at the 99.9th percentile, values outside -> 0.
VARIANTS=(
  "none:none"
  "fat:fat:--fault_aware_kinds=weight,node --fault_aware_max_rate=0.3"
  "range:range:--range_examples=10000"
  "aftt_fat:aftt_fat:--fault_aware_kinds=weight,node --fault_aware_max_rate=0.3 --pretrain_epochs=1"
  "range_zero:range:--range_examples=10000 --range_statistic=percentile --range_percentile=99.9 --range_mode=zero"
)
models=() ; int8=()
for variant in "${VARIANTS[@]}"; do
  IFS=: read -r name method extra <<< "$variant"
  # shellcheck disable=SC2086  # $extra holds several flags.
  "$BIN/aftt-train" --model="$OUT/base/classifier.keras" "${DATA[@]}" --method=$method \
    --epochs=2 --learning_rate=3e-4 --batch_size=128 $extra --out="$OUT/$name"
  [ -f "$OUT/export_$name/manifest.json" ] || "$BIN/aftt-export" \
    --model="$OUT/$name/classifier.keras" "${DATA[@]}" --formats=tflite_int8 \
    --calibration_steps=50 --test_examples=2000 --out="$OUT/export_$name"
  models+=(--model=$name="$OUT/$name/classifier.keras")
  int8+=(--model=$name="$OUT/export_$name/model_int8.tflite")
done
CAMPAIGN=("${DATA[@]}" --test_examples=2000 --trials=5 --seed=0)
for runtime in keras int8; do
  if [ $runtime = keras ]; then set -- "${models[@]}"; else set -- "${int8[@]}"; fi
  "$BIN/aftt-faults" "$@" "${CAMPAIGN[@]}" --fault=weight --rates=0,0.3,0.5 \
    --out="$OUT/campaigns/${runtime}_weight"
  "$BIN/aftt-faults" "$@" "${CAMPAIGN[@]}" --fault=node --rates=0,0.3,0.5 \
    --out="$OUT/campaigns/${runtime}_node"
  # Stuck at V_max: the layer's largest |w| (int8: its largest level).
  "$BIN/aftt-faults" "$@" "${CAMPAIGN[@]}" --fault=stuck_value --rates=0,0.01,0.05 \
    --out="$OUT/campaigns/${runtime}_stuck_value"
  # A random bit of each faulted weight (float32: any of 32, int8: any of 8).
  "$BIN/aftt-faults" "$@" "${CAMPAIGN[@]}" --fault=bit --rates=0,0.0001,0.001 \
    --out="$OUT/campaigns/${runtime}_bit"
done
rm -rf "$OUT/report"
"$BIN/aftt-report" "$OUT"/campaigns/* --out="$OUT/report"
