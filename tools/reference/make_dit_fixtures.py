"""Build the tiny DiT fixture (class-conditional, ImageNet-style) and its goldens with diffusers itself.

    source /work/refenv/env.sh && python tools/reference/make_dit_fixtures.py     # about 15 s

Writes only test/fixtures/tiny-dit/ and test/fixtures/goldens/dit/; reruns are byte-identical on
the same machine (seeded, one torch thread, goldens without safetensors metadata).

## The fixture: test/fixtures/tiny-dit/ (a real `DiTPipeline.save_pretrained` folder, fp32)
Laid out like facebook/DiT-XL-2-256 on the Hub:

- `model_index.json`: `_class_name` DiTPipeline, `transformer: ["diffusers", "Transformer2DModel"]`,
  `vae: ["diffusers", "AutoencoderKL"]`, `scheduler: ["diffusers", "DDIMScheduler"]`, and
  **`id2label`**: the class names live here (a `{"0": "...", ..., "999": "..."}` object; the Hub's
  model_index.json is 35.8 kB because of it). `DiTPipeline.__init__(..., id2label=None)` receives it
  from model_index.json at load time but never registers it, so `save_pretrained` alone would drop
  it; this script registers it (`pipe.register_to_config(id2label=...)`) before saving, which
  reproduces the Hub layout. diffusers writes JSON with `sort_keys=True`, so the keys are in
  *string* order: "0", "1", "10", "100", "101", ..., "999".
- `transformer/` (seed 300): saved under the Hub's class name `Transformer2DModel` with
  `norm_type: "ada_norm_zero"`. Loading that folder with `Transformer2DModel.from_pretrained` (or
  the pipeline) gives a `DiTTransformer2DModel` (diffusers remaps legacy `Transformer2DModel`
  configs by `norm_type`: ada_norm_zero -> DiTTransformer2DModel, ada_norm_single ->
  PixArtTransformer2DModel). The script checks that the constructed legacy `Transformer2DModel` and
  `DiTTransformer2DModel.from_pretrained` of the saved folder give bit-identical outputs.
  Sizes: sample_size 16 (latent 16x16, image 128x128), patch_size 2 (64 tokens), in_channels 4,
  out_channels 8 (learned sigma: eps in channels 0-3, variance in 4-7), 2 layers, 2 heads x 16
  (inner dim 32), num_embeds_ada_norm 1000 (label table 1001 x 32; row 1000 is the CFG null class),
  gelu-approximate (tanh) feed-forward 32 -> 128 -> 32, attention with bias,
  norm_elementwise_affine false.
  config.json as saved (class `Transformer2DModel`):
      activation_fn "gelu-approximate", attention_bias true, attention_head_dim 16,
      attention_type "default", caption_channels null, cross_attention_dim null,
      double_self_attention false, dropout 0.0, in_channels 4, interpolation_scale null,
      norm_elementwise_affine false, norm_eps 1e-05, norm_num_groups 32, norm_type "ada_norm_zero",
      num_attention_heads 2, num_embeds_ada_norm 1000, num_layers 2, num_vector_embeds null,
      only_cross_attention false, out_channels 8, patch_size 2, sample_size 16,
      upcast_attention false, use_additional_conditions null, use_linear_projection false
  the same folder as `DiTTransformer2DModel` sees it (its __init__ arguments; the legacy keys
  above stay in its `.config` but are unused):
      num_attention_heads 2, attention_head_dim 16, in_channels 4, out_channels 8, num_layers 2,
      dropout 0.0, norm_num_groups 32, attention_bias true, sample_size 16, patch_size 2,
      activation_fn "gelu-approximate", num_embeds_ada_norm 1000, upcast_attention false,
      norm_type "ada_norm_zero", norm_elementwise_affine false, norm_eps 1e-05
  (The Hub's DiT-XL-2-256 config has the same keys as the first list minus attention_type,
  caption_channels, double_self_attention, interpolation_scale, norm_eps and
  use_additional_conditions, with 16 heads x 72, 28 layers, sample_size 32.)
  Every parameter is re-drawn after construction (DiT zero-inits adaLN and the output layer; a
  zero model would pin nothing): weights of Linear/Conv layers `randn / sqrt(fan_in)`, biases
  `0.1 * randn`, label tables `randn`. The positional embedding is a fixed 2-D sin-cos buffer
  (not saved: non-persistent) and stays as diffusers computes it.
- `vae/` (seed 301): the tiny AutoencoderKL of make_fixtures.py (`VAE_CONFIG`, 8x spatial factor,
  scaling_factor 0.18215 as DiT's sd-vae-ft-ema).
- `scheduler/scheduler_config.json`: what facebook/DiT-XL-2-256's folder holds, a **DDIMScheduler**
  with exactly the Hub's keys: beta_start 0.0001, beta_end 0.02, beta_schedule "linear",
  clip_sample false, num_train_timesteps 1000, prediction_type "epsilon", set_alpha_to_one true,
  steps_offset 0, trained_betas null (no `timestep_spacing` key: DDIM's default "leading"
  applies). (diffusers' scripts/convert_dit_to_diffusers.py builds a DDPMScheduler instead, but
  the published folders hold DDIM; diffusers' own fast test also uses DDIMScheduler.)

## Things worth knowing about diffusers' DiT
- Each transformer block has its *own* `norm1.emb` (timestep MLP + label table); the output layer
  uses block 0's. (Converted Hub weights repeat one embedder in every block; here they differ.)
- Timestep embedding: `Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=1)`:
  freq_i = exp(-ln(10000) * i / (128 - 1)), i = 0..127, output [cos(t f), sin(t f)]. The original
  DiT code (facebookresearch/DiT models.py `TimestepEmbedder`) divides by 128, i.e.
  downscale_freq_shift 0, same [cos, sin] order: diffusers runs the converted weights with slightly
  different frequencies; we follow diffusers. Timesteps arrive as int64 (DDIM/DDPM/DPM) and are
  cast to float.
- LayerNorms (no affine): before attention eps 1e-6 (AdaLayerNormZero), before the feed-forward
  eps = norm_eps (1e-5 here and on the Hub; the original DiT uses 1e-6), final norm_out eps 1e-6.
  Block: shift/scale/gate x2 = Linear(SiLU(emb)).chunk(6) in the order shift_msa, scale_msa,
  gate_msa, shift_mlp, scale_mlp, gate_mlp; x*(1+scale)+shift; residual += gate * branch. Output:
  shift, scale = proj_out_1(SiLU(emb_block0)).chunk(2); proj_out_2; unpatchify
  "nhwpqc->nchpwq".
- Non-square latents are **not** supported: diffusers (like the original DiT) unpatchifies with
  `height = width = int(sqrt(num_tokens))`. A 12x20 latent (6x10 = 60 tokens) raises a reshape
  error (checked below, so `out_nonsquare` is not written); worse, a grid whose token count is a
  perfect square (e.g. 8x32 latents -> 4x16 = 64 tokens) runs and returns an 8x8-token scramble of
  the wrong shape [B, C, 16, 16] (also checked below). DiTPipeline itself always makes square
  latents of `transformer.config.sample_size`.

## Pipeline behaviour the goldens pin (also in the JSON's "notes")
DiTPipeline has neither a `latents=` argument nor `output_type="latent"`, and draws its starting
latents with `randn_tensor`. The script therefore (1) replaces `pipeline_dit.randn_tensor` with a
function that returns the case's saved `latents_in` (shape and dtype asserted), (2) wraps the
scheduler's `step` to record every `prev_sample`; `latents_out` is the first half (the CFG
batch's conditional half) of the last step's `prev_sample` — exactly the tensor DiTPipeline then
divides by the VAE scaling factor and decodes (the script checks the decoded image against
`output_type="np"`). See NOTES below for guidance and learned sigma.

## Goldens: test/fixtures/goldens/dit/
- `tiny-dit-transformer.safetensors`: `hidden_states` [4,4,16,16] (randn, seed 3000), `timestep`
  [4] int64 (999, 641, 250, 1), `class_labels` [4] int64 (207, 360, 1000, 1000: two real labels
  then two null labels, as CFG batches them) -> `out` [4,8,16,16] (`DiTTransformer2DModel`
  loaded from the folder). No `out_nonsquare` (see above).
- `tiny-dit-pipelines.safetensors` + `tiny-dit-pipelines.json`: per case `<name>.latents_in`
  [B,4,16,16] (randn, seed 2000 + case index), `<name>.latents_out` [B,4,16,16], `<name>.noise`
  for the DDPM case ([steps, 2B, 4, 16, 16], fed to `scheduling_ddpm.randn_tensor` one step at a
  time; none is drawn at t = 0) and `<name>.image_out` [B,3,128,128] in [0,1] for the case that
  has `"output": "image"`. The JSON lists each case's class_labels (and label names with the ids
  diffusers resolved), guidance_scale, steps, scheduler name, the class and config overrides
  diffusers used (`XScheduler.from_config(folder scheduler config, **overrides)`), timesteps.
"""

