"""img2img goldens: diffusers' StableDiffusionImg2ImgPipeline / StableDiffusionXLImg2ImgPipeline on
the tiny fixtures, with the noise our pipelines draw for the same seed.

diffusers draws three kinds of noise in img2img: the VAE posterior sample, the noise added to the
image latents, and stochastic schedulers' step noise. Here every one of them comes from the
project's own generator (tools/reference/our_rng.py, a port of src/util/rng.ts): `randn_tensor` is
replaced in the modules that call it, and the pipeline gets one generator per image (diffusers'
list-of-generators path), so image b's draws come from Rng(seed + b) in the order they are made —
exactly what `generate({ image, strength, seed })` does. The TypeScript test then runs with only a
seed: nothing else is passed in.

    source <reference env>/env.sh && python tools/reference/make_img2img_goldens.py

PixArt: diffusers has no img2img pipeline for it, so the reference is PixArtAlphaPipeline /
PixArtSigmaPipeline doing what StableDiffusionImg2ImgPipeline does: `retrieve_timesteps` cut by
strength as get_timesteps cuts it (with set_begin_index, which PixArtAlphaPipeline's own reset to 0
is kept from undoing), and `prepare_latents` returning the init
image encoded, sampled and noised exactly as the SD img2img pipeline's prepare_latents does (same
VaeImageProcessor preprocessing), without resolution binning.

Writes test/fixtures/goldens/img2img/: the init images (PNG), per fixture the final latents of each
case (and one decoded image) with an index JSON, and resize.safetensors: PIL's Lanczos resize
(what diffusers' VaeImageProcessor does to a size that is not a multiple of 8) of the init images.
"""

import json
import math
import os

import numpy as np
import PIL.Image
import torch
import diffusers.models.autoencoders.vae as vae_module
import diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha as pixart_alpha
import diffusers.pipelines.pixart_alpha.pipeline_pixart_sigma as pixart_sigma
import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img as sd_img2img
import diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img as sdxl_img2img
import diffusers.schedulers.scheduling_ddpm as ddpm_module
import diffusers.schedulers.scheduling_euler_ancestral_discrete as euler_a_module
import diffusers.schedulers.scheduling_lcm as lcm_module
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    PixArtAlphaPipeline,
    PixArtSigmaPipeline,
    PNDMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionXLImg2ImgPipeline,
)
from diffusers.image_processor import VaeImageProcessor
from safetensors.torch import save_file

from our_rng import BatchNoise

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "test", "fixtures")
OUT = os.path.join(FIXTURES, "goldens", "img2img")

SCHEDULERS = {
    "ddim": lambda cfg: DDIMScheduler.from_config(cfg),
    "pndm": lambda cfg: PNDMScheduler.from_config(cfg),
    "euler": lambda cfg: EulerDiscreteScheduler.from_config(cfg),
    "euler-a": lambda cfg: EulerAncestralDiscreteScheduler.from_config(cfg),
    "dpm++2m": lambda cfg: DPMSolverMultistepScheduler.from_config(cfg),
    "dpm++2m-karras": lambda cfg: DPMSolverMultistepScheduler.from_config(cfg, use_karras_sigmas=True),
    "lcm": lambda cfg: LCMScheduler.from_config(cfg),
    "ddpm": lambda cfg: DDPMScheduler.from_config(cfg),
}

PROMPT = "a photo of an astronaut riding a horse"
NEGATIVE = "blurry, low quality"

CASES = [
    ("ddim-s0.5", dict(scheduler="ddim", strength=0.5, steps=8)),
    ("pndm-s0.75", dict(scheduler="pndm", strength=0.75, steps=8)),
    ("euler-s0.6", dict(scheduler="euler", strength=0.6, steps=8)),
    ("euler-a-s0.7", dict(scheduler="euler-a", strength=0.7, steps=8)),
    ("dpm++2m-s0.8", dict(scheduler="dpm++2m", strength=0.8, steps=8)),
    ("dpm++2m-karras-s0.7", dict(scheduler="dpm++2m-karras", strength=0.7, steps=8, negative_prompt=NEGATIVE)),
    ("lcm-s0.5", dict(scheduler="lcm", strength=0.5, steps=4)),
    ("ddpm-s0.4", dict(scheduler="ddpm", strength=0.4, steps=10)),
    ("ddim-s1", dict(scheduler="ddim", strength=1.0, steps=6)),
    ("pndm-s0.33", dict(scheduler="pndm", strength=0.33, steps=7)),
    ("batch", dict(scheduler="euler", strength=0.6, steps=6, prompt=[PROMPT, "a red circle"], num_images_per_prompt=2)),
    ("no-cfg", dict(scheduler="ddim", strength=0.6, steps=6, guidance_scale=1.0)),
    ("resized", dict(scheduler="ddim", strength=0.6, steps=6, image="init-150x100.png", negative_prompt=NEGATIVE, decode=True)),
]


