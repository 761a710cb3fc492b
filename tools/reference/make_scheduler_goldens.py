"""Golden outputs for the schedulers (src/schedulers/), made with diffusers' own scheduler classes.

Each case runs one diffusers scheduler, created as a pipeline would switch schedulers
(`XScheduler.from_config(folder_config, **overrides)`), through a whole denoising loop driven by a
fixed synthetic "model" (no U-Net):

    model_output = 0.5 * eps + 0.1 * scaled_input + 0.05 * t / 1000

with `eps` a fixed seeded normal tensor. Stochastic steps get their noise explicitly: DDIM through
`variance_noise`, Euler ancestral, LCM and DDPM by replacing the module's `randn_tensor` with a
function that hands out pre-drawn noise; that noise is saved so the TypeScript test feeds the same
values.

DDPMScheduler cases (appended after all the others, so every earlier tensor and index entry is
unchanged; run `python tools/reference/make_scheduler_goldens.py`):
- Folder configs: `dit` = facebook/DiT-XL-2-256's scheduler_config.json (a DDIMScheduler: linear
  0.0001-0.02, 1000 steps, clip_sample false, set_alpha_to_one true, steps_offset 0, epsilon; what
  `DiTPipeline` users get with `DDPMScheduler.from_config(pipe.scheduler.config)`), passed with the
  name "ddpm"; `ddpm` = a DDPMScheduler folder config with DDPM's defaults (linear 0.0001-0.02,
  clip_sample true, variance_type fixed_small; what diffusers' convert_dit_to_diffusers.py would
  save), selected by its `_class_name`; and the existing sd15 / sd21v (v_prediction) / trailing /
  linspace / sample (squaredcos_cap_v2, `sample` prediction, clip 1.5) / zsnr configs, by name.
- Variants: plain (the config's own variance_type: fixed_small for all of these), `-learned`
  (variance_type learned_range), `-clip` (clip_sample true), `-trailing` / `-linspace`
  (timestep_spacing overrides); 10 and 25 steps, 7 for odd spacings.
- DDPM draws noise (randn, shape of the sample) at every step with t > 0 and none at t == 0:
  `<case>.noise` has one row per step; the index's `noise_steps` lists the steps that used theirs.
- learned_range: the model output has 2x channels, [1, 8, 4, 4]: the usual synthetic output in
  channels 0-3 and, in channels 4-7, `model_variance`, a fixed seeded tensor uniform in [-1, 1]
  (the same at every step; saved as `<case>.model_variance`). diffusers splits it off and uses
  log-variance = frac * log(beta_t) + (1 - frac) * log(beta_tilde_t), frac = (v + 1) / 2, with
  beta_t = 1 - alphabar_t / alphabar_prev (per *inference* step) and
  beta_tilde_t = max(1e-20, (1 - alphabar_prev) / (1 - alphabar_t) * beta_t); noise is scaled by
  exp(0.5 * log-variance). `<case>.model_output` holds the full 8-channel output; the index's
  `model_output_shape` says so.
- prev_t is the next entry of the schedule (-1 after the last, with alphabar_prev = 1), not
  t - 1000 // steps, also for trailing/linspace spacing.

Writes test/fixtures/goldens/schedulers/schedulers.safetensors (fp32 tensors named `<case>.<what>`)
and index.json (per case: scheduler name, config, steps, eta, timesteps, init_noise_sigma, ...).
See tools/reference/README.md.
"""

import hashlib
import json
import os

import torch
from safetensors.torch import save_file

import diffusers.schedulers.scheduling_ddpm as ddpm_module
import diffusers.schedulers.scheduling_euler_ancestral_discrete as euler_a_module
import diffusers.schedulers.scheduling_lcm as lcm_module
from diffusers.utils import logging as diffusers_logging
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "test", "fixtures", "goldens", "schedulers")
SHAPE = (1, 4, 4, 4)

