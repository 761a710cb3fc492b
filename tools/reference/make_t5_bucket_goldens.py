"""T5 relative-position buckets from transformers, for bucket counts and distances beyond T5 v1.1's 32 / 128.

src/models/t5-encoder.ts claims transformers' bidirectional T5Attention._relative_position_bucket for
any config it accepts, odd bucket counts included (integer halving leaves the last bucket unused).

    source <refenv>/env.sh && python tools/reference/make_t5_bucket_goldens.py

Writes test/fixtures/goldens/t5/relative-buckets.json: per (num_buckets, max_distance), the bucket of
each relative position from -RANGE to RANGE.
"""

import json
import os

import torch
from transformers.models.t5.modeling_t5 import T5Attention

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "test", "fixtures", "goldens", "t5", "relative-buckets.json")
RANGE = 300
# T5 v1.1's, odd counts, counts whose exact half is 1, and a max distance just above the exact range.
SETTINGS = [(32, 128), (7, 20), (9, 5), (4, 2), (33, 64), (6, 300)]

relative = torch.arange(-RANGE, RANGE + 1)
cases = [{"num_buckets": b, "max_distance": d,
          "buckets": T5Attention._relative_position_bucket(relative, bidirectional=True, num_buckets=b, max_distance=d).tolist()}
         for b, d in SETTINGS]
with open(OUT, "w") as f:
    json.dump({"range": RANGE, "cases": cases}, f, separators=(",", ":"))
print(f"wrote {OUT}")
