"""Writes the scene files the TypeScript side uses (no Python needed afterwards):

  assets/scenes/held-out-prompts.txt   captions training never sees (for bench --fidelity --prompts)
  test/fixtures/scenes/                rendered ground-truth scenes + captions.json, for the adherence checker's tests

    python tools/train-reference/make_scene_files.py
"""
import json
import os

import numpy as np
from PIL import Image

import scenes

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))


def main():
    prompts = scenes.held_out_captions(seed=100, count=64)
    with open(os.path.join(ROOT, 'assets', 'scenes', 'held-out-prompts.txt'), 'w') as f:
        f.write('# Captions of the reference model\'s grammar that training never saw (tools/train-reference/make_scene_files.py)\n')
        f.write('\n'.join(prompts) + '\n')

    out = os.path.join(ROOT, 'test', 'fixtures', 'scenes')
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(200)
    captions = []
    for i in range(48):
        scene = scenes.sample_scene(rng)
        captions.append(scenes.caption(scene))
        Image.fromarray(scenes.render(scene, rng)).save(os.path.join(out, f'{i:02d}.png'))
    with open(os.path.join(out, 'captions.json'), 'w') as f:
        json.dump(captions, f, indent=1)


if __name__ == '__main__':
    main()
