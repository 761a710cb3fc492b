"""Writes src/pipelines/pixart-resolution-bins.ts: PixArt's resolution-binning tables as diffusers
holds them (pipeline_pixart_alpha.py: 256 / 512 / 1024, pipeline_pixart_sigma.py: 2048), in
diffusers' order, so the TypeScript pipelines bin sizes as diffusers does.

    source <reference env>/env.sh && python tools/reference/export_pixart_bins.py
"""

import os

from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import ASPECT_RATIO_256_BIN, ASPECT_RATIO_512_BIN, ASPECT_RATIO_1024_BIN
from diffusers.pipelines.pixart_alpha.pipeline_pixart_sigma import ASPECT_RATIO_2048_BIN

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "src", "pipelines", "pixart-resolution-bins.ts")
HEADER = """/**
 * PixArt's resolution bins: for each aspect ratio (height / width) the size the models were trained
 * at, per base resolution, in diffusers' order (the first of equally close ratios wins). PixArt's
 * published tables as diffusers v0.40.0 holds them; written by tools/reference/export_pixart_bins.py.
 */

/** [aspect ratio, height, width] */
export type ResolutionBin = readonly [number, number, number];
"""


def main():
    out = [HEADER]
    for name, table in [("1024", ASPECT_RATIO_1024_BIN), ("512", ASPECT_RATIO_512_BIN), ("256", ASPECT_RATIO_256_BIN), ("2048", ASPECT_RATIO_2048_BIN)]:
        rows = [f"[{float(k)}, {int(v[0])}, {int(v[1])}]" for k, v in table.items()]
        lines, line = [], "  "
        for r in rows:
            if len(line) + len(r) + 2 > 110:
                lines.append(line.rstrip())
                line = "  "
            line += r + ", "
        lines.append(line.rstrip())
        out.append(f"const BIN_{name}: readonly ResolutionBin[] = [\n" + "\n".join(lines) + "\n];\n")
    out.append("/** The bins of a transformer by its sample_size (latent side), as the pipelines choose them. */\n"
               "export const RESOLUTION_BINS: Readonly<Record<number, readonly ResolutionBin[]>> = { 256: BIN_2048, 128: BIN_1024, 64: BIN_512, 32: BIN_256 };\n")
    with open(OUT, "w") as f:
        f.write("\n".join(out))


if __name__ == "__main__":
    main()
