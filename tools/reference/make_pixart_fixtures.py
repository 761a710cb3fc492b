"""Build tiny PixArt-α / PixArt-Σ fixtures and their goldens with diffusers itself.

    source /work/refenv/env.sh && python tools/reference/make_pixart_fixtures.py [--spiece PATH]

About 20 s on one thread. Writes only these paths, and rerunning rewrites the same bytes on the
same machine (seeded, one torch thread, goldens without safetensors metadata):
- test/fixtures/tiny-pixart-alpha/  a real PixArtAlphaPipeline.save_pretrained folder (seeds 300,
  301, 302 for transformer, T5, VAE); tokenizer/ holds spiece.model, tokenizer_config.json and
  special_tokens_map.json (no tokenizer.json) as the Hub's PixArt folders ship it (tokenizer/ is
  a link to assets/t5-tokenizer, which the benchmarks' random-weight PixArt folders copy too);
- test/fixtures/tiny-pixart-sigma/  a real PixArtSigmaPipeline.save_pretrained folder (seeds 400,
  401, 402), made to look like the published Σ folders: the transformer is saved by diffusers'
  legacy `Transformer2DModel` class (its config keeps that `_class_name` and the legacy keys;
  diffusers loads it as PixArtTransformer2DModel), the T5 encoder is a 2-shard checkpoint in the
  layout transformers 4.x wrote (see write_text_encoder_4x), the tokenizer is tokenizer.json +
  tokenizer_config.json exactly as transformers 5 saves them;
- test/fixtures/goldens/pixart/  (fp32 tensors; int64 for token ids and attention masks)
  - t5-tokens.json: special ids and, per prompt, `ids` (untruncated, with </s>), `max_120` /
    `max_300` (input_ids + attention_mask as the pipelines call the tokenizer:
    padding="max_length", truncation=True), `preprocessed` (= Python's prompt.lower().strip(), what
    the pipelines tokenize) and its untruncated `preprocessed_ids`, and `slow_ids` (reference only).
    The α folder's tokenizer (from spiece.model) and the σ folder's (from tokenizer.json) are
    asserted identical on every field;
  - <fixture>-text_encoder.safetensors: input_ids / attention_mask [2, 120] (a prompt that fills
    120 tokens, a short padded one) and last_hidden_state [2, 120, 32] computed with the mask;
  - <fixture>-transformer.safetensors: hidden_states [2, 4, 32, 32], encoder_hidden_states
    [2, 120, 32], encoder_attention_mask [2, 120] (row 1 padded after 17), timestep [999, 301]
    → out [2, 8, 32, 32]; hidden_states_nonsquare [2, 4, 24, 40] → out_nonsquare. α also has
    resolution [2, 2] / aspect_ratio [2, 1] built as the pipeline builds them (pixel height, width;
    height / width) for each size, and resolution_mixed / aspect_ratio_mixed (rows that differ)
    → out_mixed;
  - <fixture>-pipelines.{safetensors,json}: end-to-end cases run from fixed `latents_in`
    (`latents=`, already at the generated size) to `latents_out` (final latents, before VAE
    scaling) and, for image cases, `image_out` [B, 3, H, W] in [0, 1] (output_type="pt"). The JSON
    lists per case: prompt, negative_prompt (null = not passed: the pipelines then use ""), steps,
    guidance_scale, scheduler ("dpm++2m" = the folder's, "ddim" / "euler" / "pndm" =
    XScheduler.from_config(folder config) with no overrides), height, width, max_sequence_length,
    use_resolution_binning, output, num_images_per_prompt, generated size, timesteps,
    init_noise_sigma and, for α, the micro-conditions the pipeline passed.
Every golden is computed from the pipeline loaded back from its folder with `from_pretrained`.

T5 vocabulary: the real T5 (v1.1) sentencepiece model, 32,000 pieces, 791,656 bytes, sha256
d60acb128cf7b7f2536e8f38a5b18a05535c9e14c7a355904270e15b0945ea86, read with `git show` from the
repository lllyasviel/stable-diffusion-webui-forge, commit
dfdcbab685e57677014f05a3309b48cc87383167, path
backend/huggingface/stabilityai/stable-diffusion-3-medium-diffusers/tokenizer_3/spiece.model
(bring the mirror to /work/.mirror/lllyasviel+stable-diffusion-webui-forge/repo with the search
tool's `fetch github:lllyasviel/stable-diffusion-webui-forge`), or from --spiece PATH. The α
folder's tokenizer_config.json / special_tokens_map.json are that directory's files (what
transformers 4.41's T5Tokenizer saved: legacy true, 100 extra ids with lstrip/rstrip,
model_max_length 512); without the mirror the script writes the same content itself.

Scheduler (both fixtures): `DPMSolverMultistepScheduler()` with its defaults. That is what
diffusers' scripts/convert_pixart_alpha_to_diffusers.py and convert_pixart_sigma_to_diffusers.py
build and what PixArt-alpha/PixArt-XL-2-1024-MS and PixArt-Sigma-XL-2-1024-MS ship (their
scheduler_config.json, diffusers 0.22: dpmsolver++, solver_order 2, midpoint, linear betas
0.0001..0.02, epsilon, timestep_spacing "linspace", steps_offset 0, lower_order_final true,
euler_at_final false, lambda_min_clipped -Infinity, variance_type null); diffusers 0.40 adds its
newer keys with their defaults. `-Infinity` is written as Python's json writes it (not standard
JSON).

Prompts: always clean_caption=False (diffusers' clean_caption needs bs4 + ftfy). The pipelines then
preprocess every prompt and negative prompt with Python's `text.lower().strip()` and nothing else;
the TypeScript side does the same.

Sizes, and where they differ from the obvious choice because diffusers requires it:
- T5EncoderModel: vocab 32128, d_model 32, d_kv 8, 4 heads, d_ff 48, 2 layers, 32 buckets / max
  distance 128, gated-gelu (dense_act_fn gelu_new, the tanh approximation), eps 1e-6.
- Transformer: patch 2, 4 → 8 channels (learned sigma), 2 layers, 2 heads × 24 = inner dim 48 (not
  2 × 16 = 32: with use_additional_conditions the size embedding is inner_dim // 3 wide per value,
  resolution gives two values and aspect ratio one, and they are added to the inner_dim-wide
  timestep embedding, so inner_dim must be divisible by 3), cross_attention_dim 48,
  caption_channels 32, ada_norm_single, no norm affine, eps 1e-6, gelu-approximate, 1000 embeds.
- tiny-pixart-alpha: sample_size 128 (not 32) and use_additional_conditions true, as
  PixArt-XL-2-1024-MS: PixArtAlphaPipeline builds the resolution / aspect-ratio micro-conditions
  only when `transformer.config.sample_size == 128` and passes None otherwise, which a model with
  use_additional_conditions cannot take. interpolation_scale stays null (→ max(128 // 64, 1) = 2).
  Binning then uses ASPECT_RATIO_1024_BIN: its `binned-latent` case (256×192 → generated at
  1152×896) stops at the latents, with CFG off, because decoding 1152×896 with the tiny VAE takes
  seconds; its `image` case decodes 256×192 without binning.
- tiny-pixart-sigma: sample_size 32 (ASPECT_RATIO_256_BIN), use_additional_conditions false,
  interpolation_scale 2; `image-binned` generates 256×192 at 288×224, decodes, resizes to 256×199
  (bilinear, no antialias) and center-crops to 256×192.
- VAE: make_fixtures.py's tiny AutoencoderKL; scaling_factor 0.18215 (α), 0.13025 (Σ, SDXL's).
Every parameter is overwritten after construction (see randomize): norm scales 1 + 0.1·randn,
biases and scale_shift_tables 0.1·randn, matrices / kernels randn / sqrt(fan_in); T5's token
embedding 0.01·randn (so its first RMSNorm sees mean(x²) ≈ 1e-4 and a wrong epsilon shows) and
relative attention bias 0.5·randn.

What to expect from the goldens: the random transformer does not predict the noise, and with
PixArt's linear betas sqrt(alphas_cumprod[999]) ≈ 0.0064, so the x0 estimates, and the final
latents, reach |x| ≈ 1000-2000; compare relative to max |x|. A 1e-6 relative perturbation of every
transformer output moves the final latents by about 5e-6 of max |x|, except "ddim" (DDIM built
from this config has clip_sample true): about 3e-4 of its max |x| = 1.
"""

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import sentencepiece as spm
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    PixArtAlphaPipeline,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
    PNDMScheduler,
    Transformer2DModel,
)
from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import (
    ASPECT_RATIO_256_BIN,
    ASPECT_RATIO_512_BIN,
    ASPECT_RATIO_1024_BIN,
)
from safetensors.torch import save_file
from transformers import T5Config, T5EncoderModel, T5Tokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import FIXTURES, ROOT, VAE_CONFIG  # noqa: E402  (the SD fixtures' tiny VAE)

