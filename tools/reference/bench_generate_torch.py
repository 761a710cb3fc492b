"""Times diffusers' StableDiffusionPipeline on PyTorch CPU (fp32) on a pipeline folder: text
encoding, denoising and decoding, the same split `diffuse bench-generate` reports.

    source <reference env>/env.sh && python tools/reference/bench_generate_torch.py DIR --size 256 --steps 10

Prints one JSON line per run (the first is a warm-up).
"""
import argparse, json, resource, time
import torch
from diffusers import StableDiffusionPipeline

p = argparse.ArgumentParser()
p.add_argument("dir")
p.add_argument("--size", type=int, default=256)
p.add_argument("--steps", type=int, default=10)
p.add_argument("--guidance", type=float, default=7.5)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--runs", type=int, default=2)
p.add_argument("--prompt", default="a photo of an astronaut riding a horse on mars")
a = p.parse_args()
torch.set_num_threads(a.threads)
pipe = StableDiffusionPipeline.from_pretrained(a.dir, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False)
pipe.set_progress_bar_config(disable=True)
for run in range(a.runs + 1):
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        t0 = time.perf_counter()
        pipe.encode_prompt(a.prompt, "cpu", 1, a.guidance > 1)
        t1 = time.perf_counter()
        latents = pipe(a.prompt, height=a.size, width=a.size, num_inference_steps=a.steps, guidance_scale=a.guidance,
                       generator=generator, output_type="latent").images
        t2 = time.perf_counter()
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
        t3 = time.perf_counter()
    text = t1 - t0
    print(json.dumps({"engine": f"diffusers on pytorch {torch.__version__}", "warmup": run == 0, "text": text,
                      "denoising": (t2 - t1) - text, "decoding": t3 - t2, "total": text + (t2 - t1 - text) + (t3 - t2),
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}), flush=True)
