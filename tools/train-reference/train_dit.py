"""Trains diffusion.ts's transformer references: a DiT and a Skip-DiT, the same way, on one-object scenes.

    source <refenv>/env.sh
    python tools/train-reference/train_dit.py --log docs/reference-dit

Class-conditional, as the DiT and Skip-DiT papers' ImageNet models are. A class is one object of
the reference scenes (scenes.py): colour x shape x grid cell, medium size, on a random background
(white, gray or black): 6 x 3 x 9 = 162 classes, named "red circle at the top left", "red circle top
left" and the scene grammar's caption "a red circle at the top left". The images are encoded by the first
reference VAE (kept in assets/reference-dit/vae, 64x64 RGB -> 16x16x4, scaled by its scaling factor), as DiT encodes
ImageNet with SD's VAE.

Both models are the official code: Skip-DiT's class-to-image/models.py (DiT and DiT_skip, read from the
git mirror as tools/reference/make_skip_dit_fixtures.py reads it) trained with its diffusion package's
training_losses (learned sigma: epsilon MSE + the variational bound, 1000 linear-beta steps), label
dropout 10% for classifier-free guidance, AdamW, EMA. Two departures from the authors' recipe make a
run of minutes learn the class at all (docs/REFERENCE_MODEL.md): the class table starts at std 1
instead of 0.02, and the epsilon MSE is weighted up at high noise. The same seed, data stream, noise, depth, width
and steps for both; the differences are DiT_skip's long skip branches and, so that each model equals
the layout it is published in, the DiT's timestep frequencies (diffusers' /(half-1) instead of the
official /half).

Writes, each model as soon as it is trained (`--only dit|skip-dit`: one of them):
  assets/reference-dit/        the DiT as a diffusers DiTPipeline folder (the official weights mapped
                               to DiTTransformer2DModel and checked against the official forward), the
                               reference VAE, DiT's DDIM scheduler, id2label in model_index.json (and
                               the official-layout weights in <tmp>/reference-dit-official.pt);
  assets/reference-skip-dit.pt the Skip-DiT as Skip-DiT's train.py saves it ({"ema", "args"}: the
                               "model" and "opt" entries are left out to keep it small), float16;
  assets/reference-dit-labels.json  id2label for `diffuse convert --labels`;
  <log>-log.json, <log>-loss.png, <log>-samples.png.
"""
import argparse
import copy
import json
import math
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, '..', '..'))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, 'tools', 'reference'))
import scenes  # noqa: E402
from make_skip_dit_fixtures import import_official  # noqa: E402
from train import COUNT, RATE, bounded, encode_pool, loss_plot, log, lr_at, resolve_bf16, x0_weight  # noqa: E402

from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

# The first reference VAE (2026-11-22), which the DiT pair was trained on; the U-Net reference has
# had its own since 2026-12-02, and the DiT folders keep this one.
VAE_DIR = os.path.join(ROOT, 'assets', 'reference-dit', 'vae')
# DiT's scheduler as diffusers' DiT conversion writes it (src/models/presets.ts DIT_SCHEDULER).
# The class table has ImageNet's 1000 rows (only the first 162 are drawn in training) so that the null
# class is row 1000, the one diffusers' DiTPipeline hard-codes for classifier-free guidance.
CLASS_TABLE = 1000
DIT_SCHEDULER = dict(beta_start=0.0001, beta_end=0.02, beta_schedule='linear', num_train_timesteps=1000, clip_sample=False,
                     set_alpha_to_one=True, steps_offset=0, prediction_type='epsilon')


def classes():
    """[(colour, shape, cell, names)]: one object, every colour x shape x cell."""
    out = []
    for colour in scenes.COLOURS:
        for shape in scenes.SHAPES:
            for phrase, cell in scenes.GRAMMAR['positions'].items():
                short = phrase.replace('at the ', '').replace('on the ', '').replace('in the ', '')
                # the last name is the scene grammar's caption, so `bench --fidelity` scores adherence to it
                article = 'an' if colour[0] in 'aeiou' else 'a'
                out.append((colour, shape, tuple(cell), f'{colour} {shape} {phrase}, {colour} {shape} {short}, {article} {colour} {shape} {phrase}'))
    return out


def render_pool(seed, per_class):
    rng = np.random.default_rng(seed)
    labels, images = [], []
    for label, (colour, shape, cell, _) in enumerate(classes()):
        for _ in range(per_class):
            scene = {'objects': [{'colour': colour, 'shape': shape, 'size': 'medium', 'cell': cell, 'position_stated': True}],
                     'background': scenes.BACKGROUNDS[rng.integers(len(scenes.BACKGROUNDS))], 'background_stated': False}
            images.append(scenes.render(scene, rng))
            labels.append(label)
    return torch.tensor(labels), np.stack(images)