# Folder configs as published (or as our fixtures hold them).
CONFIGS = {
    # runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json
    "sd15": {
        "_class_name": "PNDMScheduler",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "num_train_timesteps": 1000,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "trained_betas": None,
    },
    # stabilityai/stable-diffusion-2-1 scheduler/scheduler_config.json
    "sd21v": {
        "_class_name": "DDIMScheduler",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "num_train_timesteps": 1000,
        "prediction_type": "v_prediction",
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "trained_betas": None,
    },
    # test/fixtures/tiny-sd1's scheduler_config.json as it was when these cases were made: no
    # clip_sample key, so DDIM's default clip_sample=True applies. (The fixture has since gained
    # "clip_sample": false, see make_fixtures.py; the copy keeps this case covering the default and
    # the committed goldens reproducible.)
    "tinysd1": {
        "_class_name": "PNDMScheduler",
        "_diffusers_version": "0.40.0",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "trained_betas": None,
    },
    "trailing": {
        "_class_name": "EulerDiscreteScheduler",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "timestep_spacing": "trailing",
    },
    "linspace": {
        "_class_name": "DDIMScheduler",
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "clip_sample": False,
        "timestep_spacing": "linspace",
    },
    "sample": {
        "_class_name": "DDIMScheduler",
        "beta_schedule": "squaredcos_cap_v2",
        "prediction_type": "sample",
        "clip_sample": True,
        "clip_sample_range": 1.5,
        "set_alpha_to_one": True,
        "timestep_spacing": "leading",
    },
    "zsnr": {
        "_class_name": "DDIMScheduler",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "prediction_type": "v_prediction",
        "rescale_betas_zero_snr": True,
        "timestep_spacing": "trailing",
    },
    # facebook/DiT-XL-2-256 scheduler/scheduler_config.json
    "dit": {
        "_class_name": "DDIMScheduler",
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "beta_start": 0.0001,
        "clip_sample": False,
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "set_alpha_to_one": True,
        "steps_offset": 0,
        "trained_betas": None,
    },
    # A DDPMScheduler folder with DDPM's defaults (as scripts/convert_dit_to_diffusers.py would save)
    "ddpm": {
        "_class_name": "DDPMScheduler",
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "beta_start": 0.0001,
        "clip_sample": True,
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "trained_betas": None,
        "variance_type": "fixed_small",
    },
}

# Variant -> (our scheduler name, diffusers class, config overrides, forced by the name, eta).
# The TS test passes `config` = folder config + config overrides, and `name`, except that a
# variant whose class is the folder's own `_class_name` and which forces nothing passes no name
# (selected by `_class_name`); test-only variants set `_class_name` instead of a name.
VARIANTS = {
    "ddim": ("ddim", DDIMScheduler, {}, {}, 0.0),
    "ddim-eta": ("ddim", DDIMScheduler, {}, {}, 0.7),
    "pndm": ("pndm", PNDMScheduler, {}, {}, 0.0),
    "pndm-prk": ("pndm", PNDMScheduler, {"skip_prk_steps": False}, {}, 0.0),
    "euler": ("euler", EulerDiscreteScheduler, {}, {}, 0.0),
    "euler-karras": ("euler", EulerDiscreteScheduler, {"use_karras_sigmas": True}, {}, 0.0),
    "euler-a": ("euler-a", EulerAncestralDiscreteScheduler, {}, {}, 0.0),
    "dpm++2m": ("dpm++2m", DPMSolverMultistepScheduler, {},
                {"use_karras_sigmas": False, "algorithm_type": "dpmsolver++", "solver_order": 2}, 0.0),
    "dpm++2m-karras": ("dpm++2m-karras", DPMSolverMultistepScheduler, {},
                       {"use_karras_sigmas": True, "algorithm_type": "dpmsolver++", "solver_order": 2}, 0.0),
    "dpm++2m-sigmamin": ("dpm++2m", DPMSolverMultistepScheduler, {"final_sigmas_type": "sigma_min"},
                         {"use_karras_sigmas": False, "algorithm_type": "dpmsolver++", "solver_order": 2}, 0.0),
    "dpm-o3-heun": (None, DPMSolverMultistepScheduler, {"solver_order": 3, "solver_type": "heun"}, {}, 0.0),
    "lcm": ("lcm", LCMScheduler, {}, {}, 0.0),
    "ddpm": ("ddpm", DDPMScheduler, {}, {}, 0.0),
    "ddpm-learned": ("ddpm", DDPMScheduler, {"variance_type": "learned_range"}, {}, 0.0),
    "ddpm-clip": ("ddpm", DDPMScheduler, {"clip_sample": True}, {}, 0.0),
    "ddpm-trailing": ("ddpm", DDPMScheduler, {"timestep_spacing": "trailing"}, {}, 0.0),
    "ddpm-linspace": ("ddpm", DDPMScheduler, {"timestep_spacing": "linspace"}, {}, 0.0),
    "ddpm-learned-linspace": ("ddpm", DDPMScheduler,
                              {"variance_type": "learned_range", "timestep_spacing": "linspace"}, {}, 0.0),
}
DDPM_VARIANTS = [v for v in VARIANTS if v.startswith("ddpm")]

ALL_MAIN = ["ddim", "ddim-eta", "pndm", "pndm-prk", "euler", "euler-karras", "euler-a", "dpm++2m",
            "dpm++2m-karras", "lcm"]

# (config, variant, steps)
CASES = []
for v in ALL_MAIN + ["dpm++2m-sigmamin", "dpm-o3-heun"]:
    for n in ([4, 8, 1] if v == "lcm" else [10, 25]):
        CASES.append(("sd15", v, n))
