import assert from 'node:assert/strict';

/** max |a − b| / max |b|: the relative error measure the conformance tests use. */
export function relativeError(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  assert.equal(actual.length, expected.length, 'length');
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < expected.length; i++) {
    diff = Math.max(diff, Math.abs(actual[i] - expected[i]));
    scale = Math.max(scale, Math.abs(expected[i]));
  }
  return diff / scale;
}

/** A decoded image within `tolerance` of the golden at every value ([0, 1] pixel units); returns max |a − b|. */
export function assertImageClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tolerance: number, what: string): number {
  assert.equal(actual.length, expected.length, 'length');
  let worst = 0;
  for (let i = 0; i < expected.length; i++) worst = Math.max(worst, Math.abs(actual[i] - expected[i]));
  assert.ok(worst <= tolerance, `${what}: image differs by ${worst}`);
  return worst;
}

export function assertClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tolerance: number, what: string): number {
  const err = relativeError(actual, expected);
  assert.ok(Number.isFinite(err) && err <= tolerance, `${what}: relative error ${err.toExponential(3)} > ${tolerance}`);
  return err;
}

/**
 * Tolerances for one forward pass of a model component against diffusers / transformers (fp32).
 * About twice the largest relative error measured on the tiny fixtures (text encoders ≤ 4.7e-7,
 * U-Nets ≤ 9.3e-7, VAEs ≤ 2.1e-6, diffusion transformers ≤ 1.5e-6), so that a real slip fails: a
 * U-Net layer-norm epsilon of 1e-6 instead of 1e-5 moves its output by 2.8e-6 to 4.9e-6.
 */
export const COMPONENT_TOLERANCE = { textEncoder: 1.5e-6, unet: 2e-6, vae: 5e-6, transformer: 3e-6 } as const;