GOLDENS = os.path.join(FIXTURES, "goldens", "pixart")
FORGE_MIRROR = "/work/.mirror/lllyasviel+stable-diffusion-webui-forge/repo"
FORGE_COMMIT = "dfdcbab685e57677014f05a3309b48cc87383167"
T5_TOKENIZER_DIR = "backend/huggingface/stabilityai/stable-diffusion-3-medium-diffusers/tokenizer_3"
SPIECE_SHA256 = "d60acb128cf7b7f2536e8f38a5b18a05535c9e14c7a355904270e15b0945ea86"

# transformers' T5EncoderModel, shared by both fixtures (T5 v1.1: gated-gelu = gelu_new gates).
T5_CONFIG = dict(
    vocab_size=32128,
    d_model=32,
    d_kv=8,
    num_heads=4,
    d_ff=48,
    num_layers=2,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu",
    layer_norm_epsilon=1e-6,
)

TRANSFORMER_BASE = dict(
    patch_size=2,
    in_channels=4,
    out_channels=8,  # learned sigma: the pipeline keeps the first 4 channels
    num_layers=2,
    num_attention_heads=2,
    attention_head_dim=24,
    cross_attention_dim=48,
    caption_channels=32,  # = T5 d_model
    attention_bias=True,
    norm_type="ada_norm_single",
    norm_elementwise_affine=False,
    norm_eps=1e-6,
    activation_fn="gelu-approximate",
    num_embeds_ada_norm=1000,
)

FIXTURE_SPECS = {
    "tiny-pixart-alpha": dict(
        seed=300,  # transformer 300, text encoder 301, vae 302
        pipeline=PixArtAlphaPipeline,
        transformer_class=PixArtTransformer2DModel,
        transformer=dict(sample_size=128, use_additional_conditions=True),
        scaling_factor=0.18215,
        max_sequence_length=120,
    ),
    "tiny-pixart-sigma": dict(
        seed=400,
        pipeline=PixArtSigmaPipeline,
        transformer_class=Transformer2DModel,  # legacy class: saved as such, loaded as PixArt's
        transformer=dict(sample_size=32, use_additional_conditions=False, interpolation_scale=2),
        scaling_factor=0.13025,
        max_sequence_length=300,
    ),
}

