"""TeaCache goldens on the tiny PixArt-α and PixArt-Σ: TeaCache's official rule (TeaCache4FLUX's
forward in ali-vilab/TeaCache, which has no PixArt port) applied to diffusers' PixArtTransformer2DModel
by wrapping its blocks' forwards:

- block 0 computes its timestep-modulated input (norm1, then × (1 + scale_msa) + shift_msa from its
  scale_shift_table and the adaLN-single timestep), then: the first and last calls compute and reset
  the sum; otherwise the sum grows by poly1d(coefficients)(mean|m − m_prev| / mean|m_prev|), and
  while it stays under rel_l1_thresh the whole block stack is skipped, else it computes and resets;
- a skipped call adds the residual (stack output − stack input) of the last computed call.

    source <reference env>/env.sh && python tools/reference/make_teacache_goldens.py

Writes test/fixtures/goldens/teacache/<fixture>.{safetensors,json} (final latents, the plain run's,
and each call's accumulated value and decision).
"""

import json
import os

import numpy as np
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtSigmaPipeline
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "test", "fixtures")
OUT = os.path.join(FIXTURES, "goldens", "teacache")
SCHEDULERS = {"dpm++2m": DPMSolverMultistepScheduler, "ddim": DDIMScheduler}
PROMPT = "a photo of an astronaut riding a horse"
# name → (scheduler, steps, rel_l1_thresh, coefficients)
CASES = {
    "dpm10-identity": ("dpm++2m", 10, 0.3, [1.0, 0.0]),
    "dpm10-poly": ("dpm++2m", 10, 0.5, [2.0, 0.5, 0.0]),
    "ddim12-identity": ("ddim", 12, 0.6, [1.0, 0.0]),
}


def apply_teacache(transformer, steps, thresh, coefficients, log):
    blocks = transformer.transformer_blocks
    rescale = np.poly1d(coefficients)
    state = dict(cnt=0, acc=0.0, prev=None, residual=None, skip=False, stack_in=None)

    def head(block, original):
        def forward(hidden_states, *args, timestep=None, **kwargs):
            b = hidden_states.shape[0]
            shift_msa, scale_msa = (block.scale_shift_table[None] + timestep.reshape(b, 6, -1)).chunk(6, dim=1)[:2]
            modulated = block.norm1(hidden_states) * (1 + scale_msa) + shift_msa
            reached = None
            if state["cnt"] == 0 or state["cnt"] == steps - 1:
                skip, state["acc"] = False, 0.0
            else:
                state["acc"] += rescale(((modulated - state["prev"]).abs().mean() / state["prev"].abs().mean()).item())
                reached = float(state["acc"])
                skip = state["acc"] < thresh
                if not skip:
                    state["acc"] = 0.0
            log.append(dict(accumulated=reached, skipped=bool(skip)))
            state["prev"], state["skip"] = modulated, skip
            state["cnt"] = (state["cnt"] + 1) % steps
            if skip:
                return hidden_states
            state["stack_in"] = hidden_states.clone()
            return original(hidden_states, *args, timestep=timestep, **kwargs)
        return forward

    def middle(original, last):
        def forward(hidden_states, *args, **kwargs):
            if state["skip"]:
                return hidden_states + state["residual"] if last else hidden_states
            out = original(hidden_states, *args, **kwargs)
            if last:
                state["residual"] = out - state["stack_in"]
            return out
        return forward

    blocks[0].forward = head(blocks[0], blocks[0].forward)
    for i in range(1, len(blocks)):
        blocks[i].forward = middle(blocks[i].forward, i == len(blocks) - 1)


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(1)
    for fixture, cls in [("tiny-pixart-alpha", PixArtAlphaPipeline), ("tiny-pixart-sigma", PixArtSigmaPipeline)]:
        tensors, index = {}, []
        for i, (name, (scheduler, steps, thresh, coefficients)) in enumerate(CASES.items()):
            latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(9000 + i))
            outs, log = [], []
            for cached in (True, False):
                pipe = cls.from_pretrained(os.path.join(FIXTURES, fixture), torch_dtype=torch.float32)
                pipe.set_progress_bar_config(disable=True)
                pipe.scheduler = SCHEDULERS[scheduler].from_config(pipe.scheduler.config)
                if cached:
                    apply_teacache(pipe.transformer, steps, thresh, coefficients, log)
                with torch.no_grad():
                    outs.append(pipe(prompt=PROMPT, num_inference_steps=steps, height=128, width=128, latents=latents.clone(), output_type="latent",
                                     use_resolution_binning=False, clean_caption=False).images)
            tensors[f"{name}.latents_in"] = latents.contiguous()
            tensors[f"{name}.latents_out"] = outs[0].contiguous()
            tensors[f"{name}.baseline_out"] = outs[1].contiguous()
            spec = f"teacache:rel_l1_thresh={thresh},coefficients={':'.join(str(c) for c in coefficients)}"
            index.append(dict(name=name, scheduler=scheduler, steps=steps, guidance_scale=4.5, prompt=PROMPT, negative_prompt="",
                              accel=spec, threshold=thresh, calls=log))
            print(fixture, name, sum(c["skipped"] for c in log), "of", len(log), "skipped", [c["accumulated"] and round(c["accumulated"], 3) for c in log])
        save_file(tensors, os.path.join(OUT, f"{fixture}.safetensors"))
        with open(os.path.join(OUT, f"{fixture}.json"), "w") as f:
            json.dump(index, f, indent=1)


if __name__ == "__main__":
    main()
