"""How much of a scene survives the VAE: renders one-object held-in scenes (every size, shape and
place), encodes and decodes them with a pipeline folder's VAE, and writes the originals and the
round trips for tools/vae-roundtrip.ts, which scores both with the adherence checker. A U-Net
cannot draw what its VAE cannot reconstruct.

    source <refenv>/env.sh
    python tools/train-reference/vae_roundtrip.py assets/reference-model --out /tmp/roundtrip
    node --import tsx tools/vae-roundtrip.ts /tmp/roundtrip

Writes <out>.json (captions) and <out>-original.f32 / <out>-roundtrip.f32 (planar RGB in [0, 1], [N, 3, 64, 64]).
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
import scenes  # noqa: E402
import train  # noqa: E402
from diffusers import AutoencoderKL  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument('model', help='pipeline folder (its vae/ is used)')
ap.add_argument('--out', required=True, help='prefix of the files written')
ap.add_argument('--count', type=int, default=300)
ap.add_argument('--seed', type=int, default=5)
args = ap.parse_args()

vae = AutoencoderKL.from_pretrained(args.model, subfolder='vae', torch_dtype=torch.float32).eval()
rng = np.random.default_rng(args.seed)
captions, images = [], []
while len(captions) < args.count:
    scene = scenes.sample_scene(rng)
    scene['objects'] = scene['objects'][:1]
    scene['objects'][0]['position_stated'] = True
    captions.append(scenes.caption(scene))
    images.append(scenes.render(scene, rng))
x = train.to_tensor(np.stack(images))
with torch.no_grad():
    roundtrip = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
for name, t in (('original', x), ('roundtrip', roundtrip)):
    ((t + 1) / 2).numpy().astype(np.float32).tofile(f'{args.out}-{name}.f32')
with open(f'{args.out}.json', 'w') as f:
    json.dump(captions, f)
