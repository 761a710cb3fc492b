"""Goldens for attention-map reuse (Hunter et al., arXiv 2401.01008) on the tiny SD 1.x fixture.

The paper publishes no code, so this is the method written on diffusers' own attention: an
attention processor that, on a computing model call, keeps every layer's post-softmax map
(diffusers' get_attention_scores) and, on a reusing call, applies the kept map to freshly computed
values (to_v, then to_out) with no to_q, to_k or softmax. Maps are kept per layer for the whole
batch (both CFG halves), in float16 unless stated.

    source <reference env>/env.sh && python tools/reference/make_attn_reuse_goldens.py

Writes test/fixtures/goldens/attn-reuse/tiny-sd1.{safetensors,json}.
"""

import json
import os

import torch
from diffusers import DDIMScheduler, PNDMScheduler, StableDiffusionPipeline
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "test", "fixtures")
OUT = os.path.join(FIXTURES, "goldens", "attn-reuse")
PROMPT = "a photo of an astronaut riding a horse"
NEGATIVE = "blurry, low quality"


class MapReuse:
    """Per-run state: the schedule over model calls and the kept maps."""

    def __init__(self, schedule, fp16=True, self_attn=True, cross_attn=True):
        self.schedule, self.fp16, self.self_attn, self.cross_attn = schedule, fp16, self_attn, cross_attn
        self.call, self.maps = -1, {}


class ReuseProcessor:
    def __init__(self, state, name, is_cross):
        self.state, self.name, self.is_cross = state, name, is_cross

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        st = self.state
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        value = attn.head_to_batch_dim(attn.to_v(context))
        layer_on = st.cross_attn if self.is_cross else st.self_attn
        if layer_on and st.schedule[st.call] == 0 and self.name in st.maps:
            probs = st.maps[self.name].float()
        else:
            query = attn.head_to_batch_dim(attn.to_q(hidden_states))
            key = attn.head_to_batch_dim(attn.to_k(context))
            probs = attn.get_attention_scores(query, key, None)
            if layer_on:
                st.maps[self.name] = probs.half() if st.fp16 else probs.clone()
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        return attn.to_out[1](attn.to_out[0](out))


def install(pipe, state):
    procs = {name: ReuseProcessor(state, name, name.endswith("attn2.processor")) for name in pipe.unet.attn_processors}
    pipe.unet.set_attn_processor(procs)

    def next_call(module, args, kwargs):
        state.call += 1

    return pipe.unet.register_forward_pre_hook(next_call, with_kwargs=True)


# name → (scheduler, steps, schedule over model calls, options, our --accel spec)
CASES = {
    "hurry-ddim8-r3": ("ddim", 8, [1, 1, 1, 1, 1, 0, 0, 0], {}, "attn-reuse:reuse=3"),
    "phast-ddim8": ("ddim", 8, [1, 1, 0, 1, 0, 0, 1, 0], {}, "attn-reuse:schedule=SCHEDULE"),
    "hurry-pndm6-r2-self-fp32": ("pndm", 6, [1, 1, 1, 1, 1, 0, 0], dict(fp16=False, cross_attn=False),
                                 "attn-reuse:reuse=2,fp16=false,cross_attn=false"),
}


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(1)
    pipe = StableDiffusionPipeline.from_pretrained(os.path.join(FIXTURES, "tiny-sd1"), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    base_config = pipe.scheduler.config
    plain_processors = pipe.unet.attn_processors
    schedulers = {"ddim": DDIMScheduler, "pndm": PNDMScheduler}
    tensors, index = {}, []
    for i, (name, (scheduler, steps, schedule, options, spec)) in enumerate(CASES.items()):
        pipe.scheduler = schedulers[scheduler].from_config(base_config)
        latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(4000 + i))
        run = lambda: pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=7.5,  # noqa: E731
                           latents=latents.clone(), output_type="latent").images
        pipe.unet.set_attn_processor(dict(plain_processors))  # set_attn_processor empties the dict it gets
        with torch.no_grad():
            plain = run()
        state = MapReuse(schedule, **options)
        hook = install(pipe, state)
        with torch.no_grad():
            reused = run()
        hook.remove()
        assert state.call == len(schedule) - 1, (name, state.call)
        tensors[f"{name}.latents_in"] = latents.contiguous()
        tensors[f"{name}.latents_out"] = reused.contiguous()
        tensors[f"{name}.baseline_out"] = plain.contiguous()
        index.append(dict(name=name, scheduler=scheduler, steps=steps, schedule=schedule, accel=spec, prompt=PROMPT,
                          negative_prompt=NEGATIVE, guidance_scale=7.5))
        print(name, "max |reuse - baseline| =", float((reused - plain).abs().max()))
    pipe.unet.set_attn_processor(dict(plain_processors))
    save_file(tensors, os.path.join(OUT, "tiny-sd1.safetensors"))
    with open(os.path.join(OUT, "tiny-sd1.json"), "w") as f:
        json.dump(index, f, indent=1)


if __name__ == "__main__":
    main()
