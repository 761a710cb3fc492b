"""Goldens from the official tomesd (v0.1.3) on the tiny SD 1.x fixture.

`tomesd.apply_patch(pipe, ...)` with use_rand=False (its random stream is torch's, ours is our
own), fixed starting latents, PNDM and DDIM.

    source <reference env>/env.sh && python tools/reference/make_tome_goldens.py

Writes test/fixtures/goldens/tome/tiny-sd1.{safetensors,json}.
"""

import json
import os

import tomesd
import torch
from diffusers import DDIMScheduler, PNDMScheduler, StableDiffusionPipeline
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "test", "fixtures")
OUT = os.path.join(FIXTURES, "goldens", "tome")

SCHEDULERS = {"ddim": DDIMScheduler, "pndm": PNDMScheduler}

# name → (scheduler, steps, tomesd knobs, our --accel spec)
CASES = {
    "tome-pndm": ("pndm", 6, dict(ratio=0.5), "tome:ratio=0.5,use_rand=false"),
    "tome-ddim": ("ddim", 6, dict(ratio=0.5), "tome:ratio=0.5,use_rand=false"),
    "tome-ddim-all": ("ddim", 6, dict(ratio=0.3, merge_crossattn=True, merge_mlp=True),
                      "tome:ratio=0.3,use_rand=false,merge_crossattn=true,merge_mlp=true"),
    "tome-ddim-ds2-cap": ("ddim", 6, dict(ratio=0.9, max_downsample=2),
                          "tome:ratio=0.9,use_rand=false,max_downsample=2"),
}
PROMPT = "a photo of an astronaut riding a horse"
NEGATIVE = "blurry, low quality"


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(1)
    pipe = StableDiffusionPipeline.from_pretrained(os.path.join(FIXTURES, "tiny-sd1"), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    base_config = pipe.scheduler.config
    tensors, index = {}, []
    for i, (name, (scheduler, steps, knobs, spec)) in enumerate(CASES.items()):
        pipe.scheduler = SCHEDULERS[scheduler].from_config(base_config)
        latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3000 + i))
        run = lambda: pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=7.5,  # noqa: E731
                           latents=latents.clone(), output_type="latent").images
        tomesd.remove_patch(pipe)
        with torch.no_grad():
            plain = run()
        tomesd.apply_patch(pipe, use_rand=False, **knobs)
        with torch.no_grad():
            merged = run()
        tomesd.remove_patch(pipe)
        tensors[f"{name}.latents_in"] = latents.contiguous()
        tensors[f"{name}.latents_out"] = merged.contiguous()
        tensors[f"{name}.baseline_out"] = plain.contiguous()
        index.append(dict(name=name, scheduler=scheduler, steps=steps, accel=spec, prompt=PROMPT, negative_prompt=NEGATIVE,
                          guidance_scale=7.5, **knobs))
        print(name, "max |tome - baseline| =", float((merged - plain).abs().max()))
    save_file(tensors, os.path.join(OUT, "tiny-sd1.safetensors"))
    with open(os.path.join(OUT, "tiny-sd1.json"), "w") as f:
        json.dump(index, f, indent=1)


if __name__ == "__main__":
    main()
