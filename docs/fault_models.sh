#!/usr/bin/env bash
# The README's systolic-array table: accuracy (and SDC) against the share of faulty
# processing elements of a 32x32 and a 128x128 weight-stationary array (stuck-at-0 weight
# registers), for a plain and a fault-aware model of the paper's MLP and of the
# MobileNetV2 / CIFAR-10 of docs/harden_mobilenet.sh (paired campaigns, 10 trials; its
# depthwise convolutions are not one matrix product and are left out).
# Usage: bash docs/fault_models.sh [OUT] (default results/fault_models).
set -euo pipefail
OUT=${1:-results/fault_models}
BIN=${BIN:-.venv/bin}
PLAIN_MLP=${PLAIN_MLP:-results/sensitivity/fmnist_mlp/classifier.keras}
MOBILENET=${MOBILENET:-results/harden_mobilenet}
mkdir -p "$OUT"
[ -f "$PLAIN_MLP" ] || { echo "Run docs/sensitivity.sh first (it trains $PLAIN_MLP)."; exit 1; }
[ -f "$MOBILENET/fat/classifier.keras" ] || { echo "Run docs/harden_mobilenet.sh first."; exit 1; }
# The fault-aware MLP: the same training, with stuck-at-0 weight and node faults per step.
[ -f "$OUT/fmnist_mlp_fat/metrics.json" ] || "$BIN/aftt-train" --flagfile=flags/fmnist_mlp.flags \
  --method=fat --finetune_epochs=10 --out="$OUT/fmnist_mlp_fat"
for array in 32x32 128x128; do
  [ -f "$OUT/mlp_$array/results.json" ] || "$BIN/aftt-faults" --model=plain="$PLAIN_MLP" \
    --model=fat="$OUT/fmnist_mlp_fat/classifier.keras" --data=fashion_mnist \
    --fault=weight --array="$array" --rates=0,0.01,0.05,0.1,0.2 --trials=10 --out="$OUT/mlp_$array"
  [ -f "$OUT/mobilenet_$array/results.json" ] || "$BIN/aftt-faults" \
    --model=plain="$MOBILENET/none/classifier.keras" --model=fat="$MOBILENET/fat/classifier.keras" \
    --data=cifar10 --input_transform=symmetric --test_examples=2000 \
    --fault=weight --array="$array" --exclude_layers="*depthwise" --rates=0,0.01,0.05,0.1,0.2 \
    --trials=10 --out="$OUT/mobilenet_$array"
done
