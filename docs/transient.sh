#!/usr/bin/env bash
# The README's transient-fault table: silent data corruption (SDC: a finite output whose
# top-1 class differs from the fault-free run) and detected errors (DUE: NaN/Inf outputs)
# against the rate of transient bit flips in layer outputs (a random bit of each faulted
# float32 value, drawn anew per inference), for a plain and a fault-aware model, each
# without and with activation range restriction (aftt-train --method=range: every
# activation clipped to its bounds on 10,000 training images, no fine-tuning): the paper's
# MLP on Fashion-MNIST (10,000 test images) and the MobileNetV2 / CIFAR-10 of
# docs/harden_mobilenet.sh (2,000 test images; also its int8 files: bits of int8 codes).
# 10 paired trials per rate (int8: 5).
# Usage: bash docs/transient.sh [OUT] (default results/transient).
set -euo pipefail
OUT=${1:-results/transient}
BIN=${BIN:-.venv/bin}
PLAIN_MLP=${PLAIN_MLP:-results/sensitivity/fmnist_mlp/classifier.keras}
FAT_MLP=${FAT_MLP:-results/fault_models/fmnist_mlp_fat/classifier.keras}
MOBILENET=${MOBILENET:-results/harden_mobilenet}
mkdir -p "$OUT"
[ -f "$FAT_MLP" ] || { echo "Run docs/sensitivity.sh and docs/fault_models.sh first."; exit 1; }
[ -f "$MOBILENET/fat/classifier.keras" ] || { echo "Run docs/harden_mobilenet.sh first."; exit 1; }
range() {  # range MODEL DATA_FLAGS... OUT_DIR
  local model=$1 out=${*: -1}
  [ -f "$out/metrics.json" ] || "$BIN/aftt-train" --model="$model" "${@:2:$#-2}" --method=range \
    --epochs=0 --range_examples=10000 --out="$out"
}
range "$PLAIN_MLP" --data=fashion_mnist "$OUT/mlp_plain_range"
range "$FAT_MLP" --data=fashion_mnist "$OUT/mlp_fat_range"
range "$MOBILENET/fat/classifier.keras" --data=cifar10 --input_transform=symmetric "$OUT/mobilenet_fat_range"
[ -f "$OUT/mlp/results.json" ] || "$BIN/aftt-faults" --model=plain="$PLAIN_MLP" \
  --model=plain_range="$OUT/mlp_plain_range/classifier.keras" --model=fat="$FAT_MLP" \
  --model=fat_range="$OUT/mlp_fat_range/classifier.keras" --data=fashion_mnist \
  --fault=activation_bit --rates=0,0.00001,0.0001,0.001 --trials=10 --out="$OUT/mlp"
[ -f "$OUT/mobilenet/results.json" ] || "$BIN/aftt-faults" \
  --model=plain="$MOBILENET/none/classifier.keras" --model=plain_range="$MOBILENET/range/classifier.keras" \
  --model=fat="$MOBILENET/fat/classifier.keras" --model=fat_range="$OUT/mobilenet_fat_range/classifier.keras" \
  --data=cifar10 --input_transform=symmetric --test_examples=2000 \
  --fault=activation_bit --rates=0,0.000001,0.00001,0.0001 --trials=10 --out="$OUT/mobilenet"
[ -f "$OUT/mobilenet_int8/results.json" ] || "$BIN/aftt-faults" \
  --model=plain="$MOBILENET/export_none/model_int8.tflite" \
  --model=plain_range="$MOBILENET/export_range/model_int8.tflite" \
  --model=fat="$MOBILENET/export_fat/model_int8.tflite" \
  --data=cifar10 --input_transform=symmetric --test_examples=2000 \
  --fault=activation_bit --rates=0,0.00001,0.0001,0.001 --trials=5 --out="$OUT/mobilenet_int8"
