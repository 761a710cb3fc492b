"""Goldens for FORA (Fast-Forward Caching, arXiv 2407.01425) on the tiny SD 1.x fixture.

FORA as this project defines it for the SD U-Net: knob `cache_interval` N. A generation makes C
U-Net calls c = 0 … C−1 (PNDM: steps + 1, DDIM / Euler: steps); with t = C − 1 − c (the sampler's
step index counted down, as FORA's own code counts), call c *refreshes* when c == 0 or t % N == 0.
On a refreshing call every `attn1`, `attn2` and `ff` module of every BasicTransformerBlock computes
and its own output is stored (attention after `to_out`, FeedForward before the residual); on the
other calls each returns its stored output without computing, and the block adds its residuals and
everything else in the U-Net runs as usual. State is per module and is reset before each generation.

The method is written here on diffusers' own hook registry (`diffusers.hooks.HookRegistry`): one
`ModelHook` on the U-Net whose `pre_forward` counts calls and decides refresh / reuse, and one
stateful `ModelHook` per attn1 / attn2 / ff module whose `new_forward` computes (through
`fn_ref.original_forward`) or returns the stored output. The script asserts, with independent
torch forward hooks on each module's inner layers, that all 33 modules of tiny-sd1 really compute
on refreshing calls and none on the others; that the hooked run is deterministic; that FORA changes
the result clearly (> 1e-2); and that the plain run is unchanged once the hooks are removed.

    source /work/refenv/env.sh && python tools/reference/make_fora_goldens.py

Writes test/fixtures/goldens/fora/tiny-sd1.{safetensors,json}: per case `<name>.latents_in`
[1,4,16,16], `<name>.latents_out` (FORA) and `<name>.baseline_out` (plain diffusers), fp32; the
JSON lists {name, scheduler, steps, accel, prompt, negative_prompt, guidance_scale, cache_interval,
refresh_calls, calls}.
"""

import json
import os

import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, PNDMScheduler, StableDiffusionPipeline
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.models.attention import BasicTransformerBlock
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "test", "fixtures")
OUT = os.path.join(FIXTURES, "goldens", "fora")

SCHEDULERS = {"ddim": DDIMScheduler, "pndm": PNDMScheduler, "euler": EulerDiscreteScheduler}

# name → (scheduler, steps, cache_interval, guidance_scale)
CASES = {
    "fora-ddim8-n3": ("ddim", 8, 3, 7.5),
    "fora-pndm6-n2": ("pndm", 6, 2, 7.5),
    "fora-euler8-n4": ("euler", 8, 4, 7.5),
    "fora-ddim6-n2-nocfg": ("ddim", 6, 2, 1.0),
}
PROMPT = "a photo of an astronaut riding a horse"
NEGATIVE = "blurry, low quality"
HOOK = "fora"


def refresh_calls(calls, interval):
    """The U-Net call indices c that compute: c == 0, or (calls − 1 − c) % interval == 0."""
    return [c for c in range(calls) if c == 0 or (calls - 1 - c) % interval == 0]


class ForaSchedule:
    """Shared by all hooks of one U-Net: which call is running and whether it refreshes."""

    def __init__(self, interval):
        self.interval = interval
        self.calls = None  # C, set before each generation
        self.call = -1  # index of the U-Net call in progress
        self.refresh = False
        self.computed = []  # per call: how many cached modules ran their own forward (via the hook)

    def reset(self, calls):
        self.calls, self.call, self.refresh, self.computed = calls, -1, False, []


class ForaCallCounter(ModelHook):
    """On the U-Net: before each forward, advance the call index and decide refresh / reuse."""

    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule

    def pre_forward(self, module, *args, **kwargs):
        s = self.schedule
        s.call += 1
        assert s.call < s.calls, f"U-Net called more than the {s.calls} times expected"
        s.refresh = s.call == 0 or (s.calls - 1 - s.call) % s.interval == 0
        s.computed.append(0)
        return args, kwargs


class ForaModuleCache(ModelHook):
    """On one attn1 / attn2 / ff module: compute and store on refreshing calls, else return the store."""

    _is_stateful = True

    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule
        self.stored = None

    def new_forward(self, module, *args, **kwargs):
        if self.schedule.refresh:
            self.stored = self.fn_ref.original_forward(*args, **kwargs)
            self.schedule.computed[self.schedule.call] += 1
            return self.stored
        assert self.stored is not None, "FORA reuse before any refresh"
        return self.stored

    def reset_state(self, module):
        self.stored = None
        return module