import json
import math
import os
import shutil
import sys

import numpy as np
import torch
from safetensors.torch import save_file

import diffusers.pipelines.dit.pipeline_dit as pipeline_dit_module
import diffusers.schedulers.scheduling_ddpm as ddpm_module
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DiTPipeline,
    DiTTransformer2DModel,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    Transformer2DModel,
)
from diffusers.utils import logging as diffusers_logging

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import FIXTURES, GOLDENS, VAE_CONFIG  # noqa: E402  (the tiny VAE shared by all fixtures)

FOLDER = os.path.join(FIXTURES, "tiny-dit")
OUT = os.path.join(GOLDENS, "dit")
SEED = 300

TRANSFORMER_CONFIG = dict(
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=4,
    out_channels=8,
    num_layers=2,
    sample_size=16,
    patch_size=2,
    attention_bias=True,
    activation_fn="gelu-approximate",
    num_embeds_ada_norm=1000,
    norm_type="ada_norm_zero",
    norm_elementwise_affine=False,
)

# facebook/DiT-XL-2-256 scheduler/scheduler_config.json (its keys, in its order of meaning).
HUB_SCHEDULER = {
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": True,
    "steps_offset": 0,
    "trained_betas": None,
}

# A few real ImageNet-1k entries (multi-name entries are ", "-separated, as in the Hub's id2label;
# 134 and 517 are both "crane" in ImageNet), a synthetic pair sharing the name "twin" (pins which
# id a duplicated name resolves to), and "class N" for the rest.
REAL_LABELS = {
    0: "tench, Tinca tinca",
    1: "goldfish, Carassius auratus",
    88: "macaw",
    134: "crane",
    207: "golden retriever",
    360: "otter",
    517: "crane",
    999: "toilet tissue, toilet paper, bathroom tissue",
}
TWIN = {9: "class 9, twin", 10: "class 10, twin"}