# ---------------------------------------------------------------------------------------------
# Prompts for t5-tokens.json: each pins a behaviour of the T5 tokenizer (or of the pipelines'
# lower().strip()).
LONG_PROMPT = (
    "A breathtaking panoramic view of an ancient walled city perched on a cliff above a turquoise "
    "sea at golden hour, with terracotta roofs, narrow winding alleys, lanterns glowing in arched "
    "windows, fishing boats bobbing in the harbour, gulls circling over the lighthouse, a crowded "
    "market square full of spice stalls, silk banners, street musicians and children chasing "
    "pigeons, cypress trees on the hills, vineyards in terraces, a stone bridge over a waterfall, "
    "distant snow-capped mountains under dramatic cumulus clouds, volumetric god rays, intricate "
    "architectural details, weathered textures, reflections on wet cobblestones after a summer "
    "rain, cinematic composition, ultra wide angle lens, depth of field, photorealistic, highly "
    "detailed, 8k resolution, trending on artstation, masterpiece by a renowned matte painter. "
) * 3

PROMPTS = [
    "",
    "a photo of a cat",
    "a photo of an astronaut riding a horse on mars",
    "x",
    "Hello, world! How are you? (yes) [no] {maybe} ... --- ;: \"quoted\" 'single'",
    "3 cats and 1024 dogs in 2023, pi is 3.14159, 1,000,000 and the 42nd of 7/8",
    "lots   of      spaces    between     words",
    "   leading and trailing whitespace   ",
    "tab\tseparated\tand\nnew\nlines\r\nand crlf\n",
    "caf\u00e9 r\u00e9sum\u00e9 na\u00efve \u00c5ngstr\u00f6m se\u00f1or",
    "cafe\u0301 re\u0301sume\u0301 nai\u0308ve A\u030angstro\u0308m sen\u0303or",
    "\uff21\uff22\uff23\uff11\uff12\uff13 \uff46\uff55\uff4c\uff4c\uff57\uff49\uff44\uff54\uff48\uff01 "
    "\uff76\uff80\uff76\uff85",
    "ligatures \ufb01 \ufb02, x\u00b2 \u2462 \u00bd \u2122 \u2103 \u2160",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 \u4e2d\u6587 \ud55c\uad6d\uc5b4",
    "emoji \U0001f680\U0001f525 and \U0001f468\u200d\U0001f469\u200d\U0001f467 family \u2764\ufe0f",
    "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac \u0438 \u0440\u0443\u0441\u0441\u043a\u0438\u0439 "
    "\u0442\u0435\u043a\u0441\u0442",
    "a </s> b</s>",
    "<extra_id_0> fill in <extra_id_1>.x and <extra_id_99>",
    "upper <EXTRA_ID_0> and <pad> and <unk> typed",
    "THE QUICK BROWN FOX Jumps OVER The Lazy DOG",
    "don't stop, it's fine; we're here, I'M SURE",
    "non\u00a0breaking\u2009thin\u3000ideographic zero\u200bwidth bom\ufeffhere",
    "\u0130STANBUL \u03a3\u0391\u03a3 STRASSE stra\u00dfe",
    " \x85next line and unit separator\x1f ",
    "a_b-c/d\\e|f @user #tag $5 100% a+b=c ~`^ <b>bold</b> &amp;",
    "(masterpiece:1.2), best quality, ((detailed)), [blurry]",
    "\u2019curly\u2019 \u201cquotes\u201d \u2014 dashes \u2013 and \u2026 ellipsis",
    "supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis",
    # One token per "cat": exactly 120 tokens with </s>, then 121 (truncated at 120), then 300.
    " ".join(["cat"] * 119),
    " ".join(["cat"] * 120),
    " ".join(["cat"] * 299),
    LONG_PROMPT,
]

PROMPT = "a small cactus with a happy face in the sahara desert"
NEGATIVE = "blurry, low quality"
PIPE_LONG = " ".join(["a very long prompt that keeps going and going"] * 40)  # > 300 tokens


def pipeline_cases(spec):
    """(name, settings) of the end-to-end cases for one fixture."""
    base = dict(prompt=PROMPT, negative_prompt=None, steps=6, guidance_scale=4.5, scheduler="dpm++2m",
                height=256, width=256, max_sequence_length=spec["max_sequence_length"],
                use_resolution_binning=False, output="latent", num_images_per_prompt=1)
    cases = [
        ("dpm++2m-negative", dict(negative_prompt=NEGATIVE, steps=8)),
        ("dpm++2m", dict()),
        ("ddim", dict(scheduler="ddim", negative_prompt=NEGATIVE)),
        ("euler", dict(scheduler="euler", negative_prompt=NEGATIVE)),
        ("pndm", dict(scheduler="pndm")),
        ("long-prompt", dict(prompt=PIPE_LONG)),
        ("no-cfg", dict(guidance_scale=1.0)),
        ("batch2", dict(prompt=[PROMPT, "A Red Circle on a white background"],
                        negative_prompt=[NEGATIVE, ""], num_images_per_prompt=2, scheduler="euler")),
        ("non-square", dict(height=192, width=320, negative_prompt=NEGATIVE)),
    ]
    if spec["max_sequence_length"] != 120:
        cases.append(("max-seq-120", dict(prompt=PIPE_LONG, max_sequence_length=120)))
    if spec["transformer"]["sample_size"] == 128:
        # ASPECT_RATIO_1024_BIN: 256×192 is generated at 1152×896 (latents 144×112). Decoding
        # that with the tiny VAE takes seconds, so this case stops at the latents (CFG off to
        # halve the cost); the image case decodes an unbinned size, and Σ's binned image case
        # covers resize-and-crop.
        cases.append(("binned-latent", dict(height=256, width=192, use_resolution_binning=True,
                                            guidance_scale=1.0)))
        cases.append(("image", dict(height=256, width=192, output="image", negative_prompt=NEGATIVE)))
    else:
        # ASPECT_RATIO_256_BIN: 256×192 is generated at 288×224, decoded, resized to 256×199 and
        # center-cropped to 256×192.
        cases.append(("image-binned", dict(height=256, width=192, use_resolution_binning=True, output="image",
                                           negative_prompt=NEGATIVE)))
    return [(name, {**base, **c}) for name, c in cases]


