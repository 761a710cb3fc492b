"""Goldens from the official DeepCache code (and T-GATE's DeepCache combination) on tiny-sd1.

- DeepCache: `DeepCacheSDHelper` (horseee/DeepCache, the plug-in the diffusers docs use) with
  `set_params(cache_interval, cache_branch_id)`, uniform schedule.
- Non-uniform: the helper only implements `skip_mode='uniform'` (anything else skips from the first
  call and fails on its empty cache); the non-uniform schedule lives in the older pipeline code,
  DeepCache/sd/pipeline_stable_diffusion.py, whose module no longer imports under diffusers 0.40.
  So these cases take that file's own `sample_from_quad_center` (extracted with `ast`, not copied)
  and its `interval_seq` rule, and run the helper's caching with its full passes at those calls.
- TGATE + DeepCache: `TgateSDDeepCacheLoader(pipe, cache_interval, cache_branch_id).tgate(...)`
  from the T-GATE repo (SD_DeepCache.py).
- Schedules: `sample_from_quad_center` over a grid of (steps, full passes, center, pow), or the
  ValueError it raises, for the TS port.

    source <reference env>/env.sh && python tools/reference/make_deepcache_goldens.py

Writes test/fixtures/goldens/deepcache/tiny-sd1.{safetensors,json} and schedules.json.
"""

import ast
import json
import os
import warnings

import numpy as np
import torch
from DeepCache import DeepCacheSDHelper
from diffusers import DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline
from diffusers.utils import logging as diffusers_logging
from safetensors.torch import save_file
from tgate import TgateSDDeepCacheLoader

import DeepCache

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "test", "fixtures")
OUT = os.path.join(FIXTURES, "goldens", "deepcache")
SCHEDULERS = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler}
PROMPT = "a photo of an astronaut riding a horse"
NEGATIVE = "blurry, low quality"


def official_sample_from_quad_center():
    """`sample_from_quad_center` as defined in DeepCache/sd/pipeline_stable_diffusion.py."""
    path = os.path.join(os.path.dirname(DeepCache.__file__), "sd", "pipeline_stable_diffusion.py")
    with open(path) as f:
        tree = ast.parse(f.read())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "sample_from_quad_center")
    namespace = {"np": np}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), path, "exec"), namespace)
    return namespace["sample_from_quad_center"]


sample_from_quad_center = official_sample_from_quad_center()


def interval_seq(steps, cache_interval, pow, center):
    """The pipeline's full-pass calls (its __call__, `uniform=False`)."""
    if cache_interval == 1:
        return list(range(steps))
    slow = steps // cache_interval + (1 if steps % cache_interval else 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy's ComplexWarning: the official code takes real parts
        seq, _ = sample_from_quad_center(steps, slow, center=center, pow=pow)
    return sorted(int(i) for i in seq)


class ScheduledHelper(DeepCacheSDHelper):
    """The helper's caching, with full passes at the given calls instead of every cache_interval."""

    def __init__(self, pipe, full_calls):
        super().__init__(pipe=pipe)
        self.full_calls = set(full_calls)

    def is_skip_step(self, block_i, layer_i, blocktype="down"):
        if self.cur_timestep in self.full_calls:
            return False
        return super().is_skip_step(block_i, layer_i, blocktype)


# name → (scheduler, steps, method, knobs, our --accel specs)
CASES = {
    "dc-ddim12-n3-b0": ("ddim", 12, "helper", dict(cache_interval=3, cache_branch_id=0),
                        ["deepcache:cache_interval=3,cache_branch_id=0"]),
    "dc-ddim12-n3-b1": ("ddim", 12, "helper", dict(cache_interval=3, cache_branch_id=1),
                        ["deepcache:cache_interval=3,cache_branch_id=1"]),
    "dc-ddim12-n2-b4": ("ddim", 12, "helper", dict(cache_interval=2, cache_branch_id=4),
                        ["deepcache:cache_interval=2,cache_branch_id=4"]),
    "dc-ddim12-n3-b8": ("ddim", 12, "helper", dict(cache_interval=3, cache_branch_id=8),
                        ["deepcache:cache_interval=3,cache_branch_id=8"]),
    "dc-euler10-n4-b2": ("euler", 10, "helper", dict(cache_interval=4, cache_branch_id=2),
                         ["deepcache:cache_interval=4,cache_branch_id=2"]),
    "dc-ddim20-n3-b1-nonuniform": ("ddim", 20, "nonuniform", dict(cache_interval=3, cache_branch_id=1, pow=1.4, center=15),
                                   ["deepcache:cache_interval=3,cache_branch_id=1,uniform=false"]),
    "dc-ddim20-n3-b0-nonuniform-c8": ("ddim", 20, "nonuniform", dict(cache_interval=3, cache_branch_id=0, pow=1.4, center=8),
                                      ["deepcache:cache_interval=3,cache_branch_id=0,uniform=false,pow=1.4,center=8"]),
    "tgate-dc-ddim12-g6": ("ddim", 12, "tgate", dict(cache_interval=3, cache_branch_id=0, gate_step=6, sp_interval=1, fi_interval=1, warm_up=0),
                           ["tgate:gate_step=6,sp_interval=1,fi_interval=1,warm_up=0", "deepcache:cache_interval=3,cache_branch_id=0"]),
    "tgate-dc-ddim12-g5-sp2": ("ddim", 12, "tgate", dict(cache_interval=2, cache_branch_id=1, gate_step=5, sp_interval=2, fi_interval=2, warm_up=1),
                               ["deepcache:cache_interval=2,cache_branch_id=1", "tgate:gate_step=5,sp_interval=2,fi_interval=2,warm_up=1"]),
}


