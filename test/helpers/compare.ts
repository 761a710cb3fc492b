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

export function assertClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tolerance: number, what: string): number {
  const err = relativeError(actual, expected);
  assert.ok(Number.isFinite(err) && err <= tolerance, `${what}: relative error ${err.toExponential(3)} > ${tolerance}`);
  return err;
}
