/** mulberry32: a small, fast, seedable generator of numbers in [0, 1) for fuzz tests. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A seeded fuzzer's draws: numbers, picks from a list, and records with a few fields made odd. */
export function fuzzDraws(seed: number) {
  const rand = prng(seed);
  const int = (n: number) => Math.floor(rand() * n);
  const pick = <T>(items: readonly T[]): T => items[int(items.length)];
  /** `base` with 1–3 fields (now and then one of `oddKeys` instead) set to one of `values`, and the changes in words. */
  const mutateFields = (base: Record<string, unknown>, values: readonly unknown[], oddKeys: readonly string[]) => {
    const mutated: Record<string, unknown> = { ...base };
    const changes: string[] = [];
    for (let n = 1 + int(3); n > 0; n--) {
      const key = rand() < 0.9 ? pick(Object.keys(base)) : pick(oddKeys);
      const value = pick(values);
      mutated[key] = value;
      changes.push(`${key}=${JSON.stringify(value) ?? String(value)}`);
    }
    return { mutated, changes: changes.join(', ') };
  };
  return { rand, int, pick, mutateFields };
}
