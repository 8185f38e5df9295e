#!/usr/bin/env bash
# The MobileNetV2 base both MobileNetV2 measurements start from: keras.applications'
# MobileNetV2 (alpha 0.35, 32x32, 10 classes, BatchNormalization momentum 0.9: its 0.999
# needs far more steps than this budget), trained from scratch 6 epochs on the CIFAR-10
# images in ../shared/data/cifar10-jpeg. Usage: bash docs/mobilenet_base.sh OUT
# (writes OUT/untrained.keras and OUT/base; kept when already there).
set -euo pipefail
OUT=${1:?the output directory}
BIN=${BIN:-.venv/bin}
mkdir -p "$OUT"
[ -f "$OUT/untrained.keras" ] || "$BIN/python" - "$OUT/untrained.keras" <<'PY'
import sys

import keras

keras.utils.set_random_seed(0)
model = keras.applications.MobileNetV2(
    input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10, classifier_activation=None
)
for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
        layer.momentum = 0.9
model.save(sys.argv[1])
PY
[ -f "$OUT/base/metrics.json" ] || "$BIN/aftt-train" --model="$OUT/untrained.keras" \
  --data=cifar10 --input_transform=symmetric --method=none --from_scratch --epochs=6 \
  --learning_rate=1e-3 --batch_size=128 --out="$OUT/base"
