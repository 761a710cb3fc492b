"""Goldens of the reference DiT (diffusers' DiTPipeline) and Skip-DiT (the official DiT_skip) on their committed weights.

- reference-dit: DiTPipeline on assets/reference-dit, 10 DDIM steps, guidance 4, two classes, from fixed
  starting latents (diffusers draws them with randn_tensor; it is handed these instead), the final
  latents and the first decoded image;
- reference-skip-dit: the official DiT_skip (Skip-DiT's models.py, read from the git mirror as
  tools/reference/make_skip_dit_fixtures.py does) with the EMA weights of assets/reference-skip-dit.pt,
  one forward pass and forward_with_cfg for fixed inputs.

    source <reference env>/env.sh && python tools/train-reference/make_dit_reference_goldens.py

Writes test/fixtures/goldens/reference-dit.safetensors and reference-skip-dit.safetensors (`--only dit|skip-dit`: one of them).
"""
import argparse
import json
import os
import sys
import tempfile

import torch
from diffusers import DiTPipeline
import diffusers.pipelines.dit.pipeline_dit as pipeline_dit
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, '..', '..'))
sys.path.insert(0, os.path.join(ROOT, 'tools', 'reference'))
from make_skip_dit_fixtures import import_official  # noqa: E402

GOLDENS = os.path.join(ROOT, 'test', 'fixtures', 'goldens')
CLASSES = [5, 100]


def dit_goldens():
    pipe = DiTPipeline.from_pretrained(os.path.join(ROOT, 'assets', 'reference-dit'), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    latents = torch.randn(len(CLASSES), 4, 16, 16, generator=torch.Generator().manual_seed(3000))
    pipeline_dit.randn_tensor = lambda shape, **_: latents.clone().reshape(shape)
    # DiTPipeline always decodes: the final latents are what it hands the VAE, times the scaling factor.
    decoded = []
    decode = pipe.vae.decode
    pipe.vae.decode = lambda z, *a, **k: decoded.append(z.clone()) or decode(z, *a, **k)
    with torch.no_grad():
        images = pipe(class_labels=CLASSES, num_inference_steps=10, guidance_scale=4.0, output_type='np').images
    out = decoded[0] * pipe.vae.config.scaling_factor
    image = torch.from_numpy(images[:1]).permute(0, 3, 1, 2)
    save_file({'latents_in': latents, 'latents_out': out.contiguous(), 'image': image.contiguous()},
              os.path.join(GOLDENS, 'reference-dit.safetensors'), metadata={'class_labels': json.dumps(CLASSES), 'steps': '10', 'guidance_scale': '4'})


def skip_dit_goldens():
    torch.serialization.add_safe_globals([argparse.Namespace])  # Skip-DiT's train.py saves its args
    checkpoint = torch.load(os.path.join(ROOT, 'assets', 'reference-skip-dit.pt'), weights_only=True)
    a = checkpoint['args']
    with tempfile.TemporaryDirectory() as tmp:
        models, _ = import_official(tmp)
        skip = models.DiT_skip(input_size=a.image_size // 4, patch_size=2, in_channels=4, hidden_size=a.hidden_size, depth=a.depth,
                               num_heads=a.num_heads, num_classes=a.num_classes, learn_sigma=True).eval()
        skip.load_state_dict({k: v.float() for k, v in checkpoint['ema'].items()})
        g = torch.Generator().manual_seed(3001)
        x = torch.randn(3, 4, 16, 16, generator=g)
        t = torch.tensor([999.0, 500.0, 3.0])
        y = torch.tensor([0, 77, a.num_classes])  # the last: the null class
        with torch.no_grad():
            out = skip(x, t, y)
    save_file({'x': x, 't': t, 'y': y.to(torch.int64), 'out': out.contiguous()}, os.path.join(GOLDENS, 'reference-skip-dit.safetensors'))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--only', choices=['dit', 'skip-dit'])
    only = ap.parse_args().only
    torch.set_num_threads(1)
    if only != 'skip-dit':
        dit_goldens()
    if only != 'dit':
        skip_dit_goldens()


if __name__ == '__main__':
    main()
