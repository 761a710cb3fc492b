/**
 * DeepCache's non-uniform schedule, `sample_from_quad_center` (DeepCache/sd/pipeline_stable_diffusion.py),
 * reproduced to the index. It truncates the real parts of complex powers whose exact values at
 * both ends are integers (−center and total−center), so one ulp of the libm it ran on (glibc, via
 * CPython and numpy) decides whether an end point lands on an integer or just below it, and that
 * can change the result. V8's Math functions often differ from glibc's in the last place (log,
 * hypot, atan2 do on 7–33% of random inputs), so the few functions involved are computed here in
 * double-double arithmetic and rounded once: correctly rounded, which is what glibc returns for
 * all but rare inputs.
 */
import { InputError } from '../errors.ts';

type DD = readonly [number, number];

const SPLIT = 134217729; // 2^27 + 1

function twoSum(a: number, b: number): DD {
  const s = a + b;
  const v = s - a;
  return [s, a - (s - v) + (b - v)];
}

function quickTwoSum(a: number, b: number): DD {
  const s = a + b;
  return [s, b - (s - a)];
}

function twoProd(a: number, b: number): DD {
  const p = a * b;
  const ca = SPLIT * a;
  const ah = ca - (ca - a);
  const al = a - ah;
  const cb = SPLIT * b;
  const bh = cb - (cb - b);
  const bl = b - bh;
  return [p, ah * bh - p + ah * bl + al * bh + al * bl];
}

function add(a: DD, b: DD): DD {
  const [s, e] = twoSum(a[0], b[0]);
  const [t, f] = twoSum(a[1], b[1]);
  const [u, g] = quickTwoSum(s, e + t);
  return quickTwoSum(u, g + f);
}

const neg = (a: DD): DD => [-a[0], -a[1]];
const sub = (a: DD, b: DD): DD => add(a, neg(b));
const dd = (x: number): DD => [x, 0];

function mul(a: DD, b: DD): DD {
  const [p, e] = twoProd(a[0], b[0]);
  return quickTwoSum(p, e + (a[0] * b[1] + a[1] * b[0]));
}

function div(a: DD, b: DD): DD {
  const q1 = a[0] / b[0];
  let r = sub(a, mul(b, dd(q1)));
  const q2 = r[0] / b[0];
  r = sub(r, mul(b, dd(q2)));
  const q3 = r[0] / b[0];
  return add(quickTwoSum(q1, q2), dd(q3));
}

const round = (a: DD): number => a[0] + a[1];

const LN2: DD = [0.6931471805599453, 2.3190468138462996e-17];
const PI_2: [number, number, number] = [1.5707963267948966, 6.123233995736766e-17, -1.4973849048591698e-33];

function ddExp(x: DD): DD {
  const k = Math.round(x[0] / LN2[0]);
  let r = sub(x, mul(LN2, dd(k)));
  r = [r[0] / 1024, r[1] / 1024];
  let term: DD = [1, 0];
  let sum: DD = [1, 0];
  for (let i = 1; i <= 12; i++) {
    term = div(mul(term, r), dd(i));
    sum = add(sum, term);
  }
  for (let i = 0; i < 10; i++) sum = mul(sum, sum);
  const scale = 2 ** k;
  return [sum[0] * scale, sum[1] * scale];
}

/** Natural log of a positive double-double, by Newton steps on exp. */
function ddLog(x: DD): DD {
  let y: DD = dd(Math.log(x[0]));
  for (let i = 0; i < 2; i++) y = add(y, sub(mul(x, ddExp(neg(y))), dd(1)));
  return y;
}

/** sin and cos of a double (|x| up to a few hundred), argument reduced by π/2 in triple precision. */
function ddSinCos(x: number): [DD, DD] {
  const k = Math.round(x / PI_2[0]);
  const r = sub(sub(dd(x), mul(dd(k), [PI_2[0], PI_2[1]])), dd(k * PI_2[2]));
  const r2 = mul(r, r);
  let s: DD = r;
  let c: DD = [1, 0];
  let sTerm: DD = r;
  let cTerm: DD = [1, 0];
  for (let i = 1; i <= 14; i++) {
    sTerm = neg(div(mul(sTerm, r2), dd((2 * i) * (2 * i + 1))));
    cTerm = neg(div(mul(cTerm, r2), dd((2 * i - 1) * (2 * i))));
    s = add(s, sTerm);
    c = add(c, cTerm);
  }
  switch (((k % 4) + 4) % 4) {
    case 0: return [s, c];
    case 1: return [c, neg(s)];
    case 2: return [neg(s), neg(c)];
    default: return [neg(c), s];
  }
}

function ddSqrt(x: DD): DD {
  const r0 = Math.sqrt(x[0]);
  if (r0 === 0) return [0, 0];
  return add(dd(r0), div(sub(x, twoProd(r0, r0)), dd(2 * r0)));
}

// Correctly rounded libm functions (glibc's results for all but rare inputs).
const crExp = (x: number): number => round(ddExp(dd(x)));
const crLog = (x: number): number => round(ddLog(dd(x)));
// glibc's log1p is fdlibm's, not correctly rounded; V8's Math.log1p is the same algorithm.
const crLog1p = (x: number): number => Math.log1p(x);
const crPow = (x: number, y: number): number => (x === 0 ? 0 : round(ddExp(mul(dd(y), ddLog(dd(x))))));
const crCos = (x: number): number => round(ddSinCos(x)[1]);
const crSin = (x: number): number => round(ddSinCos(x)[0]);
const crHypot = (x: number, y: number): number => round(ddSqrt(add(twoProd(x, x), twoProd(y, y))));

