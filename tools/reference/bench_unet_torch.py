"""Times one SD 1.5-size U-Net forward in PyTorch (diffusers, CPU, fp32), the engine to beat.

    source <reference env>/env.sh && python tools/reference/bench_unet_torch.py --threads 2 --sizes 256,512

Random weights (diffusers' default init, seed 0); batch 2 like a CFG step. Prints JSON lines.
"""
import argparse, json, time
import torch
from diffusers import UNet2DConditionModel

SD15 = dict(
    act_fn="silu", attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280], cross_attention_dim=768,
    down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"], up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    in_channels=4, out_channels=4, layers_per_block=2, norm_num_groups=32, norm_eps=1e-5, sample_size=64,
)

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=2)
p.add_argument("--sizes", default="256,512")
p.add_argument("--batch", type=int, default=2)
p.add_argument("--runs", type=int, default=3)
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
unet = UNet2DConditionModel(**SD15).eval()
for size in [int(s) for s in a.sizes.split(",")]:
    h = size // 8
    x = torch.randn(a.batch, 4, h, h)
    ctx = torch.randn(a.batch, 77, 768)
    t = torch.tensor([500] * a.batch)
    with torch.inference_mode():
        unet(x, t, ctx)
        times = []
        for _ in range(a.runs):
            t0 = time.perf_counter()
            unet(x, t, ctx)
            times.append(time.perf_counter() - t0)
    print(json.dumps({"engine": f"pytorch {torch.__version__}", "size": size, "batch": a.batch, "threads": a.threads,
                      "seconds_min": min(times), "seconds_median": sorted(times)[len(times) // 2], "runs": times}))
