"""The project's noise generator (src/util/rng.ts) in Python, number for number.

xoshiro128** seeded through splitmix32, normals by Box-Muller, stored as float32. Goldens that
need the noise our pipelines draw from a seed (img2img: the VAE sample, the noise added to the
image latents, the scheduler's step noise) hand these values to diffusers in place of torch's.
"""

import math

import numpy as np

MASK = 0xFFFFFFFF


def _rotl(x, k):
    return ((x << k) | (x >> (32 - k))) & MASK


class Rng:
    def __init__(self, seed):
        x = seed & MASK
        state = []
        for _ in range(4):
            x = (x + 0x9E3779B9) & MASK
            z = x
            z = ((z ^ (z >> 16)) * 0x85EBCA6B) & MASK
            z = ((z ^ (z >> 13)) * 0xC2B2AE35) & MASK
            state.append((z ^ (z >> 16)) & MASK)
        self.s = state

    def next_uint32(self):
        s0, s1, s2, s3 = self.s
        result = (_rotl((s1 * 5) & MASK, 7) * 9) & MASK
        t = (s1 << 9) & MASK
        s2 ^= s0
        s3 ^= s1
        s1 ^= s2
        s0 ^= s3
        s2 ^= t
        s3 = _rotl(s3, 11)
        self.s = [s0, s1, s2, s3]
        return result

    def uniform(self):
        return self.next_uint32() / 4294967296

    def normal(self, count):
        """`count` standard normals as float32 (an odd count drops the last sine, as fillNormal does)."""
        out = np.empty(count, dtype=np.float32)
        for i in range(0, count, 2):
            u1 = 1 - self.uniform()
            u2 = self.uniform()
            r = math.sqrt(-2 * math.log(u1))
            out[i] = r * math.cos(2 * math.pi * u2)
            if i + 1 < count:
                out[i + 1] = r * math.sin(2 * math.pi * u2)
        return out


class BatchNoise:
    """Image b of a batch draws from Rng(seed + b) (src/pipelines/common.ts BatchNoise)."""

    def __init__(self, seed, images):
        self.rngs = [Rng((seed + b) % 2**32) for b in range(images)]

    def randn_tensor(self, shape, generator=None, device=None, dtype=None, layout=None):
        """diffusers' randn_tensor drawing from these generators: image b's values from Rng(seed + b)."""
        import math

        import torch

        per = math.prod(shape[1:])
        values = np.concatenate([rng.normal(per) for rng in self.rngs])
        return torch.from_numpy(values).reshape(tuple(shape)).to(dtype or torch.float32)