def diffusers_timestep_embedding(t, dim, max_period=10000):
    """diffusers' Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=1), which its DiT uses."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / (half - 1))
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sizes(args, num_classes):
    return dict(input_size=scenes.SIZE // 4, patch_size=2, in_channels=4, hidden_size=args.hidden, depth=args.depth,
                num_heads=args.heads, mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=num_classes, learn_sigma=True)


def train(kind, models, diffusion, labels, mean, std, scaling, args, history):
    """One model; every random draw comes from generators seeded alike for both kinds."""
    torch.manual_seed(args.seed + 10)
    cls = models.DiT_skip if kind == 'skip-dit' else models.DiT
    model = cls(**sizes(args, CLASS_TABLE))
    # The official init draws the class table with std 0.02; the timestep embedding soon grows to a
    # norm of ~25, and in a short run the classes never catch up: the model ignored them (samples the
    # same at any guidance). Rows of norm ~sqrt(hidden) let it use the class within 1,000 steps.
    torch.nn.init.normal_(model.y_embedder.embedding_table.weight, std=args.class_init_std)
    if kind == 'dit':
        # Trained as diffusers runs it: its timestep frequencies are exp(-ln(10^4) k / (half - 1)),
        # the official DiT's exp(-ln(10^4) k / half); the Skip-DiT keeps the official ones.
        model.t_embedder.timestep_embedding = diffusers_timestep_embedding
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0)
    rng = np.random.default_rng(args.seed + 11)
    gen = torch.Generator().manual_seed(args.seed + 12)
    model.train()
    start = time.time()

    def autocast_model(x, t, y):
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=args.bf16):
            return model(x, t, y).float()

    for step in range(args.steps):
        for g in opt.param_groups:
            g['lr'] = lr_at(step, args.lr, 200, args.steps)
        pick = torch.from_numpy(rng.integers(len(labels), size=args.batch))
        x = (mean[pick] + std[pick] * torch.randn(mean[pick].shape, generator=gen)) * scaling
        t = torch.randint(0, diffusion.num_timesteps, (args.batch,), generator=gen)
        noise = torch.randn(x.shape, generator=gen)
        # label dropout (class_dropout_prob) draws from torch's global generator: seed it per step
        torch.manual_seed(args.seed * 100_003 + step)
        terms = diffusion.training_losses(autocast_model, x, t, dict(y=labels[pick]), noise=noise)
        alpha_bar = torch.from_numpy(diffusion.alphas_cumprod).float()[t]
        loss = (x0_weight(alpha_bar, args.snr_cap) * terms['mse'] + terms['vb']).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters()):
                e.lerp_(p, 1 - decay)
        if step % 10 == 0:
            history.append({'stage': kind, 'step': step, 'loss': loss.item(), 'seconds': time.time() - start})
        if step % 100 == 0 or step == args.steps - 1:
            recent = [h['loss'] for h in history[-10:] if h['stage'] == kind]
            log(f'{kind} step {step}/{args.steps}: loss {np.mean(recent):.4f}, {time.time() - start:.0f} s')
    return ema, time.time() - start


def to_diffusers(state, args, num_classes):
    """The official DiT state dict under DiTTransformer2DModel's names (as diffusers' convert_dit_to_diffusers maps them)."""
    out = {}
    for k, v in state.items():
        if k == 'pos_embed':
            continue  # diffusers computes the sin-cos table
        out[k] = v
    rename = {
        'x_embedder.proj': 'pos_embed.proj',
        't_embedder.mlp.0': 'transformer_blocks.0.norm1.emb.timestep_embedder.linear_1',
        't_embedder.mlp.2': 'transformer_blocks.0.norm1.emb.timestep_embedder.linear_2',
        'y_embedder.embedding_table': 'transformer_blocks.0.norm1.emb.class_embedder.embedding_table',
        'final_layer.adaLN_modulation.1': 'proj_out_1',
        'final_layer.linear': 'proj_out_2',
    }
    mapped = {}
    for k, v in out.items():
        new = k
        for old, name in rename.items():
            if k.startswith(old + '.'):
                new = name + k[len(old):]
        if k.startswith('blocks.'):
            i, rest = k.split('.')[1], '.'.join(k.split('.')[2:])
            prefix = f'transformer_blocks.{i}.'
            if rest.startswith('attn.qkv.'):
                q, kk, vv = v.chunk(3, dim=0)
                suffix = rest.split('.')[-1]
                mapped[prefix + f'attn1.to_q.{suffix}'], mapped[prefix + f'attn1.to_k.{suffix}'], mapped[prefix + f'attn1.to_v.{suffix}'] = q, kk, vv
                continue
            new = prefix + {'attn.proj': 'attn1.to_out.0', 'mlp.fc1': 'ff.net.0.proj', 'mlp.fc2': 'ff.net.2',
                            'adaLN_modulation.1': 'norm1.linear'}[rest.rsplit('.', 1)[0]] + '.' + rest.rsplit('.', 1)[1]
        mapped[new] = v
    # every block's norm1.emb is block 0's in the official model (one t/y embedder): diffusers keeps a copy per block
    for i in range(1, args.depth):
        for k in [k for k in mapped if k.startswith('transformer_blocks.0.norm1.emb.')]:
            mapped[k.replace('transformer_blocks.0.', f'transformer_blocks.{i}.')] = mapped[k]
    transformer = DiTTransformer2DModel(
        num_attention_heads=args.heads, attention_head_dim=args.hidden // args.heads, in_channels=4, out_channels=8, num_layers=args.depth,
        dropout=0.0, norm_num_groups=32, attention_bias=True, sample_size=scenes.SIZE // 4, patch_size=2, activation_fn='gelu-approximate',
        num_embeds_ada_norm=num_classes, upcast_attention=False, norm_type='ada_norm_zero', norm_elementwise_affine=False, norm_eps=1e-6)
    missing, unexpected = transformer.load_state_dict(mapped, strict=False)
    assert not unexpected and not missing, (missing, unexpected)
    return transformer.eval()


@torch.no_grad()
def check_same_forward(official, transformer, num_classes):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 4, scenes.SIZE // 4, scenes.SIZE // 4, generator=g)
    t = torch.tensor([999, 500, 3])
    y = torch.tensor([0, 7, num_classes])
    a = official(x, t, y)
    b = transformer(x, timestep=t, class_labels=y).sample
    err = float((a - b).abs().max() / a.abs().max())
    log(f'diffusers DiTTransformer2DModel vs the official DiT forward: {err:.2e} relative')
    assert err < 1e-4, err


def sample_grid(pipe, names, path, steps=25, guidance=4.0):
    """Two seeds of 18 classes, generated by diffusers' DiTPipeline."""
    picks = [i * 9 + i % 9 for i in range(len(names) // 9)]  # every colour x shape, each in another cell
    tiles = []
    for seed in range(2):
        g = torch.Generator().manual_seed(seed)
        tiles.extend(pipe(class_labels=picks, num_inference_steps=steps, guidance_scale=guidance, generator=g, output_type='np').images)
    cols, size = len(picks), scenes.SIZE
    img = Image.new('RGB', (cols * size, 2 * size), 'white')
    for i, tile in enumerate(tiles):
        img.paste(Image.fromarray((tile * 255).round().astype(np.uint8)), ((i % cols) * size, (i // cols) * size))
    img.save(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--log', required=True, help='prefix of the log JSON and PNGs')
    ap.add_argument('--dit-out', default=os.path.join(ROOT, 'assets', 'reference-dit'))
    ap.add_argument('--skip-dit-out', default=os.path.join(ROOT, 'assets', 'reference-skip-dit.pt'))
    ap.add_argument('--seed', type=bounded(int, 0), default=0)
    ap.add_argument('--per-class', type=COUNT, default=100, help='rendered scenes per class')
    ap.add_argument('--depth', type=COUNT, default=12)
    ap.add_argument('--hidden', type=COUNT, default=128)
    ap.add_argument('--heads', type=COUNT, default=4)
    ap.add_argument('--steps', type=COUNT, default=5000)
    ap.add_argument('--batch', type=COUNT, default=32)
    ap.add_argument('--lr', type=RATE, default=1e-3)
    ap.add_argument('--class-init-std', type=RATE, default=1.0, help='std of the class table at init (official: 0.02)')
    ap.add_argument('--snr-cap', type=bounded(float, 1), default=20, help='largest weight of the epsilon MSE at high noise (1: unweighted)')
    ap.add_argument('--ema', type=bounded(float, 0, 1, high_open=True), default=0.999)
    ap.add_argument('--only', choices=['dit', 'skip-dit'], help='train and save one of them (the log keeps the other\'s curve)')
    ap.add_argument('--threads', type=COUNT, default=os.cpu_count())
    # bf16 autocast made a training step 11x slower here (14.2 s vs 1.3 s at batch 64, torch 2.13 CPU)
    ap.add_argument('--bf16', action='store_true', help='bf16 autocast (slower on this CPU at these sizes)')
    args = ap.parse_args()
    if args.hidden % args.heads:
        ap.error(f'--hidden/--heads: expected a width that the heads divide, found {args.hidden} and {args.heads}')
    if args.only != 'dit' and args.depth % 2:
        ap.error(f'--depth: expected an even depth (Skip-DiT pairs block j with block depth-1-j), found {args.depth}')
    torch.set_num_threads(args.threads)
    args.bf16 = resolve_bf16(args.bf16)
    began = time.time()
    names = [c[3] for c in classes()]
    log(f'rendering {args.per_class} scenes for each of {len(names)} classes')
    labels, images = render_pool(args.seed, args.per_class)
    vae = AutoencoderKL.from_pretrained(VAE_DIR, torch_dtype=torch.float32).eval()
    mean, std = encode_pool(vae, images)
    scaling = vae.config.scaling_factor
    history, minutes = [], {}
    id2label = {str(i): n for i, n in enumerate(names)}
    with open(os.path.join(ROOT, 'assets', 'reference-dit-labels.json'), 'w') as f:
        json.dump(id2label, f, indent=1)
    with tempfile.TemporaryDirectory() as tmp:
        models, diffusion_pkg = import_official(tmp)
        diffusion = diffusion_pkg.create_diffusion(timestep_respacing='')
        # Each model is saved as soon as it is trained: a later failure loses nothing.
        if args.only != 'skip-dit':
            dit, seconds = train('dit', models, diffusion, labels, mean, std, scaling, args, history)
            minutes['dit'] = seconds / 60
            kept = os.path.join(tempfile.gettempdir(), 'reference-dit-official.pt')
            torch.save({'ema': dit.state_dict()}, kept)  # in the authors' layout, should the conversion below fail
            log(f'kept the DiT in the official layout at {kept}')
            transformer = to_diffusers(dit.state_dict(), args, CLASS_TABLE)
            check_same_forward(dit, transformer, CLASS_TABLE)
            pipe = DiTPipeline(transformer=transformer, vae=vae, scheduler=DDIMScheduler(**DIT_SCHEDULER))
            shutil.rmtree(args.dit_out, ignore_errors=True)
            pipe.to(torch.float16).save_pretrained(args.dit_out, safe_serialization=True)
            index_file = os.path.join(args.dit_out, 'model_index.json')
            with open(index_file) as f:
                index = json.load(f)
            index['id2label'] = id2label
            with open(index_file, 'w') as f:
                json.dump(index, f, indent=2)
            # the VAE was loaded from a folder, whose local path diffusers writes into its config: not ours to ship
            vae_config = os.path.join(args.dit_out, 'vae', 'config.json')
            with open(vae_config) as f:
                config = json.load(f)
            config.pop('_name_or_path', None)
            with open(vae_config, 'w') as f:
                f.write(json.dumps(config, indent=2) + '\n')
            log(f'saved {args.dit_out}')
        if args.only != 'dit':
            skip, seconds = train('skip-dit', models, diffusion, labels, mean, std, scaling, args, history)
            minutes['skip-dit'] = seconds / 60
            run_args = argparse.Namespace(model='DiT-skip', image_size=scenes.SIZE, num_classes=CLASS_TABLE, depth=args.depth,
                                          hidden_size=args.hidden, num_heads=args.heads, global_batch_size=args.batch,
                                          global_seed=args.seed, vae='reference-model', steps=args.steps)
            torch.save({'ema': {k: v.half() for k, v in skip.state_dict().items()}, 'args': run_args}, args.skip_dit_out)
            log(f'saved {args.skip_dit_out}')
    total = time.time() - began
    log_file = f'{args.log}-log.json'
    old = json.load(open(log_file)) if args.only and os.path.exists(log_file) else {}
    runs = old.get('runs', []) + [{'command': ' '.join(sys.argv), 'settings': vars(args), 'minutes': total / 60, 'training_minutes': minutes,
                                   'torch': torch.__version__}]
    history = [h for h in old.get('history', []) if h['stage'] not in minutes] + history
    with open(log_file, 'w') as f:
        json.dump({'runs': runs, 'history': history}, f)
    loss_plot(history, f'{args.log}-loss.png', [('dit', 'DiT: weighted epsilon MSE + VB'), ('skip-dit', 'Skip-DiT: weighted epsilon MSE + VB')])
    if args.only != 'skip-dit':
        pipe = DiTPipeline.from_pretrained(args.dit_out, torch_dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        sample_grid(pipe, names, f'{args.log}-samples.png')
    log('wrote the log, the loss plot and the sample grid')


if __name__ == '__main__':
    main()
