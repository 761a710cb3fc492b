"""End-to-end goldens: diffusers' own text-to-image pipelines on the tiny fixtures (SD 1.x, 2.x, XL).

For each fixture and each deterministic scheduler, runs the pipeline with fixed starting latents
(diffusers' `latents=` argument, so no RNG is involved) and records the final latents (before VAE
scaling) and, for one case per fixture, the decoded image in [0, 1].

    source <reference env>/env.sh && python tools/reference/make_pipeline_goldens.py

Writes test/fixtures/goldens/pipelines/<fixture>.safetensors and an index JSON describing each
case (prompt, negative prompt, scheduler, steps, guidance, size).
"""

import json
import os

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "test", "fixtures")
OUT = os.path.join(FIXTURES, "goldens", "pipelines")

# Our scheduler names → how diffusers builds the same scheduler from the folder's config.
SCHEDULERS = {
    "ddim": lambda cfg: DDIMScheduler.from_config(cfg),
    "pndm": lambda cfg: PNDMScheduler.from_config(cfg),
    "euler": lambda cfg: EulerDiscreteScheduler.from_config(cfg),
    "dpm++2m": lambda cfg: DPMSolverMultistepScheduler.from_config(cfg),
    "dpm++2m-karras": lambda cfg: DPMSolverMultistepScheduler.from_config(cfg, use_karras_sigmas=True),
}

PROMPT = "a photo of an astronaut riding a horse"
NEGATIVE = "blurry, low quality"
LONG = " ".join(["a very long prompt that keeps going"] * 16)  # well over 77 tokens: truncated


def cases():
    """(name, settings) for one fixture: every scheduler with and without a negative prompt."""
    for scheduler in SCHEDULERS:
        yield f"{scheduler}", dict(scheduler=scheduler, prompt=PROMPT, negative_prompt=None)
        yield f"{scheduler}-negative", dict(scheduler=scheduler, prompt=PROMPT, negative_prompt=NEGATIVE)
    yield "long-prompt", dict(scheduler="ddim", prompt=LONG, negative_prompt=None)
    yield "batch2-rescale", dict(scheduler="euler", prompt=[PROMPT, "a red circle"], negative_prompt=None,
                                 num_images_per_prompt=2, guidance_rescale=0.7)
    yield "no-cfg", dict(scheduler="ddim", prompt=PROMPT, negative_prompt=None, guidance_scale=1.0)
    yield "non-square", dict(scheduler="ddim", prompt=PROMPT, negative_prompt=NEGATIVE, width=144, height=96)


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(1)
    for fixture, pipeline_class in [("tiny-sd1", StableDiffusionPipeline), ("tiny-sd2", StableDiffusionPipeline),
                                    ("tiny-sdxl", StableDiffusionXLPipeline)]:
        pipe = pipeline_class.from_pretrained(os.path.join(FIXTURES, fixture), torch_dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        base_config = pipe.scheduler.config
        tensors, index = {}, []
        for i, (name, c) in enumerate(cases()):
            width, height = c.get("width", 128), c.get("height", 128)
            prompts = c["prompt"] if isinstance(c["prompt"], list) else [c["prompt"]]
            batch = len(prompts) * c.get("num_images_per_prompt", 1)
            generator = torch.Generator().manual_seed(1000 + i)
            latents = torch.randn(batch, 4, height // 8, width // 8, generator=generator)
            pipe.scheduler = SCHEDULERS[c["scheduler"]](base_config)
            settings = dict(
                num_inference_steps=6,
                guidance_scale=c.get("guidance_scale", 7.5),
                guidance_rescale=c.get("guidance_rescale", 0.0),
                num_images_per_prompt=c.get("num_images_per_prompt", 1),
                width=width,
                height=height,
            )
            with torch.no_grad():
                out = pipe(prompt=c["prompt"], negative_prompt=c["negative_prompt"], latents=latents.clone(),
                           output_type="latent", **settings).images
            tensors[f"{name}.latents_in"] = latents.contiguous()
            tensors[f"{name}.latents_out"] = out.contiguous()
            entry = dict(name=name, scheduler=c["scheduler"], prompt=c["prompt"], negative_prompt=c["negative_prompt"], **settings)
            if name == "ddim-negative":
                with torch.no_grad():
                    image = pipe.vae.decode(out / pipe.vae.config.scaling_factor).sample
                tensors[f"{name}.image"] = (image / 2 + 0.5).clamp(0, 1).contiguous()
                entry["image"] = True
            index.append(entry)
        save_file(tensors, os.path.join(OUT, f"{fixture}.safetensors"))
        with open(os.path.join(OUT, f"{fixture}.json"), "w") as f:
            json.dump(index, f, indent=1)
        print(fixture, len(index), "cases")


if __name__ == "__main__":
    main()
