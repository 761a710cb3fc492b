"""Times one PixArt transformer forward in PyTorch (diffusers, CPU, fp32), the engine to beat.

    source <reference env>/env.sh && python tools/reference/bench_transformer_torch.py --preset pixart-alpha-1024 --threads 2 --sizes 512,1024

Random weights (diffusers' default init, seed 0); batch 2 like a CFG step; T5 states of 120 tokens
(300 for PixArt-Σ) with half of each row masked as padding, as `diffuse bench-transformer` feeds
ours. Prints JSON lines.
"""
import argparse, json, time
import torch
from diffusers import PixArtTransformer2DModel

PIXART = dict(
    activation_fn="gelu-approximate", attention_bias=True, attention_head_dim=72, caption_channels=4096, cross_attention_dim=1152,
    in_channels=4, norm_elementwise_affine=False, norm_eps=1e-6, norm_type="ada_norm_single", num_attention_heads=16,
    num_embeds_ada_norm=1000, num_layers=28, out_channels=8, patch_size=2, sample_size=128,
)
PRESETS = {
    "pixart-alpha-1024": (dict(PIXART), 120),
    "pixart-alpha-512": (dict(PIXART, sample_size=64), 120),
    "pixart-sigma-1024": (dict(PIXART, interpolation_scale=2, use_additional_conditions=False), 300),
}

p = argparse.ArgumentParser()
p.add_argument("--preset", default="pixart-alpha-1024", choices=sorted(PRESETS))
p.add_argument("--threads", type=int, default=2)
p.add_argument("--sizes", default="512,1024")
p.add_argument("--batch", type=int, default=2)
p.add_argument("--runs", type=int, default=3)
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
config, tokens = PRESETS[a.preset]
model = PixArtTransformer2DModel(**config).eval()
for size in [int(s) for s in a.sizes.split(",")]:
    h = size // 8
    x = torch.randn(a.batch, 4, h, h)
    states = torch.randn(a.batch, tokens, 4096)
    mask = torch.zeros(a.batch, tokens, dtype=torch.long)
    mask[:, : tokens // 2] = 1
    t = torch.tensor([500] * a.batch)
    added = {"resolution": torch.tensor([[size, size]] * a.batch, dtype=torch.float32),
             "aspect_ratio": torch.tensor([[1.0]] * a.batch)} if model.use_additional_conditions else None
    run = lambda: model(x, encoder_hidden_states=states, encoder_attention_mask=mask, timestep=t, added_cond_kwargs=added)  # noqa: E731
    with torch.inference_mode():
        run()
        times = []
        for _ in range(a.runs):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
    print(json.dumps({"engine": f"pytorch {torch.__version__}", "preset": a.preset, "size": size, "batch": a.batch, "threads": a.threads,
                      "seconds_min": min(times), "seconds_median": sorted(times)[len(times) // 2], "runs": times}), flush=True)