def id2label():
    labels = {i: f"class {i}" for i in range(1000)}
    labels.update(REAL_LABELS)
    labels.update(TWIN)
    return {str(i): labels[i] for i in range(1000)}


NOTES = {
    "latents": "DiTPipeline has no latents= argument and no latent output: latents_in replaced "
    "pipeline_dit.randn_tensor's result; latents_out is the conditional (first) half of the last "
    "scheduler.step's prev_sample, i.e. what the pipeline divides by vae.config.scaling_factor and "
    "decodes. The pipeline never multiplies the starting latents by scheduler.init_noise_sigma "
    "(harmless for DDIM/DDPM/DPM where it is 1.0; the 'euler' case pins the unscaled start).",
    "guidance": "guidance_scale > 1 turns CFG on (exactly 1.0 is off). The model batch is "
    "[cond x B, uncond x B]: latents doubled as cat([x, x]), class_labels cat([labels, [1000] * B]) "
    "(1000 = hard-coded null class, the label table's extra row). Before every step the batch is "
    "rebuilt from its first half: cat([first_half, first_half]). Guidance uses only the first "
    "in_channels (4) output channels: eps_cond, eps_uncond = split(out[:, :4], B); "
    "eps = eps_uncond + g * (eps_cond - eps_uncond), then cat([eps, eps]) on the batch axis. "
    "Channels 4..7 (variance) are passed through unguided (cond rows keep the cond variance, uncond "
    "rows the uncond one). (The original DiT sample.py guides only 3 channels 'for exact "
    "reproducibility'; diffusers guides all 4.) scheduler.step runs on the full 2B batch; the "
    "final latents are the first B rows.",
    "learned_sigma": "transformer out_channels 8 == 2 * in_channels, so after guidance the pipeline "
    "keeps only channels 0..3 (eps) and hands those to scheduler.step; the learned variance is "
    "discarded for every scheduler (DDPMScheduler therefore sees 4 channels and uses its "
    "variance_type from config: fixed_small for the DiT folder; learned_range would crash, since "
    "it needs the variance half).",
    "timestep": "scheduler timesteps (int64 for DDIM/DDPM/DPM, float32 for Euler) are expanded to "
    "the model batch and embedded with Timesteps(256, flip_sin_to_cos=True, "
    "downscale_freq_shift=1): [cos, sin] with freq_i = exp(-ln(10000) * i / 127).",
    "ddpm_noise": "the ddpm case's noise [steps, 2B, 4, 16, 16] is handed to "
    "scheduling_ddpm.randn_tensor one row per step (shape 2B: the whole CFG batch; only the first "
    "B rows survive into the next step); at t == 0 DDPM draws no noise and that row is unused.",
    "non_square": "not supported by diffusers' DiT (unpatchify assumes a square token grid); no "
    "non-square case.",
}

