"""Goldens of diffusers' StableDiffusionPipeline on the embedded reference model (assets/reference-model).

Fixed starting latents (diffusers' `latents=`), so no RNG is involved; records the final latents
and, for the first case, the decoded image in [0, 1].

    source <reference env>/env.sh && python tools/train-reference/make_reference_goldens.py

Writes test/fixtures/goldens/reference-model.safetensors and .json.
"""
import json
import os

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, StableDiffusionPipeline
from safetensors.torch import save_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
MODEL = os.path.join(ROOT, 'assets', 'reference-model')
OUT = os.path.join(ROOT, 'test', 'fixtures', 'goldens', 'reference-model')

CASES = [
    dict(name='dpm++2m', scheduler='dpm++2m', prompt='a small red circle at the top left and a large blue square at the bottom right',
         negative_prompt=None, num_inference_steps=20, guidance_scale=5.0),
    dict(name='ddim-negative', scheduler='ddim', prompt='a yellow triangle in the centre on a black background',
         negative_prompt='a white background', num_inference_steps=10, guidance_scale=7.5),
]
SCHEDULERS = {'dpm++2m': DPMSolverMultistepScheduler.from_config, 'ddim': DDIMScheduler.from_config}


def main():
    torch.set_num_threads(1)
    pipe = StableDiffusionPipeline.from_pretrained(MODEL, torch_dtype=torch.float32, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    base = pipe.scheduler.config
    tensors, index = {}, []
    for i, c in enumerate(CASES):
        latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(2000 + i))
        pipe.scheduler = SCHEDULERS[c['scheduler']](base)
        settings = {k: v for k, v in c.items() if k not in ('name', 'scheduler')}
        with torch.no_grad():
            out = pipe(latents=latents.clone(), output_type='latent', width=64, height=64, **settings).images
        tensors[f"{c['name']}.latents_in"] = latents.contiguous()
        tensors[f"{c['name']}.latents_out"] = out.contiguous()
        if i == 0:
            with torch.no_grad():
                image = pipe.vae.decode(out / pipe.vae.config.scaling_factor).sample
            tensors[f"{c['name']}.image"] = (image / 2 + 0.5).clamp(0, 1).contiguous()
        index.append(c)
    save_file(tensors, OUT + '.safetensors')
    with open(OUT + '.json', 'w') as f:
        json.dump(index, f, indent=1)


if __name__ == '__main__':
    main()
