#!/usr/bin/env bash
# Prepares this checkout for the GPU machine the `device` tool lends (docs/BENCHMARKS.md, "On a GPU"):
# that machine has no Node and reaches no network, and what travels is at most 64 MiB (the tracked
# files plus what `carry` names). So this packs Node, the built package with its production
# dependencies (Linux x64 binaries only), diffusers' sources and the Vulkan loader into .gpu/, and
# takes the large tracked files (test fixtures, embedded models, pictures) out of git's index for
# the call: they stay on disk, untracked and ignored, until `pack.sh --restore` puts them back.
#
#   bash tools/gpu-bench/pack.sh            # then the device call: see tools/gpu-bench/device.sh
#   bash tools/gpu-bench/pack.sh --restore  # afterwards (before any commit)
set -euo pipefail
cd "$(dirname "$0")/../.."
BIG=(test/fixtures 'assets/reference-*' 'docs/*.png' 'docs/*.json')
EXCLUDE=.git/info/exclude
MARK='# gpu-bench: large tracked files left out of one device call'

if [ "${1:-}" = --restore ]; then
  git reset -q -- "${BIG[@]}"
  [ -f "$EXCLUDE" ] && sed -i "/^$MARK\$/,/^# gpu-bench end\$/d" "$EXCLUDE"
  echo "index restored: $(git status --short | wc -l) changed paths (as before packing)"
  exit 0
fi
[ -z "$(git status --short -- "${BIG[@]}")" ] || { echo "pack.sh: commit or restore changes under ${BIG[*]} first" >&2; exit 2; }
REFENV=${REFENV:-../refenv}
[ -d "$REFENV/src/diffusers/src/diffusers" ] || { echo "pack.sh: no diffusers sources in $REFENV (build ../shared/reference first, or set REFENV)" >&2; exit 2; }

npm run -s build
rm -rf .gpu && mkdir -p .gpu/stage/app .gpu/stage/py
xz -T2 -6 -c "$(command -v node)" > .gpu/node.xz
# The package as installed: dist/, its runtime files and the production dependency closure; ORT's
# browser build and its other platforms' binaries are left behind.
cp -a package.json bin dist src assets tools .gpu/stage/app/   # -a: dist stays newer than src, so bin/diffuse.js runs the build
rm -rf .gpu/stage/app/assets/reference-*
npm ls --omit=dev --parseable --all 2>/dev/null | sed "s|^$PWD/||" | grep '^node_modules/' | grep -v '^node_modules/onnxruntime-web' |
  while read -r dir; do mkdir -p ".gpu/stage/app/$(dirname "$dir")"; cp -r "$dir" ".gpu/stage/app/$dir"; done
find .gpu/stage/app/node_modules/onnxruntime-node/bin -mindepth 2 -maxdepth 2 ! -name linux -exec rm -rf {} +
rm -rf .gpu/stage/app/node_modules/onnxruntime-node/bin/*/linux/arm64
cp -r "$REFENV/src/diffusers/src/diffusers" .gpu/stage/py/
cp -r "$(find "$REFENV/venv" -type d -name importlib_metadata -path '*site-packages*' | head -1)" .gpu/stage/py/
find .gpu/stage -name __pycache__ -prune -exec rm -rf {} +
(cd .gpu && apt-get download -qq libvulkan1)
tar -C .gpu/stage -cf - app py | xz -T2 -6 > .gpu/bundle.tar.xz
rm -rf .gpu/stage

git rm -r -q --cached -- "${BIG[@]}"
{ echo "$MARK"; printf '/%s\n' "${BIG[@]}"; echo '# gpu-bench end'; } >> "$EXCLUDE"
echo ".gpu/: $(du -sh .gpu | cut -f1); tracked files now $(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1) bytes"
echo 'device call: run(command="bash tools/gpu-bench/device.sh", carry=[".gpu"], timeout_s=590); afterwards: bash tools/gpu-bench/pack.sh --restore'
