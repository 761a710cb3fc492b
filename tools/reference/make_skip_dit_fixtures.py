"""Tiny DiT and Skip-DiT checkpoints in the official layouts, and goldens from the official code.

The official code is Skip-DiT's `class-to-image/models.py` (DiT, DiT_skip, DiT_cache) and its
`diffusion/` package (guided-diffusion's sampler), read from the git mirror of
github:OpenSparseLLMs/Skip-DiT at the commit below — nothing of it is committed here. It imports
PatchEmbed, Attention and Mlp from timm, which cannot be imported here (timm's package pulls in a
torchvision built for another torch); `timm_layers()` provides those three with timm 1.0's module
names and arithmetic (a strided conv then flatten; fused qkv with scaled_dot_product_attention
then proj; fc1, GELU(tanh), fc2).

Writes test/fixtures/skip-dit/:
- tiny-skip-dit.pt: DiT_skip (input_size 8, patch 2, hidden 32, depth 10, 2 heads, 10 classes,
  learned sigma), saved as Skip-DiT's train.py saves: {"model", "ema", "opt", "args"} (the EMA
  weights differ from the model's, so a loader that takes "model" fails the goldens).
- tiny-dit.pt: the plain DiT with the same sizes, saved as facebookresearch/DiT's released
  checkpoints are: the bare state dict.
- goldens.safetensors / goldens.json: forward outputs of both (ema weights) for fixed inputs;
  forward_with_cfg; DDIM sampling (create_diffusion("ddim10"), eta 0, clip_denoised False, with
  forward_with_cfg, guidance 4) of both, and with Skip-Cache (DiT_cache, deepcache N = 2 and 3,
  its built-in skip_at_branch 4, close at t ≤ 20, start at t ≥ 1000).

    source <reference env>/env.sh && python tools/reference/make_skip_dit_fixtures.py
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import types

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "test", "fixtures", "skip-dit")
MIRROR = os.environ.get("SKIP_DIT_MIRROR", "/work/.mirror/OpenSparseLLMs+Skip-DiT/repo")
COMMIT = "72609de"
SIZES = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=10, num_heads=2, num_classes=10, learn_sigma=True)


def timm_layers():
    """timm.models.vision_transformer's PatchEmbed, Attention and Mlp, as timm 1.0 defines them."""

    class PatchEmbed(nn.Module):
        def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, bias=True):
            super().__init__()
            self.img_size = (img_size, img_size)
            self.patch_size = (patch_size, patch_size)
            self.grid_size = (img_size // patch_size, img_size // patch_size)
            self.num_patches = self.grid_size[0] * self.grid_size[1]
            self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias)
            self.norm = nn.Identity()

        def forward(self, x):
            return self.norm(self.proj(x).flatten(2).transpose(1, 2))

    class Attention(nn.Module):
        def __init__(self, dim, num_heads=8, qkv_bias=False, **_):
            super().__init__()
            self.num_heads = num_heads
            self.head_dim = dim // num_heads
            self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
            self.q_norm = nn.Identity()
            self.k_norm = nn.Identity()
            self.proj = nn.Linear(dim, dim)

        def forward(self, x):
            B, N, C = x.shape
            qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
            x = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v)
            return self.proj(x.transpose(1, 2).reshape(B, N, C))

    class Mlp(nn.Module):
        def __init__(self, in_features, hidden_features=None, act_layer=nn.GELU, drop=0.0, **_):
            super().__init__()
            self.fc1 = nn.Linear(in_features, hidden_features)
            self.act = act_layer()
            self.norm = nn.Identity()
            self.fc2 = nn.Linear(hidden_features, in_features)

        def forward(self, x):
            return self.fc2(self.norm(self.act(self.fc1(x))))

    return PatchEmbed, Attention, Mlp


def import_official(tmp):
    """Skip-DiT's models.py and diffusion/ from the mirror, importable from `tmp`."""
    if subprocess.run(["git", "-C", MIRROR, "cat-file", "-e", f"{COMMIT}^{{commit}}"], capture_output=True).returncode:
        sys.exit(f"Skip-DiT's code at commit {COMMIT} was not found in {MIRROR}: bring github:OpenSparseLLMs/Skip-DiT in "
                 "with the search tool's fetch, or point SKIP_DIT_MIRROR at a clone that has that commit")
    files = subprocess.run(["git", "-C", MIRROR, "ls-tree", "-r", "--name-only", COMMIT, "class-to-image/"],
                           check=True, capture_output=True, text=True).stdout.split()
    for f in files:
        if f.endswith(".py"):
            dest = os.path.join(tmp, f[len("class-to-image/"):])
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, "wb") as out:
                out.write(subprocess.run(["git", "-C", MIRROR, "show", f"{COMMIT}:{f}"], check=True, capture_output=True).stdout)
    timm = types.ModuleType("timm.models.vision_transformer")
    timm.PatchEmbed, timm.Attention, timm.Mlp = timm_layers()
    for name in ("timm", "timm.models"):
        sys.modules[name] = types.ModuleType(name)
    sys.modules["timm.models.vision_transformer"] = timm
    sys.path.insert(0, tmp)
    import models
    import diffusion
    return models, diffusion


