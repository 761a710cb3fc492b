#!/usr/bin/env bash
# Makes a retrained U-Net pipeline the embedded reference model and reruns what is measured on it:
# diffusers' goldens, the fidelity report, the PHAST search and its held-out check, the WebGPU
# tables, the adherence figures and the tests that read the model. Prose and hand-kept tables
# (README, docs/REFERENCE_MODEL.md, docs/FIDELITY.md's PHAST and WebGPU tables) are then updated
# by hand from what it prints into OUT.
#
#   bash tools/train-reference/ship.sh MODEL BASE_LOG ROUND_LOG OUT
#
# MODEL: the folder train.py --out wrote; BASE_LOG and ROUND_LOG: the --log prefixes of the base
# and of the self-correction round; OUT: a new folder for the outputs. Needs the reference
# environment (source ../refenv/env.sh) for the goldens; about an hour on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ $# -ne 4 ]; then
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
model=$1 base_log=$2 round_log=$3 out=$4
for f in "$model/model_index.json" "$model/unet/config.json" "$base_log-log.json" "$base_log-loss.png" \
  "$round_log-log.json" "$round_log-loss.png" "$round_log-samples.png" "$round_log-redrawn.png"; do
  [ -f "$f" ] || { echo "ship.sh: $f: not found (MODEL is train.py's --out, the logs its --log prefixes)" >&2; exit 2; }
done
[ ! -e "$out" ] || { echo "ship.sh: $out: already there; give a new folder for the outputs" >&2; exit 2; }
python -c 'import diffusers' 2>/dev/null || { echo 'ship.sh: no diffusers in this python: source ../refenv/env.sh first' >&2; exit 2; }
mkdir -p "$out"
step() { echo "[$(date +%H:%M:%S)] $*"; }

step "model and its training logs into assets/ and docs/"
rm -rf assets/reference-model/*
cp -r "$model"/* assets/reference-model/
sed -i '/"_name_or_path"/d' assets/reference-model/*/config.json
cp "$round_log-samples.png" docs/reference-model-samples.png
cp "$round_log-redrawn.png" docs/reference-model-redrawn.png
cp "$round_log-log.json" docs/reference-model-self-correct-log.json
cp "$round_log-loss.png" docs/reference-model-self-correct-loss.png
cp "$base_log-log.json" docs/reference-model-log.json
cp "$base_log-loss.png" docs/reference-model-loss.png

step "diffusers' goldens"
python tools/train-reference/make_reference_goldens.py > "$out/goldens.txt"

step "tests that read the model"
node --import tsx --test --test-reporter=spec test/reference-model.test.ts test/precision.test.ts test/webgpu-node.test.ts test/browser.test.ts \
  > "$out/tests.txt" 2>&1 || echo "  some failed: see $out/tests.txt"

step "adherence (CFG 5 and 7.5; 9 seeds; 4 steps; CFG 1 and 2)"
node --import tsx tools/reference-adherence.ts --guidance 5,7.5 > "$out/adherence.txt"
node --import tsx tools/reference-adherence.ts --guidance 5 --count 1 --seeds 9 > "$out/adherence-9-seeds.txt"
node --import tsx tools/reference-adherence.ts --guidance 7.5 --steps 4 > "$out/adherence-4-steps.txt"
node --import tsx tools/reference-adherence.ts --guidance 1,2 --seeds 1 > "$out/adherence-cfg-1-2.txt"

step "fidelity report (docs/FIDELITY.md's U-Net part)"
npm run -s fidelity-report > "$out/fidelity-report.txt" 2>&1

step "PHAST on captions 1-8, checked on 9-32"
node bin/diffuse.js tune --model reference --method attn-reuse --steps 20 --reuse 10 --scheduler ddim --guidance 5 \
  --count 8 --max-rounds 3 --threads 2 --out docs/phast-reference-ddim20-r10-8captions.json > "$out/phast.txt" 2>&1
tail -n +9 assets/scenes/held-out-prompts.txt | head -24 > "$out/captions-9-32.txt"
node bin/diffuse.js bench --model reference --fidelity --prompts "$out/captions-9-32.txt" --steps 20 --scheduler ddim --guidance 5 \
  --threads 2 --sweep attn-reuse:reuse=10 --sweep attn-reuse:schedule=docs/phast-reference-ddim20-r10-8captions.json \
  --steps-baseline 13 --json docs/fidelity-phast-captions-9-32.json > "$out/phast-check.txt" 2>&1

step "WebGPU tables"
node --import tsx tools/webgpu-fidelity.ts > "$out/webgpu.txt" 2>&1 || echo "  webgpu-fidelity failed: see $out/webgpu.txt"

step "done: outputs in $out"