def init_image(width, height):
    """A smooth picture with edges: colour gradients, a disc and a bar (deterministic)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    r = 0.5 + 0.4 * np.sin(x / 9.0) * np.cos(y / 13.0)
    g = y / max(height - 1, 1)
    b = 0.5 + 0.5 * np.cos((x + y) / 17.0)
    disc = (x - 0.4 * width) ** 2 + (y - 0.55 * height) ** 2 < (0.22 * min(width, height)) ** 2
    r[disc], g[disc], b[disc] = 0.95, 0.2, 0.1
    bar = (np.abs(x - 0.75 * width) < 0.06 * width) & (y > 0.2 * height)
    r[bar], g[bar], b[bar] = 0.1, 0.3, 0.9
    rgb = np.stack([r, g, b], axis=-1)
    return PIL.Image.fromarray(np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8), "RGB")


class OurNoise:
    """Stands in for diffusers' randn_tensor: image b's values come from our Rng(seed + b)."""

    def __init__(self, seed, generators):
        self.noise = BatchNoise(seed, len(generators))
        self.index = {id(g): b for b, g in enumerate(generators)}

    def __call__(self, shape, generator=None, device=None, dtype=None, layout=None):
        shape = tuple(shape)
        if isinstance(generator, list):
            per = math.prod(shape[1:])
            values = np.concatenate([self.noise.rngs[self.index[id(g)]].normal(per) for g in generator])
        else:
            values = self.noise.rngs[self.index[id(generator)]].normal(math.prod(shape))
        return torch.from_numpy(values).reshape(shape).to(dtype or torch.float32)


def patch_noise(source):
    for module in (vae_module, sd_img2img, sdxl_img2img, pixart_alpha, pixart_sigma, ddpm_module, euler_a_module, lcm_module):
        module.randn_tensor = source


PIXART_CASES = [
    ("dpm++2m-s0.6", dict(scheduler="dpm++2m", strength=0.6, steps=10, width=128, height=128)),
    ("ddim-s0.5", dict(scheduler="ddim", strength=0.5, steps=8, width=128, height=128, negative_prompt=NEGATIVE)),
    ("euler-a-s0.7", dict(scheduler="euler-a", strength=0.7, steps=8, width=128, height=128)),
    ("batch", dict(scheduler="dpm++2m", strength=0.6, steps=6, width=128, height=128, prompt=[PROMPT, "a red circle"], num_images_per_prompt=2)),
    ("resized", dict(scheduler="dpm++2m", strength=0.7, steps=6, width=144, height=96, image="init-150x100.png", decode=True)),
]


def cut_by_strength(original, strength):
    """retrieve_timesteps as img2img's get_timesteps leaves it: the last int(steps × strength) steps."""
    def retrieve(scheduler, num_inference_steps=None, device=None, timesteps=None, sigmas=None, **kwargs):
        all_timesteps, n = original(scheduler, num_inference_steps, device, timesteps, sigmas, **kwargs)
        t_start = max(n - min(int(n * strength), n), 0)
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(t_start * scheduler.order)
            # PixArtAlphaPipeline sets the begin index to 0 before its loop (right for text-to-image).
            scheduler.set_begin_index = lambda begin_index=0: None
        return all_timesteps[t_start * scheduler.order:], n - t_start
    return retrieve


@torch.no_grad()
def pixart_init_latents(pipe, image, c, generators, noise):
    """What StableDiffusionImg2ImgPipeline.prepare_latents computes, one generator per image."""
    processor = VaeImageProcessor(vae_scale_factor=2 ** (len(pipe.vae.config.block_out_channels) - 1))
    pixels = processor.preprocess(image, height=c["height"], width=c["width"])
    samples = [pipe.vae.encode(pixels).latent_dist.sample(generator=g) for g in generators]
    init = pipe.vae.config.scaling_factor * torch.cat(samples)
    pipe.scheduler.set_timesteps(c["steps"])
    t_start = c["steps"] - min(int(c["steps"] * c["strength"]), c["steps"])
    if hasattr(pipe.scheduler, "set_begin_index"):
        pipe.scheduler.set_begin_index(t_start)
    return pipe.scheduler.add_noise(init, noise(init.shape, generator=generators), pipe.scheduler.timesteps[t_start:t_start + 1])