# Our scheduler names → how a diffusers user switches the folder's scheduler.
SCHEDULERS = {
    "dpm++2m": lambda cfg: DPMSolverMultistepScheduler.from_config(cfg),
    "ddim": lambda cfg: DDIMScheduler.from_config(cfg),
    "euler": lambda cfg: EulerDiscreteScheduler.from_config(cfg),
    "pndm": lambda cfg: PNDMScheduler.from_config(cfg),
}


# ---------------------------------------------------------------------------------------------
def git_show(path):
    return subprocess.run(["git", "-C", FORGE_MIRROR, "show", f"{FORGE_COMMIT}:{path}"],
                          check=True, capture_output=True).stdout


def read_vocab_files(spiece_path):
    """(spiece.model bytes, tokenizer_config.json bytes, special_tokens_map.json bytes)."""
    if spiece_path:
        with open(spiece_path, "rb") as f:
            spiece = f.read()
    else:
        spiece = git_show(f"{T5_TOKENIZER_DIR}/spiece.model")
    digest = hashlib.sha256(spiece).hexdigest()
    assert digest == SPIECE_SHA256, f"unexpected spiece.model (sha256 {digest}); is it an LFS pointer?"
    try:
        config = git_show(f"{T5_TOKENIZER_DIR}/tokenizer_config.json")
        special = git_show(f"{T5_TOKENIZER_DIR}/special_tokens_map.json")
    except (OSError, subprocess.CalledProcessError):
        config, special = make_4x_tokenizer_files()
    return spiece, config, special


def make_4x_tokenizer_files():
    """Fallback without the mirror: the same content transformers 4.x's T5Tokenizer saved."""
    extra = [f"<extra_id_{i}>" for i in range(100)]

    def tok(content, strip):
        return {"content": content, "lstrip": strip, "normalized": False, "rstrip": strip,
                "single_word": False, "special": True}

    decoder = {"0": tok("<pad>", False), "1": tok("</s>", False), "2": tok("<unk>", False)}
    for i in range(100):
        decoder[str(32099 - i)] = tok(f"<extra_id_{i}>", True)
    decoder = dict(sorted(decoder.items(), key=lambda kv: int(kv[0])))
    config = {"add_prefix_space": True, "added_tokens_decoder": decoder, "additional_special_tokens": extra,
              "clean_up_tokenization_spaces": True, "eos_token": "</s>", "extra_ids": 100, "legacy": True,
              "model_max_length": 512, "pad_token": "<pad>", "sp_model_kwargs": {},
              "tokenizer_class": "T5Tokenizer", "unk_token": "<unk>"}

    def plain(content):
        return {k: v for k, v in tok(content, False).items() if k != "special"}

    special = {"additional_special_tokens": extra, "eos_token": plain("</s>"), "pad_token": plain("<pad>"),
               "unk_token": plain("<unk>")}
    return (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode(), \
        (json.dumps(special, indent=2, ensure_ascii=False) + "\n").encode()


def write_sentencepiece_folder(dest, vocab):
    spiece, config, special = vocab
    os.makedirs(dest, exist_ok=True)
    for name, data in [("spiece.model", spiece), ("tokenizer_config.json", config),
                       ("special_tokens_map.json", special)]:
        with open(os.path.join(dest, name), "wb") as f:
            f.write(data)


def check_vocab(tokenizer):
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert len(tokenizer) == 32100, len(tokenizer)
    extra = tokenizer.convert_tokens_to_ids([f"<extra_id_{i}>" for i in range(100)])
    assert extra == list(range(32099, 31999, -1)), extra[:3]
    ids = tokenizer("a photo of a cat").input_ids
    assert ids == [3, 9, 1202, 13, 3, 9, 1712, 1], ids


# ---------------------------------------------------------------------------------------------
# The transformers-4.x slow T5Tokenizer (legacy=True), emulated with sentencepiece itself:
# transformers 5 has no sentencepiece-backed T5 tokenizer any more (T5Tokenizer is the
# tokenizers-backed one). Added tokens split the text first (<extra_id_N> eat the whitespace on
# both sides, lstrip/rstrip as 4.x saved them), every other piece goes through
# SentencePieceProcessor.encode, and </s> is appended unless the ids already end with it.
SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"] + [f"<extra_id_{i}>" for i in range(100)]
SPECIAL_IDS = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{f"<extra_id_{i}>": 32099 - i for i in range(100)}}
SPECIAL_RE = re.compile("(" + "|".join(re.escape(t) for t in sorted(SPECIAL_TOKENS, key=len, reverse=True)) + ")")


