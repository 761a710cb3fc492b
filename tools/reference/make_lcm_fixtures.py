"""Tiny LCM (guidance-distilled) pipelines and their goldens.

- test/fixtures/tiny-lcm-sd1: a LatentConsistencyModelPipeline folder (as SimianLuo/LCM_Dreamshaper_v7
  ships): a small U-Net with `time_cond_proj_dim` 32 (seed 500) and an LCMScheduler; its text
  encoder, tokenizer and VAE are symlinks into tiny-sd1.
- test/fixtures/tiny-lcm-sdxl: a StableDiffusionXLPipeline folder with an LCM U-Net (as
  latent-consistency/lcm-sdxl is used): SDXL-style U-Net with `time_cond_proj_dim` 32 (seed 501),
  LCMScheduler; the other components are symlinks into tiny-sdxl.

Goldens (test/fixtures/goldens/lcm/<fixture>.{safetensors,json}), from fixed starting latents,
LCM's step noise from the project's generator (tools/reference/our_rng.py) for the case's seed:
- tiny-lcm-sd1: diffusers' LatentConsistencyModelPipeline (4 steps, guidance 8.5; other steps,
  guidance and a batch).
- tiny-lcm-sdxl: diffusers' StableDiffusionXLPipeline, plain and with the official T-GATE code's
  LCM recipe (`TgateSDXLLoader(...).tgate(..., lcm=True)`: 4 steps, gate 1 or 2, sp 1, warm-up 0).

    source <reference env>/env.sh && python tools/reference/make_lcm_fixtures.py
"""

import json
import os
import shutil
import tempfile

import torch
import diffusers.schedulers.scheduling_lcm as lcm_module
from diffusers import LatentConsistencyModelPipeline, LCMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from safetensors.torch import save_file
from tgate import TgateSDXLLoader

from our_rng import BatchNoise

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "test", "fixtures")
OUT = os.path.join(FIXTURES, "goldens", "lcm")
PROMPT = "a photo of an astronaut riding a horse"

# LCM_Dreamshaper_v7's scheduler_config.json.
LCM_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                     original_inference_steps=50, prediction_type="epsilon", set_alpha_to_one=True, steps_offset=1,
                     timestep_spacing="leading", clip_sample=False)


def lcm_unet(base_folder, seed, **overrides):
    """The base fixture's U-Net config, smaller, with the guidance embedding; seeded random weights."""
    config = dict(UNet2DConditionModel.load_config(os.path.join(base_folder, "unet")))
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    config.update(time_cond_proj_dim=32, **overrides)
    torch.manual_seed(seed)
    return UNet2DConditionModel(**config).eval()


def build_fixture(name, base, pipeline_class, unet, shared):
    """Saves unet/, scheduler/ and model_index.json; links the other components to the base fixture."""
    dest = os.path.join(FIXTURES, name)
    base_pipe = StableDiffusionXLPipeline if "sdxl" in base else StableDiffusionPipeline
    parts = base_pipe.from_pretrained(os.path.join(FIXTURES, base), torch_dtype=torch.float32).components
    parts = {k: v for k, v in parts.items() if k in pipeline_class._get_signature_keys(pipeline_class)[0] or k in shared}
    parts.update(unet=unet, scheduler=LCMScheduler(**LCM_SCHEDULER))
    if pipeline_class is LatentConsistencyModelPipeline:
        parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = pipeline_class(**parts)
    with tempfile.TemporaryDirectory() as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        shutil.rmtree(dest, ignore_errors=True)
        os.makedirs(dest)
        for own in ("unet", "scheduler", "model_index.json"):
            shutil.move(os.path.join(tmp, own), os.path.join(dest, own))
    for component in shared:
        os.symlink(os.path.join("..", base, component), os.path.join(dest, component))
    return pipeline_class.from_pretrained(dest, torch_dtype=torch.float32)


