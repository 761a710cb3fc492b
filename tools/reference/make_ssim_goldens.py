"""SSIM goldens from scikit-image on textured image pairs.

Our SSIM (src/metrics/image.ts) claims to be skimage's `structural_similarity` with
gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1 over channel axis 0.
Flat or pure-noise pairs cannot catch a wrong constant or window; these pairs have structure at
several scales (gratings, edges, blobs) and differ by shifts, blur, contrast and noise.

    python -m venv /tmp/ssimenv && /tmp/ssimenv/bin/pip install scikit-image
    /tmp/ssimenv/bin/python tools/reference/make_ssim_goldens.py

Writes test/fixtures/goldens/ssim/pairs.{safetensors,json}: each pair's images as F32 tensors
`<name>.a` / `<name>.b`, planar [3, H, W]; the JSON holds names, sizes and skimage's values.
"""

import json
import os

import numpy as np
import skimage
from safetensors.numpy import save_file
from skimage.metrics import structural_similarity

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "test", "fixtures", "goldens", "ssim", "pairs")


def texture(h, w, rng):
    """Gratings of three frequencies and orientations, a hard-edged disc and a checkerboard, per channel."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    planes = []
    for c in range(3):
        f1, f2, angle = rng.uniform(0.05, 0.4), rng.uniform(0.3, 0.9), rng.uniform(0, np.pi)
        grating = np.sin(f1 * (x * np.cos(angle) + y * np.sin(angle))) + 0.5 * np.sin(f2 * x + c)
        disc = ((x - w * rng.uniform(0.3, 0.7)) ** 2 + (y - h * rng.uniform(0.3, 0.7)) ** 2) < (min(h, w) / 4) ** 2
        checker = ((x // 4 + y // 4) % 2) * 0.3
        plane = 0.25 * grating + 0.4 * disc + checker
        planes.append((plane - plane.min()) / (plane.max() - plane.min()))
    return np.stack(planes)


def box_blur(img):
    out = img.copy()
    out[:, 1:-1, 1:-1] = sum(img[:, 1 + dy:img.shape[1] - 1 + dy, 1 + dx:img.shape[2] - 1 + dx]
                             for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9
    return out


def main():
    rng = np.random.default_rng(2026)
    pairs = []
    tensors = {}
    for name, (h, w) in [("24x20", (20, 24)), ("48x32", (32, 48))]:
        a = texture(h, w, rng)
        variants = {
            "noise": np.clip(a + rng.normal(0, 0.08, a.shape), 0, 1),
            "shift-contrast": np.clip(0.7 * np.roll(a, 1, axis=2) + 0.1, 0, 1),
            "blur": box_blur(a),
            "other-texture": texture(h, w, rng),
        }
        for kind, b in variants.items():
            a32, b32 = a.astype(np.float32), b.astype(np.float32)
            value = structural_similarity(a32.astype(np.float64), b32.astype(np.float64), channel_axis=0, data_range=1.0,
                                          gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
            key = f"{name}-{kind}"
            pairs.append({"name": key, "width": w, "height": h, "ssim": float(value)})
            tensors[f"{key}.a"], tensors[f"{key}.b"] = a32, b32
            print(f"{name}-{kind}: {value:.6f}")
    meta = {"generator": f"scikit-image {skimage.__version__} structural_similarity(channel_axis=0, data_range=1, "
                         "gaussian_weights=True, sigma=1.5, use_sample_covariance=False)"}
    save_file(tensors, OUT + ".safetensors")
    with open(OUT + ".json", "w") as f:
        json.dump({**meta, "pairs": pairs}, f, indent=1)


if __name__ == "__main__":
    main()
