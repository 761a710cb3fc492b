"""How much of a scene survives the VAE: renders one-object held-in scenes (every size, shape and
place), encodes and decodes them with a pipeline folder's VAE, and writes the originals and the
round trips for tools/vae-roundtrip.ts, which scores both with the adherence checker. A U-Net
cannot draw what its VAE cannot reconstruct.

With --denoise-from T the latents are also noised to timestep T and brought back by the folder's
U-Net (DDIM steps 40 apart, no guidance) before decoding: how much of a shape the U-Net keeps from a
partly noised image. --say SHAPE conditions it on a caption naming another shape (the scores stay
against the rendered one), which shows whether the caption or the image decides the shape at T.

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
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextModel, CLIPTokenizer  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument('model', help='pipeline folder (its vae/ is used)')
ap.add_argument('--out', required=True, help='prefix of the files written')
ap.add_argument('--count', type=train.COUNT, default=300)
ap.add_argument('--seed', type=train.bounded(int, 0), default=5)
ap.add_argument('--shape', choices=scenes.SHAPES, help='render only this shape')
ap.add_argument('--size', choices=scenes.SIZES, help='render only this size')
ap.add_argument('--denoise-from', type=train.bounded(int, 1, 999), help='noise the latents to this timestep and denoise them with the U-Net')
ap.add_argument('--say', choices=scenes.SHAPES, help='with --denoise-from: name this shape in the caption the U-Net sees')
args = ap.parse_args()
if args.say and args.denoise_from is None:
    ap.error('--say names the shape in the U-Net\'s caption: it needs --denoise-from')
if args.denoise_from is not None:
    schedule = DDPMScheduler.from_pretrained(args.model, subfolder='scheduler')
    if not 0 < args.denoise_from < schedule.config.num_train_timesteps:
        ap.error(f'--denoise-from: expected a timestep from 1 to {schedule.config.num_train_timesteps - 1}, found {args.denoise_from}')

vae = AutoencoderKL.from_pretrained(args.model, subfolder='vae', torch_dtype=torch.float32).eval()
rng = np.random.default_rng(args.seed)
captions, told, images = [], [], []
while len(captions) < args.count:
    scene = scenes.sample_scene(rng)
    scene['objects'] = scene['objects'][:1]
    obj = scene['objects'][0]
    obj['position_stated'] = True
    obj['shape'] = args.shape or obj['shape']
    obj['size'] = args.size or obj['size']
    captions.append(scenes.caption(scene))
    told.append(scenes.caption({**scene, 'objects': [{**obj, 'shape': args.say or obj['shape']}]}))
    images.append(scenes.render(scene, rng))
x = train.to_tensor(np.stack(images))


@torch.no_grad()
def denoised(latents, start):
    """DDIM from `start` down to 0 in steps of 40 timesteps, conditioned on `told`."""
    unet = UNet2DConditionModel.from_pretrained(args.model, subfolder='unet', torch_dtype=torch.float32).eval()
    text_encoder = CLIPTextModel.from_pretrained(args.model, subfolder='text_encoder', torch_dtype=torch.float32).eval()
    tokenizer = CLIPTokenizer.from_pretrained(args.model, subfolder='tokenizer')
    alphas, prediction = schedule.alphas_cumprod, schedule.config.prediction_type
    context = text_encoder(train.tokenize(tokenizer, told)).last_hidden_state
    noisy = train.noised(latents, torch.randn(latents.shape, generator=torch.Generator().manual_seed(args.seed)), alphas[start])
    timesteps = list(range(start, 0, -40)) + [0]
    for t, after in zip(timesteps, timesteps[1:] + [None]):
        a = alphas[t]
        x0 = train.predicted_x0(unet(noisy, torch.full((len(latents),), t), context).sample, prediction, a, noisy)
        if after is None:
            return x0
        eps = (noisy - a.sqrt() * x0) / (1 - a).sqrt()
        noisy = train.noised(x0, eps, alphas[after])


with torch.no_grad():
    latents = vae.encode(x).latent_dist.mode()
    if args.denoise_from is not None:
        scaling = vae.config.scaling_factor
        latents = denoised(latents * scaling, args.denoise_from) / scaling
    roundtrip = vae.decode(latents).sample.clamp(-1, 1)
for name, t in (('original', x), ('roundtrip', roundtrip)):
    ((t + 1) / 2).numpy().astype(np.float32).tofile(f'{args.out}-{name}.f32')
with open(f'{args.out}.json', 'w') as f:
    json.dump(captions, f)