def randomize(model, seed, scale=0.2):
    """Every parameter seeded-random (the official init zeroes adaLN and the final layer)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "pos_embed":
                continue
            fan_in = p.shape[-1] if p.dim() > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) * scale / max(1.0, fan_in ** 0.5) * (4 if p.dim() > 1 else 1))
            if "norm" in name and name.endswith("weight"):
                p.add_(1.0)


def checkpoint_like_train_py(model, ema, path, model_name):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0)
    model(torch.randn(2, 4, 8, 8), torch.tensor([1, 2]), torch.tensor([1, 2])).sum().backward()
    opt.step()
    args = argparse.Namespace(data_path="/data/imagenet/train", results_dir="results", model=model_name, image_size=64,
                              num_classes=10, epochs=1400, global_batch_size=256, global_seed=0, vae="ema",
                              num_workers=4, log_every=100, ckpt_every=50000)
    torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "args": args}, path)


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        models, diffusion = import_official(tmp)
        skip = models.DiT_skip(**SIZES).eval()
        randomize(skip, 600)
        skip_ema = models.DiT_skip(**SIZES).eval()
        randomize(skip_ema, 601)
        checkpoint_like_train_py(skip, skip_ema, os.path.join(OUT, "tiny-skip-dit.pt"), "DiT-skip")
        plain = models.DiT(**SIZES).eval()
        randomize(plain, 602)
        torch.save(plain.state_dict(), os.path.join(OUT, "tiny-dit.pt"))

        g = torch.Generator().manual_seed(603)
        x = torch.randn(3, 4, 8, 8, generator=g)
        t = torch.tensor([999.0, 500.0, 3.0])
        y = torch.tensor([0, 7, 10])  # 10 is the null class
        tensors = {"x": x, "t": t, "y": y.to(torch.int64)}
        with torch.no_grad():
            tensors["skip.out"] = skip_ema(x, t, y)
            tensors["dit.out"] = plain(x, t, y)
            xc = torch.cat([x[:2], x[:2]])
            tc = torch.tensor([400.0, 400.0, 400.0, 400.0])
            yc = torch.tensor([3, 5, 10, 10])
            tensors["cfg.x"], tensors["cfg.t"], tensors["cfg.y"] = xc, tc, yc.to(torch.int64)
            tensors["skip.cfg_out"] = skip_ema.forward_with_cfg(xc, tc, yc, 4.0)

            index = []
            ddim = diffusion.create_diffusion("ddim10")
            z = torch.randn(2, 4, 8, 8, generator=g)
            labels = torch.tensor([3, 5])
            zz = torch.cat([z, z])
            kwargs = dict(y=torch.cat([labels, torch.tensor([10, 10])]), cfg_scale=4.0)
            tensors["sample.z"], tensors["sample.labels"] = z, labels.to(torch.int64)

            def sample(name, model):
                out = ddim.ddim_sample_loop(model.forward_with_cfg, zz.shape, zz.clone(), clip_denoised=False,
                                            model_kwargs=kwargs, progress=False, eta=0.0, device="cpu")
                tensors[f"sample.{name}"] = out[:2].contiguous()

            sample("skip", skip_ema)
            sample("dit", plain)
            index.append(dict(name="sample", steps=10, scheduler="ddim", guidance_scale=4.0, labels=[3, 5]))
            for n in (2, 3):
                cached = models.DiT_cache(**SIZES, deepcache=n).eval()
                cached.load_state_dict(skip_ema.state_dict())
                sample(f"skip_cache{n}", cached)
                index.append(dict(name=f"skip_cache{n}", accel=f"skip-cache:cache_interval={n}", calls_left_after_reset=cached.cache_cont))
        save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, "goldens.safetensors"))
        with open(os.path.join(OUT, "goldens.json"), "w") as f:
            json.dump(dict(sizes=SIZES, cases=index), f, indent=1)
        for k in ("sample.skip", "sample.skip_cache2", "sample.skip_cache3"):
            print(k, float(tensors[k].abs().max()), float((tensors[k] - tensors["sample.skip"]).abs().max()))


if __name__ == "__main__":
    main()
