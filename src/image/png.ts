/**
 * PNG output: pixels encoded by fast-png (pure JS, also runs in browsers), text metadata added as
 * iTXt chunks (UTF-8, so prompts in any script survive; A1111-style readers accept iTXt).
 */
import { encode } from 'fast-png';

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** One iTXt chunk: keyword, no compression, no language tag, UTF-8 text. */
function itxtChunk(keyword: string, text: string): Uint8Array {
  const utf8 = new TextEncoder();
  const body = new Uint8Array([...utf8.encode(keyword), 0, 0, 0, 0, 0, ...utf8.encode(text)]);
  const typed = new Uint8Array([...utf8.encode('iTXt'), ...body]);
  const chunk = new Uint8Array(12 + body.length);
  const view = new DataView(chunk.buffer);
  view.setUint32(0, body.length);
  chunk.set(typed, 4);
  view.setUint32(8 + body.length, crc32(typed));
  return chunk;
}

/**
 * Encodes an RGB image given as planar floats in [0, 1] ([3, height, width], like a VAE output
 * after `x / 2 + 0.5`) into PNG bytes with the given text entries.
 */
export function encodePng(planar: Float32Array, width: number, height: number, text: Record<string, string> = {}): Uint8Array {
  const plane = width * height;
  if (planar.length !== 3 * plane) throw new Error(`encodePng: ${planar.length} values for a ${width}×${height} RGB image`);
  const rgb = new Uint8Array(3 * plane);
  for (let i = 0; i < plane; i++) {
    for (let c = 0; c < 3; c++) {
      // round(x·255) after clamping, as diffusers' numpy_to_pil does
      const v = Math.min(1, Math.max(0, planar[c * plane + i]));
      rgb[3 * i + c] = Math.round(v * 255);
    }
  }
  const png = encode({ width, height, data: rgb, channels: 3, depth: 8 });
  const chunks = Object.entries(text).map(([k, v]) => itxtChunk(k, v));
  // Text goes right after IHDR (8-byte signature + 25-byte IHDR chunk).
  const headerEnd = 8 + 25;
  const out = new Uint8Array(png.length + chunks.reduce((n, c) => n + c.length, 0));
  out.set(png.subarray(0, headerEnd), 0);
  let offset = headerEnd;
  for (const c of chunks) {
    out.set(c, offset);
    offset += c.length;
  }
  out.set(png.subarray(headerEnd), offset);
  return out;
}
