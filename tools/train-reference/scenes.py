"""Captioned scenes for the reference model: 1-3 flat shapes on a plain background.

The grammar and geometry live in assets/scenes/grammar.json, shared with the TypeScript caption
parser and adherence checker (src/reference/). Everything is drawn from a seeded numpy Generator,
so a (seed, index) pair always gives the same caption and image.

Caption: objects joined by ", " and " and ", then optionally " on a <background> background".
Object: "a [small|large] <colour> <shape>[ <position>]"; no size word means medium; an object
without a position sits in a random free cell of the 3x3 grid.
Held out: captions whose FNV-1a hash falls in bucket 0 of `heldOutBuckets`; training never sees them.
"""
import json
import os

import numpy as np

GRAMMAR_PATH = os.path.join(os.path.dirname(__file__), '..', '..', 'assets', 'scenes', 'grammar.json')
with open(GRAMMAR_PATH) as f:
    GRAMMAR = json.load(f)

SIZE = GRAMMAR['imageSize']
COLOURS = list(GRAMMAR['colours'])
BACKGROUNDS = list(GRAMMAR['backgrounds'])
SHAPES = GRAMMAR['shapes']
SIZES = list(GRAMMAR['sizes'])
POSITIONS = list(GRAMMAR['positions'])
SUPERSAMPLE = 4  # anti-aliasing: draw at 4x, average down


def fnv1a(text):
    h = 0x811C9DC5
    for byte in text.encode('utf-8'):
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


def is_held_out(caption):
    return fnv1a(caption) % GRAMMAR['heldOutBuckets'] == 0


def sample_scene(rng, count=None):
    """A random scene; `count` fixes the number of objects (else 1-3)."""
    count = count or int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))
    colours = rng.choice(len(COLOURS), size=count, replace=False)  # distinct: one colour mask per object
    cells = rng.choice(9, size=count, replace=False)
    objects = []
    for colour, cell in zip(colours, cells):
        objects.append({
            'colour': COLOURS[colour],
            'shape': SHAPES[rng.integers(len(SHAPES))],
            'size': SIZES[rng.integers(len(SIZES))],
            'cell': (int(cell) % 3, int(cell) // 3),
            'position_stated': bool(rng.random() < 0.85),
        })
    return {
        'objects': objects,
        'background': BACKGROUNDS[rng.integers(len(BACKGROUNDS))],
        'background_stated': bool(rng.random() < 0.5),
    }


def cell_phrase(cell):
    return next(p for p, c in GRAMMAR['positions'].items() if tuple(c) == tuple(cell))


def caption(scene):
    parts = []
    for o in scene['objects']:
        words = ([] if o['size'] == 'medium' else [o['size']]) + [o['colour'], o['shape']]
        words.insert(0, 'an' if words[0][0] in 'aeiou' else 'a')
        if o['position_stated']:
            words.append(cell_phrase(o['cell']))
        parts.append(' '.join(words))
    text = parts[0] if len(parts) == 1 else ', '.join(parts[:-1]) + ' and ' + parts[-1]
    if scene['background_stated']:
        text += f" on a {scene['background']} background"
    return text


def shape_mask(shape, cx, cy, half, y0, x0, h, w):
    """Coverage of one shape on the window [y0:y0+h, x0:x0+w] of the supersampled grid (pixel centres at i + 0.5)."""
    ys, xs = np.mgrid[y0:y0 + h, x0:x0 + w] + 0.5
    if shape == 'circle':
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= half ** 2
    if shape == 'square':
        return (np.abs(xs - cx) <= half) & (np.abs(ys - cy) <= half)
    # triangle pointing up inside the same square: apex (cx, cy-half), base at cy+half
    inside_y = (ys >= cy - half) & (ys <= cy + half)
    return inside_y & (np.abs(xs - cx) <= (ys - (cy - half)) / 2)


def render(scene, rng):
    """uint8 [SIZE, SIZE, 3]."""
    jitter = GRAMMAR['backgroundJitter']
    background = np.clip(np.array(GRAMMAR['backgrounds'][scene['background']]) + rng.integers(-jitter, jitter + 1, 3), 0, 255)
    centres = GRAMMAR['cellCentres']
    pj = GRAMMAR['positionJitter']
    placed = [(o, centres[o['cell'][0]] + rng.uniform(-pj, pj), centres[o['cell'][1]] + rng.uniform(-pj, pj))
              for o in scene['objects']]
    return draw(background, placed)


def draw(background, placed):
    """uint8 [SIZE, SIZE, 3]: objects [(object, centre x, centre y in pixels)] on a background RGB."""
    n = SIZE * SUPERSAMPLE
    image = np.empty((n, n, 3), dtype=np.float32)
    image[:] = background
    for o, x, y in placed:
        cx, cy = x * SUPERSAMPLE, y * SUPERSAMPLE
        half = GRAMMAR['sizes'][o['size']] * SUPERSAMPLE
        y0, x0 = max(0, int(cy - half) - 1), max(0, int(cx - half) - 1)
        y1, x1 = min(n, int(cy + half) + 2), min(n, int(cx + half) + 2)
        window = image[y0:y1, x0:x1]
        window[shape_mask(o['shape'], cx, cy, half, y0, x0, y1 - y0, x1 - x0)] = GRAMMAR['colours'][o['colour']]
    image = image.reshape(SIZE, SUPERSAMPLE, SIZE, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return np.round(image).astype(np.uint8)


def training_batch(rng, batch):
    """(captions, uint8 images [B, SIZE, SIZE, 3]) with held-out captions rejected."""
    captions, images = [], []
    while len(captions) < batch:
        scene = sample_scene(rng)
        text = caption(scene)
        if is_held_out(text):
            continue
        captions.append(text)
        images.append(render(scene, rng))
    return captions, np.stack(images)


def held_out_captions(seed, count):
    """Distinct held-out captions, every object with its position stated (so all of it can be checked)."""
    return held_out_batch(seed, count, draw=False)[0]


def held_out_batch(seed, count, draw=True):
    """(captions, uint8 images) of distinct held-out scenes with every position stated; images None without draw."""
    rng = np.random.default_rng(seed)
    render_rng = np.random.default_rng(seed + 1)
    captions, images = [], []
    while len(captions) < count:
        scene = sample_scene(rng)
        for o in scene['objects']:
            o['position_stated'] = True
        text = caption(scene)
        if is_held_out(text) and text not in captions:
            captions.append(text)
            if draw:
                images.append(render(scene, render_rng))
    return captions, np.stack(images) if draw else None
