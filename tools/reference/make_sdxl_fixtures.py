"""Build the tiny SDXL fixture and its golden outputs with diffusers itself.

Writes test/fixtures/tiny-sdxl (a real StableDiffusionXLPipeline folder with seeded random
weights, the real CLIP BPE vocabulary and two tokenizers/text encoders as SDXL has) and
test/fixtures/goldens/tiny-sdxl-*.safetensors. Only those paths are touched. Rerunning it
rewrites the same bytes on the same machine. See tools/reference/README.md.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import (  # noqa: E402  (helpers shared with the SD 1.x / 2.x fixtures)
    BPE_PATH_IN_REPO,
    CLIP_MIRROR,
    EOS,
    FIXTURES,
    GOLDENS,
    ROOT,
    TEXT_PROMPTS,
    VAE_CONFIG,
    read_bpe,
    save_goldens,
    write_tokenizer_folder,
)

NAME = "tiny-sdxl"
SEED = 200  # unet 200, vae 201, text_encoder 202, text_encoder_2 203

# SDXL base's U-Net layout, tiny: no attention at the first level, several transformer blocks per
# attention (a different count per level, so reversal in the up path is pinned), per-level heads,
# linear projections, text_time micro-conditioning. Narrow channels keep it about 4 MB.
TEXT_DIM_1, TEXT_DIM_2, PROJECTION_DIM, TIME_EMBED_DIM = 32, 32, 32, 8
UNET_CONFIG = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    block_out_channels=[16, 32, 32],
    layers_per_block=2,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    transformer_layers_per_block=[1, 2, 3],
    attention_head_dim=[2, 4, 8],
    cross_attention_dim=TEXT_DIM_1 + TEXT_DIM_2,
    addition_embed_type="text_time",
    addition_embed_type_num_heads=64,
    addition_time_embed_dim=TIME_EMBED_DIM,
    projection_class_embeddings_input_dim=PROJECTION_DIM + 6 * TIME_EMBED_DIM,
    norm_num_groups=8,
    use_linear_projection=True,
)

# The SDXL VAE is the SD one with another scaling factor (and fp16 overflow, hence force_upcast).
SDXL_VAE_CONFIG = dict(VAE_CONFIG, scaling_factor=0.13025, force_upcast=True)

TEXT_COMMON = dict(
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=77,
    vocab_size=49408,
)
# text_encoder: CLIP ViT-L/14's kind (quick_gelu), real bos/eos ids.
TEXT_1 = dict(TEXT_COMMON, hidden_size=TEXT_DIM_1, hidden_act="quick_gelu", projection_dim=TEXT_DIM_1,
              bos_token_id=49406, eos_token_id=49407)
# text_encoder_2: OpenCLIP bigG's kind (gelu, with projection). The published SDXL config keeps the
# legacy ids (bos 0, eos 2, pad 1): transformers then pools at argmax(input_ids), i.e. the first
# 49407, which this fixture pins.
TEXT_2 = dict(TEXT_COMMON, hidden_size=TEXT_DIM_2, hidden_act="gelu", projection_dim=PROJECTION_DIM,
              bos_token_id=0, eos_token_id=2, pad_token_id=1)

# stabilityai/stable-diffusion-xl-base-1.0's scheduler/scheduler_config.json; the keys
# EulerDiscreteScheduler does not take are added to the saved file afterwards, as it ships them.
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    interpolation_type="linear",
    prediction_type="epsilon",
    steps_offset=1,
    timestep_spacing="leading",
    use_karras_sigmas=False,
)
SCHEDULER_EXTRA = dict(clip_sample=False, sample_max_value=1.0, set_alpha_to_one=False, skip_prk_steps=True)

IMAGE_SIZE = 128  # pixels: 16×16 latents through the ×8 VAE
# Micro-conditioning rows (original h, w, crop top, left, target h, w): the default for the
# negative row, an unusual one for the positive row so that values and order are pinned.
TIME_IDS = [[IMAGE_SIZE, IMAGE_SIZE, 0, 0, IMAGE_SIZE, IMAGE_SIZE], [96, 160, 8, 24, IMAGE_SIZE, IMAGE_SIZE]]


def build_pipeline(bpe_gz):
    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    torch.manual_seed(SEED + 1)
    vae = AutoencoderKL(**SDXL_VAE_CONFIG)
    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer_folder(bpe_gz, os.path.join(tmp, "1"), EOS)
        write_tokenizer_folder(bpe_gz, os.path.join(tmp, "2"), "!")
        tokenizer = CLIPTokenizer.from_pretrained(os.path.join(tmp, "1"))
        tokenizer_2 = CLIPTokenizer.from_pretrained(os.path.join(tmp, "2"))
    torch.manual_seed(SEED + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_1, pad_token_id=tokenizer.pad_token_id))
    torch.manual_seed(SEED + 3)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**TEXT_2))
    # The text encoders are almost all token embedding (49408 × 32): stored fp16 to halve them.
    text_encoder.half()
    text_encoder_2.half()
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=EulerDiscreteScheduler(**SCHEDULER_CONFIG),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    out = os.path.join(FIXTURES, NAME)
    shutil.rmtree(out, ignore_errors=True)
    pipe.save_pretrained(out, safe_serialization=True)
    # transformers 5 saves tokenizer.json only; put back the layout the SDXL checkpoint ships.
    for folder, pad in [("tokenizer", EOS), ("tokenizer_2", "!")]:
        shutil.rmtree(os.path.join(out, folder))
        write_tokenizer_folder(bpe_gz, os.path.join(out, folder), pad)
    sched_file = os.path.join(out, "scheduler", "scheduler_config.json")
    with open(sched_file, encoding="utf-8") as f:
        sched = json.load(f)
    sched.update(SCHEDULER_EXTRA)
    with open(sched_file, "w", encoding="utf-8") as f:
        json.dump(dict(sorted(sched.items())), f, indent=2)
        f.write("\n")
    return out


@torch.no_grad()
def make_goldens(folder):
    # Load back from disk (so the goldens describe the files the tests read), computing in fp32.
    pipe = StableDiffusionXLPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    for m in (pipe.text_encoder, pipe.text_encoder_2, pipe.unet):
        m.float()
        assert all(p.dtype == torch.float32 for p in m.parameters())
    os.makedirs(GOLDENS, exist_ok=True)

    encoded = {}
    for part, tokenizer, encoder in [
        ("text_encoder", pipe.tokenizer, pipe.text_encoder),
        ("text_encoder_2", pipe.tokenizer_2, pipe.text_encoder_2),
    ]:
        ids = tokenizer(
            TEXT_PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        ).input_ids
        enc = encoder(ids, output_hidden_states=True)
        out = {
            "input_ids": ids.to(torch.int64),
            "last_hidden_state": enc.last_hidden_state,
            "penultimate": enc.hidden_states[-2],
        }
        if part == "text_encoder":
            out["pooler_output"] = enc.pooler_output
        else:
            # CLIPTextModelWithProjection returns no pooler_output: recompute it as transformers
            # pools (legacy eos id 2: at argmax of the ids), then check text_embeds against it.
            pooled = enc.last_hidden_state[torch.arange(ids.shape[0]), ids.argmax(-1)]
            assert torch.allclose(encoder.text_projection(pooled), enc.text_embeds)
            out["pooler_output"] = pooled
            out["text_embeds"] = enc.text_embeds
        save_goldens(NAME, part, out)
        encoded[part] = out

    # What StableDiffusionXLPipeline feeds the U-Net for a CFG batch (["", prompt] here rather than
    # zeros for the negative row, so that both rows exercise the cross-attention).
    context = torch.cat([encoded["text_encoder"]["penultimate"], encoded["text_encoder_2"]["penultimate"]], dim=-1)
    text_embeds = encoded["text_encoder_2"]["text_embeds"]
    time_ids = torch.tensor(TIME_IDS, dtype=torch.float32)
    added = {"text_embeds": text_embeds, "time_ids": time_ids}
    gen = torch.Generator().manual_seed(4321)
    sample = torch.randn(2, 4, 16, 16, generator=gen)
    sample_odd = torch.randn(2, 4, 14, 18, generator=gen)
    unet = pipe.unet
    unet_out = {
        "sample": sample,
        "encoder_hidden_states": context,
        "text_embeds": text_embeds,
        "time_ids": time_ids,
        "sample_odd": sample_odd,
    }
    for t in (999, 301):
        unet_out[f"out_t{t}"] = unet(sample, torch.tensor(float(t)), context, added_cond_kwargs=added).sample
    unet_out["out_odd"] = unet(sample_odd, torch.tensor(500.0), context, added_cond_kwargs=added).sample
    # The added conditioning must matter: without it (zeros) the output differs clearly.
    zeros = {k: torch.zeros_like(v) for k, v in added.items()}
    baseline = unet(sample, torch.tensor(999.0), context, added_cond_kwargs=zeros).sample
    assert (baseline - unet_out["out_t999"]).abs().max() > 1e-3 * unet_out["out_t999"].abs().max()
    save_goldens(NAME, "unet", unet_out)


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
    folder = build_pipeline(bpe_gz)
    make_goldens(folder)
    print(f"wrote {os.path.relpath(folder, ROOT)} and goldens/{NAME}-*.safetensors")


if __name__ == "__main__":
    main()
