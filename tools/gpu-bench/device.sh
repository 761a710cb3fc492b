#!/usr/bin/env bash
# Runs on the GPU machine the `device` tool lends, after tools/gpu-bench/pack.sh here:
#   run(command="bash tools/gpu-bench/device.sh", carry=[".gpu"], timeout_s=590)
# SD 1.5-size and PixArt-α-512-size pipelines (seeded random weights, `diffuse bench --preset`):
# diffusion.ts on WebGPU in Node (Dawn on the NVIDIA Vulkan driver) fp32 vs fp16, on the CPU fp32
# vs int8, and diffusers on PyTorch CUDA fp32 and fp16 on the same folders, all in one run. Each
# stage has its own time limit inside the call's 10 minutes, so a slow one costs only itself;
# the fastest go first. Results: $OUT/log.txt and one JSON per stage, which
#   node --import tsx tools/gpu-bench/summary.ts <files_at>
# turns into the table for docs/BENCHMARKS.md.
#
# A rehearsal here (the same bundle; lavapipe for WebGPU, the reference environment's PyTorch on CPU):
#   VK_ICD_FILENAMES=$PWD/.cache/lavapipe/icd.json LD_LIBRARY_PATH=$PWD/.cache/lavapipe/lib PYTHON=../refenv/venv/bin/python \
#   TORCH_DEVICE=cpu MODELS="test/fixtures/tiny-sd1 test/fixtures/tiny-pixart-alpha" SIZE=64 STEPS=2 OUT=/tmp/gpu-bench bash tools/gpu-bench/device.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
START=$SECONDS
BUDGET=${BUDGET:-570}
OUT=${OUT:-$PWD/gpu-bench-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
MODELS=${MODELS:-sd15 pixart-alpha-512}
SIZE=${SIZE:-512}
STEPS=${STEPS:-10}
THREADS=${THREADS:-$(nproc)}
CACHE=${CACHE:-/tmp/gpu-bench-models}

G=/tmp/gpu
mkdir -p $G/bin $G/vk
xz -dc .gpu/node.xz > $G/bin/node && chmod +x $G/bin/node
xz -dc .gpu/bundle.tar.xz | tar -C $G -xf -
dpkg -x .gpu/libvulkan1_*.deb $G/vk
export PATH=$G/bin:$PATH LD_LIBRARY_PATH=$G/vk/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PYTHONPATH=$G/py${PYTHONPATH:+:$PYTHONPATH}
for icd in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json; do
  [ -f "$icd" ] && { export VK_ICD_FILENAMES=$icd; break; }
done
APP=$G/app
PYTHON=${PYTHON:-python3}
TORCH_DEVICE=${TORCH_DEVICE:-cuda}
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp} HF_HUB_DISABLE_PROGRESS_BARS=1 TRANSFORMERS_VERBOSITY=error DIFFUSERS_VERBOSITY=error
DIFFUSE=(node "$APP/bin/diffuse.js")

# stage NAME SECONDS COMMAND...: at most SECONDS, and never past the call's budget.
stage() {
  local name=$1 limit=$2 left=$((BUDGET - (SECONDS - START)))
  shift 2
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 20 ]; then echo "== $name: skipped (${left} s of the budget left)"; return; fi
  echo "== $name (limit ${limit} s, $((SECONDS - START)) s in)"
  local t=$SECONDS
  timeout -k 5 "$limit" "$@"
  echo "== $name: exit $? after $((SECONDS - t)) s"
}

echo "== machine"
nvidia-smi -L 2>/dev/null || echo 'no nvidia-smi'
echo "node $(node -v), $(nproc) cores, VK_ICD_FILENAMES=${VK_ICD_FILENAMES:-unset}; models ${MODELS}, ${SIZE}px, ${STEPS} steps"
$PYTHON -c 'import torch, diffusers; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "diffusers", diffusers.__version__)'

# MODELS are preset names (seeded random weights, written into $CACHE by the first stage) or
# pipeline folders (a rehearsal: MODELS="test/fixtures/tiny-sd1 test/fixtures/tiny-pixart-alpha").
folder() { if [ -d "$1" ]; then echo "$1"; else echo "$CACHE/$1"; fi; }
source_of() { if [ -d "$1" ]; then echo "--model $1"; else echo "--preset $1"; fi; }
for m in $MODELS; do
  name=$(basename "$m")
  case $m in *pixart*) guidance=4.5 webgpu=270 ;; *) guidance=7.5 webgpu=180 ;; esac
  # The first stage also writes a preset's random-weight folder (PixArt-α: 12 GB with T5-XXL).
  stage "$name webgpu fp32 vs fp16" $webgpu "${DIFFUSE[@]}" bench $(source_of "$m") --size "$SIZE" --steps "$STEPS" --runs 1 --warmup 1 --cache "$CACHE" \
    --threads "$THREADS" --device webgpu --precision fp16 --json "$OUT/$name-webgpu.json" --out "/tmp/$name-webgpu.png"
  [ -d "$(folder "$m")" ] || continue
  stage "$name pytorch $TORCH_DEVICE fp32 + fp16" 120 bash -c "for dtype in fp32 fp16; do $PYTHON tools/reference/bench_generate_torch.py '$(folder "$m")' \
    --device $TORCH_DEVICE --dtype \$dtype --size $SIZE --steps $STEPS --guidance $guidance --threads $THREADS --runs 1 || exit; done > '$OUT/$name-pytorch.jsonl'"
done
for m in $MODELS; do
  name=$(basename "$m")
  [ -d "$(folder "$m")" ] || continue
  case $m in *pixart*) cpu=200 ;; *) cpu=150 ;; esac
  stage "$name cpu fp32 vs int8" $cpu "${DIFFUSE[@]}" bench $(source_of "$m") --size "$SIZE" --steps "$STEPS" --runs 1 --warmup 1 --cache "$CACHE" \
    --threads "$THREADS" --device cpu --precision int8 --json "$OUT/$name-cpu.json" --out "/tmp/$name-cpu.png"
done
echo "== done after $((SECONDS - START)) s"
