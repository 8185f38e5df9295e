#!/usr/bin/env bash
# docs/results.md "Hardening against faults in int8 weights": a paper network trained
# plainly (the base), then each method for the same 2 epochs from that base (none = plain
# fine-tuning of the same length and data), exported to int8, and each int8 .tflite
# measured in paired campaigns at the plain file's cliff (the per-bit error rate, stuck-at-0
# rate and transient flip rate where it keeps about 90/50/20% of its accuracy above chance).
#   bash docs/bit_error_hardening.sh fmnist_cnn [OUT]      (about 25 min on 2 cores)
#   bash docs/bit_error_hardening.sh cifar10_conv3 [OUT]   (about 20 min on 2 cores)
#   EPOCHS=4 ONLY="none clip_bet clip_bet_mid" bash docs/bit_error_hardening.sh fmnist_cnn OUT4
#   DATA_DIR=DIR: CIFAR-10's image folder when the checkout has no ../shared beside it.
#   FLOAT_KINDS="activation_bit": also campaigns of these kinds on the float32 Keras models.
#   SEED=1: every method trained with another seed (data order, fault draws) from the same
#     base, into another OUT: a replicate of the whole comparison.
#   TRIALS=40 CAMPAIGNS=campaigns_40: more paired trials (narrower intervals) into another
#     campaign folder; --rates=cliff is searched on the first 3 trials, so the rates repeat.
# Budget (2 CPU cores): base 4 (fmnist_cnn) or 6 (cifar10_conv3) epochs; every method 2
# epochs at learning rate 3e-4; campaigns on 5,000 test images, 10 paired trials per rate.
# cifar10_conv3 takes five methods and two fault kinds (its epochs are slower).
set -euo pipefail
ARCH=${1:?architecture: fmnist_cnn or cifar10_conv3}
OUT=${2:-results/bit_error_hardening}/$ARCH
BIN=${BIN:-.venv/bin}
EPOCHS=${EPOCHS:-2}  # Every method's epochs (the same for all: like for like).
ONLY=${ONLY:-}  # Space-separated method names to run (default: all of the architecture's).
SEED=${SEED:-0}  # The methods' training seed (the base is trained with seed 0).
case $ARCH in
  fmnist_cnn) BASE_EPOCHS=4; DATA=(--dataset=fashion_mnist) ;;
  cifar10_conv3) BASE_EPOCHS=6; DATA=(--dataset=cifar10 ${DATA_DIR:+--data_dir=$DATA_DIR}) ;;
  *) echo "unknown architecture $ARCH" >&2; exit 2 ;;
esac
mkdir -p "$OUT"
[ -f "$OUT/base/metrics.json" ] || "$BIN/aftt-train" --flagfile="flags/$ARCH.flags" --method=none \
  --finetune_epochs=$BASE_EPOCHS --classification_loss=crossentropy --validation_fraction=0 \
  --out="$OUT/base"
# Random bit error training: each step's per-bit rate uniform in [0, max]; 0.1 covers the
# plain files' cliffs (fmnist_cnn's 50% rate is 8% of the bits), 0.05 and 0.02 (the
# RandBET paper's order of magnitude) trade less clean accuracy for less tolerance.
BET="--fault_aware_kinds=bit_error --storage=int8 --fault_aware_max_rate=0.1"
BET_LOW="--fault_aware_kinds=bit_error --storage=int8 --fault_aware_max_rate=0.02"
BET_MID="--fault_aware_kinds=bit_error --storage=int8 --fault_aware_max_rate=0.05"
# name:method[:extra flags]
VARIANTS=(
  "none:none"
  "clip:none:--weight_clip=auto"
  "clip_bet:fat:$BET --weight_clip=auto"
  "clip_bet_mid:fat:$BET_MID --weight_clip=auto"
  "clip_bet_low:fat:$BET_LOW --weight_clip=auto"
  # RandBET's clean + perturbed loss (--fault_aware_clean_loss): a second pass per step.
  "clip_bet_clean:fat:$BET --weight_clip=auto --fault_aware_clean_loss"
  "clip_bet_mid_clean:fat:$BET_MID --weight_clip=auto --fault_aware_clean_loss"
  # Tighter clipping (2 standard deviations per layer): an MSB flip moves a weight less.
  "clip2_bet:fat:$BET --weight_clip=2std"
  "clip2_bet_clean:fat:$BET --weight_clip=2std --fault_aware_clean_loss"
  "clip2_bet_mid:fat:$BET_MID --weight_clip=2std"
  "clip2_bet_mid_clean:fat:$BET_MID --weight_clip=2std --fault_aware_clean_loss"
  "fat:fat:--fault_aware_kinds=weight,node --fault_aware_max_rate=0.3"
)
KINDS_GIVEN=${KINDS:-}
KINDS=(${KINDS:-bit_error weight})
if [ "$ARCH" = fmnist_cnn ]; then  # The fast model: every method and transient flips too.
  VARIANTS+=(
    "bet:fat:$BET"
    "range:range:--range_examples=10000"
    # Bounds, then training against transient float32 bit flips in layer outputs.
    "range_fat:range_fat:--range_examples=10000 --fault_aware_kinds=activation_bit --fault_aware_max_rate=0.05"
    "aftt_fat:aftt_fat:--fault_aware_kinds=weight,node --fault_aware_max_rate=0.3 --pretrain_epochs=1"
  )
  [ -n "${KINDS_GIVEN:-}" ] || KINDS+=(activation_bit)
fi
int8=()
keras_models=()
for variant in "${VARIANTS[@]}"; do
  IFS=: read -r name method extra <<< "$variant"
  [ -z "$ONLY" ] || [[ " $ONLY " == *" $name "* ]] || continue
  # shellcheck disable=SC2086  # $extra holds several flags.
  [ -f "$OUT/$name/metrics.json" ] || "$BIN/aftt-train" --model="$OUT/base/classifier.keras" \
    "${DATA[@]}" --method=$method --epochs=$EPOCHS --learning_rate=3e-4 --batch_size=128 --seed=$SEED $extra \
    --out="$OUT/$name"
  [ -f "$OUT/export_$name/manifest.json" ] || "$BIN/aftt-export" \
    --model="$OUT/$name/classifier.keras" "${DATA[@]}" --formats=tflite_int8 \
    --test_examples=5000 --out="$OUT/export_$name"
  int8+=(--model=$name="$OUT/export_$name/model_int8.tflite")
  keras_models+=(--model=$name="$OUT/$name/classifier.keras")
done
TRIALS=${TRIALS:-10}
CAMPAIGNS=${CAMPAIGNS:-campaigns}
CAMPAIGN=("${DATA[@]}" --test_examples=5000 --trials=$TRIALS --seed=0 --rates=cliff)
for kind in "${KINDS[@]}"; do
  "$BIN/aftt-faults" "${int8[@]}" "${CAMPAIGN[@]}" --fault=$kind --out="$OUT/$CAMPAIGNS/$kind"
done
# FLOAT_KINDS: campaigns on the Keras models too (float32 values: Keras = float32 file).
for kind in ${FLOAT_KINDS:-}; do
  "$BIN/aftt-faults" "${keras_models[@]}" "${CAMPAIGN[@]}" --fault=$kind --out="$OUT/$CAMPAIGNS/float32_$kind"
done