def run(pipe, call, latents, seed, **kwargs):
    lcm_module.randn_tensor = BatchNoise(seed, latents.shape[0]).randn_tensor
    with torch.no_grad():
        return call(latents=latents.clone(), output_type="latent", **kwargs).images


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(1)

    sd1 = build_fixture("tiny-lcm-sd1", "tiny-sd1", LatentConsistencyModelPipeline,
                        lcm_unet(os.path.join(FIXTURES, "tiny-sd1"), 500, layers_per_block=1),
                        ["text_encoder", "tokenizer", "vae"])
    sd1.set_progress_bar_config(disable=True)
    cases = [("lcm4", dict(steps=4, guidance=8.5, prompt=PROMPT)),
             ("lcm2-w1", dict(steps=2, guidance=1.0, prompt=PROMPT)),
             ("lcm6", dict(steps=6, guidance=3.0, prompt=PROMPT)),
             ("batch", dict(steps=4, guidance=8.5, prompt=[PROMPT, "a red circle"], num_images_per_prompt=2))]
    tensors, index = {}, []
    for i, (name, c) in enumerate(cases):
        seed = 7000 + i
        batch = (len(c["prompt"]) if isinstance(c["prompt"], list) else 1) * c.get("num_images_per_prompt", 1)
        latents = torch.randn(batch, 4, 16, 16, generator=torch.Generator().manual_seed(seed))
        out = run(sd1, sd1.__call__, latents, seed, prompt=c["prompt"], num_inference_steps=c["steps"], guidance_scale=c["guidance"],
                  num_images_per_prompt=c.get("num_images_per_prompt", 1), height=128, width=128)
        tensors[f"{name}.latents_in"] = latents.contiguous()
        tensors[f"{name}.latents_out"] = out.contiguous()
        index.append(dict(name=name, seed=seed, steps=c["steps"], guidance_scale=c["guidance"], prompt=c["prompt"],
                          num_images_per_prompt=c.get("num_images_per_prompt", 1)))
    save_file(tensors, os.path.join(OUT, "tiny-lcm-sd1.safetensors"))
    with open(os.path.join(OUT, "tiny-lcm-sd1.json"), "w") as f:
        json.dump(index, f, indent=1)
    print("tiny-lcm-sd1", len(index), "cases")

    sdxl_unet = lcm_unet(os.path.join(FIXTURES, "tiny-sdxl"), 501, layers_per_block=1, transformer_layers_per_block=[1, 1, 2])
    sdxl = build_fixture("tiny-lcm-sdxl", "tiny-sdxl", StableDiffusionXLPipeline, sdxl_unet,
                         ["text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae"])
    sdxl.set_progress_bar_config(disable=True)
    plain = StableDiffusionXLPipeline.from_pretrained(os.path.join(FIXTURES, "tiny-lcm-sdxl"), torch_dtype=torch.float32)
    plain.set_progress_bar_config(disable=True)
    tgate = TgateSDXLLoader(sdxl)
    cases = [("gate1", dict(gate_step=1)), ("gate2", dict(gate_step=2))]
    tensors, index = {}, []
    for i, (name, knobs) in enumerate(cases):
        seed = 7100 + i
        latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(seed))
        common = dict(prompt=PROMPT, num_inference_steps=4, guidance_scale=8.5, height=128, width=128)
        out = run(tgate, tgate.tgate, latents, seed, sp_interval=1, fi_interval=1, warm_up=0, lcm=True, **knobs, **common)
        base = run(plain, plain.__call__, latents, seed, **common)
        tensors[f"{name}.latents_in"] = latents.contiguous()
        tensors[f"{name}.latents_out"] = out.contiguous()
        tensors[f"{name}.baseline_out"] = base.contiguous()
        index.append(dict(name=name, seed=seed, scheduler="lcm", steps=4, guidance_scale=8.5, prompt=PROMPT, negative_prompt=None,
                          accel=f"tgate:gate_step={knobs['gate_step']},sp_interval=1,fi_interval=1,warm_up=0"))
        print("tiny-lcm-sdxl", name, "max |tgate - plain| =", float((out - base).abs().max()))
    save_file(tensors, os.path.join(OUT, "tiny-lcm-sdxl.safetensors"))
    with open(os.path.join(OUT, "tiny-lcm-sdxl.json"), "w") as f:
        json.dump(index, f, indent=1)


if __name__ == "__main__":
    main()
