/**
 * ToMe's bipartite soft matching (tomesd v0.1.3, merge.py) as ONNX ops inside segment graphs.
 *
 * The tokens are split into `dst` (one per sy×sx cell) and `src` (the rest): index lists shared by
 * the whole batch, given as graph inputs. Each src token's most similar dst (cosine similarity of
 * the metric) is its edge; the r src tokens with the strongest edges merge into their dst by an
 * unweighted mean that includes the dst itself, the others stay. Unmerging copies each dst's
 * value back to the src tokens merged into it.
 */
import type { GraphBuilder, Value } from '../graph/builder.ts';

/** The outcome of one matching, per batch row: which src tokens stay, which merge, and into which dst. */
export interface TokenMatching {
  /** [B, Na − r] positions (within src) of the src tokens left unmerged. */
  unmerged: Value;
  /** [B, r] positions (within src) of the merged src tokens. */
  merged: Value;
  /** [B, r] positions (within dst) each merged src token went into. */
  into: Value;
}

/** metric [B, N, C]; src [Na], dst [Nb] int64 token indices; r ≤ Na. */
export function matchTokens(g: GraphBuilder, metric: Value, src: Value, dst: Value, r: number): TokenMatching {
  const na = src.shape[0];
  const unit = g.normalizeLastAxis(metric);
  const a = g.gatherAxis(unit, src, 1);
  const b = g.gatherAxis(unit, dst, 1);
  // Counted with the attention core: a token-by-token product like QKᵀ.
  const scores = g.matmul(a, g.transpose(b, [0, 2, 1]), 'attention');
  const best = g.reduceMax(scores, 2);
  const bestDst = g.argmax(scores, 2);
  const order = g.topK(best, na).indices;
  const merged = g.slice(order, 1, 0, r);
  return { unmerged: g.slice(order, 1, r, na), merged, into: g.gatherElements(bestDst, merged, 1) };
}

/** [B, k] indices → [B, k, c] for element-wise gathers and scatters along the token axis. */
function alongChannels(g: GraphBuilder, index: Value, c: number): Value {
  const [batch, k] = index.shape;
  return g.repeatLastAxis(g.reshape(index, [batch, k, 1]), c);
}

/** x [B, N, C] → [B, N − r, C]: the unmerged src tokens, then every dst token (mean of itself and its merged src). */
export function mergeTokens(g: GraphBuilder, x: Value, src: Value, dst: Value, m: TokenMatching): Value {
  const c = x.shape[2];
  const r = m.merged.shape[1];
  const nb = dst.shape[0];
  const xSrc = g.gatherAxis(x, src, 1);
  const xDst = g.gatherAxis(x, dst, 1);
  const stay = g.gatherElements(xSrc, alongChannels(g, m.unmerged, c), 1);
  const moving = g.gatherElements(xSrc, alongChannels(g, m.merged, c), 1);
  const sums = g.scatterElements(xDst, alongChannels(g, m.into, c), moving, 1, 'add');
  const ones = (n: number) => g.expandToBatch(g.constant(new Float32Array(n).fill(1), [1, n, 1], 'ones'), x, [n, 1]);
  const counts = g.scatterElements(ones(nb), alongChannels(g, m.into, 1), ones(r), 1, 'add');
  return g.concat([stay, g.div(sums, counts)], 1);
}

/** y [B, N − r, C] (as mergeTokens lays it out) → [B, N, C]: every token back at its place, merged ones as copies of their dst. */
export function unmergeTokens(g: GraphBuilder, y: Value, src: Value, dst: Value, m: TokenMatching): Value {
  const c = y.shape[2];
  const stayCount = m.unmerged.shape[1];
  const yStay = g.slice(y, 1, 0, stayCount);
  const yDst = g.slice(y, 1, stayCount, y.shape[1]);
  const yMoved = g.gatherElements(yDst, alongChannels(g, m.into, c), 1);
  // Where each row of [dst | unmerged src | merged src] belongs in the full token sequence.
  const nb = dst.shape[0];
  const places = g.concat([
    g.expandToBatch(g.reshape(dst, [1, nb]), m.merged, [nb]),
    g.gatherAxis(src, m.unmerged, 0),
    g.gatherAxis(src, m.merged, 0),
  ], 1);
  const rows = g.concat([yDst, yStay, yMoved], 1);
  return g.scatterElements(rows, alongChannels(g, places, c), rows, 1);
}
