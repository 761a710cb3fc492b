"""Goldens from the official acceleration code on the tiny SD 1.x fixture.

TGATE: HaozheLiu-ST/T-GATE (commit ab2a88fa, as ../shared/reference/setup.sh installs it),
`TgateSDLoader(pipe).tgate(...)` with fixed starting latents.

    source <reference env>/env.sh && python tools/reference/make_accel_goldens.py

Writes test/fixtures/goldens/accel/tiny-sd1.{safetensors,json}.
"""

import json
import os

import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline
from safetensors.torch import save_file
from tgate import TgateSDLoader

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "test", "fixtures")
OUT = os.path.join(FIXTURES, "goldens", "accel")

SCHEDULERS = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler}

# name → (scheduler, steps, tgate knobs, our --accel spec)
CASES = {
    "tgate-ddim12": ("ddim", 12, dict(gate_step=6, sp_interval=3, fi_interval=1, warm_up=1),
                     "tgate:gate_step=6,sp_interval=3,fi_interval=1,warm_up=1"),
    "tgate-ddim12-fi2": ("ddim", 12, dict(gate_step=6, sp_interval=3, fi_interval=2, warm_up=1),
                         "tgate:gate_step=6,sp_interval=3,fi_interval=2,warm_up=1"),
    "tgate-euler8": ("euler", 8, dict(gate_step=4, sp_interval=2, fi_interval=1, warm_up=0),
                     "tgate:gate_step=4,sp_interval=2,fi_interval=1,warm_up=0"),
}
PROMPT = "a photo of an astronaut riding a horse"
NEGATIVE = "blurry, low quality"


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(1)
    def load():
        p = StableDiffusionPipeline.from_pretrained(os.path.join(FIXTURES, "tiny-sd1"), torch_dtype=torch.float32)
        p.set_progress_bar_config(disable=True)
        return p

    # T-GATE patches the U-Net's attention modules in place (and they stay patched after a run):
    # the unaccelerated baseline needs a pipeline of its own.
    plain_pipe = load()
    pipe = TgateSDLoader(load())
    base_config = pipe.scheduler.config
    tensors, index = {}, []
    for i, (name, (scheduler, steps, knobs, spec)) in enumerate(CASES.items()):
        pipe.scheduler = SCHEDULERS[scheduler].from_config(base_config)
        plain_pipe.scheduler = SCHEDULERS[scheduler].from_config(base_config)
        latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(2000 + i))
        with torch.no_grad():
            tgate_out = pipe.tgate(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=7.5,
                                   latents=latents.clone(), output_type="latent", **knobs).images
            plain = plain_pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=7.5,
                         latents=latents.clone(), output_type="latent").images
        tensors[f"{name}.latents_in"] = latents.contiguous()
        tensors[f"{name}.latents_out"] = tgate_out.contiguous()
        tensors[f"{name}.baseline_out"] = plain.contiguous()
        index.append(dict(name=name, scheduler=scheduler, steps=steps, accel=spec, prompt=PROMPT, negative_prompt=NEGATIVE,
                          guidance_scale=7.5, **knobs))
        print(name, "max |tgate - baseline| =", float((tgate_out - plain).abs().max()))
    save_file(tensors, os.path.join(OUT, "tiny-sd1.safetensors"))
    with open(os.path.join(OUT, "tiny-sd1.json"), "w") as f:
        json.dump(index, f, indent=1)


if __name__ == "__main__":
    main()