for v in ALL_MAIN:
    for n in ([4] if v == "lcm" else [10, 25]):
        CASES.append(("sd21v", v, n))
for v in ALL_MAIN + ["dpm-o3-heun"]:
    for n in ([4] if v == "lcm" else [10, 7]):
        CASES.append(("trailing", v, n))
        CASES.append(("linspace", v, n))
for v in ["ddim", "ddim-eta", "euler", "euler-karras", "dpm++2m", "dpm++2m-karras", "lcm"]:
    CASES.append(("sample", v, 4 if v == "lcm" else 10))
for v in ["ddim", "euler", "euler-a", "dpm++2m", "lcm"]:
    CASES.append(("zsnr", v, 4 if v == "lcm" else 10))
for v in ["ddim", "dpm++2m", "euler"]:
    CASES.append(("tinysd1", v, 10))
# DDPM (appended last: the seeds above depend on how many tensors came before).
CASES += [
    ("dit", "ddpm", 10), ("dit", "ddpm", 25), ("dit", "ddpm-learned", 10), ("dit", "ddpm-learned", 25),
    ("dit", "ddpm-clip", 10), ("dit", "ddpm-trailing", 10), ("dit", "ddpm-trailing", 7),
    ("dit", "ddpm-linspace", 10), ("dit", "ddpm-linspace", 7), ("dit", "ddpm-learned-linspace", 7),
    ("ddpm", "ddpm", 10), ("ddpm", "ddpm", 25), ("ddpm", "ddpm-learned", 10),
    ("sd15", "ddpm", 10), ("sd15", "ddpm", 25), ("sd21v", "ddpm", 10), ("sd21v", "ddpm-learned", 10),
    ("trailing", "ddpm", 7), ("linspace", "ddpm", 7), ("sample", "ddpm", 10), ("zsnr", "ddpm", 10),
]


class NoiseFeed:
    """Stands in for diffusers' randn_tensor: returns pre-drawn noise, one tensor per call."""

    def __init__(self):
        self.queue = []

    def __call__(self, shape, generator=None, device=None, dtype=None, layout=None):
        assert tuple(shape) == SHAPE, shape
        return self.queue.pop(0)


FEED = NoiseFeed()
euler_a_module.randn_tensor = FEED
lcm_module.randn_tensor = FEED
ddpm_module.randn_tensor = FEED


def make_scheduler(config_name, variant):
    name, cls, config_overrides, forced, eta = VARIANTS[variant]
    ts_config = {**CONFIGS[config_name], **config_overrides}
    if name is None:
        ts_config["_class_name"] = cls.__name__
    elif ts_config["_class_name"] == cls.__name__ and not forced:
        name = None
    return cls.from_config(ts_config, **forced), name, ts_config, eta


def f32(x):
    return float(torch.tensor(x, dtype=torch.float32).item()) if not isinstance(x, torch.Tensor) else float(x.to(torch.float32).item())


