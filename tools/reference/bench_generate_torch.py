"""Times diffusers on PyTorch on a pipeline folder (Stable Diffusion 1.x/2.x or PixArt-α/Σ): text
encoding, denoising and decoding, the same split `diffuse bench-generate` reports.

    source <reference env>/env.sh && python tools/reference/bench_generate_torch.py DIR --size 256 --steps 10
    python tools/reference/bench_generate_torch.py DIR --device cuda --dtype fp16     # on a GPU machine

Prints one JSON line per run (the first is a warm-up).
"""
import argparse, json, resource, time
import torch
from diffusers import DiffusionPipeline

p = argparse.ArgumentParser()
p.add_argument("dir")
p.add_argument("--size", type=int, default=256)
p.add_argument("--steps", type=int, default=10)
p.add_argument("--guidance", type=float, default=7.5)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--runs", type=int, default=2)
p.add_argument("--device", default="cpu", help="cpu or cuda")
p.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32")
p.add_argument("--prompt", default="a photo of an astronaut riding a horse on mars")
a = p.parse_args()
torch.set_num_threads(a.threads)
dtype = {"fp32": torch.float32, "fp16": torch.float16}[a.dtype]
pipe = DiffusionPipeline.from_pretrained(a.dir, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False).to(a.device)
pipe.set_progress_bar_config(disable=True)
pixart = type(pipe).__name__.startswith("PixArt")
cfg = a.guidance > 1


def now():
    # CUDA runs asynchronously: a timer read means nothing until the queued kernels are done.
    if a.device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter()


def encode():
    if pixart:
        return pipe.encode_prompt(a.prompt, do_classifier_free_guidance=cfg, device=a.device)
    return pipe.encode_prompt(a.prompt, a.device, 1, cfg)


extra = {"use_resolution_binning": False} if pixart else {}
for run in range(a.runs + 1):
    generator = torch.Generator(a.device).manual_seed(0)
    with torch.inference_mode():
        t0 = now()
        encode()
        t1 = now()
        latents = pipe(a.prompt, height=a.size, width=a.size, num_inference_steps=a.steps, guidance_scale=a.guidance,
                       generator=generator, output_type="latent", **extra).images
        t2 = now()
        pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
        t3 = now()
    text = t1 - t0
    print(json.dumps({"engine": f"diffusers on pytorch {torch.__version__} ({a.device}, {a.dtype})", "warmup": run == 0, "text": text,
                      "denoising": (t2 - t1) - text, "decoding": t3 - t2, "total": text + (t2 - t1 - text) + (t3 - t2),
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "peak_gpu_bytes": torch.cuda.max_memory_allocated() if a.device.startswith("cuda") else None}), flush=True)
