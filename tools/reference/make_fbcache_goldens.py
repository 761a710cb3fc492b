"""First-Block-Cache goldens: diffusers' `apply_first_block_cache` (hooks/first_block_cache.py) on the
tiny PixArt-α and PixArt-Σ transformers inside their pipelines.

diffusers' PixArt pipelines set no cache context (only pipelines written for caching do), so the
script sets one for the whole generation — the CFG batch runs as one forward, so one state serves
both halves. For each case: the starting latents, the final latents, the plain pipeline's final
latents, and per model call the relative L1 change of the first block's residual and whether the
remaining blocks were skipped.

    source <reference env>/env.sh && python tools/reference/make_fbcache_goldens.py

Writes test/fixtures/goldens/fbcache/<fixture>.{safetensors,json}.
"""

import json
import os

import torch
import diffusers.hooks.first_block_cache as fbc
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtSigmaPipeline
from diffusers.hooks import FirstBlockCacheConfig, HookRegistry, apply_first_block_cache
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "test", "fixtures")
OUT = os.path.join(FIXTURES, "goldens", "fbcache")
SCHEDULERS = {"dpm++2m": DPMSolverMultistepScheduler, "ddim": DDIMScheduler}
PROMPT = "a photo of an astronaut riding a horse"
CASES = [("dpm10-t0.21", "dpm++2m", 10, 0.21), ("dpm10-t0.4", "dpm++2m", 10, 0.4), ("ddim12-t0.36", "ddim", 12, 0.36)]


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(1)
    decisions = []
    original = fbc.FBCHeadBlockHook._should_compute_remaining_blocks

    def recording(self, residual):
        state = self.state_manager.get_state()
        change = None
        if state.head_block_residual is not None:
            prev = state.head_block_residual
            change = float((residual - prev).abs().mean() / prev.abs().mean())
        compute = original(self, residual)
        decisions.append(dict(change=change, skipped=not compute))
        return compute

    fbc.FBCHeadBlockHook._should_compute_remaining_blocks = recording
    for fixture, cls in [("tiny-pixart-alpha", PixArtAlphaPipeline), ("tiny-pixart-sigma", PixArtSigmaPipeline)]:
        tensors, index = {}, []
        for i, (name, scheduler, steps, threshold) in enumerate(CASES):
            latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(8000 + i))
            outs = []
            for cached in (True, False):
                pipe = cls.from_pretrained(os.path.join(FIXTURES, fixture), torch_dtype=torch.float32)
                pipe.set_progress_bar_config(disable=True)
                pipe.scheduler = SCHEDULERS[scheduler].from_config(pipe.scheduler.config)
                if cached:
                    apply_first_block_cache(pipe.transformer, FirstBlockCacheConfig(threshold=threshold))
                    HookRegistry.check_if_exists_or_initialize(pipe.transformer)._set_context("cond_uncond")
                    decisions.clear()
                with torch.no_grad():
                    outs.append(pipe(prompt=PROMPT, num_inference_steps=steps, height=128, width=128, latents=latents.clone(), output_type="latent",
                                     use_resolution_binning=False, clean_caption=False).images)
                if cached:
                    calls = list(decisions)
            tensors[f"{name}.latents_in"] = latents.contiguous()
            tensors[f"{name}.latents_out"] = outs[0].contiguous()
            tensors[f"{name}.baseline_out"] = outs[1].contiguous()
            index.append(dict(name=name, scheduler=scheduler, steps=steps, guidance_scale=4.5, prompt=PROMPT, negative_prompt="",
                              accel=f"fbcache:residual_diff_threshold={threshold}", threshold=threshold, calls=calls))
            print(fixture, name, sum(c["skipped"] for c in calls), "of", len(calls), "calls skipped")
        save_file(tensors, os.path.join(OUT, f"{fixture}.safetensors"))
        with open(os.path.join(OUT, f"{fixture}.json"), "w") as f:
            json.dump(index, f, indent=1)


if __name__ == "__main__":
    main()