def run_case(config_name, variant, steps, tensors, ac_names):
    sched, name, ts_config, eta = make_scheduler(config_name, variant)
    sched.set_timesteps(steps)
    if hasattr(sched, "set_begin_index"):
        # Step by position, as our schedulers do. Without this diffusers finds the start by looking
        # the first timestep up, and takes its *second* occurrence when it repeats (squaredcos_cap_v2
        # with Karras sigmas gives 998, 998, ...), which runs off the end of the schedule.
        sched.set_begin_index(0)
    timesteps = [float(t) for t in sched.timesteps.to(torch.float32)]
    n = len(timesteps)
    case_id = f"{config_name}.{variant}.{steps}"

    gen = torch.Generator().manual_seed(1000 + len(tensors))
    eps = torch.randn(SHAPE, generator=gen, dtype=torch.float32)
    sample = torch.randn(SHAPE, generator=gen, dtype=torch.float32) * sched.init_noise_sigma
    ddpm = variant in DDPM_VARIANTS
    stochastic = variant in ("ddim-eta", "euler-a", "lcm") or ddpm
    noises = torch.randn((n,) + SHAPE, generator=gen, dtype=torch.float32) if stochastic else None

    # add_noise before any step (no step index set yet), at the middle timestep index.
    add_index = n // 2
    original = torch.randn(SHAPE, generator=gen, dtype=torch.float32)
    add_noise_noise = torch.randn(SHAPE, generator=gen, dtype=torch.float32)
    if hasattr(sched, "set_begin_index"):
        sched._begin_index = None  # add_noise looks the timestep up (the first, unique, occurrence)
        assert (sched.timesteps == sched.timesteps[add_index]).sum() == 1
    noisy = sched.add_noise(original, add_noise_noise, sched.timesteps[add_index : add_index + 1])
    learned = ddpm and sched.config.variance_type == "learned_range"
    # learned_range: the model's second half, a fixed [-1, 1] "predicted variance" (new cases only).
    model_variance = torch.rand(SHAPE, generator=gen, dtype=torch.float32) * 2 - 1 if learned else None

    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(0)
    samples, scaled_all, outputs, prevs = [sample.clone()], [], [], []
    noise_steps = []
    FEED.queue = []
    for i, t in enumerate(sched.timesteps):
        scaled = sched.scale_model_input(sample, t)
        tf = float(t)
        model_output = 0.5 * eps + 0.1 * scaled + 0.05 * tf / 1000.0
        if learned:
            model_output = torch.cat([model_output, model_variance], dim=1)
        kwargs = {}
        if variant == "ddim-eta":
            kwargs = {"eta": eta, "variance_noise": noises[i]}
        elif stochastic:
            FEED.queue = [noises[i]]
        prev = sched.step(model_output, t, sample, **kwargs).prev_sample
        if variant in ("euler-a",):
            assert FEED.queue == [], "noise not consumed"
        if ddpm:  # DDPM adds noise at every t > 0 and none at t == 0
            assert (FEED.queue == []) == (tf > 0), (case_id, i, tf)
            if tf > 0:
                noise_steps.append(i)
        scaled_all.append(scaled.clone())
        outputs.append(model_output.clone())
        prevs.append(prev.clone())
        sample = prev

    ac = sched.alphas_cumprod.to(torch.float32).contiguous()
    digest = hashlib.sha1(ac.numpy().tobytes()).hexdigest()[:10]
    ac_name = f"alphas_cumprod.{digest}"
    if ac_name not in ac_names:
        ac_names.add(ac_name)
        tensors[ac_name] = ac

    tensors[f"{case_id}.sample0"] = samples[0]
    tensors[f"{case_id}.model_output"] = torch.stack(outputs)
    tensors[f"{case_id}.prev_sample"] = torch.stack(prevs)
    scales_input = isinstance(sched, (EulerDiscreteScheduler, EulerAncestralDiscreteScheduler))
    if scales_input:
        tensors[f"{case_id}.scaled_input"] = torch.stack(scaled_all)
    else:
        for s, x in zip(scaled_all, [samples[0]] + prevs[:-1]):
            assert torch.equal(s, x)
    if noises is not None:
        tensors[f"{case_id}.noise"] = noises
    tensors[f"{case_id}.add_noise.original"] = original
    tensors[f"{case_id}.add_noise.noise"] = add_noise_noise
    tensors[f"{case_id}.add_noise.noisy"] = noisy
    if learned:
        tensors[f"{case_id}.model_variance"] = model_variance

    sigmas = getattr(sched, "sigmas", None)
    entry = {
        "id": case_id,
        "config_name": config_name,
        "variant": variant,
        "class": type(sched).__name__,
        "name": name,
        "config": ts_config,
        "steps": steps,
        "eta": eta,
        "timesteps": timesteps,
        "init_noise_sigma": f32(sched.init_noise_sigma),
        "stochastic": stochastic,
        "scales_input": scales_input,
        "add_noise_index": add_index,
        "alphas_cumprod": ac_name,
        "sigmas": None if sigmas is None else [float(s) for s in sigmas.to(torch.float32)],
    }
    if ddpm:  # keys only the DDPM cases carry (the earlier entries stay as they were)
        entry["variance_type"] = sched.config.variance_type
        entry["model_output_shape"] = list(outputs[0].shape)
        entry["noise_steps"] = noise_steps
    return entry


def main():
    torch.set_num_threads(1)
    # from_config warns about every folder key the target class does not have; that is intended here.
    diffusers_logging.set_verbosity_error()
    os.makedirs(OUT, exist_ok=True)
    tensors, ac_names, cases = {}, set(), []
    for config_name, variant, steps in CASES:
        cases.append(run_case(config_name, variant, steps, tensors, ac_names))
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, os.path.join(OUT, "schedulers.safetensors"))
    os.chmod(os.path.join(OUT, "schedulers.safetensors"), 0o644)
    index = {
        "diffusers_version": __import__("diffusers").__version__,
        "shape": list(SHAPE),
        "model": "model_output = 0.5 * eps + 0.1 * scaled_input + 0.05 * t / 1000",
        "cases": cases,
        "model_learned_range": "DDPM learned_range cases: model_output = cat([the model above, "
        "model_variance], dim=1) with model_variance a fixed [1, 4, 4, 4] tensor uniform in [-1, 1]",
    }
    with open(os.path.join(OUT, "index.json"), "w") as f:
        json.dump(index, f, indent=1)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(OUT, p)) for p in os.listdir(OUT))
    print(f"{len(cases)} cases, {len(tensors)} tensors, {total / 1e6:.2f} MB in {OUT}")


if __name__ == "__main__":
    main()
