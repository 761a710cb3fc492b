"""Can the reference U-Net learn where a caption puts its object? A probe of the one thing the model gets wrong.

A fresh U-Net of train.py's config learns the task the first sampling step poses at zero terminal SNR: from
pure noise, the mean image of a one-object caption (the v target there is minus the clean latents). Every
100 steps it prints by what share the true caption lowers the error against the same caption with the
place (or the colour) changed, on 128 probe scenes: 0 means the U-Net ignores it. Options: the text encoder
frozen as shipped or trained with the U-Net (--joint), and x/y coordinate ramps added to the input (--coords)
to tell every pixel where it is (a U-Net otherwise knows it only from the zero padding of its convolutions).

    source <refenv>/env.sh
    python tools/train-reference/place_probe.py [--joint] [--coords] [--steps 400]
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
import caption_sensitivity  # noqa: E402
import scenes  # noqa: E402
import train  # noqa: E402
from diffusers import StableDiffusionPipeline, UNet2DConditionModel  # noqa: E402
from diffusers.models.attention_processor import AttnProcessor  # noqa: E402

LAST_STEP = 999


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--model', default=os.path.join(train.ROOT, 'assets', 'reference-model'), help='pipeline whose VAE, tokenizer and text encoder to use')
    ap.add_argument('--joint', action='store_true', help='train the text encoder with the U-Net')
    ap.add_argument('--coords', action='store_true', help='add x/y coordinate ramps to the input')
    ap.add_argument('--steps', type=train.COUNT, default=400)
    ap.add_argument('--batch', type=train.COUNT, default=64)
    ap.add_argument('--lr', type=train.RATE, default=1e-3)
    args = ap.parse_args()
    torch.manual_seed(0)
    pipe = StableDiffusionPipeline.from_pretrained(args.model, torch_dtype=torch.float32)
    vae, text_encoder, tokenizer = pipe.vae, pipe.text_encoder, pipe.tokenizer
    text_encoder.train(args.joint)
    unet = UNet2DConditionModel(**train.UNET_CONFIG)
    unet.set_attn_processor(AttnProcessor())
    params = list(unet.parameters()) + (list(text_encoder.parameters()) if args.joint else [])
    opt = torch.optim.AdamW(params, lr=args.lr)
    size = train.UNET_CONFIG['sample_size']
    ramps = torch.zeros(1, 4, size, size)
    if args.coords:
        ramps[0, 0] = torch.linspace(-3, 3, size)[None, :]
        ramps[0, 1] = torch.linspace(-3, 3, size)[:, None]

    def scenes_batch(count, rng):
        chosen = [caption_sensitivity.one_object_scene(rng) for _ in range(count)]
        latents = train.encode_pool(vae, np.stack([scenes.render(s, rng) for s in chosen]))[0] * vae.config.scaling_factor
        return chosen, latents, train.tokenize(tokenizer, [scenes.caption(s) for s in chosen])

    probe_scenes, probe_latents, probe_ids = scenes_batch(128, np.random.default_rng(9))
    changed = {a: train.tokenize(tokenizer, [caption_sensitivity.changed_caption(s, a, np.random.default_rng(3)) for s in probe_scenes])
               for a in ('place', 'colour')}
    timesteps = lambda n: torch.full((n,), LAST_STEP)  # noqa: E731

    @torch.no_grad()
    def gains():
        unet.eval()
        noise = torch.randn(probe_latents.shape, generator=torch.Generator().manual_seed(0))
        err = lambda ids: float(((unet(noise + ramps, timesteps(len(ids)), text_encoder(ids).last_hidden_state).sample + probe_latents) ** 2).mean())  # noqa: E731
        true = err(probe_ids)
        unet.train()
        return {a: round(1 - true / err(ids), 4) for a, ids in changed.items()}, round(true, 4)

    rng = np.random.default_rng(1)
    start = time.time()
    for step in range(args.steps + 1):
        if step % 100 == 0:
            gain, error = gains()
            print(f'step {step}: gain {gain}, error {error}, {time.time() - start:.0f} s', flush=True)
        if step == args.steps:
            break
        _, latents, ids = scenes_batch(args.batch, rng)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            with torch.set_grad_enabled(args.joint):
                context = text_encoder(ids).last_hidden_state
            pred = unet(torch.randn(latents.shape) + ramps, timesteps(len(ids)), context).sample
        loss = ((pred.float() + latents) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


if __name__ == '__main__':
    main()
