"""TGATE on PixArt: goldens from the official T-GATE code (HaozheLiu-ST/T-GATE at commit ab2a88fa,
`TgatePixArtAlphaLoader` / `TgatePixArtSigmaLoader`) on the tiny PixArt-α and PixArt-Σ fixtures.

Cases: the paper's recipe (25 steps, gate 15, sp 3, fi 1, warm-up 2) with CFG; other knobs with a
negative prompt and a batch of two prompts; and the LCM row (LCMScheduler, 4 steps, guidance 0,
gate 2, sp 1, warm-up 0, `lcm=True`). LCM's step noise comes from the project's generator
(tools/reference/our_rng.py) in place of torch's, so the TypeScript side needs only the seed; the
starting latents are passed in (`latents=`) everywhere. Resolution binning is off.

    source <reference env>/env.sh && python tools/reference/make_tgate_pixart_goldens.py

Writes test/fixtures/goldens/tgate-pixart/<fixture>.{safetensors,json}: per case the starting
latents, the final latents with TGATE and those of the plain pipeline.
"""

import json
import os

import torch
import diffusers.schedulers.scheduling_lcm as lcm_module
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, LCMScheduler, PixArtAlphaPipeline, PixArtSigmaPipeline
from safetensors.torch import save_file
from tgate import TgatePixArtAlphaLoader, TgatePixArtSigmaLoader

from our_rng import BatchNoise

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "test", "fixtures")
OUT = os.path.join(FIXTURES, "goldens", "tgate-pixart")

SCHEDULERS = {"dpm++2m": DPMSolverMultistepScheduler, "ddim": DDIMScheduler, "lcm": LCMScheduler}
PROMPT = "a photo of an astronaut riding a horse"
NEGATIVE = "blurry, low quality"

# name → (scheduler, steps, guidance, official knobs, our --accel spec, prompt, negative prompt)
CASES = {
    "recipe-dpm25": ("dpm++2m", 25, 4.5, dict(gate_step=15, sp_interval=3, fi_interval=1, warm_up=2),
                     "tgate:gate_step=15,sp_interval=3,fi_interval=1,warm_up=2", PROMPT, ""),
    "ddim12-fi2-negative": ("ddim", 12, 4.5, dict(gate_step=6, sp_interval=2, fi_interval=2, warm_up=1),
                            "tgate:gate_step=6,sp_interval=2,fi_interval=2,warm_up=1", PROMPT, NEGATIVE),
    "batch2-dpm10": ("dpm++2m", 10, 4.5, dict(gate_step=4, sp_interval=2, fi_interval=1, warm_up=1),
                     "tgate:gate_step=4,sp_interval=2,fi_interval=1,warm_up=1", [PROMPT, "a red circle"], ""),
    "lcm4": ("lcm", 4, 0.0, dict(gate_step=2, sp_interval=1, fi_interval=1, warm_up=0, lcm=True),
             "tgate:gate_step=2,sp_interval=1,fi_interval=1,warm_up=0", PROMPT, ""),
}


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(1)
    for fixture, pipeline_class, loader in [("tiny-pixart-alpha", PixArtAlphaPipeline, TgatePixArtAlphaLoader),
                                            ("tiny-pixart-sigma", PixArtSigmaPipeline, TgatePixArtSigmaLoader)]:
        def load():
            p = pipeline_class.from_pretrained(os.path.join(FIXTURES, fixture), torch_dtype=torch.float32)
            p.set_progress_bar_config(disable=True)
            return p

        # T-GATE patches the attention modules in place: the plain baseline gets its own pipeline.
        plain_pipe = load()
        pipe = loader(load())
        base_config = pipe.scheduler.config
        tensors, index = {}, []
        for i, (name, (scheduler, steps, guidance, knobs, spec, prompt, negative)) in enumerate(CASES.items()):
            seed = 5000 + i
            batch = len(prompt) if isinstance(prompt, list) else 1
            latents = torch.randn(batch, 4, 16, 16, generator=torch.Generator().manual_seed(seed))
            common = dict(prompt=prompt, negative_prompt=negative, num_inference_steps=steps, guidance_scale=guidance,
                          height=128, width=128, output_type="latent", use_resolution_binning=False, clean_caption=False)
            outs = []
            for p, extra in [(pipe, knobs), (plain_pipe, {})]:
                p.scheduler = SCHEDULERS[scheduler].from_config(base_config)
                lcm_module.randn_tensor = BatchNoise(seed, batch).randn_tensor
                with torch.no_grad():
                    run = p.tgate if extra else p.__call__
                    outs.append(run(latents=latents.clone(), **common, **extra).images)
            tgate_out, plain = outs
            tensors[f"{name}.latents_in"] = latents.contiguous()
            tensors[f"{name}.latents_out"] = tgate_out.contiguous()
            tensors[f"{name}.baseline_out"] = plain.contiguous()
            index.append(dict(name=name, seed=seed, scheduler=scheduler, steps=steps, accel=spec, prompt=prompt,
                              negative_prompt=negative, guidance_scale=guidance, **knobs))
            print(fixture, name, "max |tgate - baseline| =", float((tgate_out - plain).abs().max()))
        save_file(tensors, os.path.join(OUT, f"{fixture}.safetensors"))
        with open(os.path.join(OUT, f"{fixture}.json"), "w") as f:
            json.dump(index, f, indent=1)


if __name__ == "__main__":
    main()