def slow_t5_ids(sp, text):
    parts = SPECIAL_RE.split(text)
    for i in range(1, len(parts), 2):
        if parts[i].startswith("<extra_id_"):
            parts[i - 1] = parts[i - 1].rstrip()
            parts[i + 1] = parts[i + 1].lstrip()
    ids = []
    for i, part in enumerate(parts):
        if i % 2:
            ids.append(SPECIAL_IDS[part])
        elif part:
            ids.extend(sp.encode(part))
    if not ids or ids[-1] != 1:
        ids.append(1)
    return ids


def tokenize_like_pipeline(tokenizer, text, max_length):
    enc = tokenizer(text, padding="max_length", max_length=max_length, truncation=True, add_special_tokens=True)
    return {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask}


def tokens_golden(tok_alpha, tok_sigma, spiece_bytes):
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(spiece_bytes)
    assert sp.get_piece_size() == 32000
    entries, slow_diffs = [], []
    for prompt in PROMPTS:
        pre = prompt.lower().strip()
        entry = {"prompt": prompt}
        for tok in (tok_alpha, tok_sigma):
            e = {"prompt": prompt, "ids": tok(prompt).input_ids, "preprocessed": pre,
                 "preprocessed_ids": tok(pre).input_ids}
            for n in (120, 300):
                e[f"max_{n}"] = tokenize_like_pipeline(tok, prompt, n)
            if tok is tok_alpha:
                entry = e
            else:
                assert e == entry, f"alpha and sigma tokenizers differ on {prompt!r}"
        slow = slow_t5_ids(sp, prompt)
        entry["slow_ids"] = slow
        entry["slow_matches"] = slow == entry["ids"]
        if slow != entry["ids"]:
            slow_diffs.append(prompt)
        entries.append(entry)
    assert any(len(e["ids"]) > 300 for e in entries)
    assert [len(e["ids"]) for e in entries[-4:-1]] == [120, 121, 300]
    return {
        "source": {"repo": "lllyasviel/stable-diffusion-webui-forge", "commit": FORGE_COMMIT,
                   "path": f"{T5_TOKENIZER_DIR}/spiece.model", "sha256": SPIECE_SHA256},
        "pad_token_id": 0, "eos_token_id": 1, "unk_token_id": 2,
        "sentencepiece_pieces": 32000, "extra_ids": 100, "tokenizer_length": len(tok_alpha),
        "text_encoder_vocab_size": T5_CONFIG["vocab_size"],
        "max_lengths": [120, 300],
        "call": "tokenizer(text, padding='max_length', max_length=N, truncation=True, add_special_tokens=True)",
        "preprocess": "pipelines with clean_caption=False tokenize text.lower().strip() (Python str methods)",
        "slow_ids": "transformers-4.x slow T5Tokenizer (legacy=True) emulated on sentencepiece; "
                    "reference only, the pipelines' tokenizer (ids) is the truth",
        "slow_differs_on": slow_diffs,
        "prompts": entries,
    }, slow_diffs


# ---------------------------------------------------------------------------------------------
def randomize(module, seed, special=None):
    """Overwrite every parameter with seeded values that keep activations O(1).

    1-D weights (norm scales) 1 + 0.1·randn; biases and modulation tables 0.1·randn; matrices
    and convolution kernels randn / sqrt(fan_in); `special` maps a parameter name to its own std.
    """
    special = special or {}
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            r = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            leaf = name.rsplit(".", 1)[-1]
            if name in special:
                value = special[name] * r
            elif leaf == "scale_shift_table":
                value = 0.1 * r
            elif leaf == "bias":
                value = 0.1 * r
            elif p.dim() == 1:
                value = 1.0 + 0.1 * r
            else:
                value = r / math.sqrt(p[0].numel())
            p.copy_(value)


def build_text_encoder(seed):
    torch.manual_seed(seed)
    model = T5EncoderModel(T5Config(**T5_CONFIG)).eval()
    # Small token embeddings: the first RMSNorm then sees mean(x²) ≈ 1e-4, so a wrong epsilon
    # (1e-6 is T5's) shows; the relative position bias is large enough to matter.
    randomize(model, seed, special={
        "shared.weight": 0.01,
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": 0.5,
    })
    assert model.encoder.embed_tokens.weight is model.shared.weight
    return model


def build_transformer(spec):
    seed = spec["seed"]
    torch.manual_seed(seed)
    model = spec["transformer_class"](**TRANSFORMER_BASE, **spec["transformer"]).eval()
    randomize(model, seed)
    return model


def build_vae(spec):
    seed = spec["seed"] + 2
    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE_CONFIG, scaling_factor=spec["scaling_factor"]).eval()
    randomize(vae, seed)
    return vae


def write_json(path, value, **kwargs):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, **kwargs)
        f.write("\n")


