"""How much each part of a caption steers a reference pipeline: colour, shape and place.

For one-object scenes (every position stated) noised at t = 500, 700, 900, 990, 999, the share by
which the true caption lowers the prediction error (epsilon or v, as the pipeline's scheduler
says) against the same caption with one attribute changed (another colour, shape or grid cell):
(err(changed) - err(true)) / err(changed). 0 means the model ignores that attribute. Optionally fine-tunes the U-Net and text encoder on one-object
scenes first, probing every --every steps (the experiment in docs/REFERENCE_MODEL.md).

    source <refenv>/env.sh
    python tools/train-reference/caption_sensitivity.py [--model assets/reference-model] [--finetune-steps 600]
"""
import argparse
import copy
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
import scenes  # noqa: E402
import train  # noqa: E402
from diffusers import DDPMScheduler, StableDiffusionPipeline  # noqa: E402

PROBE_TIMESTEPS = (500, 700, 900, 990, 999)


def one_object_scene(rng):
    scene = scenes.sample_scene(rng)
    scene['objects'] = scene['objects'][:1]
    scene['objects'][0]['position_stated'] = True
    return scene


def changed_caption(scene, attribute, rng):
    scene = copy.deepcopy(scene)
    o = scene['objects'][0]
    if attribute == 'place':
        o['cell'] = next(c for c in ((int(k) % 3, int(k) // 3) for k in rng.permutation(9)) if c != tuple(o['cell']))
    elif attribute == 'shape':
        o['shape'] = next(s for s in rng.permutation(scenes.SHAPES) if s != o['shape'])
    else:
        o['colour'] = next(c for c in rng.permutation(scenes.COLOURS) if c != o['colour'])
    return scenes.caption(scene)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--model', default=os.path.join(train.ROOT, 'assets', 'reference-model'))
    ap.add_argument('--count', type=train.COUNT, default=192, help='probe scenes')
    ap.add_argument('--finetune-steps', type=train.bounded(int, 0), default=0)
    ap.add_argument('--every', type=train.COUNT, default=200)
    ap.add_argument('--lr', type=train.RATE, default=3e-4)
    ap.add_argument('--threads', type=train.COUNT, default=os.cpu_count())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = StableDiffusionPipeline.from_pretrained(args.model, torch_dtype=torch.float32)
    vae, text_encoder, unet, tokenizer = pipe.vae, pipe.text_encoder, pipe.unet, pipe.tokenizer
    alphas = DDPMScheduler.from_config(pipe.scheduler.config).alphas_cumprod
    scaling = vae.config.scaling_factor
    prediction = pipe.scheduler.config.prediction_type

    rng = np.random.default_rng(123)
    probe = [one_object_scene(rng) for _ in range(args.count)]
    latents = train.encode_pool(vae, np.stack([scenes.render(s, rng) for s in probe]))[0] * scaling
    captions = [scenes.caption(s) for s in probe]
    changed = {a: [changed_caption(s, a, rng) for s in probe] for a in ('colour', 'shape', 'place')}

    @torch.no_grad()
    def sensitivity():
        text_encoder.eval()
        unet.eval()
        gen = torch.Generator().manual_seed(7)
        context = text_encoder(train.tokenize(tokenizer, captions)).last_hidden_state
        others = {a: text_encoder(train.tokenize(tokenizer, c)).last_hidden_state for a, c in changed.items()}
        out = {}
        for t in PROBE_TIMESTEPS:
            noise = torch.randn(latents.shape, generator=gen)
            noisy = train.noised(latents, noise, alphas[t])
            steps = torch.full((len(latents),), t)
            target = train.training_target(prediction, alphas[t], latents, noise)
            err = lambda ctx: float(((unet(noisy, steps, ctx).sample - target) ** 2).mean())  # noqa: E731
            true = err(context)
            out[t] = {a: round(1 - true / err(c), 3) for a, c in others.items()}
        text_encoder.train()
        unet.train()
        return out

    print('step 0', sensitivity(), flush=True)
    if not args.finetune_steps:
        return
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    data_rng, gen = np.random.default_rng(5), torch.Generator().manual_seed(6)
    empty = train.tokenize(tokenizer, [''])[0]
    start = time.time()
    for step in range(1, args.finetune_steps + 1):
        batch, images = [], []
        while len(batch) < 64:
            scene = one_object_scene(data_rng)
            if not scenes.is_held_out(scenes.caption(scene)):
                batch.append(scenes.caption(scene))
                images.append(scenes.render(scene, data_rng))
        with torch.no_grad():
            x0 = vae.encode(train.to_tensor(np.stack(images))).latent_dist.sample(gen) * scaling
        ids = train.tokenize(tokenizer, batch)
        ids[torch.rand(len(ids), generator=gen) < 0.1] = empty
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, 1000, (len(ids),), generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            pred = unet(train.noised(x0, noise, a), t, text_encoder(ids).last_hidden_state).sample
        loss = train.prediction_loss(pred, prediction, a, x0, noise, 20)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % args.every == 0:
            print('step', step, f'{time.time() - start:.0f} s, loss {loss.item():.4f}', sensitivity(), flush=True)


if __name__ == '__main__':
    main()