# (name, settings). scheduler: (our name, diffusers class or None for the folder's, overrides).
CASES = [
    ("ddim-cfg4", dict(labels=[207, 360], guidance=4.0, steps=8, scheduler=("ddim", None, {}), output="image")),
    ("ddim-no-cfg", dict(labels=[207, 360], guidance=1.0, steps=8, scheduler=("ddim", None, {}))),
    ("dpm++2m", dict(labels=[207, 360], guidance=4.0, steps=8,
                     scheduler=("dpm++2m", DPMSolverMultistepScheduler, {}))),
    ("ddim-trailing", dict(labels=[0, 1, 999], guidance=1.5, steps=6,
                           scheduler=("ddim", DDIMScheduler, {"timestep_spacing": "trailing"}))),
    ("ddpm", dict(labels=[207, 360], guidance=4.0, steps=10, scheduler=("ddpm", DDPMScheduler, {}))),
    ("euler", dict(labels=[88, 360], guidance=4.0, steps=8, scheduler=("euler", EulerDiscreteScheduler, {}))),
    ("labels-by-name", dict(names=["Tinca tinca", "goldfish", "crane", "twin", "class 42"], guidance=4.0,
                            steps=6, scheduler=("ddim", None, {}))),
]


def randomize(model, seed):
    """Re-draw every parameter: DiT zero-inits adaLN and the output layer, which would pin nothing."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("embedding_table.weight"):
                value = torch.randn(p.shape, generator=gen)
            elif p.dim() >= 2:  # Linear [out, in] and the patch Conv2d [out, in, kh, kw]
                fan_in = p[0].numel()
                value = torch.randn(p.shape, generator=gen) / math.sqrt(fan_in)
            else:  # biases (no affine LayerNorms in this model)
                assert name.endswith(".bias"), name
                value = 0.1 * torch.randn(p.shape, generator=gen)
            p.copy_(value)


def build_folder():
    torch.manual_seed(SEED)
    transformer = Transformer2DModel(**TRANSFORMER_CONFIG)  # the legacy class, as on the Hub
    assert type(transformer) is Transformer2DModel
    randomize(transformer, SEED)
    transformer.eval()  # LabelEmbedding drops labels at random in training mode
    torch.manual_seed(SEED + 1)
    vae = AutoencoderKL(**VAE_CONFIG).eval()
    assert vae.config.scaling_factor == 0.18215
    scheduler = DDIMScheduler(**HUB_SCHEDULER)
    pipe = DiTPipeline(transformer=transformer, vae=vae, scheduler=scheduler)
    # DiTPipeline takes id2label from model_index.json but does not register it itself.
    pipe.register_to_config(id2label=id2label())
    shutil.rmtree(FOLDER, ignore_errors=True)
    pipe.save_pretrained(FOLDER, safe_serialization=True)
    for part in ("transformer", "vae"):
        os.chmod(os.path.join(FOLDER, part, "diffusion_pytorch_model.safetensors"), 0o644)

    with open(os.path.join(FOLDER, "model_index.json")) as f:
        index = json.load(f)
    assert index["transformer"] == ["diffusers", "Transformer2DModel"], index["transformer"]
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"], index["scheduler"]
    keys = list(index["id2label"])
    assert keys[:4] == ["0", "1", "10", "100"] and len(keys) == 1000, keys[:4]

    # Exactly the Hub's scheduler keys (save_pretrained would add every DDIM default).
    path = os.path.join(FOLDER, "scheduler", "scheduler_config.json")
    with open(path) as f:
        saved = json.load(f)
    hub = {"_class_name": "DDIMScheduler", "_diffusers_version": saved["_diffusers_version"], **HUB_SCHEDULER}
    with open(path, "w") as f:
        json.dump(hub, f, indent=2, sort_keys=True)
        f.write("\n")
    return transformer


def transformer_inputs():
    gen = torch.Generator().manual_seed(3000)
    hidden = torch.randn(4, 4, 16, 16, generator=gen)
    timestep = torch.tensor([999, 641, 250, 1], dtype=torch.int64)
    labels = torch.tensor([207, 360, 1000, 1000], dtype=torch.int64)
    return hidden, timestep, labels


@torch.no_grad()
def transformer_goldens(legacy, pipe):
    model = pipe.transformer
    assert type(model) is DiTTransformer2DModel, type(model)
    direct = DiTTransformer2DModel.from_pretrained(os.path.join(FOLDER, "transformer"))
    hidden, timestep, labels = transformer_inputs()
    out = model(hidden, timestep=timestep, class_labels=labels).sample
    assert out.shape == (4, 8, 16, 16)
    # The Hub's class name and DiT's own class compute the same thing on the same weights.
    assert torch.equal(legacy(hidden, timestep=timestep, class_labels=labels).sample, out)
    assert torch.equal(direct(hidden, timestep=timestep, class_labels=labels).sample, out)

    # Not degenerate: O(1) values, and label, timestep and input all matter.
    assert torch.isfinite(out).all()
    std = float(out.std())
    assert 0.3 < std < 30, std
    for half in (out[:, :4], out[:, 4:]):
        assert float(half.std()) > 0.1
    other_labels = torch.tensor([0, 999, 207, 1], dtype=torch.int64)
    d_label = (model(hidden, timestep=timestep, class_labels=other_labels).sample - out).abs().mean()
    d_time = (model(hidden, timestep=timestep.flip(0), class_labels=labels).sample - out).abs().mean()
    d_input = (model(hidden.flip(0), timestep=timestep, class_labels=labels).sample - out).abs().mean()
    for what, d in [("label", d_label), ("timestep", d_time), ("input", d_input)]:
        assert float(d) > 0.05 * std, (what, float(d), std)
    print(f"transformer: out std {std:.3f}; mean |change| from labels {float(d_label):.3f}, "
          f"timesteps {float(d_time):.3f}, inputs {float(d_input):.3f}")

    # Non-square latents: diffusers' DiT cannot unpatchify them.
    odd = torch.randn(4, 4, 12, 20, generator=torch.Generator().manual_seed(3001))
    try:
        model(odd, timestep=timestep, class_labels=labels)
    except RuntimeError as e:
        print(f"non-square 12x20 latents: diffusers raises ({str(e).splitlines()[0][:80]}...)")
    else:
        raise AssertionError("diffusers' DiT now accepts non-square latents: add out_nonsquare")
    wide = torch.randn(1, 4, 8, 32, generator=torch.Generator().manual_seed(3002))
    scrambled = model(wide, timestep=timestep[:1], class_labels=labels[:1]).sample
    assert scrambled.shape == (1, 8, 16, 16), scrambled.shape  # 64 tokens read as an 8x8 grid
    return {"hidden_states": hidden, "timestep": timestep, "class_labels": labels, "out": out}


class LatentsFeed:
    """Stands in for pipeline_dit.randn_tensor: returns the case's saved starting latents."""

    def __init__(self):
        self.latents = None

    def __call__(self, shape, generator=None, device=None, dtype=None, layout=None):
        assert self.latents is not None and tuple(shape) == tuple(self.latents.shape), shape
        assert dtype == torch.float32, dtype
        latents, self.latents = self.latents, None
        return latents.clone()