def cached_modules(unet):
    """(name, module) for every attn1, attn2 and ff of every BasicTransformerBlock, in model order."""
    found = []
    for block_name, block in unet.named_modules():
        if isinstance(block, BasicTransformerBlock):
            assert block._chunk_size is None, "chunked feed-forward would call ff several times"
            for part in ("attn1", "attn2", "ff"):
                module = getattr(block, part)
                if module is not None:
                    found.append((f"{block_name}.{part}", module))
    return found


def apply_fora(unet, interval):
    schedule = ForaSchedule(interval)
    HookRegistry.check_if_exists_or_initialize(unet).register_hook(ForaCallCounter(schedule), HOOK)
    hooks = []
    for _, module in cached_modules(unet):
        hook = ForaModuleCache(schedule)
        HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, HOOK)
        hooks.append((module, hook))

    def reset(calls):
        schedule.reset(calls)
        for module, hook in hooks:
            hook.reset_state(module)

    return schedule, reset


def remove_fora(unet):
    HookRegistry.check_if_exists_or_initialize(unet).remove_hook(HOOK, recurse=True)


def watch_real_work(unet, schedule):
    """Independent check: torch hooks on each module's inner layers count real computations per call."""
    seen = {}  # call index → set of module names whose inner layers ran
    handles = []
    for name, module in cached_modules(unet):
        inner = module.to_out[0] if hasattr(module, "to_out") else module.net[-1]

        def note(_mod, _inp, name=name):
            seen.setdefault(schedule.call, []).append(name)

        handles.append(inner.register_forward_pre_hook(note))
    return seen, handles


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(1)
    pipe = StableDiffusionPipeline.from_pretrained(os.path.join(FIXTURES, "tiny-sd1"), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    base_config = pipe.scheduler.config
    n_modules = len(cached_modules(pipe.unet))
    tensors, index = {}, []
    for i, (name, (scheduler, steps, interval, guidance)) in enumerate(CASES.items()):
        pipe.scheduler = SCHEDULERS[scheduler].from_config(base_config)
        pipe.scheduler.set_timesteps(steps)
        calls = len(pipe.scheduler.timesteps)
        latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(4000 + i))
        run = lambda: pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps,  # noqa: E731
                           guidance_scale=guidance, latents=latents.clone(), output_type="latent").images

        with torch.no_grad():
            plain = run()

        schedule, reset = apply_fora(pipe.unet, interval)
        seen, handles = watch_real_work(pipe.unet, schedule)
        outs = []
        for _ in range(2):
            reset(calls)
            seen.clear()
            with torch.no_grad():
                outs.append(run())
            assert schedule.call == calls - 1, f"{name}: {schedule.call + 1} U-Net calls, expected {calls}"
            expected = refresh_calls(calls, interval)
            refreshed = [c for c, n in enumerate(schedule.computed) if n > 0]
            assert refreshed == expected, (refreshed, expected)
            for c in range(calls):
                want = n_modules if c in expected else 0
                assert schedule.computed[c] == want, (name, c, schedule.computed[c], want)
                assert len(seen.get(c, [])) == want, (name, c, len(seen.get(c, [])), want)
                if want:
                    assert len(set(seen[c])) == n_modules, "a module computed twice in one call"
        for h in handles:
            h.remove()
        remove_fora(pipe.unet)
        fora = outs[0]
        assert torch.equal(outs[0], outs[1]), f"{name}: FORA run is not deterministic"

        with torch.no_grad():
            again = run()
        assert torch.equal(plain, again), f"{name}: hooks did not come off cleanly"

        change = float((fora - plain).abs().max())
        assert change > 1e-2, f"{name}: FORA changed the latents by only {change}"
        tensors[f"{name}.latents_in"] = latents.contiguous()
        tensors[f"{name}.latents_out"] = fora.contiguous()
        tensors[f"{name}.baseline_out"] = plain.contiguous()
        index.append(dict(name=name, scheduler=scheduler, steps=steps, accel=f"fora:cache_interval={interval}",
                          prompt=PROMPT, negative_prompt=NEGATIVE, guidance_scale=guidance, cache_interval=interval,
                          refresh_calls=expected, calls=calls))
        print(f"{name}: max |fora - baseline| = {change:.6g} (baseline max |x| = {float(plain.abs().max()):.4g}), "
              f"C = {calls}, refresh_calls = {expected}, {n_modules} cached modules")
    save_file(tensors, os.path.join(OUT, "tiny-sd1.safetensors"))
    with open(os.path.join(OUT, "tiny-sd1.json"), "w") as f:
        json.dump(index, f, indent=1)


if __name__ == "__main__":
    main()