def load(scheduler):
    pipe = StableDiffusionPipeline.from_pretrained(os.path.join(FIXTURES, "tiny-sd1"), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = SCHEDULERS[scheduler].from_config(pipe.scheduler.config)
    return pipe


def schedules():
    """[total, n_samples, center, pow, pow used or None on ValueError, indices or None] per setting."""
    out = []
    for steps in (10, 12, 20, 25, 30, 50, 100):
        for interval in (2, 3, 4, 5, 6):
            slow = steps // interval + (1 if steps % interval else 0)
            for center in (0, 2, 5, 8, 15, 20, 30, 60):
                for pow in (1.2, 1.4, 1.6, 2.0, 2.5):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        try:
                            indices, used = sample_from_quad_center(steps, slow, center=center, pow=pow)
                            out.append([steps, slow, center, pow, used, [int(i) for i in indices]])
                        except ValueError:
                            out.append([steps, slow, center, pow, None, None])
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    torch.set_num_threads(1)
    tensors, index = {}, []
    for i, (name, (scheduler, steps, method, knobs, specs)) in enumerate(CASES.items()):
        latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3000 + i))
        common = dict(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=7.5, output_type="latent")
        full_calls = None
        # A fresh pipeline per run: both codes patch modules in place, and T-GATE's attention caches
        # outlive a run.
        with torch.no_grad():
            plain = load(scheduler)(latents=latents.clone(), **common).images
            pipe = load(scheduler)
            if method == "helper":
                helper = DeepCacheSDHelper(pipe=pipe)
                helper.set_params(cache_interval=knobs["cache_interval"], cache_branch_id=knobs["cache_branch_id"])
                helper.enable()
                out = pipe(latents=latents.clone(), **common).images
                helper.disable()
            elif method == "nonuniform":
                full_calls = interval_seq(steps, knobs["cache_interval"], knobs["pow"], knobs["center"])
                helper = ScheduledHelper(pipe, full_calls)
                helper.set_params(cache_interval=knobs["cache_interval"], cache_branch_id=knobs["cache_branch_id"], skip_mode="non-uniform")
                helper.enable()
                out = pipe(latents=latents.clone(), **common).images
                helper.disable()
            else:
                pipe = TgateSDDeepCacheLoader(pipe, cache_interval=knobs["cache_interval"], cache_branch_id=knobs["cache_branch_id"])
                tg = {k: knobs[k] for k in ("gate_step", "sp_interval", "fi_interval", "warm_up")}
                out = pipe.tgate(latents=latents.clone(), **common, **tg).images
        tensors[f"{name}.latents_in"] = latents.contiguous()
        tensors[f"{name}.latents_out"] = out.contiguous()
        tensors[f"{name}.baseline_out"] = plain.contiguous()
        index.append(dict(name=name, scheduler=scheduler, steps=steps, method=method, accel=specs, prompt=PROMPT,
                          negative_prompt=NEGATIVE, guidance_scale=7.5, full_calls=full_calls, **knobs))
        print(name, "max |accelerated - baseline| =", float((out - plain).abs().max()))
    save_file(tensors, os.path.join(OUT, "tiny-sd1.safetensors"))
    with open(os.path.join(OUT, "tiny-sd1.json"), "w") as f:
        json.dump(index, f, indent=1)
    with open(os.path.join(OUT, "schedules.json"), "w") as f:
        f.write("[\n" + ",\n".join(json.dumps(row, separators=(",", ":")) for row in schedules()) + "\n]\n")


if __name__ == "__main__":
    main()