class NoiseFeed:
    """Stands in for scheduling_ddpm.randn_tensor: one pre-drawn tensor per call."""

    def __init__(self):
        self.queue = []
        self.used = 0

    def __call__(self, shape, generator=None, device=None, dtype=None, layout=None):
        noise = self.queue.pop(0)
        assert tuple(shape) == tuple(noise.shape), shape
        self.used += 1
        return noise


LATENTS = LatentsFeed()
NOISE = NoiseFeed()
pipeline_dit_module.randn_tensor = LATENTS
ddpm_module.randn_tensor = NOISE


@torch.no_grad()
def pipeline_goldens(pipe):
    folder_config = pipe.scheduler.config
    folder_scheduler = pipe.scheduler
    tensors, cases = {}, []
    for i, (name, c) in enumerate(CASES):
        our_name, cls, overrides = c["scheduler"]
        if cls is None:
            scheduler = folder_scheduler
        else:
            scheduler = cls.from_config(folder_config, **overrides)
        pipe.scheduler = scheduler
        if "names" in c:
            labels = pipe.get_label_ids(c["names"])
        else:
            labels = c["labels"]
        batch = len(labels)
        cfg = c["guidance"] > 1
        gen = torch.Generator().manual_seed(2000 + i)
        latents = torch.randn(batch, 4, 16, 16, generator=gen)
        noise = None
        if isinstance(scheduler, DDPMScheduler):
            noise = torch.randn(c["steps"], 2 * batch if cfg else batch, 4, 16, 16, generator=gen)
            NOISE.queue = list(noise)
            NOISE.used = 0

        prevs = []
        original_step = scheduler.step

        def recording_step(model_output, timestep, sample, *args, **kwargs):
            assert model_output.shape[1] == 4  # the variance half never reaches the scheduler
            out = original_step(model_output, timestep, sample, *args, **kwargs)
            prevs.append(out.prev_sample.clone())
            return out

        decoded_inputs = []
        original_decode = pipe.vae.decode

        def recording_decode(z, *args, **kwargs):
            decoded_inputs.append(z.clone())
            return original_decode(z, *args, **kwargs)

        scheduler.step = recording_step
        pipe.vae.decode = recording_decode
        LATENTS.latents = latents
        try:
            image = pipe(class_labels=labels, guidance_scale=c["guidance"], num_inference_steps=c["steps"],
                         output_type="np").images
        finally:
            del scheduler.step
            del pipe.vae.decode
        assert LATENTS.latents is None, "starting latents not drawn"
        if noise is not None:
            nonzero = sum(1 for t in scheduler.timesteps if int(t) > 0)
            assert NOISE.used == nonzero and len(NOISE.queue) == c["steps"] - nonzero, (NOISE.used, nonzero)

        last = prevs[-1]
        out = last[:batch]
        if cfg:
            # Deterministic schedulers keep the two halves equal; DDPM's noise differs per row.
            if noise is None:
                assert torch.equal(last[:batch], last[batch:]), name
        assert len(prevs) == len(scheduler.timesteps) == c["steps"]
        assert torch.isfinite(out).all() and float(out.std()) > 0.1, name
        assert len(decoded_inputs) == 1
        assert torch.equal(decoded_inputs[0], 1 / pipe.vae.config.scaling_factor * out)
        image_nchw = torch.from_numpy(np.ascontiguousarray(image)).permute(0, 3, 1, 2).contiguous()
        expected = (original_decode(1 / pipe.vae.config.scaling_factor * out).sample / 2 + 0.5).clamp(0, 1)
        assert torch.equal(image_nchw, expected), name

        tensors[f"{name}.latents_in"] = latents
        tensors[f"{name}.latents_out"] = out.contiguous()
        if noise is not None:
            tensors[f"{name}.noise"] = noise
        if c.get("output") == "image":
            tensors[f"{name}.image_out"] = image_nchw
        entry = {
            "name": name,
            "class_labels": list(labels),
        }
        if "names" in c:
            entry["label_names"] = c["names"]
        entry.update(
            guidance_scale=c["guidance"],
            cfg=cfg,
            steps=c["steps"],
            scheduler=our_name,
            scheduler_class=type(scheduler).__name__,
            scheduler_from="folder" if cls is None else "from_config",
            config_overrides=overrides,
            timesteps=[float(t) for t in scheduler.timesteps],
            init_noise_sigma=float(scheduler.init_noise_sigma),
            output="image" if c.get("output") == "image" else "latent",
            noise=noise is not None,
        )
        if isinstance(scheduler, EulerDiscreteScheduler):
            entry["note"] = (f"DiTPipeline starts from the unscaled latents although init_noise_sigma is "
                             f"{float(scheduler.init_noise_sigma):.4f}; scale_model_input is applied each step")
        cases.append(entry)
        print(f"{name}: labels {labels}, {type(scheduler).__name__}, latents_out std {float(out.std()):.3f}")

    pipe.scheduler = folder_scheduler
    outs = [tensors[f"{n}.latents_out"] for n, _ in CASES]
    for a in range(len(outs)):
        for b in range(a + 1, len(outs)):
            if outs[a].shape == outs[b].shape:
                assert not torch.allclose(outs[a], outs[b], atol=1e-3), (CASES[a][0], CASES[b][0])
    return tensors, cases


