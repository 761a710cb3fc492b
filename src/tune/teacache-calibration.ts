/**
 * Fitting TeaCache's rescaling polynomial to a model (users' top complaint about TeaCache:
 * coefficients fitted to someone else's model): least squares of the output change against the
 * modulated-input change, as the TeaCache authors fit theirs (numpy.polyfit, degree 4), and the
 * share of calls each threshold would compute on the recorded runs.
 */

/** Least-squares polynomial of `degree` through (x, y), numpy.polyfit's order: highest power first. */
export function fitPolynomial(xs: number[], ys: number[], degree: number): number[] {
  const n = degree + 1;
  if (xs.length < n) throw new Error(`${xs.length} samples cannot fit a degree-${degree} polynomial`);
  // Normal equations A c = b over powers 0…degree, solved with partial pivoting.
  const a = Array.from({ length: n }, (_, i) => Array.from({ length: n }, (_, j) => xs.reduce((s, x) => s + x ** (i + j), 0)));
  const b = Array.from({ length: n }, (_, i) => xs.reduce((s, x, k) => s + ys[k] * x ** i, 0));
  for (let col = 0; col < n; col++) {
    let pivot = col;
    for (let r = col + 1; r < n; r++) if (Math.abs(a[r][col]) > Math.abs(a[pivot][col])) pivot = r;
    [a[col], a[pivot]] = [a[pivot], a[col]];
    [b[col], b[pivot]] = [b[pivot], b[col]];
    for (let r = col + 1; r < n; r++) {
      const f = a[r][col] / a[col][col];
      for (let c = col; c < n; c++) a[r][c] -= f * a[col][c];
      b[r] -= f * b[col];
    }
  }
  const c = new Array<number>(n).fill(0);
  for (let r = n - 1; r >= 0; r--) c[r] = (b[r] - a[r].slice(r + 1).reduce((s, v, k) => s + v * c[r + 1 + k], 0)) / a[r][r];
  return c.reverse();
}

/** The calls TeaCache's rule computes for one run of input changes (calls 1…n−1; call 0 and the last always compute). */
export function computedCalls(changes: number[], rescale: (x: number) => number, threshold: number): number {
  const calls = changes.length + 1;
  let computed = 2;
  let accumulated = 0;
  for (let c = 1; c < calls - 1; c++) {
    accumulated += rescale(changes[c - 1]);
    if (accumulated < threshold) continue;
    computed++;
    accumulated = 0;
  }
  return computed;
}
