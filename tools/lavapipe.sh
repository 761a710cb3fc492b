#!/usr/bin/env bash
# Mesa's lavapipe Vulkan driver (a CPU "GPU" with float16 shaders, unlike Chromium's SwiftShader)
# from bookworm-backports, unpacked into .cache/lavapipe without installing anything: Debian 12's
# own Mesa 22 is refused by ONNX Runtime's Dawn, and Mesa 25 would replace it system-wide. Writes
# .cache/lavapipe/icd.json; run Node with VK_ICD_FILENAMES pointing at it and LD_LIBRARY_PATH at
# .cache/lavapipe/lib (its libdrm is newer than Debian 12's). Needs Debian 12 on x86-64 and
# Chromium's Vulkan libraries (apt-get install chromium libvulkan1).
set -euo pipefail
cd "$(dirname "$0")/.."
dest="$PWD/.cache/lavapipe"
[ -f "$dest/icd.json" ] && exit 0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/debs"
echo 'deb http://deb.debian.org/debian bookworm-backports main' > "$work/sources.list"
apt=(-qq -o Dir::Etc::SourceList="$work/sources.list" -o Dir::Etc::SourceParts=/dev/null -o Dir::State::Lists="$work/lists" -o APT::Sandbox::User=root)
apt-get "${apt[@]}" update
(cd "$work/debs" && apt-get "${apt[@]}" download mesa-vulkan-drivers/bookworm-backports libdrm2/bookworm-backports libdrm-amdgpu1/bookworm-backports)
mkdir -p "$work/root"
for deb in "$work"/debs/*.deb; do dpkg-deb -x "$deb" "$work/root"; done
mkdir -p "$dest/lib"
cp -a "$work"/root/usr/lib/x86_64-linux-gnu/{libvulkan_lvp.so,libdrm.so.2*,libdrm_amdgpu.so.1*} "$dest/lib/"
printf '{"file_format_version": "1.0.0", "ICD": {"library_path": "%s", "api_version": "1.4.305"}}\n' "$dest/lib/libvulkan_lvp.so" > "$dest/icd.json.tmp"
mv "$dest/icd.json.tmp" "$dest/icd.json"