def label_checks(pipe):
    """How DiTPipeline maps names to ids (get_label_ids), pinned for the TS side."""
    ids = pipe.get_label_ids(["tench", "Tinca tinca", "goldfish", "Carassius auratus", "golden retriever",
                              "otter", "toilet paper", "class 2", "crane", "twin"])
    # "twin" is on ids 9 and 10. The dict is built in the file's key order ("0", "1", "10", ...,
    # "9", ...), later entries overwriting earlier ones, so 9 wins: JavaScript objects would
    # iterate integer-like keys numerically and give 10.
    assert ids == [0, 0, 1, 1, 207, 360, 999, 2, 517, 9], ids
    for bad in (["golden  retriever"], ["Golden retriever"], ["tench "], ["class 1000"]):
        try:
            pipe.get_label_ids(bad)
        except ValueError:
            pass
        else:
            raise AssertionError(bad)
    return ids


def save_goldens(path, tensors):
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    for k, v in tensors.items():
        assert v.dtype in (torch.float32, torch.int64), (k, v.dtype)
    save_file(tensors, path)  # no metadata: its key order in the header is not stable between runs
    os.chmod(path, 0o644)


def main():
    torch.set_num_threads(1)
    diffusers_logging.set_verbosity_error()
    legacy = build_folder()
    pipe = DiTPipeline.from_pretrained(FOLDER, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    loaded = dict(pipe.scheduler.config)
    for k, v in HUB_SCHEDULER.items():
        assert loaded[k] == v, (k, loaded[k], v)
    assert loaded["timestep_spacing"] == "leading"

    os.makedirs(OUT, exist_ok=True)
    save_goldens(os.path.join(OUT, "tiny-dit-transformer.safetensors"), transformer_goldens(legacy, pipe))
    resolved = label_checks(pipe)
    tensors, cases = pipeline_goldens(pipe)
    save_goldens(os.path.join(OUT, "tiny-dit-pipelines.safetensors"), tensors)
    index = {
        "diffusers_version": __import__("diffusers").__version__,
        "fixture": "test/fixtures/tiny-dit",
        "notes": NOTES,
        "label_lookup": {
            "rule": "DiTPipeline.__init__ splits every id2label value on ',' and strips each piece; "
            "name -> id, case-sensitive, exact; a name on several ids resolves to the one met last "
            "in model_index.json's key order (string-sorted: '0', '1', '10', '100', ..., '9', ...). "
            "get_label_ids needs a list: a bare string is split into characters by list(label).",
            "names": ["tench", "Tinca tinca", "goldfish", "Carassius auratus", "golden retriever", "otter",
                      "toilet paper", "class 2", "crane", "twin"],
            "ids": resolved,
            "rejected": ["golden  retriever", "Golden retriever", "tench ", "class 1000"],
        },
        "cases": cases,
    }
    with open(os.path.join(OUT, "tiny-dit-pipelines.json"), "w") as f:
        json.dump(index, f, indent=1)
        f.write("\n")
    total = 0
    for root, _, files in os.walk(FOLDER):
        total += sum(os.path.getsize(os.path.join(root, p)) for p in files)
    print(f"wrote {FOLDER} ({total / 1e6:.2f} MB) and {OUT}")


if __name__ == "__main__":
    main()
