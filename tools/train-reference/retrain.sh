#!/usr/bin/env bash
# Trains the candidate reference model (docs/REFERENCE_MODEL.md: the base, then one round of
# self-correction at lr 5e-4) into WORK and measures it, going on from wherever an earlier run
# stopped: a stage whose sample grid is written (its last output) is skipped, one that was stopped goes on from its
# checkpoint (train.py). So the chain (~75 min on a bf16 Xeon, ~170 on an AVX2-only CPU) can be
# spread over sittings: run it again after any stop (SIGTERM/Ctrl-C checkpoint at once).
#
#   bash tools/train-reference/retrain.sh WORK
#
# Then, if its adherence beats the shipped model's (docs/REFERENCE_MODEL.md):
#   bash tools/train-reference/ship.sh WORK/round WORK/base WORK/round OUT
# Needs the reference environment (source ../refenv/env.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ $# -ne 1 ]; then
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
work=$1
python -c 'import diffusers' 2>/dev/null || { echo 'retrain.sh: no diffusers in this python: source ../refenv/env.sh first' >&2; exit 2; }
mkdir -p "$work"
step() { echo "[$(date +%H:%M:%S)] $*"; }
train() { python tools/train-reference/train.py --prediction v_prediction --zero-terminal-snr --threads "$(nproc)" "$@"; }

if [ ! -f "$work/base-samples.png" ]; then
  step "base (3,000 steps; from its checkpoint if one is there)"
  train --vae-from assets/reference-model --high-noise-share 0.5 --pure-noise-share 0.2 --noise-share-end 0.2 \
    --unet-steps 3000 --pool 20000 --out "$work/base" --log "$work/base"
fi
if [ ! -f "$work/round-samples.png" ]; then
  step "self-correction round (771 steps; from its checkpoint if one is there)"
  train --vae-from "$work/base" --init-from "$work/base" --high-noise-share 0.1 --pure-noise-share 0.04 --unet-lr 5e-4 \
    --pool 10000 --self-correct 2048 --self-correct-steps 15 --shape-contrast 0.3 --unet-steps 771 --out "$work/round" --log "$work/round"
fi
step "adherence of $work/round (the shipped model's: docs/REFERENCE_MODEL.md)"
node --import tsx tools/reference-adherence.ts --model "$work/round" --guidance 5,7.5 | tee "$work/adherence.txt"
node --import tsx tools/reference-adherence.ts --model "$work/round" --seeds 9 | tee "$work/adherence-9-seeds.txt"
step "done: ship with  bash tools/train-reference/ship.sh $work/round $work/base $work/round OUT  if it is better"