function crAtan2(y: number, x: number): number {
  const t0 = Math.atan2(y, x);
  if (y === 0 || !Number.isFinite(t0)) return t0;
  const [s, c] = ddSinCos(t0);
  // One Newton step on y·cos θ − x·sin θ = 0.
  const f = sub(mul(dd(y), c), mul(dd(x), s));
  const fp = add(mul(dd(x), c), mul(dd(y), s));
  return round(add(dd(t0), div(f, fp)));
}

type Complex = readonly [number, number];

/** glibc's clog, real part: log|z| with its cancellation-avoiding branches near |z| = 1. */
function clogReal(re: number, im: number): number {
  let absx = Math.abs(re);
  let absy = Math.abs(im);
  if (absx < absy) [absx, absy] = [absy, absx];
  const eps = Number.EPSILON;
  if (absx === 1) return crLog1p(absy * absy) / 2;
  if (absx > 1 && absx < 2 && absy < 1) {
    let d2m1 = (absx - 1) * (absx + 1);
    if (absy >= eps) d2m1 += absy * absy;
    return crLog1p(d2m1) / 2;
  }
  if (absx < 1 && absx >= 0.5 && absy < eps / 2) return crLog1p((absx - 1) * (absx + 1)) / 2;
  if (absx < 1 && absx >= 0.5 && absx * absx + absy * absy >= 0.5) {
    return crLog1p(round(sub(add(twoProd(absx, absx), twoProd(absy, absy)), dd(1)))) / 2;
  }
  return crLog(crHypot(absx, absy));
}

const cmul = ([ar, ai]: Complex, [br, bi]: Complex): Complex => [ar * br - ai * bi, ar * bi + ai * br];

/**
 * Real part of z^p as numpy computes it: integer exponents by repeated multiplication (npy_cpow),
 * others with C's cpow = cexp(p·clog z).
 */
function complexPowReal(z: Complex, p: number): number {
  if (Number.isInteger(p) && p > 0 && p < 100) {
    if (p === 1) return z[0];
    if (p === 2) return cmul(z, z)[0];
    if (p === 3) return cmul(z, cmul(z, z))[0];
    let result: Complex = [1, 0];
    let power = z;
    for (let mask = 1; ; mask <<= 1) {
      if (p & mask) result = cmul(result, power);
      if (p < mask << 1) return result[0];
      power = cmul(power, power);
    }
  }
  if (z[0] === 0 && z[1] === 0) return 0;
  const phase = p * crAtan2(z[1], z[0]);
  const magnitude = crExp(p * clogReal(z[0], z[1]));
  return Math.abs(phase) > Number.MIN_VALUE ? magnitude * crCos(phase) : magnitude;
}

/** Python's `base ** e` for a real base; a negative one gives a complex number (CPython's c_pow). */
function pythonPow(base: number, e: number): Complex {
  if (base >= 0) return [crPow(base, e), 0];
  const len = crPow(Math.abs(base), e); // hypot(base, 0) = |base|
  const phase = Math.PI * e; // atan2(0, base) = π
  return [len * crCos(phase), len * crSin(phase)];
}

/**
 * `sample_from_quad_center(total, n_samples, center, pow)`: n+1 points evenly spaced (numpy's
 * linspace) between (−center)^(1/pow) and (total−center)^(1/pow), raised to `pow`, real parts
 * truncated to integers, deduplicated and sorted, both ends dropped, shifted by `center`, with 0 in
 * front; `pow` drops by 0.02 until that gives exactly n indices. An InputError when no pow > 1 does.
 */
export function sampleFromQuadCenter(total: number, samples: number, center: number, pow: number): { indices: number[]; pow: number } {
  while (pow > 1) {
    const e = 1 / pow;
    const start = pythonPow(-center, e);
    const stop = pythonPow(total - center, e);
    const complex = start[1] !== 0 || stop[1] !== 0;
    const values = new Set<number>();
    for (let k = 0; k <= samples; k++) {
      let real: number;
      if (k === samples) {
        // numpy's linspace puts the end point exactly
        real = complex ? complexPowReal(stop, pow) : pow === 2 ? stop[0] * stop[0] : crPow(stop[0], pow);
      } else if (complex) {
        // complex step = delta / div, which numpy computes as delta times the reciprocal
        const scale = 1 / samples;
        const z: Complex = [k * ((stop[0] - start[0]) * scale) + start[0], k * ((stop[1] - start[1]) * scale) + start[1]];
        real = complexPowReal(z, pow);
      } else {
        const x = k * ((stop[0] - start[0]) / samples) + start[0];
        real = pow === 2 ? x * x : crPow(x, pow); // numpy squares for ** 2
      }
      values.add(Math.trunc(real) | 0);
    }
    const sorted = [...values].sort((a, b) => a - b).slice(1, -1);
    const indices = [0, ...sorted.map((x) => x + center)];
    if (indices.length === samples) return { indices, pow };
    pow -= 0.02;
  }
  throw new InputError('accel deepcache:pow/center', `no non-uniform schedule of ${samples} full passes over ${total} steps around center ${center}`,
    'a larger pow, a center nearer the start, or uniform=true', `pow ${pow.toFixed(2)} ≤ 1 after the official search`);
}
