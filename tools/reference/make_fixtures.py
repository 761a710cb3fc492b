"""Build the tiny Stable Diffusion fixtures and their golden outputs with diffusers itself.

Writes test/fixtures/tiny-sd1, test/fixtures/tiny-sd2 (real diffusers pipeline folders with
seeded random weights and the real CLIP BPE vocabulary) and test/fixtures/goldens/. Rerunning it
rewrites the same bytes on the same machine. See tools/reference/README.md.
"""

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "test", "fixtures")
GOLDENS = os.path.join(FIXTURES, "goldens")
CLIP_MIRROR = "/work/.mirror/openai+CLIP/repo"
BPE_PATH_IN_REPO = "clip/bpe_simple_vocab_16e6.txt.gz"

BOS, EOS = "<|startoftext|>", "<|endoftext|>"

# Prompts for the tokenizer goldens: each one pins a behaviour of transformers' CLIPTokenizer.
PROMPTS = [
    "",
    "astronaut",
    "x",
    "a photo of an astronaut riding a horse on mars",
    "Hello, world! How are you?",
    "hello!",
    "wow!!! really?! ... ,,, ;;",
    "don't stop, it's fine; we're here, they've gone, I'm sure, you'll see, he'd go",
    "DON'T SHOUT, It'S Mixed CaSe; I'LL see",
    "it\u2019s a curly apostrophe and a 'quoted' word",
    "3 cats and 1024 dogs in 2023, pi is 3.14159",
    "  lots   of\twhitespace \n\n and\r\nnewlines  ",
    "non\u00a0breaking, next\u0085line, zero\u200bwidth and bom\ufeffhere",
    "bom next to symbols ]\ufeff[ (\ufeff) and <|endoftext|>> too",
    "caf\u00e9 r\u00e9sum\u00e9 na\u00efve \u00c5ngstr\u00f6m",
    "decomposed cafe\u0301 and A\u030angstrom",
    "\u0130stanbul \u03a3\u038a\u03a3\u03a5\u03a6\u039f\u03a3 stra\u00dfe",
    "\uff21\uff22\uff23\uff11\uff12\uff13 fullwidth",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 \u4e2d\u6587 \ud55c\uad6d\uc5b4 \u0928\u092e\u0938\u094d\u0924\u0947",
    "emoji \U0001f680\U0001f525 and \U0001f468\u200d\U0001f469\u200d\U0001f467 family \u2764\ufe0f",
    "supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis",
    "(masterpiece:1.2), best quality, ((detailed)), [blurry], <lora:foo:0.8>",
    "a_b-c/d\\e|f @user #tag $5 100% a+b=c",
    "HTML &amp; entities &lt;tag&gt;",
    "a <|endoftext|> b <|ENDOFTEXT|> c<|startoftext|>d",
    "a highly detailed matte painting of a futuristic city at sunset, by greg rutkowski and "
    "alphonse mucha, trending on artstation, octane render, unreal engine, 8k, volumetric "
    "lighting, cinematic composition, dramatic clouds, ultra wide angle, intricate details, "
    "sharp focus, concept art, vibrant colors, golden hour, reflections in the water, "
    "flying cars, neon signs, crowded streets, rainy atmosphere",
]

TEXT_PROMPTS = ["", "a photo of an astronaut riding a horse"]

# Shared by both fixtures; attention layout and activation differ per fixture below.
UNET_BASE = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    block_out_channels=[32, 64, 64],
    layers_per_block=2,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    cross_attention_dim=32,
    norm_num_groups=8,
)

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=[16, 32, 32, 32],
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    latent_channels=4,
    norm_num_groups=8,
    layers_per_block=1,
    sample_size=128,
)

TEXT_BASE = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=77,
    vocab_size=49408,
    projection_dim=32,
    bos_token_id=49406,
    eos_token_id=49407,
)

# What runwayml/stable-diffusion-v1-5 and stabilityai/stable-diffusion-2-1 ship.
SCHEDULER_BASE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    set_alpha_to_one=False,
    steps_offset=1,
    timestep_spacing="leading",
)

FIXTURE_SPECS = {
    "tiny-sd1": dict(
        seed=0,
        unet=dict(attention_head_dim=4),
        text=dict(hidden_act="quick_gelu"),
        pad_token=EOS,
        scheduler=lambda: PNDMScheduler(
            **SCHEDULER_BASE, skip_prk_steps=True, prediction_type="epsilon"
        ),
    ),
    "tiny-sd2": dict(
        seed=100,
        unet=dict(attention_head_dim=[2, 4, 4], use_linear_projection=True, upcast_attention=True),
        text=dict(hidden_act="gelu"),
        pad_token="!",
        scheduler=lambda: DDIMScheduler(
            **SCHEDULER_BASE, clip_sample=False, prediction_type="v_prediction"
        ),
    ),
}