def write_tokens_json(path, tokens):
    """Like json.dump(indent=1), but each prompt entry on one line."""
    head = {k: v for k, v in tokens.items() if k != "prompts"}
    text = json.dumps(head, indent=1, ensure_ascii=False)[:-2]
    lines = [json.dumps(e, ensure_ascii=False, separators=(",", ":")) for e in tokens["prompts"]]
    text += ',\n "prompts": [\n  ' + ",\n  ".join(lines) + "\n ]\n}\n"
    assert json.loads(text) == tokens
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_text_encoder_4x(folder, model):
    """Replace transformers 5's single model.safetensors by what transformers 4.x wrote.

    Two shards filled in state-dict order (shared.weight and block 0, then the rest), no
    encoder.embed_tokens.weight (4.x dropped the tied copy), {"format": "pt"} in each shard's
    header, an index with only total_size in its metadata and sorted keys, and a 4.x config.json
    (torch_dtype, is_encoder_decoder true, tie_word_embeddings false as T5 v1.1 ships).
    """
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()
             if k != "encoder.embed_tokens.weight"}
    keys = list(state)
    split = keys.index("encoder.block.1.layer.0.SelfAttention.q.weight")
    shards = [keys[:split], keys[split:]]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for f in os.listdir(folder):
        if f.endswith(".safetensors") or f.endswith(".index.json"):
            os.remove(os.path.join(folder, f))
    weight_map = {}
    for name, shard in zip(names, shards):
        save_file({k: state[k] for k in shard}, os.path.join(folder, name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    total = sum(v.numel() * v.element_size() for v in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")

    with open(os.path.join(folder, "config.json")) as f:
        config5 = json.load(f)
    config = {
        "architectures": ["T5EncoderModel"],
        "classifier_dropout": 0.0,
        "d_ff": config5["d_ff"],
        "d_kv": config5["d_kv"],
        "d_model": config5["d_model"],
        "decoder_start_token_id": 0,
        "dense_act_fn": config5["dense_act_fn"],
        "dropout_rate": config5["dropout_rate"],
        "eos_token_id": 1,
        "feed_forward_proj": config5["feed_forward_proj"],
        "initializer_factor": 1.0,
        "is_encoder_decoder": True,
        "is_gated_act": config5["is_gated_act"],
        "layer_norm_epsilon": config5["layer_norm_epsilon"],
        "model_type": "t5",
        "num_decoder_layers": config5["num_decoder_layers"],
        "num_heads": config5["num_heads"],
        "num_layers": config5["num_layers"],
        "output_past": True,
        "pad_token_id": 0,
        "relative_attention_max_distance": config5["relative_attention_max_distance"],
        "relative_attention_num_buckets": config5["relative_attention_num_buckets"],
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.41.2",
        "use_cache": True,
        "vocab_size": config5["vocab_size"],
    }
    with open(os.path.join(folder, "config.json"), "w") as f:
        f.write(json.dumps(config, indent=2, sort_keys=True) + "\n")


def build_fixture(name, spec, vocab):
    seed = spec["seed"]
    transformer = build_transformer(spec)
    text_encoder = build_text_encoder(seed + 1)
    vae = build_vae(spec)
    with tempfile.TemporaryDirectory() as tmp:
        write_sentencepiece_folder(tmp, vocab)
        tokenizer = T5Tokenizer.from_pretrained(tmp)
    check_vocab(tokenizer)
    scheduler = DPMSolverMultistepScheduler()  # = PixArt's published scheduler config
    pipe = spec["pipeline"](tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                            scheduler=scheduler)
    out = os.path.join(FIXTURES, name)
    shutil.rmtree(out, ignore_errors=True)
    pipe.save_pretrained(out, safe_serialization=True)
    if name == "tiny-pixart-alpha":
        # Hub PixArt folders ship the sentencepiece model, not tokenizer.json.
        tok_dir = os.path.join(out, "tokenizer")
        shutil.rmtree(tok_dir)
        write_sentencepiece_folder(tok_dir, vocab)
    else:
        write_text_encoder_4x(os.path.join(out, "text_encoder"), text_encoder)
        # The tokenizer folder stays exactly as transformers 5 saves it (tokenizer.json and a
        # tokenizer_config.json that even records "is_local" / "local_files_only").
        assert not os.path.exists(os.path.join(out, "tokenizer", "spiece.model"))
    return out, pipe


# ---------------------------------------------------------------------------------------------
def save_goldens(path, tensors):
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    for k, v in tensors.items():
        assert v.dtype in (torch.float32, torch.int64), (k, v.dtype)
        assert torch.isfinite(v.float()).all(), k
    save_file(tensors, path)  # no metadata: its key order in the header is not stable


def check_loaded(name, folder, pipe, built):
    """The loaded folder holds the same model as the one built in memory."""
    tr = pipe.transformer
    assert type(tr) is PixArtTransformer2DModel, type(tr)
    with open(os.path.join(folder, "transformer", "config.json")) as f:
        tconf = json.load(f)
    with open(os.path.join(folder, "model_index.json")) as f:
        index = json.load(f)
    if name == "tiny-pixart-sigma":
        assert tconf["_class_name"] == "Transformer2DModel" and index["transformer"][1] == "Transformer2DModel"
        te_files = sorted(os.listdir(os.path.join(folder, "text_encoder")))
        assert te_files == ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                            "model.safetensors.index.json"], te_files
        assert sorted(os.listdir(os.path.join(folder, "tokenizer"))) == ["tokenizer.json", "tokenizer_config.json"]
    else:
        assert sorted(os.listdir(os.path.join(folder, "tokenizer"))) == [
            "special_tokens_map.json", "spiece.model", "tokenizer_config.json"]
    for part in ("transformer", "text_encoder", "vae"):
        a, b = getattr(built, part).state_dict(), getattr(pipe, part).state_dict()
        assert sorted(a) == sorted(b), part
        assert all(torch.equal(a[k], b[k]) for k in a), part
    check_vocab(pipe.tokenizer)
    # The model built in memory (for Σ the legacy Transformer2DModel class, whose forward orders
    # some float ops differently) and the PixArtTransformer2DModel loaded back agree.
    g = torch.Generator().manual_seed(1)
    x, e = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 7, 32, generator=g)
    cond = {"resolution": torch.tensor([[128.0, 128.0]]), "aspect_ratio": torch.tensor([[1.0]])}
    t = torch.tensor([500.0])
    with torch.no_grad():
        a = built.transformer(x, encoder_hidden_states=e, timestep=t, added_cond_kwargs=cond).sample
        b = tr(x, encoder_hidden_states=e, timestep=t, added_cond_kwargs=cond).sample
    diff = (a - b).abs().max().item()
    assert diff < 1e-5, diff
    print(f"  built {type(built.transformer).__name__} vs loaded {type(tr).__name__}: max |diff| {diff:.2e}")


@torch.no_grad()
def text_encoder_goldens(name, pipe):
    prompts = [PIPE_LONG.lower(), "a photo of a cat"]
    enc = pipe.tokenizer(prompts, padding="max_length", max_length=120, truncation=True,
                         add_special_tokens=True, return_tensors="pt")
    assert enc.attention_mask[0].all() and not enc.attention_mask[1].all()
    hidden = pipe.text_encoder(enc.input_ids, attention_mask=enc.attention_mask)[0]
    # The mask matters: without it the padded row changes.
    unmasked = pipe.text_encoder(enc.input_ids)[0]
    assert (unmasked[1] - hidden[1]).abs().max() > 1e-2
    std = hidden.std().item()
    assert 0.2 < std < 5, std
    save_goldens(os.path.join(GOLDENS, f"{name}-text_encoder.safetensors"), {
        "input_ids": enc.input_ids.to(torch.int64),
        "attention_mask": enc.attention_mask.to(torch.int64),
        "last_hidden_state": hidden,
    })
    print(f"  text encoder: last_hidden_state std {std:.3f}, max |x| {hidden.abs().max():.3f}")


@torch.no_grad()
def transformer_goldens(name, pipe):
    tr = pipe.transformer
    g = torch.Generator().manual_seed(5000)
    hidden = torch.randn(2, 4, 32, 32, generator=g)
    enc = torch.randn(2, 120, 32, generator=g)
    mask = torch.ones(2, 120, dtype=torch.int64)
    mask[1, 17:] = 0
    timestep = torch.tensor([999.0, 301.0])
    hidden_ns = torch.randn(2, 4, 24, 40, generator=g)
    tensors = {"hidden_states": hidden, "encoder_hidden_states": enc, "encoder_attention_mask": mask,
               "timestep": timestep, "hidden_states_nonsquare": hidden_ns}

    def cond(h, w, rows=None):
        if not tr.config.use_additional_conditions:
            return {"resolution": None, "aspect_ratio": None}
        rows = rows or [(h, w)] * 2
        return {"resolution": torch.tensor([[float(a), float(b)] for a, b in rows]),
                "aspect_ratio": torch.tensor([[float(a / b)] for a, b in rows])}

    def run(x, c):
        return tr(x, encoder_hidden_states=enc, encoder_attention_mask=mask, timestep=timestep,
                  added_cond_kwargs=c).sample

    c = cond(256, 256)
    tensors["out"] = run(hidden, c)
    c_ns = cond(192, 320)
    tensors["out_nonsquare"] = run(hidden_ns, c_ns)
    if tr.config.use_additional_conditions:
        tensors["resolution"], tensors["aspect_ratio"] = c["resolution"], c["aspect_ratio"]
        tensors["resolution_nonsquare"] = c_ns["resolution"]
        tensors["aspect_ratio_nonsquare"] = c_ns["aspect_ratio"]
        # Rows that differ, so a mixed-up batch order in the size embedding shows.
        c_mixed = cond(0, 0, rows=[(1024, 768), (512, 2048)])
        tensors["resolution_mixed"], tensors["aspect_ratio_mixed"] = c_mixed["resolution"], c_mixed["aspect_ratio"]
        tensors["out_mixed"] = run(hidden, c_mixed)
        assert (tensors["out_mixed"] - tensors["out"]).abs().max() > 1e-2
    # Sanity: padding and timestep both matter, outputs are O(1) and not degenerate.
    unmasked = tr(hidden, encoder_hidden_states=enc, timestep=timestep, added_cond_kwargs=c).sample
    assert (unmasked[1] - tensors["out"][1]).abs().max() > 1e-2
    assert (unmasked[0] - tensors["out"][0]).abs().max() < 1e-5
    for k in ("out", "out_nonsquare"):
        std = tensors[k].std().item()
        assert 0.2 < std < 10, (k, std)
        per_channel = tensors[k].std(dim=(0, 2, 3))
        assert per_channel.min() > 0.05, per_channel
    save_goldens(os.path.join(GOLDENS, f"{name}-transformer.safetensors"), tensors)
    print(f"  transformer: out std {tensors['out'].std():.3f}, out_nonsquare std "
          f"{tensors['out_nonsquare'].std():.3f}, max |x| {tensors['out'].abs().max():.3f}")


def binned_size(pipe, height, width):
    size = pipe.transformer.config.sample_size
    table = {128: ASPECT_RATIO_1024_BIN, 64: ASPECT_RATIO_512_BIN, 32: ASPECT_RATIO_256_BIN}[size]
    return pipe.image_processor.classify_height_width_bin(height, width, ratios=table)


@torch.no_grad()
def run_case(pipe, base_config, c, latents):
    pipe.scheduler = SCHEDULERS[c["scheduler"]](base_config)
    final = {}

    def grab(step, t, lat):
        final["latents"] = lat.clone()

    out = pipe(
        prompt=c["prompt"], negative_prompt=c["negative_prompt"] if c["negative_prompt"] is not None else "",
        num_inference_steps=c["steps"], guidance_scale=c["guidance_scale"], height=c["height"],
        width=c["width"], num_images_per_prompt=c["num_images_per_prompt"], latents=latents.clone(),
        output_type="latent" if c["output"] == "latent" else "pt", clean_caption=False,
        use_resolution_binning=c["use_resolution_binning"], max_sequence_length=c["max_sequence_length"],
        callback=grab, callback_steps=1,
    ).images
    return out, final["latents"]


def pipeline_goldens(name, spec, pipe):
    base_config = pipe.scheduler.config
    tensors, index = {}, []
    for i, (case, c) in enumerate(pipeline_cases(spec)):
        t0 = time.time()
        prompts = c["prompt"] if isinstance(c["prompt"], list) else [c["prompt"]]
        batch = len(prompts) * c["num_images_per_prompt"]
        gen_h, gen_w = c["height"], c["width"]
        if c["use_resolution_binning"]:
            gen_h, gen_w = binned_size(pipe, c["height"], c["width"])
        generator = torch.Generator().manual_seed(6000 + 100 * (spec["seed"] // 100) + i)
        latents = torch.randn(batch, 4, gen_h // 8, gen_w // 8, generator=generator)
        out, last = run_case(pipe, base_config, c, latents)
        out2, last2 = run_case(pipe, base_config, c, latents)
        identical = torch.equal(out, out2) and torch.equal(last, last2)
        assert identical, case
        tensors[f"{case}.latents_in"] = latents
        tensors[f"{case}.latents_out"] = last
        if c["output"] == "latent":
            assert torch.equal(out, last)
        else:
            assert out.shape == (batch, 3, c["height"], c["width"]), out.shape
            assert 0 <= out.min() and out.max() <= 1
            frac = ((out == 0) | (out == 1)).float().mean().item()
            assert frac < 0.2, f"image mostly clipped ({frac:.2f})"
            tensors[f"{case}.image_out"] = out
        assert torch.isfinite(last).all() and last.std() > 0.05
        entry = dict(
            name=case, prompt=c["prompt"], negative_prompt=c["negative_prompt"], steps=c["steps"],
            guidance_scale=c["guidance_scale"], scheduler=c["scheduler"], height=c["height"], width=c["width"],
            max_sequence_length=c["max_sequence_length"], use_resolution_binning=c["use_resolution_binning"],
            output=c["output"], num_images_per_prompt=c["num_images_per_prompt"],
            generated_height=gen_h, generated_width=gen_w, latents_shape=list(latents.shape),
            timesteps=[float(t) for t in pipe.scheduler.timesteps],
            init_noise_sigma=float(pipe.scheduler.init_noise_sigma),
            tensors=[k for k in tensors if k.startswith(case + ".")],
        )
        if pipe.transformer.config.sample_size == 128:
            entry["micro_conditions"] = {"resolution": [float(gen_h), float(gen_w)],
                                         "aspect_ratio": float(gen_h / gen_w)}
        index.append(entry)
        out_name = "image_out" if c["output"] == "image" else "latents_out"
        print(f"  {case:17s} {c['scheduler']:8s} {tuple(latents.shape)} → {out_name} max |x| "
              f"{out.abs().max():.4f} (latents_out max |x| {last.abs().max():.3f}), second run "
              f"{'bit-identical' if identical else 'DIFFERENT'}, {time.time() - t0:.2f} s")
    save_goldens(os.path.join(GOLDENS, f"{name}-pipelines.safetensors"), tensors)
    write_json(os.path.join(GOLDENS, f"{name}-pipelines.json"), index, indent=1, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spiece", help=f"path to T5's spiece.model (default: git show from {FORGE_MIRROR})")
    args = parser.parse_args()
    torch.set_num_threads(1)
    vocab = read_vocab_files(args.spiece)
    os.makedirs(GOLDENS, exist_ok=True)

    loaded = {}
    for name, spec in FIXTURE_SPECS.items():
        t0 = time.time()
        folder, built = build_fixture(name, spec, vocab)
        pipe = spec["pipeline"].from_pretrained(folder, torch_dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        check_loaded(name, folder, pipe, built)
        loaded[name] = pipe
        print(f"wrote {os.path.relpath(folder, ROOT)} ({time.time() - t0:.1f} s)")

    tokens, slow_diffs = tokens_golden(loaded["tiny-pixart-alpha"].tokenizer, loaded["tiny-pixart-sigma"].tokenizer,
                                       vocab[0])
    write_tokens_json(os.path.join(GOLDENS, "t5-tokens.json"), tokens)
    print(f"t5-tokens.json: {len(PROMPTS)} prompts; slow (4.x) tokenizer differs on {len(slow_diffs)}: "
          + "; ".join(repr(p[:40]) for p in slow_diffs))

    for name, spec in FIXTURE_SPECS.items():
        pipe = loaded[name]
        print(name)
        t0 = time.time()
        text_encoder_goldens(name, pipe)
        transformer_goldens(name, pipe)
        pipeline_goldens(name, spec, pipe)
        print(f"  goldens done ({time.time() - t0:.1f} s)")


if __name__ == "__main__":
    main()
