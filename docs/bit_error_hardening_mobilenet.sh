#!/usr/bin/env bash
# docs/results.md "Hardening against faults in int8 weights", MobileNetV2 row: a
# MobileNetV2 (alpha 0.35, 32x32) on the CIFAR-10 images in ../shared/data/cifar10-jpeg,
# trained from scratch 6 epochs (the base), then every method 2 epochs from it; random bit
# error training up to the plain file's own 50% per-bit rate (found by a 3-trial cliff
# probe on `none`: the rule that needs no look at hardened results); each int8 .tflite in
# paired campaigns at none's cliff (10 trials, 5,000 test images).
#   bash docs/bit_error_hardening_mobilenet.sh [OUT]   (about 20 min on 2 cores)
set -euo pipefail
O=${1:-results/bit_error_hardening}/mobilenet_v2
BIN=${BIN:-.venv/bin}
DATA=(--data=cifar10 --input_transform=symmetric)
mkdir -p "$O"
bash docs/mobilenet_base.sh "$O"
train() {  # NAME METHOD [FLAGS...]
  local name=$1 method=$2
  shift 2
  [ -f "$O/$name/metrics.json" ] || "$BIN/aftt-train" --model="$O/base/classifier.keras" \
    "${DATA[@]}" --method="$method" --epochs=2 --learning_rate=3e-4 --batch_size=128 "$@" \
    --out="$O/$name"
  [ -f "$O/export_$name/manifest.json" ] || "$BIN/aftt-export" \
    --model="$O/$name/classifier.keras" "${DATA[@]}" --formats=tflite_int8 \
    --test_examples=5000 --out="$O/export_$name"
}
CAMPAIGN=("${DATA[@]}" --test_examples=5000 --trials=10 --seed=0 --rates=cliff)
train none none
[ -f "$O/probe/results.json" ] || "$BIN/aftt-faults" --model=none="$O/export_none/model_int8.tflite" \
  "${CAMPAIGN[@]}" --trials=3 --fault=bit_error --out="$O/probe"
RATE=$("$BIN/python" -c "import json, sys; print(json.load(open(sys.argv[1]))['rate_choice']['rates'][1])" "$O/probe/results.json")
echo "none's 50% per-bit rate: $RATE"
BET=(--fault_aware_kinds=bit_error --storage=int8 --weight_clip=auto --fault_aware_max_rate="$RATE")
train clip none --weight_clip=auto
train clip_bet_cliff fat "${BET[@]}"
train clip_bet_cliff_clean fat "${BET[@]}" --fault_aware_clean_loss
train fat fat --fault_aware_kinds=weight,node --fault_aware_max_rate=0.3
MODELS=()
for name in none clip clip_bet_cliff clip_bet_cliff_clean fat; do
  MODELS+=(--model="$name=$O/export_$name/model_int8.tflite")
done
for kind in bit_error weight; do
  "$BIN/aftt-faults" "${MODELS[@]}" "${CAMPAIGN[@]}" --fault=$kind --out="$O/campaigns/$kind"
done