def read_bpe(path):
    if path:
        with open(path, "rb") as f:
            return f.read()
    return subprocess.run(
        ["git", "-C", CLIP_MIRROR, "show", f"HEAD:{BPE_PATH_IN_REPO}"],
        check=True,
        capture_output=True,
    ).stdout


def bytes_to_unicode():
    """CLIP's reversible byte -> printable-unicode-char table (same order as its encoder)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\u00a1"), ord("\u00ac") + 1))
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, [chr(c) for c in codes]))


def write_vocab(bpe_gz, dest):
    """vocab.json / merges.txt in Hugging Face's layout, ids exactly as CLIP's simple_tokenizer."""
    lines = gzip.decompress(bpe_gz).decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == 49408
    with open(os.path.join(dest, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(dest, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")


def added_token(content):
    return {
        "__type": "AddedToken",
        "content": content,
        "lstrip": False,
        "normalized": True,
        "rstrip": False,
        "single_word": False,
    }


def write_tokenizer_folder(bpe_gz, dest, pad_token):
    """The classic four-file tokenizer folder that the published SD 1.x/2.x checkpoints ship."""
    os.makedirs(dest, exist_ok=True)
    write_vocab(bpe_gz, dest)
    # SD 1.5 spells pad as an AddedToken dict; SD 2.x uses the plain string "!".
    pad = added_token(pad_token) if pad_token == EOS else pad_token
    config = {
        "add_prefix_space": False,
        "bos_token": added_token(BOS),
        "do_lower_case": True,
        "eos_token": added_token(EOS),
        "errors": "replace",
        "model_max_length": 77,
        "pad_token": pad,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": added_token(EOS),
    }
    # transformers lets this file override tokenizer_config.json; a plain string here would make
    # the tokens match case-sensitively (normalized=False).
    special = {k: v for k, v in config.items() if k.endswith("_token")}
    special = {k: {f: x for f, x in v.items() if f != "__type"} if isinstance(v, dict) else v
               for k, v in special.items()}
    for name, value in [("tokenizer_config.json", config), ("special_tokens_map.json", special)]:
        with open(os.path.join(dest, name), "w", encoding="utf-8") as f:
            json.dump(value, f, indent=2, ensure_ascii=False)
            f.write("\n")


def check_against_clip(tokenizer_dir, bpe_gz):
    """transformers' CLIPTokenizer on our files must tokenize like CLIP's own simple_tokenizer."""
    try:
        source = subprocess.run(
            ["git", "-C", CLIP_MIRROR, "show", "HEAD:clip/simple_tokenizer.py"],
            check=True,
            capture_output=True,
        ).stdout.decode("utf-8")
    except (OSError, subprocess.CalledProcessError):
        print("note: CLIP mirror not found, skipping the check against simple_tokenizer")
        return
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "simple_tokenizer.py"), "w") as f:
            f.write(source)
        # ftfy only repairs mojibake, which the prompts below do not contain.
        os.makedirs(os.path.join(tmp, "ftfy"))
        with open(os.path.join(tmp, "ftfy", "__init__.py"), "w") as f:
            f.write("def fix_text(text):\n    return text\n")
        with open(os.path.join(tmp, "bpe.txt.gz"), "wb") as f:
            f.write(bpe_gz)
        sys.path.insert(0, tmp)
        try:
            from simple_tokenizer import SimpleTokenizer

            clip = SimpleTokenizer(os.path.join(tmp, "bpe.txt.gz"))
        finally:
            sys.path.remove(tmp)
    hf = CLIPTokenizer.from_pretrained(tokenizer_dir)
    for prompt in [
        "a photo of an astronaut riding a horse on mars",
        "Don't PANIC, it's 42 o'clock!",
        "supercalifragilisticexpialidocious caf\u00e9 \U0001f680 \u65e5\u672c",
        "  extra   whitespace\n\tand (weights:1.2), [brackets]",
    ]:
        ours = hf(prompt, padding=False, truncation=False).input_ids
        theirs = [49406] + clip.encode(prompt) + [49407]
        assert ours == theirs, (prompt, ours, theirs)
    print("vocab check: transformers on our vocab.json/merges.txt == CLIP simple_tokenizer")


def build_pipeline(name, spec, bpe_gz):
    seed = spec["seed"]
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**UNET_BASE, **spec["unet"])
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**VAE_CONFIG)
    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer_folder(bpe_gz, tmp, spec["pad_token"])
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    torch.manual_seed(seed + 2)
    text_config = CLIPTextConfig(**TEXT_BASE, **spec["text"], pad_token_id=tokenizer.pad_token_id)
    text_encoder = CLIPTextModel(text_config)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=spec["scheduler"](),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    out = os.path.join(FIXTURES, name)
    shutil.rmtree(out, ignore_errors=True)
    pipe.save_pretrained(out, safe_serialization=True)
    # transformers 5 saves tokenizer.json only; put back the layout real SD checkpoints ship.
    tok_dir = os.path.join(out, "tokenizer")
    shutil.rmtree(tok_dir)
    write_tokenizer_folder(bpe_gz, tok_dir, spec["pad_token"])
    # SD 1.5's published PNDM config also says "clip_sample": false (a key PNDM itself ignores);
    # it matters when another scheduler is built from this config, e.g. DDIM via from_config.
    config_path = os.path.join(out, "scheduler", "scheduler_config.json")
    with open(config_path) as f:
        config = json.load(f)
    config.setdefault("clip_sample", False)
    with open(config_path, "w") as f:
        json.dump(dict(sorted(config.items())), f, indent=2, sort_keys=False)
        f.write("\n")
    return out


def tokens_golden(tokenizer):
    entries = []
    for prompt in PROMPTS:
        padded = tokenizer(prompt, padding="max_length", max_length=77, truncation=True).input_ids
        full = tokenizer(prompt, padding=False, truncation=False).input_ids
        entries.append({"prompt": prompt, "input_ids": padded, "untruncated_ids": full})
    assert any(len(e["untruncated_ids"]) > 77 for e in entries)
    return {
        "model_max_length": tokenizer.model_max_length,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "prompts": entries,
    }


@torch.no_grad()
def make_goldens(name, folder):
    # Load back from disk so the goldens describe exactly the files the tests read.
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    tokenizer, text_encoder, unet, vae = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae
    os.makedirs(GOLDENS, exist_ok=True)

    with open(os.path.join(GOLDENS, f"{name}-tokens.json"), "w", encoding="utf-8") as f:
        json.dump(tokens_golden(tokenizer), f, ensure_ascii=False, indent=1)
        f.write("\n")

    ids = tokenizer(
        TEXT_PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    enc = text_encoder(ids, output_hidden_states=True)
    text = {
        "input_ids": ids.to(torch.int64),
        "last_hidden_state": enc.last_hidden_state,
        "penultimate": enc.hidden_states[-2],
        "pooler_output": enc.pooler_output,
    }
    save_goldens(name, "text_encoder", text)

    gen = torch.Generator().manual_seed(1234)
    sample = torch.randn(2, 4, 16, 16, generator=gen)
    sample_odd = torch.randn(2, 4, 14, 18, generator=gen)
    hidden = enc.last_hidden_state
    unet_out = {"sample": sample, "encoder_hidden_states": hidden, "sample_odd": sample_odd}
    for t in (999, 301):
        unet_out[f"out_t{t}"] = unet(sample, torch.tensor(t, dtype=torch.int64), hidden).sample
    unet_out["out_odd"] = unet(sample_odd, torch.tensor(500, dtype=torch.int64), hidden).sample
    save_goldens(name, "unet", unet_out)

    gen = torch.Generator().manual_seed(5678)
    image = torch.rand(1, 3, 128, 128, generator=gen) * 2 - 1
    latents = torch.randn(1, 4, 16, 16, generator=gen)
    dist = vae.encode(image).latent_dist
    vae_out = {
        "image": image,
        "latent_mean": dist.mean,
        "latent_std": dist.std,
        "latents": latents,
        "decoded": vae.decode(latents).sample,
        "scaling_factor": torch.tensor([vae.config.scaling_factor], dtype=torch.float32),
    }
    save_goldens(name, "vae", vae_out)


def save_goldens(fixture, part, tensors):
    path = os.path.join(GOLDENS, f"{fixture}-{part}.safetensors")
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    for k, v in tensors.items():
        assert v.dtype in (torch.float32, torch.int64), (k, v.dtype)
    # No metadata: its key order in the header is not stable between runs.
    save_file(tensors, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--bpe",
        help=f"path to CLIP's {os.path.basename(BPE_PATH_IN_REPO)} "
        f"(default: read it from the git mirror {CLIP_MIRROR})",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    bpe_gz = read_bpe(args.bpe)

    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer_folder(bpe_gz, tmp, EOS)
        check_against_clip(tmp, bpe_gz)

    os.makedirs(GOLDENS, exist_ok=True)  # each golden file is overwritten; other scripts' goldens stay
    for name, spec in FIXTURE_SPECS.items():
        folder = build_pipeline(name, spec, bpe_gz)
        make_goldens(name, folder)
        print(f"wrote {os.path.relpath(folder, ROOT)} and its goldens")


if __name__ == "__main__":
    main()