def pixart_goldens(images):
    original = pixart_alpha.retrieve_timesteps
    for fixture, pipeline_class, module in [("tiny-pixart-alpha", PixArtAlphaPipeline, pixart_alpha),
                                            ("tiny-pixart-sigma", PixArtSigmaPipeline, pixart_sigma)]:
        pipe = pipeline_class.from_pretrained(os.path.join(FIXTURES, fixture), torch_dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        base_config = pipe.scheduler.config
        tensors, index = {}, []
        for i, (name, c) in enumerate(PIXART_CASES):
            seed = 3000 + i
            prompt = c.get("prompt", PROMPT)
            batch = (len(prompt) if isinstance(prompt, list) else 1) * c.get("num_images_per_prompt", 1)
            generators = [torch.Generator().manual_seed(b) for b in range(batch)]
            noise = OurNoise(seed, generators)
            patch_noise(noise)
            pipe.scheduler = SCHEDULERS[c["scheduler"]](base_config)
            image_file = c.get("image", "init-128.png")
            init = pixart_init_latents(pipe, images[image_file], c, generators, noise)
            module.retrieve_timesteps = cut_by_strength(original, c["strength"])
            pipe.prepare_latents = lambda *args, **kwargs: init.clone()
            settings = dict(num_inference_steps=c["steps"], strength=c["strength"], guidance_scale=c.get("guidance_scale", 4.5),
                            num_images_per_prompt=c.get("num_images_per_prompt", 1), width=c["width"], height=c["height"])
            final = {}
            with torch.no_grad():
                out = pipe(prompt=prompt, negative_prompt=c.get("negative_prompt") or "", generator=generators, clean_caption=False,
                           use_resolution_binning=False, output_type="latent" if not c.get("decode") else "pt",
                           callback=lambda step, t, lat: final.update(latents=lat.clone()), callback_steps=1,
                           **{k: v for k, v in settings.items() if k != "strength"}).images
            module.retrieve_timesteps = original
            del pipe.prepare_latents
            tensors[f"{name}.latents_out"] = final["latents"].contiguous()
            entry = dict(name=name, seed=seed, scheduler=c["scheduler"], prompt=prompt, negative_prompt=c.get("negative_prompt"),
                         image=image_file, **settings)
            if c.get("decode"):
                tensors[f"{name}.image"] = out.contiguous()
                entry["decoded"] = True
            index.append(entry)
        save_file(tensors, os.path.join(OUT, f"{fixture}.safetensors"))
        with open(os.path.join(OUT, f"{fixture}.json"), "w") as f:
            json.dump(index, f, indent=1)
        print(fixture, len(index), "cases")


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(1)
    images = {"init-128.png": init_image(128, 128), "init-150x100.png": init_image(150, 100)}
    for name, image in images.items():
        image.save(os.path.join(OUT, name))
    # Read back from the PNG files, as the TypeScript side does.
    images = {name: PIL.Image.open(os.path.join(OUT, name)).convert("RGB") for name in images}

    resize = {}
    for name, sizes in [("init-150x100.png", [(144, 96), (200, 130), (61, 37), (150, 40)]), ("init-128.png", [(96, 160)])]:
        for w, h in sizes:
            out = np.asarray(images[name].resize((w, h), resample=PIL.Image.Resampling.LANCZOS))
            resize[f"{name}.{w}x{h}"] = torch.from_numpy(out.astype(np.uint8))
    save_file(resize, os.path.join(OUT, "resize.safetensors"))

    for fixture, pipeline_class in [("tiny-sd1", StableDiffusionImg2ImgPipeline), ("tiny-sd2", StableDiffusionImg2ImgPipeline),
                                    ("tiny-sdxl", StableDiffusionXLImg2ImgPipeline)]:
        pipe = pipeline_class.from_pretrained(os.path.join(FIXTURES, fixture), torch_dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        base_config = pipe.scheduler.config
        tensors, index = {}, []
        for i, (name, c) in enumerate(CASES):
            seed = 2000 + i
            prompt = c.get("prompt", PROMPT)
            batch = (len(prompt) if isinstance(prompt, list) else 1) * c.get("num_images_per_prompt", 1)
            generators = [torch.Generator().manual_seed(b) for b in range(batch)]
            patch_noise(OurNoise(seed, generators))
            pipe.scheduler = SCHEDULERS[c["scheduler"]](base_config)
            image_file = c.get("image", "init-128.png")
            settings = dict(
                num_inference_steps=c["steps"],
                strength=c["strength"],
                guidance_scale=c.get("guidance_scale", 7.5),
                num_images_per_prompt=c.get("num_images_per_prompt", 1),
            )
            with torch.no_grad():
                out = pipe(prompt=prompt, negative_prompt=c.get("negative_prompt"), image=images[image_file], generator=generators,
                           output_type="latent", **settings).images
            tensors[f"{name}.latents_out"] = out.contiguous()
            entry = dict(name=name, seed=seed, scheduler=c["scheduler"], prompt=prompt, negative_prompt=c.get("negative_prompt"),
                         image=image_file, **settings)
            if c.get("decode"):
                with torch.no_grad():
                    decoded = pipe.vae.decode(out / pipe.vae.config.scaling_factor).sample
                tensors[f"{name}.image"] = (decoded / 2 + 0.5).clamp(0, 1).contiguous()
                entry["decoded"] = True
            index.append(entry)
        save_file(tensors, os.path.join(OUT, f"{fixture}.safetensors"))
        with open(os.path.join(OUT, f"{fixture}.json"), "w") as f:
            json.dump(index, f, indent=1)
        print(fixture, len(index), "cases")
    pixart_goldens(images)


if __name__ == "__main__":
    main()
