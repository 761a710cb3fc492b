/**
 * IEEE half precision and bfloat16 to and from float32, bit-exact (weights stored as F16 / BF16 are
 * read through these, and int8 quantization starts from their float values).
 */

let f16Table: Uint32Array | null = null;

/** f32 bit patterns for all 65536 half values; built once, 256 KiB. */
function halfToFloatBits(): Uint32Array {
  if (f16Table !== null) return f16Table;
  const table = new Uint32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = (h & 0x8000) << 16;
    const exp = (h >> 10) & 0x1f;
    let mant = h & 0x3ff;
    if (exp === 0x1f) {
      table[h] = sign | 0x7f800000 | (mant << 13); // inf / NaN, payload kept
    } else if (exp !== 0) {
      table[h] = sign | ((exp + 112) << 23) | (mant << 13);
    } else if (mant === 0) {
      table[h] = sign; // signed zero
    } else {
      // Subnormal half: shift until the implicit bit appears, lowering the exponent each time.
      let e = 113;
      while ((mant & 0x400) === 0) {
        mant <<= 1;
        e--;
      }
      table[h] = sign | (e << 23) | ((mant & 0x3ff) << 13);
    }
  }
  f16Table = table;
  return table;
}

export function float16ToFloat32(half: Uint16Array): Float32Array {
  const table = halfToFloatBits();
  const out = new Float32Array(half.length);
  const bits = new Uint32Array(out.buffer);
  for (let i = 0; i < half.length; i++) bits[i] = table[half[i]];
  return out;
}

export function bfloat16ToFloat32(half: Uint16Array): Float32Array {
  const out = new Float32Array(half.length);
  const bits = new Uint32Array(out.buffer);
  for (let i = 0; i < half.length; i++) bits[i] = half[i] << 16;
  return out;
}

/** Converts to IEEE half precision, rounding to nearest even; overflow gives ±inf, NaN stays NaN. */
export function float32ToFloat16(values: Float32Array): Uint16Array {
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = floatBitsToHalf(bits[i]);
  return out;
}

function roundShift(value: number, shift: number): number {
  const q = value >>> shift;
  const rest = value & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  return rest > half || (rest === half && (q & 1) === 1) ? q + 1 : q;
}

function floatBitsToHalf(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  const mant = x & 0x7fffff;
  if (exp === 0xff) {
    // Keep the top payload bits; set the quiet bit so a NaN never collapses into inf.
    return mant === 0 ? sign | 0x7c00 : sign | 0x7e00 | (mant >>> 13);
  }
  const e = exp - 112; // rebias 127 -> 15
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    // Result is subnormal (or zero): the value in units of 2^-24 is (1.mant) >> (14 - e).
    const shift = 14 - e;
    if (shift > 24) return sign;
    return sign | roundShift(mant | 0x800000, shift);
  }
  // A carry out of the mantissa correctly bumps the exponent (up to inf).
  return sign | roundShift((e << 23) | mant, 13);
}
