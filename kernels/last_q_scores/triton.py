"""Fused Triton kernel for the vertical and slash scores of the last L queries: same output as
`naive.last_q_scores_naive` (which pins the semantics), without materialising their `[B, H, L, S]` softmax.

The grid is (key tile of `BLOCK_N` keys, pack of query heads). With `pack_heads=True` a pack is the G = H/HKV
query heads of one KV head, so each program loads its K tile for all of them instead of G programs loading it once
each; by default (`pack_heads=False`, faster on an H200: the repeat loads hit L2) a pack is one head (grid
(key tiles, B*H)). A program takes its pack `GP` heads at a time
(`NG` head groups): the rows of the group's heads, `RC` per head, are stacked into one `[GP*RC, BD] x [BD, BLOCK_N]`
dot tile, and all L rows are covered `RC` at a time (`NCH` chunks). `GP` is capped (`_heads_per_tile`) so that a dot
has at most 128 rows and the widest fp32 tile at most 4096 elements; the scores pass also holds the `[rows, BT]`
diagonal gather, so it may stack fewer heads (at L=128, BLOCK_N=64: 2 heads per dot in pass 1, 1 in pass 2). The
head-group and row-chunk loops are runtime loops: unrolled, the packed kernels spilled kilobytes on sm_90. The head
dim is taken in `BD`-wide slices (head dim 256 fits in shared memory). The logits are rounded as
`methods.minference._scaled_logits` rounds them (fp32 dot, scale in fp32, one rounding to the input dtype).

* pass 1 (`_lastq_stats`): per (row, key tile), the tile's max `m_t` and `sum exp(s - m_t)`, written to scratch;
  torch reduces them over the tiles to each row's final `(m, l)` (deterministic: no atomics).
* pass 2 (`_lastq_scores`): the logits again, `p = exp(s - m) / l`; the tile's column sums (per head) are the
  program's own slices of `vertical`; its diagonal sums (`tl.gather` skews each row chunk so that diagonals become
  columns) go to a scratch `[B*H, n_tiles, BT]` (BT >= BLOCK_N + L - 1), and the overlapping partials of neighbouring
  tiles are added into `slash` (`_combine_parts`; with `_COMBINE_KERNEL` off, torch's shifted slice adds;
  deterministic either way).

Row-block kernels (`rows=True`, or by default the scores pass for more than 32 queries; unpacked heads, power-of-two
head dims): the grid is (run of `tiles_per_program` key tiles, query head, block of rows). A program loads its rows'
queries once and walks its key tiles, one `[rows, D] x [D, BLOCK_N]` dot per tile: pass 1 keeps each row's online
(m, l) over its tiles (scratch `[B*H, programs, L]`), pass 2 writes each tile's column sums and diagonal sums per row
block (`_RB_SCORES` rows, which bound the gather's registers), and the combine kernel adds the row blocks (the
diagonals of row block rb shifted by rb * rows). Same values up to rounding. With `_WRAP_GATHER` (the default) the
pass-2 skew is cyclic within the key tile: a `[rows, BLOCK_N]` gather whose wrapped entries are the diagonals
BLOCK_N further on, summed apart into the same `[.., 2 * BLOCK_N]` partials. With `_TRANS_SCORES` (the default
since session 10, where the row block is as long as the key tile) the scores pass computes each tile transposed,
`[keys, rows]` (`_scores_tiles_t`): the column sums and the skew stay within a quad of a warp, and the wrapped
diagonals of a tile are carried into the next one down (the same offsets), one cross-warp sum a tile; with
`_KEY_GATHER` (the default since session 15) the skew runs along the keys instead, through shared memory, and the
diagonal sums stay within quads too.

The diagonal partials of either kind of kernel (per key tile, and per row block) are added into `slash` by one
more kernel (`_combine_parts`, fixed order, deterministic), which also adds the row blocks' column sums.

Fast arithmetic (`_FAST`, on by default for the row-block and importance kernels; the module comment at `_FAST`
has the measurements): key tiles that every row sees whole skip the masks, and each probability is one FMA and one
flushed `ex2.approx` (`_ex2`) times the row's 1 / l. Values then differ from the plain arithmetic in the rounding
of the exponential and in probabilities below 2**-126, which become 0. In compiled bf16 row-block kernels the logits'
rounding is one packed PTX conversion per two values (`_ASM_ROUND`: the same values as the casts).

Both passes write the same scratch, per query head, whether heads are packed or not. Within a program the K tile's
slices are loaded again for each row tile (`NG * NCH` times): after the first, from L1/L2 rather than DRAM.

`last_q_importance_triton` (PBS-Attn's key importance, `naive.last_q_importance_naive`) runs the same pass 1 with
no causal mask over the first `n_keys` keys and PBS's logit rounding (`ROUND_DOT`: the fp32 dot rounded to the input
dtype, then scaled in fp32 and rounded again, as `torch.matmul(...).mul_(scale)` on a 16-bit tensor rounds), then
pass 2 with `IMPORTANCE` (no diagonal gather, each column sum divided by L). Without the gather, both of
its passes stack as many heads per dot as the stats pass does.

K is read at its KV head (`h // G`), never repeated. Under `TRITON_INTERPRET=1` the loads are cast to fp32 before
`tl.dot` (the interpreter's low-precision dot is unreliable); the variable must be set before triton is first
imported.
"""
from __future__ import annotations

import os

import torch
import triton.language as tl

from .._jit import per_mode
from ..block_means.triton import _DTYPES, _to_dtype
from .. import runs_triton
from .naive import _check, stack_scores

__all__ = ["last_q_importance_triton", "last_q_scores_and_means_triton", "last_q_scores_stacked_triton",
           "last_q_scores_triton", "scaled_last_rows", "supports"]


_LOG2E = tl.constexpr(1.4426950408889634)


def _ex2(x, INTERPRET: tl.constexpr):
    """2 ** x by the hardware approximation with denormals flushed to zero: one MUFU.EX2 (tl.exp / tl.exp2 add a
    range fix-up around it: several more instructions per element in kernels that issue-bound)."""
    if INTERPRET:
        return tl.exp2(x)
    return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True,
                                     pack=1)


def _round_bf16(x):
    """x rounded to bf16 (to nearest, ties to even), kept in fp32: one packed conversion per two elements."""
    return tl.inline_asm_elementwise(
        "{ .reg .b32 t; cvt.rn.bf16x2.f32 t, $3, $2; shl.b32 $0, t, 16; and.b32 $1, t, 0xffff0000; }",
        "=r,=r,f,f", [x], dtype=tl.float32, is_pure=True, pack=2)


def _probs(s, m, inv_l, FAST: tl.constexpr, INTERPRET: tl.constexpr):
    """exp(s - m) / l per row: with `FAST` as 2 ** (s * log2 e - m * log2 e) (one FMA and one MUFU) times the
    row's 1 / l; without, tl.exp and the product with 1 / l."""
    if FAST:
        return _ex2(s * _LOG2E - (m * _LOG2E)[:, None], INTERPRET) * inv_l[:, None]
    return tl.exp(s - m[:, None]) * inv_l[:, None]


def _exp_sum(s, m_safe, FAST: tl.constexpr, INTERPRET: tl.constexpr):
    """Row sums of exp(s - m_safe) (pass 1), the exponential as in `_probs`."""
    if FAST:
        return tl.sum(_ex2(s * _LOG2E - (m_safe * _LOG2E)[:, None], INTERPRET), 1)
    return tl.sum(tl.exp(s - m_safe[:, None]), 1)


def _tile_logits(q_rows, k_base, row, row_ok, keys, key_ok, sks, scale, S, L,
                 D: tl.constexpr, BD: tl.constexpr, R: tl.constexpr, BLOCK_N: tl.constexpr,
                 INTERPRET: tl.constexpr, PREC: tl.constexpr, CAUSAL: tl.constexpr, ROUND_DOT: tl.constexpr,
                 whole=False):
    """Masked logits `[R, BLOCK_N]` of `R` query rows (`q_rows`: each row's pointer, possibly of different heads
    that share this K) against one key tile; `row` is each row's index among the last L (its causal position,
    used only with `CAUSAL`). `ROUND_DOT` picks the rounding of the caller's torch path (see the module doc)."""
    dd = tl.arange(0, BD)
    acc = tl.zeros([R, BLOCK_N], dtype=tl.float32)
    k_ptr = k_base + keys.to(tl.int64)[:, None] * sks
    for d0 in tl.static_range(0, D, BD):
        qt = tl.load(q_rows[:, None] + (d0 + dd)[None, :], mask=row_ok[:, None], other=0.0)
        kt = tl.load(k_ptr + (d0 + dd)[None, :], mask=key_ok[:, None], other=0.0)
        if INTERPRET:
            qt = qt.to(tl.float32)
            kt = kt.to(tl.float32)
        acc = tl.dot(qt, tl.trans(kt), acc, input_precision=PREC)
    return _round_and_mask(acc, q_rows.dtype.element_ty, row, row_ok, keys, key_ok, scale, S, L, CAUSAL, ROUND_DOT,
                           whole)


def _round_and_mask(acc, dt, row, row_ok, keys, key_ok, scale, S, L, CAUSAL: tl.constexpr,
                    ROUND_DOT: tl.constexpr, whole=False, ASM_ROUND: tl.constexpr = False):
    """fp32 dot products -> the logits of the caller's torch path (rounded as it rounds them, see the module doc),
    -inf outside the rows, keys and (with `CAUSAL`) each row's causal range. `whole` (a runtime flag, uniform over
    the program): the caller knows every row and key of the tile to be inside, so no mask is built. `ASM_ROUND`
    (compiled bf16 kernels only: inline PTX): `_round_bf16` instead of the casts of `_scaled_logits`' rounding
    (`ROUND_DOT` takes precedence)."""
    if ROUND_DOT:
        # PBS: `torch.matmul(...).mul_(scale)` rounds the product to the input dtype, then the scaled value again
        s = (acc.to(dt).to(tl.float32) * scale).to(dt).to(tl.float32)
    elif ASM_ROUND:
        # `_scaled_logits`' rounding (bf16 inputs), its result kept in fp32 (`_ASM_ROUND`)
        s = _round_bf16(acc * scale)
    else:
        # `_scaled_logits`: scale in fp32, one rounding to the input dtype
        s = (acc * scale).to(dt).to(tl.float32)
    if not whole:
        keep = row_ok[:, None] & key_ok[None, :]
        if CAUSAL:
            keep = keep & (keys[None, :] <= (S - L + row)[:, None])
        s = tl.where(keep, s, float("-inf"))
    return s


def _lastq_stats(Q, K, MT, LT, sqb, sqh, sqt, skb, skh, sks, smb, smt, S, L, H, G, HP, scale,
                 D: tl.constexpr, BD: tl.constexpr, RC: tl.constexpr, NCH: tl.constexpr, GP: tl.constexpr,
                 NG: tl.constexpr, BLOCK_N: tl.constexpr, INTERPRET: tl.constexpr, PREC: tl.constexpr,
                 CAUSAL: tl.constexpr = True, ROUND_DOT: tl.constexpr = False, FAST: tl.constexpr = False,
                 EVEN: tl.constexpr = False):
    pid_n = tl.program_id(0)
    pid_p = tl.program_id(1)
    b = (pid_p // (H // HP)).to(tl.int64)
    h0 = (pid_p % (H // HP)) * HP
    k_base = K + b * skb + (h0 // G).to(tl.int64) * skh
    keys = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    key_ok = keys < S
    whole = _whole_tile(pid_n, S, L, BLOCK_N, CAUSAL, FAST, EVEN)
    r = tl.arange(0, GP * RC)
    for j in range(NG):
        hp = j * GP + r // RC  # head within the pack
        bh = b * H + (h0 + hp).to(tl.int64)
        q_head = Q + b * sqb + (h0 + hp).to(tl.int64) * sqh
        out = bh * smb + pid_n.to(tl.int64) * smt
        for c in range(NCH):
            row = c * RC + r % RC
            row_ok = (hp < HP) & (row < L)
            s = _tile_logits(q_head + row.to(tl.int64) * sqt, k_base, row, row_ok, keys, key_ok, sks, scale, S, L,
                             D, BD, GP * RC, BLOCK_N, INTERPRET, PREC, CAUSAL, ROUND_DOT, whole)
            m = tl.max(s, 1)
            m_safe = tl.where(m == float("-inf"), 0.0, m)  # a row that sees no key of this tile: l = 0
            l = _exp_sum(s, m_safe, FAST, INTERPRET)
            tl.store(MT + out + row, m, mask=row_ok)
            tl.store(LT + out + row, l, mask=row_ok)


def _lastq_scores(Q, K, M, LS, V, DG, sqb, sqh, sqt, skb, skh, sks, smb, svb, sdb, sdt, S, L, H, G, HP, scale,
                  D: tl.constexpr, BD: tl.constexpr, RC: tl.constexpr, NCH: tl.constexpr, GP: tl.constexpr,
                  NG: tl.constexpr, BLOCK_N: tl.constexpr, BT: tl.constexpr, INTERPRET: tl.constexpr,
                  PREC: tl.constexpr, IMPORTANCE: tl.constexpr, FAST: tl.constexpr = False, EVEN: tl.constexpr = False):
    """Pass 2. MInference/FlexPrefill (IMPORTANCE=False): per key column the sum over the L rows of the causal softmax
    probability (`V`) and the tile's diagonal sums (`DG`). PBS (IMPORTANCE=True, `last_q_importance_triton`): per key
    column the mean over the L rows of the unmasked probability, PBS's two logit roundings; no diagonals (`DG`, `sdb`,
    `sdt`, `BT` unused); `S` is then the number of keys scored (n_keys), not K's length."""
    pid_n = tl.program_id(0)
    pid_p = tl.program_id(1)
    b = (pid_p // (H // HP)).to(tl.int64)
    h0 = (pid_p % (H // HP)) * HP
    k_base = K + b * skb + (h0 // G).to(tl.int64) * skh
    keys = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    key_ok = keys < S
    whole = _whole_tile(pid_n, S, L, BLOCK_N, not IMPORTANCE, FAST, EVEN)
    tt = tl.arange(0, BT)
    r = tl.arange(0, GP * RC)
    gg = tl.arange(0, GP)
    for j in range(NG):
        hp = j * GP + r // RC
        bh = b * H + (h0 + hp).to(tl.int64)
        q_head = Q + b * sqb + (h0 + hp).to(tl.int64) * sqh
        col = tl.zeros([GP, BLOCK_N], dtype=tl.float32)
        diag = tl.zeros([GP, BT], dtype=tl.float32)
        for c in range(NCH):
            row = c * RC + r % RC
            row_ok = (hp < HP) & (row < L)
            s = _tile_logits(q_head + row.to(tl.int64) * sqt, k_base, row, row_ok, keys, key_ok, sks, scale, S, L,
                             D, BD, GP * RC, BLOCK_N, INTERPRET, PREC, not IMPORTANCE, IMPORTANCE, whole)
            m = tl.load(M + bh * smb + row, mask=row_ok, other=0.0)
            l = tl.load(LS + bh * smb + row, mask=row_ok, other=1.0)
            if FAST:
                p = _probs(s, m, 1.0 / l, FAST, INTERPRET)
            else:
                p = tl.exp(s - m[:, None]) / l[:, None]  # masked logits (-inf) give exactly 0
            # rows are head-major (RC consecutive rows per head): splitting the row axis separates the heads
            col += tl.sum(tl.reshape(p, [GP, RC, BLOCK_N]), 1)
            if not IMPORTANCE:
                # diagonal t = row - key_in_tile + BN - 1: entry (r, t) of the skewed chunk is p[r, row[r] + BN-1 - t]
                idx = row[:, None] + (BLOCK_N - 1) - tt[None, :]
                inside = (idx >= 0) & (idx < BLOCK_N)
                g = tl.where(inside, tl.gather(p, tl.where(inside, idx, 0), 1), 0.0)
                diag += tl.sum(tl.reshape(g, [GP, RC, BT]), 1)
        hg = j * GP + gg
        hg_ok = hg < HP
        bhg = b * H + (h0 + hg).to(tl.int64)
        if IMPORTANCE:
            # a true division, as torch's mean divides the fp32 column sum by L
            tl.store(V + bhg[:, None] * svb + keys[None, :], col / L, mask=hg_ok[:, None] & key_ok[None, :])
        else:
            tl.store(V + bhg[:, None] * svb + keys[None, :], col, mask=hg_ok[:, None] & key_ok[None, :])
            tl.store(DG + bhg[:, None] * sdb + pid_n.to(tl.int64) * sdt + tt[None, :], diag, mask=hg_ok[:, None])


def _like(x, ref):
    """`x` (int32) unchanged, in `ref`'s register layout (compiled kernels only): an opaque copy whose operands
    must share a layout, so the compiler gives `x` the one `ref` (a dot's result) has."""
    return tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r,f", [x, ref], dtype=tl.int32, is_pure=True, pack=1)


def _st(ptr, x, mask, INTERPRET: tl.constexpr):
    """`tl.store(ptr, x, mask)` for fp32 `x` (`mask` a tensor like `x`); compiled, as inline PTX from `x`'s own
    register layout: Triton moves a reduction's result through shared memory (two barriers) to a store layout without
    the copies that a reduction leaves in the lanes of a quad; these copies store the same value to the same
    address."""
    if INTERPRET:
        tl.store(ptr, x, mask=mask)
    else:
        tl.inline_asm_elementwise("{ .reg .pred p; setp.ne.b32 p, $3, 0; @p st.global.f32 [$1], $2; mov.b32 $0, 0; }",
                                  "=r,l,f,r", [ptr.to(tl.int64), x, mask.to(tl.int32)], dtype=tl.int32,
                                  is_pure=False, pack=1)


def _flat_tile(p, BLOCK_N: tl.constexpr, RB: tl.constexpr):
    """The `[BLOCK_N keys, RB rows]` tile flat, in the order `_flat_slot` gives (bits of the flat index, high to
    low: key / 8, row / 8, row % 2, row / 2 % 4, key % 8). Triton's shared-memory gather stores and loads at the flat
    index: in this order the stores of a tile in a dot's register layout (a quad's lanes on row bits 1-2, the quads on
    key bits 0-2) and the loads of the diagonal skew (key = row - diagonal - 1) each fall on 32 distinct banks, where
    the plain row-major order put every load on 4 banks (8-way conflicts)."""
    x = tl.reshape(p, [BLOCK_N // 8, 8, RB // 8, 4, 2])
    return tl.reshape(tl.permute(x, (0, 2, 4, 3, 1)), [BLOCK_N * RB])


def _flat_slot(key, row, BLOCK_N: tl.constexpr, RB: tl.constexpr):
    """Where `_flat_tile` puts entry (key, row)."""
    return (((key >> 3) * (RB // 8) + (row >> 3)) * 2 + (row & 1)) * 32 + ((row >> 1) & 3) * 8 + (key & 7)


def _whole_tile(tile, S, L, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, FAST: tl.constexpr, EVEN: tl.constexpr):
    """Whether key tile `tile` needs no mask (`FAST` only, and only where the caller's row tiles are all inside,
    `EVEN`): all its keys exist and, with `CAUSAL`, lie at or before the first of the last L positions."""
    if FAST and EVEN:
        if CAUSAL:
            return (tile + 1) * BLOCK_N <= S - L + 1
        return (tile + 1) * BLOCK_N <= S
    return False


def _k_tile(k_base, sks, tile, key_ok, D: tl.constexpr, BLOCK_N: tl.constexpr, INTERPRET: tl.constexpr):
    """Key tile `tile` `[BLOCK_N, D]` of a KV head (fp32 under the interpreter)."""
    dd = tl.arange(0, D)
    # 64-bit tile start plus 32-bit offsets within the tile (loop invariant; the wrappers check BLOCK_N * sks
    # fits): a 64-bit multiply per key row and tile made up about a tenth of the scores loop on sm_90
    koff = tl.arange(0, BLOCK_N)[:, None] * sks + dd[None, :]
    kt = tl.load(k_base + (tile * BLOCK_N).to(tl.int64) * sks + koff, mask=key_ok[:, None], other=0.0)
    if INTERPRET:
        kt = kt.to(tl.float32)
    return kt


def _block_logits(q, k_base, sks, tile, keys, key_ok, row, row_ok, scale, S, L,
                  D: tl.constexpr, BLOCK_N: tl.constexpr, INTERPRET: tl.constexpr, PREC: tl.constexpr,
                  CAUSAL: tl.constexpr, ROUND_DOT: tl.constexpr, whole=False, ASM_ROUND: tl.constexpr = False):
    """`_tile_logits` for the row-block kernels: the block's query rows `q [RB, D]` are already loaded (once per
    program); one `[BLOCK_N, D]` K tile (key tile `tile`, whose keys are `keys`), one dot over the whole head dim,
    the same roundings and masks (in K's dtype, which is the queries')."""
    acc = tl.dot(q, tl.trans(_k_tile(k_base, sks, tile, key_ok, D, BLOCK_N, INTERPRET)), input_precision=PREC)
    return _round_and_mask(acc, k_base.dtype.element_ty, row, row_ok, keys, key_ok, scale, S, L, CAUSAL, ROUND_DOT,
                           whole, ASM_ROUND)


def _block_logits_t(q, k_base, sks, tile, keys, key_ok, row, row_ok, scale, S, L,
                    D: tl.constexpr, BLOCK_N: tl.constexpr, INTERPRET: tl.constexpr, PREC: tl.constexpr,
                    whole=False, ASM_ROUND: tl.constexpr = False):
    """`_block_logits` transposed, `[BLOCK_N, RB]` (key, row), causal and rounded alike: the K tile is the dot's
    first operand, so each key's logits over the block's rows lie in one quad of a warp (`TRANS`)."""
    acc = tl.dot(_k_tile(k_base, sks, tile, key_ok, D, BLOCK_N, INTERPRET), tl.trans(q), input_precision=PREC)
    if ASM_ROUND:
        s = _round_bf16(acc * scale)
    else:
        s = (acc * scale).to(k_base.dtype.element_ty).to(tl.float32)
    if not whole:
        keep = key_ok[:, None] & row_ok[None, :] & (keys[:, None] <= (S - L + row)[None, :])
        s = tl.where(keep, s, float("-inf"))
    return s


def _block_rows(q_head, row, row_ok, sqt, D: tl.constexpr, INTERPRET: tl.constexpr):
    """A row block's queries `[RB, D]` (fp32 under the interpreter)."""
    dd = tl.arange(0, D)
    q = tl.load(q_head + row.to(tl.int64)[:, None] * sqt + dd[None, :], mask=row_ok[:, None], other=0.0)
    if INTERPRET:
        q = q.to(tl.float32)
    return q


def _block_mean(head, blk, row_stride, S, NB, D: tl.constexpr, MBS: tl.constexpr, BR: tl.constexpr):
    """fp32 mean `[D]` of rows blk * MBS ... of a head (`head`: its first row), summed BR rows at a time; zeros past
    the S rows or for blk >= NB."""
    dd = tl.arange(0, D)
    rr = tl.arange(0, BR)
    acc = tl.zeros([BR, D], dtype=tl.float32)  # reduced over the rows once, after the loop
    for r0 in range(0, MBS, BR):
        rows = blk * MBS + r0 + rr
        x = tl.load(head + rows.to(tl.int64)[:, None] * row_stride + dd[None, :],
                    mask=((rows < S) & (blk < NB))[:, None], other=0.0)
        acc += x.to(tl.float32)
    return tl.sum(acc, 0) / tl.maximum(tl.minimum(MBS, S - blk * MBS), 1).to(tl.float32)


def _side_means(QF, K, QM, KM, j, b, h, H, G, S, sqfb, sqfh, sqft, skb, skh, sks, sqmb, sqmh, skmb, skmh, NB, SJ,
                q_scale, D: tl.constexpr, MBS: tl.constexpr, BR: tl.constexpr, DT: tl.constexpr,
                I_QB: tl.constexpr, I_KB: tl.constexpr, INTERPRET: tl.constexpr):
    """Side program j of query head (b, h) in the stats launch (`MEANS`): the block means of that head's queries,
    blocks j, j + SJ, ..., scaled, and of its KV head's keys, blocks h % G + G * (j + SJ * i) (the G query heads of
    a KV head share its blocks), as `kernels/block_means` computes them (fp32 sums of MBS rows, BR rows at a time,
    divided by the row count, rounded to DT; the queries' mean times q_scale rounded again)."""
    dd = tl.arange(0, D)
    q_head = QF + b * sqfb + h * sqfh
    n_q = (NB - j + SJ - 1) // SJ
    for i in range(0, I_QB if INTERPRET else n_q):
        blk = j + SJ * i
        mean = _to_dtype(_to_dtype(_block_mean(q_head, blk, sqft, S, NB, D, MBS, BR), DT).to(tl.float32) * q_scale,
                         DT)
        tl.store(QM + b * sqmb + h * sqmh + blk.to(tl.int64) * D + dd, mean, mask=(blk < NB) & (dd < D))
    k_head = K + b * skb + (h // G) * skh
    first = h % G + G * j
    n_k = (NB - first + SJ * G - 1) // (SJ * G)
    for i in range(0, I_KB if INTERPRET else n_k):
        blk = first + SJ * G * i
        tl.store(KM + b * skmb + (h // G) * skmh + blk.to(tl.int64) * D + dd,
                 _to_dtype(_block_mean(k_head, blk, sks, S, NB, D, MBS, BR), DT), mask=(blk < NB) & (dd < D))


def _lastq_stats_rows(Q, K, MT, LT, sqb, sqh, sqt, skb, skh, sks, smb, smt, S, L, H, G, scale,
                      D: tl.constexpr, RB: tl.constexpr, BLOCK_N: tl.constexpr, TPP: tl.constexpr,
                      INTERPRET: tl.constexpr, PREC: tl.constexpr, CAUSAL: tl.constexpr = True,
                      ROUND_DOT: tl.constexpr = False, FAST: tl.constexpr = False, EVEN: tl.constexpr = False,
                      ASM_ROUND: tl.constexpr = False, MEANS: tl.constexpr = False, NPT=1, QF=None, QM=None,
                      KM=None, sqfb=0, sqfh=0, sqft=0, sqmb=0, sqmh=0, skmb=0, skmh=0, NB=1, SJ=1, q_scale=1.0,
                      MBS: tl.constexpr = 128, BR: tl.constexpr = 32, DT: tl.constexpr = tl.bfloat16,
                      I_QB: tl.constexpr = 0, I_KB: tl.constexpr = 0, KT=None, kslot=0,
                      K_TABLE: tl.constexpr = False, PERSIST: tl.constexpr = False, NBH=1, NUNITS=1,
                      I_UN: tl.constexpr = 0):
    """Row-block pass 1: program (run of TPP key tiles, query head, block of RB rows); the rows' (m, l) over its
    tiles by the online rule, one (m, l) per row and program. With `MEANS` the launch has SJ more programs per query
    head along axis 0 (from NPT on, row block 0 only) that compute block means instead (`_side_means`): bound by
    memory bandwidth, they run beside the stats programs, which are bound by instruction latency. With `K_TABLE` K's
    address is read from `KT[kslot]` when the kernel runs (K then only types the pointer). With `PERSIST` (not with
    `MEANS`) a 1-D grid of programs takes the NUNITS = NPT * NBH * row blocks units of that grid in turn (unit u:
    run u % NPT, head (u // NPT) % NBH, row block u // (NPT * NBH)): the same values, from fewer programs."""
    if K_TABLE:
        # 16-byte alignment promised (the callers check the address): without it the K loads were not pipelined
        K = tl.multiple_of(tl.load(KT + kslot).to(tl.pointer_type(K.dtype.element_ty)), 16)
    if PERSIST:
        for i in range(0, I_UN if INTERPRET else tl.cdiv(NUNITS - tl.program_id(0), tl.num_programs(0))):
            u = tl.program_id(0) + i * tl.num_programs(0)
            if u < NUNITS:
                _stats_unit(Q, K, MT, LT, sqb, sqh, sqt, skb, skh, sks, smb, smt, S, L, H, G, scale, u % NPT,
                            ((u // NPT) % NBH).to(tl.int64), u // (NPT * NBH), D, RB, BLOCK_N, TPP, INTERPRET, PREC,
                            CAUSAL, ROUND_DOT, FAST, EVEN, ASM_ROUND)
        return
    pid_t = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    if MEANS:
        if pid_t >= NPT:
            if tl.program_id(2) == 0:
                _side_means(QF, K, QM, KM, pid_t - NPT, bh // H, bh % H, H, G, S, sqfb, sqfh, sqft, skb, skh, sks,
                            sqmb, sqmh, skmb, skmh, NB, SJ, q_scale, D, MBS, BR, DT, I_QB, I_KB, INTERPRET)
            return
    _stats_unit(Q, K, MT, LT, sqb, sqh, sqt, skb, skh, sks, smb, smt, S, L, H, G, scale, pid_t, bh,
                tl.program_id(2), D, RB, BLOCK_N, TPP, INTERPRET, PREC, CAUSAL, ROUND_DOT, FAST, EVEN, ASM_ROUND)


def _stats_unit(Q, K, MT, LT, sqb, sqh, sqt, skb, skh, sks, smb, smt, S, L, H, G, scale, pid_t, bh, rbi,
                D: tl.constexpr, RB: tl.constexpr, BLOCK_N: tl.constexpr, TPP: tl.constexpr,
                INTERPRET: tl.constexpr, PREC: tl.constexpr, CAUSAL: tl.constexpr, ROUND_DOT: tl.constexpr,
                FAST: tl.constexpr, EVEN: tl.constexpr, ASM_ROUND: tl.constexpr):
    """`_lastq_stats_rows`' work for run `pid_t` of key tiles, query head `bh` (batch entry and head), row block
    `rbi`."""
    b = bh // H
    h = bh % H
    row = rbi * RB + tl.arange(0, RB)
    row_ok = row < L
    q = _block_rows(Q + b * sqb + h * sqh, row, row_ok, sqt, D, INTERPRET)
    k_base = K + b * skb + (h // G) * skh
    m = tl.full([RB], float("-inf"), dtype=tl.float32)
    l = tl.zeros([RB], dtype=tl.float32)
    for t in range(TPP):
        tile = pid_t * TPP + t
        keys = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        s = _block_logits(q, k_base, sks, tile, keys, keys < S, row, row_ok, scale, S, L, D, BLOCK_N, INTERPRET,
                          PREC, CAUSAL, ROUND_DOT, _whole_tile(tile, S, L, BLOCK_N, CAUSAL, FAST, EVEN), ASM_ROUND)
        m_new = tl.maximum(m, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no key seen yet: l stays 0
        if FAST:
            l = l * _ex2((m - m_safe) * _LOG2E, INTERPRET) + _exp_sum(s, m_safe, FAST, INTERPRET)
        else:
            l = l * tl.exp(m - m_safe) + tl.sum(tl.exp(s - m_safe[:, None]), 1)
        m = m_new
    out = bh * smb + pid_t.to(tl.int64) * smt + row
    tl.store(MT + out, m, mask=row_ok)
    tl.store(LT + out, l, mask=row_ok)


def _part_stats(MT, LT, base, NP, smt, row, row_ok, PB: tl.constexpr, I_NP: tl.constexpr, INTERPRET: tl.constexpr):
    """The rows' final `(m, l)` from pass 1's per-part partials at `MT / LT + base` (`[NP, rows]`, part stride
    `smt`), reduced over the parts in ascending order, PB at a time: the maximum, then the sum of l * exp(m_part - m)
    (m 0 on rows outside `row_ok`)."""
    pp = tl.arange(0, PB)
    m = tl.full(row.shape, float("-inf"), dtype=tl.float32)
    for p0 in range(0, I_NP if INTERPRET else NP, PB):
        at = base + (p0 + pp).to(tl.int64)[:, None] * smt + row[None, :]
        ok = ((p0 + pp) < NP)[:, None] & row_ok[None, :]
        m = tl.maximum(m, tl.max(tl.load(MT + at, mask=ok, other=float("-inf")), 0))
    m = tl.where(row_ok, m, 0.0)
    l = tl.zeros(row.shape, dtype=tl.float32)
    for p0 in range(0, I_NP if INTERPRET else NP, PB):
        at = base + (p0 + pp).to(tl.int64)[:, None] * smt + row[None, :]
        ok = ((p0 + pp) < NP)[:, None] & row_ok[None, :]
        mt = tl.load(MT + at, mask=ok, other=float("-inf"))
        l += tl.sum(tl.load(LT + at, mask=ok, other=0.0) * tl.exp(mt - m[None, :]), 0)
    return m, l


def _lastq_scores_rows(Q, K, M, LS, V, DG, sqb, sqh, sqt, skb, skh, sks, smb, svr, svb, sdr, sdb, sdt, S, L, H, G,
                       NT, scale, D: tl.constexpr, RB: tl.constexpr, BLOCK_N: tl.constexpr, BT: tl.constexpr,
                       TPP: tl.constexpr, INTERPRET: tl.constexpr, PREC: tl.constexpr, IMPORTANCE: tl.constexpr,
                       FAST: tl.constexpr = False, EVEN: tl.constexpr = False, WRAP: tl.constexpr = False,
                       NPG=1, smt=0, STATS_IN: tl.constexpr = False, PB: tl.constexpr = 16,
                       I_NPG: tl.constexpr = 0, ASM_ROUND: tl.constexpr = False, TRANS: tl.constexpr = False,
                       FOLD_L: tl.constexpr = False, KT=None, kslot=0, K_TABLE: tl.constexpr = False,
                       KEY_GATHER: tl.constexpr = False):
    """Row-block pass 2 (`_lastq_scores`' outputs, per row block): each tile's column sums over the block's rows go
    to `V[row block]`, its diagonal sums (indexed by the row within the block) to `DG[row block]`; `_combine` adds
    the row blocks. The diagonal sums skew the `[RB, BLOCK_N]` probabilities in registers (`tl.gather`) so that
    diagonals become columns: into a `[RB, BT]` tile, or with `WRAP` (needs RB <= BLOCK_N and BT == 2 * BLOCK_N)
    cyclically into a `[RB, BLOCK_N]` tile whose entries that wrapped around are the diagonals BLOCK_N further on,
    summed apart (half the gathered entries; the same sums). With `STATS_IN`, `M` / `LS` are pass 1's per-program
    partials `[B*H, NPG, L]` (program stride `smt`), reduced here to each row's (m, l) as `_row_stats` reduces them
    (the same maximum; the sum in another fixed order) instead of by torch between the passes. `K_TABLE`: as in
    `_lastq_stats_rows`."""
    if K_TABLE:
        K = tl.multiple_of(tl.load(KT + kslot).to(tl.pointer_type(K.dtype.element_ty)), 16)
    pid_t = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    rb = tl.program_id(2)
    b = bh // H
    h = bh % H
    r = tl.arange(0, RB)
    row = rb * RB + r
    row_ok = row < L
    q = _block_rows(Q + b * sqb + h * sqh, row, row_ok, sqt, D, INTERPRET)
    k_base = K + b * skb + (h // G) * skh
    if STATS_IN:
        m, l = _part_stats(M, LS, bh * smb, NPG, smt, row, row_ok, PB, I_NPG, INTERPRET)
        inv_l = 1.0 / tl.where(row_ok, l, 1.0)
    else:
        m = tl.load(M + bh * smb + row, mask=row_ok, other=0.0)
        inv_l = 1.0 / tl.load(LS + bh * smb + row, mask=row_ok, other=1.0)
    tt = tl.arange(0, BT)
    v_base = V + rb.to(tl.int64) * svr + bh * svb
    d_base = DG + rb.to(tl.int64) * sdr + bh * sdb
    if TRANS:
        _scores_tiles_t(q, k_base, sks, m, inv_l, row, row_ok, v_base, d_base, sdt, pid_t, scale, S, L, NT, D, RB,
                        BLOCK_N, TPP, INTERPRET, PREC, FAST, EVEN, ASM_ROUND, FOLD_L, KEY_GATHER)
        return
    for t in range(TPP):
        tile = pid_t * TPP + t
        keys = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        key_ok = keys < S
        s = _block_logits(q, k_base, sks, tile, keys, key_ok, row, row_ok, scale, S, L, D, BLOCK_N, INTERPRET,
                          PREC, not IMPORTANCE, IMPORTANCE,
                          _whole_tile(tile, S, L, BLOCK_N, not IMPORTANCE, FAST, EVEN), ASM_ROUND)
        p = _probs(s, m, inv_l, FAST, INTERPRET)
        tl.store(v_base + keys, tl.sum(p, 0), mask=key_ok)
        if not IMPORTANCE and WRAP:
            # column u of the cyclic skew holds key (r - 1 - u) mod BN of row r, on diagonal u, or u + BN where the
            # key lies before the row (r - key >= 1; at most RB - 1 <= BN, so no third wrap)
            cu = tl.arange(0, BLOCK_N)
            src = (r[:, None] + (BLOCK_N - 1) - cu[None, :]) & (BLOCK_N - 1)
            # 0/1 weights (exact products) rather than selects: the compiler kept the select masks as predicate
            # bits in registers and rebuilt them every tile
            far = (cu[None, :] < r[:, None]).to(tl.float32)
            g = tl.gather(p, src, 1)
            d_tile = d_base + tile.to(tl.int64) * sdt
            tl.store(d_tile + cu, tl.sum(g * (1.0 - far), 0), mask=tile < NT)
            tl.store(d_tile + BLOCK_N + cu, tl.sum(g * far, 0), mask=tile < NT)
        elif not IMPORTANCE:
            # diagonal t = r - key_in_tile + BN - 1 (r: the row within the block): entry (r, t) is p[r, r + BN-1 - t]
            idx = r[:, None] + (BLOCK_N - 1) - tt[None, :]
            inside = (idx >= 0) & (idx < BLOCK_N)
            g = tl.where(inside, tl.gather(p, tl.where(inside, idx, 0), 1), 0.0)
            tl.store(d_base + tile.to(tl.int64) * sdt + tt, tl.sum(g, 0), mask=(tt < BT) & (tile < NT))


def _scores_tiles_t(q, k_base, sks, m, inv_l, row, row_ok, v_base, d_base, sdt, pid_t, scale, S, L, NT,
                    D: tl.constexpr, RB: tl.constexpr, BLOCK_N: tl.constexpr, TPP: tl.constexpr,
                    INTERPRET: tl.constexpr, PREC: tl.constexpr, FAST: tl.constexpr, EVEN: tl.constexpr,
                    ASM_ROUND: tl.constexpr, FOLD_L: tl.constexpr, KEY_GATHER: tl.constexpr = False):
    """`TRANS` (RB == BLOCK_N): the row-block scores pass on transposed tiles `[BLOCK_N keys, RB rows]`, its tiles
    in descending order. A key's column sum is then a sum within one quad of a warp, and so is the cyclic skew
    (`WRAP`'s, transposed); only the diagonal sums cross warps. The part of tile j's skew that wrapped (diagonals
    BLOCK_N further on) lies on the same offsets as tile j - 1's unwrapped part: it is carried to the next tile
    (the one below) and summed with it, one cross-warp sum a tile instead of two; the carry of the program's last
    tile is stored in its second half of `DG` (zeros in the others). The same partial sums land on the same
    offsets; the combine kernel reads them unchanged. `KEY_GATHER` (`_KEY_GATHER`): the skew along the keys, row u
    holding diagonal u, so the diagonal sums and the carry (a vector) stay within quads too."""
    ju = tl.arange(0, BLOCK_N)
    if KEY_GATHER:
        # row u of the skew holds, in row r's column, key (r - u - 1) mod BN: diagonal u, far (BN further on) where
        # r > u (the key did not wrap)
        src = (ju[None, :] - ju[:, None] - 1) & (BLOCK_N - 1)
        far = (ju[None, :] > ju[:, None]).to(tl.float32)
        carry = tl.zeros([BLOCK_N], dtype=tl.float32)
    else:
        # column u of key j's skew holds row (u + j + 1) mod BN, on diagonal u + BN (wrapped: far) where
        # u + j + 1 < BN
        src = (ju[None, :] + ju[:, None] + 1) & (BLOCK_N - 1)
        far = ((ju[None, :] + ju[:, None] + 1) < BLOCK_N).to(tl.float32)
        carry = tl.zeros([BLOCK_N, RB], dtype=tl.float32)
    zeros = tl.zeros([BLOCK_N], dtype=tl.float32)
    if FAST:
        # FOLD_L: 1 / l folded into the exponent, exp(s - m - log l) (one product fewer an entry; other rounding)
        m2 = m * _LOG2E - tl.log2(inv_l) if FOLD_L else m * _LOG2E
    for t in range(TPP):
        tile = pid_t * TPP + (TPP - 1 - t)
        keys = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        key_ok = keys < S
        s = _block_logits_t(q, k_base, sks, tile, keys, key_ok, row, row_ok, scale, S, L, D, BLOCK_N, INTERPRET,
                            PREC, _whole_tile(tile, S, L, BLOCK_N, True, FAST, EVEN), ASM_ROUND)
        if FAST and FOLD_L:
            p = _ex2(s * _LOG2E - m2[None, :], INTERPRET)
        elif FAST:
            p = _ex2(s * _LOG2E - m2[None, :], INTERPRET) * inv_l[None, :]
        else:
            p = tl.exp(s - m[None, :]) * inv_l[None, :]
        d_tile = d_base + tile.to(tl.int64) * sdt
        if KEY_GATHER:
            _st(v_base + keys, tl.sum(p, 1), key_ok, INTERPRET)
            # one flat gather: rank-1 gathers keep their layouts (Triton gives 2-D ones a warp-local layout, whose
            # shuffles and layout changes cost more than a pass through shared memory)
            fidx = _flat_slot(src, ju[None, :], BLOCK_N, RB)
            if not INTERPRET:
                fidx = _like(fidx, p)
            g = tl.reshape(tl.gather(_flat_tile(p, BLOCK_N, RB), tl.reshape(fidx, [BLOCK_N * RB]), 0), [BLOCK_N, RB])
            _st(d_tile + ju, tl.sum(g * (1.0 - far), 1) + carry, (ju < BLOCK_N) & (tile < NT), INTERPRET)
            carry = tl.sum(g * far, 1)
        else:
            tl.store(v_base + keys, tl.sum(p, 1), mask=key_ok)
            g = tl.gather(p, src, 1)
            tl.store(d_tile + ju, tl.sum(g * (1.0 - far) + carry, 0), mask=tile < NT)
            carry = g * far
        # (not the program's last tile: its carry is stored after the loop, maybe by other threads)
        tl.store(d_tile + BLOCK_N + ju, zeros, mask=(tile < NT) & (t < TPP - 1))
    last = pid_t * TPP
    tl.store(d_base + last.to(tl.int64) * sdt + BLOCK_N + ju, carry if KEY_GATHER else tl.sum(carry, 0),
             mask=last < NT)


def _combine_parts(DG, V, OUT_S, OUT_V, sdr, sdn, sdt, svr, svn, S, L, NT, RB, NRB: tl.constexpr,
                   BO: tl.constexpr, BLOCK_N: tl.constexpr, BT: tl.constexpr, W: tl.constexpr, HAS_V: tl.constexpr,
                   STACK: tl.constexpr = False, plane=0, inv_n=1.0):
    """Program (row n, run of BO offsets): slash[n, o] = the sum of every diagonal partial that holds offset o, and
    with `HAS_V` vertical[n, o] = the sum of the row blocks' column sums. Partial t of key tile j and row block rb is
    offset o = S - L - BLOCK_N + 1 - j * BLOCK_N + rb * RB + t; for one (o, rb) the tiles holding it are W
    consecutive ones. Fixed order (row blocks, then tiles in ascending order): deterministic. With `STACK` (and
    `HAS_V`) both go to one buffer `OUT_S [2, N, S]` (`plane` = N * S), times `inv_n`: the vertical sums as they are,
    the slash sums at S - 1 - o (FlexPrefill's `scores`: stacked, the slash flipped, both divided by n)."""
    n = tl.program_id(0).to(tl.int64)
    o = tl.program_id(1) * BO + tl.arange(0, BO)
    o_ok = o < S
    acc = tl.zeros([BO], dtype=tl.float32)
    acc_v = tl.zeros([BO], dtype=tl.float32)
    for rb in tl.static_range(NRB):
        base = o - (S - L - BLOCK_N + 1) - rb * RB  # t of tile 0
        # the first tile whose t is >= 0 (a non-negative numerator: integer division is floor division there)
        j0 = tl.where(base >= 0, 0, (BLOCK_N - 1 - base) // BLOCK_N)
        for w in tl.static_range(W):
            j = j0 + w
            t = base + j * BLOCK_N
            ok = o_ok & (j < NT) & (t < BT)
            acc += tl.load(DG + rb * sdr + n * sdn + j.to(tl.int64) * sdt + t, mask=ok, other=0.0)
        if HAS_V:
            acc_v += tl.load(V + rb * svr + n * svn + o, mask=o_ok, other=0.0)
    if STACK:
        tl.store(OUT_S + n * S + o, acc_v * inv_n, mask=o_ok)
        tl.store(OUT_S + plane + n * S + (S - 1 - o), acc * inv_n, mask=o_ok)
    else:
        tl.store(OUT_S + n * S + o, acc, mask=o_ok)
        if HAS_V:
            tl.store(OUT_V + n * S + o, acc_v, mask=o_ok)


def _stats_reduce(MT, LT, M, LS, NP, L, smb, smt, BP: tl.constexpr, BL: tl.constexpr, I_NP: tl.constexpr,
                  INTERPRET: tl.constexpr):
    """Program (row n, block of BL query rows): `_row_stats` in one launch (`_part_stats`, as the scores pass's
    `STATS_IN` reduces them)."""
    n = tl.program_id(0).to(tl.int64)
    r = tl.program_id(1) * BL + tl.arange(0, BL)
    r_ok = r < L
    m, l = _part_stats(MT, LT, n * smb, NP, smt, r, r_ok, BP, I_NP, INTERPRET)
    tl.store(M + n * L + r, m, mask=r_ok)
    tl.store(LS + n * L + r, l, mask=r_ok)


def _scaled_last_rows(Q, OUT, QT, qslot, T, sqb, sqh, sqt, H, scale, D: tl.constexpr, RB: tl.constexpr,
                      DT: tl.constexpr, Q_TABLE: tl.constexpr):
    """Program (query head, block of RB rows): `OUT[bh, i] = q[b, h, T - n + i] * scale` rounded to DT (the product
    in fp32, as torch's multiply by a Python float computes it); with `Q_TABLE` q's address from `QT[qslot]`."""
    if Q_TABLE:
        Q = tl.multiple_of(tl.load(QT + qslot).to(tl.pointer_type(Q.dtype.element_ty)), 16)
    bh = tl.program_id(0).to(tl.int64)
    n = tl.num_programs(1) * RB
    r = tl.program_id(1) * RB + tl.arange(0, RB)
    dd = tl.arange(0, D)
    src = Q + (bh // H) * sqb + (bh % H) * sqh + (T - n + r).to(tl.int64)[:, None] * sqt + dd[None, :]
    x = tl.load(src).to(tl.float32)
    tl.store(OUT + bh * n * D + r.to(tl.int64)[:, None] * D + dd[None, :], _to_dtype(x * scale, DT))


_kernels = per_mode((_lastq_stats, _lastq_scores, _lastq_stats_rows, _lastq_scores_rows, _combine_parts,
                     _scaled_last_rows, _stats_reduce),
                    (_tile_logits, _block_logits, _block_rows, _round_and_mask, _ex2, _probs, _exp_sum, _whole_tile,
                     _round_bf16, _like, _st, _flat_tile, _flat_slot, _block_logits_t, _scores_tiles_t, _side_means,
                     _to_dtype, _block_mean, _part_stats, _k_tile, _stats_unit))


def _pow2ceil(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _head_slice(D: int) -> int:
    """Widest power-of-two slice of the head dim, at most 64, that divides it (tl.dot needs K >= 16)."""
    bd = 64
    while bd >= 16 and D % bd:
        bd //= 2
    return bd


def supports(head_dim: int, last_q: int) -> str | None:
    """None if the kernel takes this configuration, else the reason it does not."""
    if _head_slice(head_dim) < 16:
        return f"head dim {head_dim} is not a multiple of 16"
    if not 1 <= last_q <= 256:
        return f"last_q={last_q} must be in [1, 256]"
    return None


def _row_stats(mt: torch.Tensor, lt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's final softmax `(m, l)` `[B*H, L]` from pass 1's per-part maxima and sums `[B*H, parts, L]` (parts:
    key tiles or programs), reduced over the parts in a fixed order (deterministic: no atomics). With
    `_STATS_KERNEL` by one launch (`_stats_reduce`: the same maximum, the sum in another fixed order, Triton's exp)
    instead of torch's four."""
    if _STATS_KERNEL and runs_triton(mt) and mt.stride(-1) == 1:
        N, NP, L = mt.shape
        m = torch.empty(N, L, dtype=torch.float32, device=mt.device)
        l = torch.empty_like(m)
        interpret = os.environ.get("TRITON_INTERPRET") == "1"
        BL = min(_STATS_BL, max(16, _pow2ceil(L)))
        BP = min(_STATS_BP, max(16, _pow2ceil(NP)))
        _kernels(interpret)[6][(N, -(-L // BL))](mt, lt, m, l, NP, L, mt.stride(0), mt.stride(1), BP=BP, BL=BL,
                                                 I_NP=NP if interpret else 0, INTERPRET=interpret, num_warps=4)
        return m, l
    m = mt.amax(1)
    return m, (lt * torch.exp(mt - m[:, None])).sum(1)


# `_row_stats` by one Triton launch instead of torch's amax, subtraction, exp, product and sum (FlexPrefill's two row
# blocks of 128 queries, which do not fuse the reduction into the scores pass). On since session 12: FlexPrefill's
# estimate 0.664 / 1.345 / 3.124 ms against 0.673 / 1.346 / 3.115 ms at 32K / 64K / 128K (H200, Llama-3.1-8B heads,
# `bench_methods_cost_s12a.csv`, row `flexprefill_nostatskernel`; profiled at 32K, one 6 us launch for torch's 17 us
# reduction and two elementwise ops)
_STATS_KERNEL = True
# `_stats_reduce`'s rows a program and parts a step. 32 and 64 since session 12: 5.7 against 13.5-14.7 us a call at
# FlexPrefill's 32K (profiled; 32 programs at session 11's 128 and 16), the same estimate time within noise (row
# `flexprefill_statsbl128`: 0.663 / 1.345 / 3.116 ms)
_STATS_BL = 32
_STATS_BP = 64
# `stats_programs` (`_rows_path`, FlexPrefill's whole graph): the row-block stats pass (where it does not compute the
# means) as that many resident programs a multiprocessor, each taking the launch's units in turn (`PERSIST`), instead
# of a program a unit (3.9 waves at FlexPrefill's 32K): one wave, all placed at once, so that a kernel launched after
# it on a concurrent branch (FlexPrefill's block means) takes the slots the stats programs leave at once (two stats
# programs a multiprocessor by shared memory; 26,624 registers free at 152 each). Timed in session 13 with
# FlexPrefill's `_LATE_FORK` (`methods/flexprefill.py`). Tests: `_STATS_PERSIST_PROGRAMS` forces PERSIST with that
# many programs on any device
_STATS_PERSIST_PROGRAMS: int | None = None
# the persistent stats programs' register cap (None: the compiler's choice, 193 offline on sm_90 at FlexPrefill's
# shapes, against 146 a program a unit; 152 builds without spills): at 152 two of them leave room for three programs
# of kernels/block_means (56 registers, 4 warps), at 193 for two
_STATS_PERSIST_MAXNREG: int | None = 152


def _overlap_add(dg: torch.Tensor, S: int, L: int, block_n: int) -> torch.Tensor:
    """slash `[N, S]` from the per-tile diagonal partials `dg [N, n_tiles, BT]`: tile j's entry t is offset
    o = S - L - j*BN - BN + 1 + t. Tiles reversed, consecutive ones start BN apart: W shifted slice adds."""
    N, nt, BT = dg.shape
    W = -(-BT // block_n)
    if W * block_n != BT:
        dg = torch.nn.functional.pad(dg, (0, W * block_n - BT))
    d = dg.flip(1).view(N, nt, W, block_n)
    acc = torch.zeros(N, nt + W - 1, block_n, dtype=dg.dtype, device=dg.device)
    for w in range(W):
        acc[:, w:w + nt] += d[:, :, w]
    c0 = S - L - block_n + 1 - (nt - 1) * block_n  # offset of acc's first cell, <= 0
    return acc.view(N, -1)[:, -c0:-c0 + S]


def _combine(dg: torch.Tensor, v: torch.Tensor | None, S: int, L: int, block_n: int, RB: int, interpret: bool,
             stacked: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`(slash [N, S], vertical [N, S] or None)` from the diagonal partials `dg [NRB, N, n_tiles, BT]` and (if given)
    the row blocks' column sums `v [NRB, N, S]`, by one kernel (`_combine_parts`): the same sums as `_overlap_add`
    after adding the row blocks, in another fixed order. With `stacked` = n (v given): `(scores [2, N, S], None)`,
    `torch.stack([vertical, slash.flip(-1)]) * (1 / n)` in fp32 as torch's division by a host scalar computes it."""
    NRB, N, nt, BT = dg.shape
    out_s = torch.empty((2, N, S) if stacked else (N, S), dtype=torch.float32, device=dg.device)
    out_v = torch.empty(N, S, dtype=torch.float32, device=dg.device) if v is not None and not stacked else out_s
    vv = v if v is not None else dg
    BO = 256
    _kernels(interpret)[4][(N, -(-S // BO))](
        dg, vv, out_s, out_v, dg.stride(0), dg.stride(1), dg.stride(2), vv.stride(0) if v is not None else 0,
        vv.stride(1) if v is not None else 0, S, L, nt, RB, NRB=NRB, BO=BO, BLOCK_N=block_n, BT=BT, W=-(-BT // block_n),
        HAS_V=v is not None, STACK=bool(stacked), plane=N * S,
        inv_n=float(torch.tensor(1.0, dtype=torch.float32) / stacked) if stacked else 1.0, num_warps=4)
    if stacked:
        return out_s, None
    return out_s, (out_v if v is not None else None)


# the partial sums of the scores pass added by `_combine` (one kernel) rather than by torch (`_overlap_add`, and for
# row blocks an add per block: a few launches and a padded copy of the partials per call). On an H200 (session 6,
# medians of 3) FlexPrefill's estimate took 3.24 / 7.62 ms with it against 3.38 / 7.90 ms at 64K / 128K;
# MInference's 3.64 against 3.64 ms at 128K (its 64K times, host-bound, overlapped: 2.23-3.16 ms either way).
_COMBINE_KERNEL = True


def _heads_per_tile(hp: int, rc: int, width: int) -> int:
    """How many of a pack's `hp` heads to stack into one row tile of `rc` rows each (a power of two): at most
    `_MAX_ROWS` rows a dot and at most `_MAX_TILE` elements in the widest fp32 tile (`rows x width`)."""
    gp = 1
    while gp < hp and 2 * gp * rc <= _MAX_ROWS and 2 * gp * rc * width <= _MAX_TILE:
        gp *= 2
    return gp


_MAX_ROWS = 128
# 32 fp32 registers a thread at 4 warps. Offline sm_90 builds (bf16, BLOCK_N=64, L=64/128, D=128/256) spilled
# 300-1500 bytes with 128x64 tiles in pass 1, and tens of bytes at most with this cap.
_MAX_TILE = 4096


def _default_block_n(L: int) -> int:
    """Key tile width by the number of last queries: the fastest of 64/128/256 at 4 and 8 warps, packed and not, on
    an H200 (bf16, H=32, HKV=8, D=128, 64K and 128K keys; results/tables/profile_lastq.csv, session 4): 64 keys
    unpacked for L=64 (0.98 ms at 64K vs 1.10 packed), 128 keys unpacked for L=128 (2.55 ms at 64K vs 2.71 packed)."""
    return 64 if L <= 64 else 128


def _prepare(q_last, k, block_n: int | None, pack_heads: bool):
    """What both wrappers check and derive: dtypes and block_n (its default filled in), the mode, unit-stride q/k, the
    matmul precision, the group size G, the query heads a program serves (HP), the row chunk RC and the number of
    chunks NCH."""
    if q_last.dtype not in (torch.float16, torch.bfloat16, torch.float32) or k.dtype != q_last.dtype:
        raise ValueError(f"q/k dtypes {q_last.dtype}/{k.dtype}: need one of fp16, bf16, fp32, the same for both")
    block_n = _default_block_n(q_last.shape[2]) if block_n is None else block_n
    if block_n < 16 or block_n & (block_n - 1):
        raise ValueError(f"block_n={block_n} must be a power of two >= 16")
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    q = q_last if q_last.stride(-1) == 1 else q_last.contiguous()
    k = k if k.stride(-1) == 1 else k.contiguous()
    prec = "ieee" if interpret or q.dtype == torch.float32 else "tf32"
    G = q.shape[1] // k.shape[1]
    RC = 16 if q.shape[2] <= 16 else 32
    return q, k, block_n, interpret, prec, G, G if pack_heads else 1, RC, -(-q.shape[2] // RC)


# Row-block kernels (`_lastq_stats_rows`, `_lastq_scores_rows`): a program loads its block of up to `_RB_STATS`
# (pass 1) or `_RB_SCORES` (pass 2) query rows once and walks `tiles_per_program` key tiles, one dot over the whole
# head dim per tile, instead of one program per key tile reloading the rows in 32-row chunks (`_lastq_stats`,
# `_lastq_scores`). Head dims that are powers of two (16-256). The scores pass takes them for at least `_ROWS_MIN_L`
# queries (65 until session 7): on an H200 (bf16, H=32, HKV=8, D=128; results/tables/profile_lastq_rows.csv,
# session 4) 128 queries took 1.95 ms at 64K keys and 3.94 ms at 128K against 2.53 and 4.96 ms with the best
# per-tile kernels, while 64 queries took 1.03 / 2.07 ms against 0.98 / 1.90. PBS's importance pass measured even
# (0.93 vs 0.96 ms at 64K) and stays per tile. SPARSEBENCH_LASTQ_ROWS=1 (or 0) in the environment at import forces
# them on (off) for both.
_ROWS = {"1": True, "0": False}.get(os.environ.get("SPARSEBENCH_LASTQ_ROWS", ""))
# Since session 7 also MInference's 64 queries (more than 32) take them: with the cyclic skew (`_WRAP_GATHER`) its
# estimate's row-block path measured faster than the per-tile kernels on an H200 (bench_methods rows
# `minference_vs_norows`, results/tables/bench_methods_cost.csv).
_ROWS_MIN_L = 33
# Two other ways to the diagonal sums were timed on an H200 in session 5 (bf16, H=32, HKV=8, D=128, 64K keys) and
# dropped: every probability stored by (row, offset) for torch to sum the rows (2.38 vs 0.97 ms at 64 queries), and
# each tile skewed through a per-program global scratch slot instead of `tl.gather` (1.16 vs 1.03 ms at 64 queries,
# 2.14 vs 1.94 ms at 128).
# rows a program takes in pass 1 (no diagonal gather) and in pass 2 (its [rows, BT] gather bounds the registers).
# Pass 2 took 32 rows until session 9; with `_ASM_ROUND` 64 rows fit in registers (247, no spill, offline sm_90)
# and on an H200 (session 9, both passes and the combine, bf16, H=32, HKV=8, D=128, CUDA events, medians of 20)
# took 0.943 vs 1.230 ms for 128 queries and 0.526 vs 0.636 ms for 64 queries at 64K keys, 0.610 vs 0.636 and
# 0.334 vs 0.359 ms at 32K (there with the (m, l) fusion, which the rule below now takes for 128 queries). 8 warps
# were slower either way (0.91-1.82 ms). bench_methods rows `*_rb32` keep 32.
_RB_STATS = 128
_RB_SCORES = 64
_TPP = 16  # 8-16 measured best (4 warps); 4 a little slower
# key tile of the row-block scores path when block_n is not given: at 128 queries and 64K keys (H200, session 4-5)
# 64-key tiles took 1.94-1.95 ms for both passes, while FlexPrefill's estimate at 128-key tiles (the per-tile default,
# `_default_block_n`, which the row-block path took until session 5) profiled 0.33 + 1.96 ms for the two kernels
_ROWS_BLOCK_N = 64


# Fast arithmetic (`FAST`): tiles whose keys all lie inside every row's range skip the masks (where the row tiles
# have no padding rows), and the exponentials are one FMA and one flushed MUFU.EX2 (`_ex2`), with 1 / l as a product.
# The kernels are issue-bound on an H200 (ncu, session 6: 57-71% of issue slots busy at 12-44% occupancy); offline
# sm_90 builds count 42% fewer instructions per tile in the row-block stats loop, 31% in the row-block scores loop,
# 20-26% in the per-tile stats loops and 21% in the importance loop. On the H200 (bench_methods, session 6, medians
# of 3, two runs) FlexPrefill's whole estimate took 3.42 / 7.94 ms with it against 3.80 / 8.73 ms at 64K / 128K,
# PBS's (per-tile importance kernels) 2.74-2.75 / 8.45-8.47 against 2.87 / 8.68-8.80 ms. MInference's estimate
# (the per-tile causal kernels, 64 queries) did not gain: 2.14 vs 2.05 ms at 64K with both of its passes fast (the
# scores pass then took 154 registers instead of 128), 2.40 vs 2.27 ms with its stats pass fast; so the per-tile
# causal kernels keep the plain arithmetic unless `_FAST_TILE`. Values differ from the plain arithmetic by the
# rounding of the exponential (ex2.approx either way; here its argument is one FMA) and by underflow below 2**-126
# flushed to 0. SPARSEBENCH_LASTQ_FAST=0 in the environment at import turns it off everywhere.
# The row-block scores pass's diagonal skew cyclic within the key tile (`WRAP` of `_lastq_scores_rows`): a
# `[RB, BLOCK_N]` gather instead of `[RB, BT]` (BT = 2 * BLOCK_N), the entries that wrapped summed apart with 0/1
# weights. Offline sm_90 builds (bf16, 128 queries, D=128, 64-key tiles) count 514 instructions per whole tile in the
# scores loop against 662 before (with the 32-bit key offsets of `_block_logits`). On an H200 (session 7,
# bench_methods, medians of 3) FlexPrefill's whole estimate took 3.08 / 7.29 ms with it against 3.32 / 7.75 ms at
# 64K / 128K.
_WRAP_GATHER = True
# The row-block path's (m, l) reduced from pass 1's partials by the scores kernel (`STATS_IN`) instead of torch's amax /
# exp / mul / sum between the passes: five launches fewer a call, which pays where the estimate is bound by its host,
# but every program of the scores pass re-reduces its rows' partials, which costs GPU time growing with the key count
# and the row blocks. True / False force it; None (the default) takes it for at most `_FUSED_STATS_MAX_RB` row blocks of
# `_RB_SCORES` queries (64-row blocks: MInference's 64 queries take 1 and fuse, FlexPrefill's 128 queries 2 and,
# since session 10, do not) and at most `_FUSED_STATS_MAX_S` keys. On an H200 (session 8, bench_methods, medians of
# 5, after MInference's host path was trimmed; `results/tables/bench_methods_cost_s8b.csv`) MInference's estimate
# took 0.585 / 1.064 / 2.216 ms with it against 0.601 / 1.018 / 2.025 ms without at 32K / 64K / 128K; FlexPrefill's
# took 3.22 / 7.78 ms against 3.11 / 7.38 ms at 64K / 128K (`_s8.csv`). bench_methods rows
# `minference_vs_fusedstats` / `_nofusedstats` force it.
_FUSED_ROW_STATS: bool | None = None
# The row-block passes' logits rounded to bf16 by one packed conversion per two values whose results stay fp32
# (`_round_bf16`; the same round-to-nearest-even as `.to(bf16).to(fp32)`, bf16 inputs only). Besides the cheaper
# rounding it keeps the compiler from computing the scores pass's probabilities twice: with a bf16 tensor in the
# chain it converted that (the cheapest layout change) and redid the exponentials in both layouts, one for the
# column sums and one for the diagonal gather. Offline sm_90 builds (128 queries, D=128, 64-key tiles): 439
# instructions per whole tile in the scores loop against 514, 165 registers against 220. On an H200 (session 9,
# bench_methods, medians of 3, `bench_methods_cost_s9b.csv`) FlexPrefill's estimate took 2.57 / 5.91 ms with it
# against 2.75 / 6.36 ms at 64K / 128K, MInference's 1.81 against 2.02 ms at 128K (32K and 64K: host-bound, even).
# bench_methods rows `*_noasmround` turn it off.
_ASM_ROUND = True
# The row-block scores pass on transposed tiles (`_scores_tiles_t`; where its rows per block equal the key tile, 64
# and 64 by default): the column sums within a quad of a warp instead of across warps, and one cross-warp sum of
# diagonals a tile instead of two (offline sm_90: 808 instead of 919 instructions per tile in the scores loop, 14
# barriers instead of 18, 55 shared-memory accesses instead of 94). On by default since session 10: on an H200 both
# passes and the combine took 0.474 / 0.901 ms against 0.534 / 1.013 ms for 128 queries at 32K / 64K keys, 0.275 /
# 0.463 against 0.337 / 0.526 ms for 64 (`results/logs/bench_methods_s10c.txt`, lq10); FlexPrefill's estimate 0.889 /
# 1.733 / 4.280 ms against 0.953 / 1.855 / 4.519 ms at 32K / 64K / 128K, MInference's 0.504 / 0.775 / 1.514 against
# 0.535 / 0.836 / 1.632 ms (`bench_methods_cost_s10c.csv`, rows `*_transscores`, then off by default). Rows
# `*_notransscores` turn it off
_TRANS_SCORES = True
# with it, each probability as exp2(s log2 e - m log2 e - log2 l) instead of exp2(s log2 e - m log2 e) / l: one
# product fewer an entry (754 against 808 instructions a tile offline), the values rounded differently. Off: no
# faster on the H200 (session 10: FlexPrefill 0.898 / 1.742 / 4.318 ms against 0.889 / 1.733 / 4.280 ms without,
# `bench_methods_cost_s10c.csv`, rows `*_transfold`)
_TRANS_FOLD_L = False
# The transposed scores pass's diagonal skew gathered along the keys (`KEY_GATHER` of `_scores_tiles_t`): row u of
# the skewed tile holds diagonal u, so its near and far sums are sums along a row within a quad of a warp and the carry
# to the next tile is a vector, where the skew along the rows needed a cross-warp sum of diagonals every tile. The
# gather is one flat `tl.gather` of the tile in `_flat_tile`'s order, through shared memory (Triton lowers a 2-D
# gather through a warp-local layout, with shuffles and layout changes), its index in the dot's register layout
# (`_like`), and the tile's two sum vectors are stored by inline PTX from that layout (`_st`: without the two
# barriers of Triton's store layout change). Offline sm_90 builds (128 queries, D=128, 64-key tiles): 2 barriers a
# tile instead of 9, 12 shuffles instead of 72, 216 registers instead of 255. In plain row-major flat order every load
# of the skew fell on 4 banks: FlexPrefill's estimate took 581 against 501 us without at 32K on an H200 (session 15);
# in `_flat_tile`'s order 431 against 499 us at 32K, 933 against 1109 us at 64K (`.cache/gpu/tl.py`, random Llama
# shaped tensors, medians of 3; the same lists); in bench_methods (`bench_methods_cost_s15a.csv`) FlexPrefill's estimate
# 0.412 / 0.943 / 2.307 ms against 0.490 / 1.109 / 2.618 ms at 32K / 64K / 128K, MInference's vertical-slash 0.537 /
# 0.641 / 1.241 against 0.538 / 0.716 / 1.389 ms (32K host-bound). Rows `*_nokeygather` turn it off.
_KEY_GATHER = True
# software pipeline depth of the row-block score passes' K tile loads when the caller gives none. 3 since session 10:
# 0.421 / 0.749 ms against 0.474 / 0.901 ms with 2 for 128 queries at 32K / 64K keys (both passes and the combine,
# transposed tiles; `results/logs/bench_methods_s10c.txt`, lq10); FlexPrefill's estimate 0.854 / 1.670 / 4.098 ms
# against 0.904 / 1.741 / 4.306 ms at 32K / 64K / 128K, MInference's 1.405 against 1.521 ms at 128K (32K and 64K
# host-bound on that instance; `bench_methods_cost_s10d.csv`, rows `*_st3` when 2 was the default). Rows `*_st2`
# keep 2
_ROWS_STAGES = 3
# `last_q_scores_stacked_triton`'s scores written by the combine launch itself (stacked, the slash flipped, divided
# by n; the same values) instead of torch's flip, stack and division after it. On by default since session 11:
# FlexPrefill's estimate took 0.702 / 1.416 / 3.339 ms against 0.715 / 1.436 / 3.383 ms at 32K / 64K / 128K (H200,
# `bench_methods_cost_s11f.csv`, row `flexprefill_nostackcombine`)
_STACK_IN_COMBINE = True
# blocks of queries a side program of `last_q_scores_and_means_triton` averages (and a G-th as many key blocks)
_MEANS_PER_PROGRAM = 8
_FUSED_STATS_MAX_S = 1 << 15
# one row block since session 10: FlexPrefill's 128 queries (two blocks) at 32K keys took 0.987 ms without the
# fusion against 1.042 ms with it (H200, `bench_methods_cost_s10b.csv`, row `flexprefill_nofusedstats`)
_FUSED_STATS_MAX_RB = 1
_FAST = {"1": True, "0": False}.get(os.environ.get("SPARSEBENCH_LASTQ_FAST", ""), True)
_FAST_TILE = False


def _even_rows(L: int, RC: int, HP: int, GP: int) -> bool:
    """Whether a per-tile kernel's row tiles (GP heads of RC rows) hold no padding rows."""
    return L % RC == 0 and HP % GP == 0


def _rows_ok(D: int) -> bool:
    return 16 <= D <= 256 and D & (D - 1) == 0


def _use_rows(rows: bool | None, D: int, pack_heads: bool, L: int, importance: bool) -> bool:
    """Whether a call takes the row-block kernels: `rows` if given (an error where they cannot run), else where they
    can (unpacked heads, a power-of-two head dim): `_ROWS` if set, else the scores pass for at least `_ROWS_MIN_L`
    queries."""
    if rows is None:
        auto = (not importance and L >= _ROWS_MIN_L) if _ROWS is None else _ROWS
        return auto and not pack_heads and _rows_ok(D)
    if rows and (pack_heads or not _rows_ok(D)):
        raise ValueError(f"rows=True needs pack_heads=False and a power-of-two head dim in [16, 256]; got "
                         f"pack_heads={pack_heads}, head dim {D}")
    return bool(rows)


def _rows_path(q, k, scale: float, L: int, S: int, importance: bool, block_n: int, tpp: int, num_warps: int,
               num_stages: int, interpret: bool, prec: str, G: int, means=None, k_table=None, stacked=None,
               stats_programs: int | None = None, scores_maxnreg: int | None = None):
    """Both passes through the row-block kernels: `(vertical, slash)` (slash None with `importance`, where `S` is
    n_keys and vertical holds the column means). `means` `(q_full [B, H, S, D], size, q_scale, k_mean, q_mean)`:
    the stats launch also writes the block means into `k_mean [B, HKV, nb, D]` and `q_mean [B, H, nb, D]`.
    `k_table` `(table, slot)`: both passes read K's address from the int64 device tensor `table[slot]` when they run
    (k only gives shape, strides and dtype). `stats_programs`: on CUDA, the stats pass as that many resident programs
    a multiprocessor (module comment at `_STATS_PERSIST_PROGRAMS`). `scores_maxnreg`: on CUDA, a register cap for the
    scores pass."""
    B, H, _, D = q.shape
    # a unit scale (FlexPrefill's queries come scaled) as the int 1, which Triton specializes as a constant: the
    # passes' products by it fold away (one multiply a logit fewer)
    scale = 1 if float(scale) == 1.0 else float(scale)
    rb_stats = min(_RB_STATS, max(16, _pow2ceil(L)))
    RB = min(_RB_SCORES, max(16, _pow2ceil(L)))
    NRB = -(-L // RB)
    nt = -(-S // block_n)
    npg = -(-nt // tpp)
    dev = q.device
    mt = torch.empty(B * H, npg, L, dtype=torch.float32, device=dev)
    lt = torch.empty(B * H, npg, L, dtype=torch.float32, device=dev)
    kernels = _kernels(interpret)
    common = {"D": D, "RB": RB, "BLOCK_N": block_n, "TPP": tpp, "INTERPRET": interpret, "PREC": prec,
              "FAST": _FAST, "num_warps": num_warps, "num_stages": num_stages}
    strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2))
    asm_round = _ASM_ROUND and not interpret and k.dtype == torch.bfloat16
    side, sj = {}, 0
    if means is not None:
        qf, size, q_scale, k_mean, q_mean = means
        nb = -(-S // size)
        sj = max(1, -(-nb // _MEANS_PER_PROGRAM))
        side = {"MEANS": True, "NPT": npg, "QF": qf, "QM": q_mean, "KM": k_mean, "sqfb": qf.stride(0),
                "sqfh": qf.stride(1), "sqft": qf.stride(2), "sqmb": q_mean.stride(0), "sqmh": q_mean.stride(1),
                "skmb": k_mean.stride(0), "skmh": k_mean.stride(1), "NB": nb, "SJ": sj, "q_scale": float(q_scale),
                "MBS": size, "BR": max(1, min(size, 4096 // D)), "DT": _DTYPES[q.dtype],
                "I_QB": -(-nb // sj) if interpret else 0, "I_KB": -(-nb // (sj * G)) if interpret else 0}
    if k_table is not None and means is not None:
        raise ValueError("k_table and means together are not supported")
    ktab = {} if k_table is None else {"KT": k_table[0], "kslot": k_table[1], "K_TABLE": True}
    sgrid, persist = (npg + sj, B * H, -(-L // rb_stats)), {}
    units = npg * B * H * sgrid[2]
    progs = None
    if means is None and stats_programs and dev.type == "cuda":
        progs = stats_programs * torch.cuda.get_device_properties(dev).multi_processor_count
    elif means is None and _STATS_PERSIST_PROGRAMS:  # tests: a fixed program count (any device)
        progs = _STATS_PERSIST_PROGRAMS
    if progs:
        progs = min(units, progs)
        sgrid, persist = (progs,), {"PERSIST": True, "NPT": npg, "NBH": B * H, "NUNITS": units,
                                    "I_UN": -(-units // progs) if interpret else 0}
        if _STATS_PERSIST_MAXNREG and not interpret:
            persist["maxnreg"] = _STATS_PERSIST_MAXNREG
    kernels[2][sgrid](q, k, mt, lt, *strides, mt.stride(0), mt.stride(1), S, L, H, G,
                      scale, CAUSAL=not importance, ROUND_DOT=importance,
                      EVEN=L % rb_stats == 0, ASM_ROUND=asm_round,
                      **{**common, "RB": rb_stats}, **side, **ktab, **persist)
    grid = (npg, B * H, NRB)
    fused = _FUSED_ROW_STATS if _FUSED_ROW_STATS is not None else NRB <= _FUSED_STATS_MAX_RB and S <= _FUSED_STATS_MAX_S
    if fused:
        m, l = mt, lt  # reduced by the scores kernel itself (STATS_IN)
        stats_in = {"NPG": npg, "smt": mt.stride(1), "STATS_IN": True, "I_NPG": npg if interpret else 0}
    else:
        m, l = _row_stats(mt, lt)
        del mt, lt
        stats_in = {}
    v = torch.empty(NRB, B * H, S, dtype=torch.float32, device=dev)
    if importance:
        BT, dg = 16, v  # no diagonals: DG's pointer and strides unused
    else:
        BT = _pow2ceil(block_n + RB - 1)
        dg = torch.empty(NRB, B * H, nt, BT, dtype=torch.float32, device=dev)
    kernels[3][grid](q, k, m, l, v, dg, *strides, m.stride(0), v.stride(0), v.stride(1), dg.stride(0), dg.stride(1),
                     dg.stride(2) if not importance else 0, S, L, H, G, nt, scale, BT=BT,
                     IMPORTANCE=importance, EVEN=L % RB == 0,
                     WRAP=_WRAP_GATHER and not importance and RB <= block_n and BT == 2 * block_n, **stats_in,
                     ASM_ROUND=asm_round, TRANS=_TRANS_SCORES and _WRAP_GATHER and not importance and RB == block_n,
                     FOLD_L=_TRANS_FOLD_L, KEY_GATHER=_KEY_GATHER, **common, **ktab,
                     **({"maxnreg": scores_maxnreg} if scores_maxnreg and dev.type == "cuda" else {}))
    if importance:
        vertical = v[0] if NRB == 1 else v.sum(0)
        return vertical / L, None
    if _COMBINE_KERNEL and stacked:
        return _combine(dg, v, S, L, block_n, RB, interpret, stacked)[0], None
    if _COMBINE_KERNEL:
        slash, vertical = _combine(dg, v if NRB > 1 else None, S, L, block_n, RB, interpret)
        return (v[0] if NRB == 1 else vertical), slash
    vertical = v[0] if NRB == 1 else v.sum(0)
    if NRB == 1:
        dg_all = dg[0]
    else:
        # row block rb's diagonal t is the whole chunk's diagonal t + rb * RB
        dg_all = torch.zeros(B * H, nt, BT + (NRB - 1) * RB, dtype=torch.float32, device=dev)
        for rb in range(NRB):
            dg_all[..., rb * RB:rb * RB + BT] += dg[rb]
    return vertical, _overlap_add(dg_all, S, L, block_n)


def scaled_last_rows(q: torch.Tensor, n: int, scale: float, table: torch.Tensor | None = None, slot: int = 0
                     ) -> torch.Tensor:
    """`q[:, :, T - n:] * scale` (a new contiguous tensor, q's dtype, the same rounding) for q `[B, H, T, D]` with a
    unit last stride, n a power of two (at least 16) and D one of 16-256 a power of two; with `table` (int64, on q's
    device) q's address is read from `table[slot]` when the kernel runs, q giving only shape, strides and dtype; that
    address must be a multiple of 16 bytes (as the row-block passes' `k_table` address)."""
    B, H, T, D = q.shape
    if q.stride(-1) != 1 or not 16 <= n <= T or n & (n - 1) or not _rows_ok(D):
        raise ValueError(f"scaled_last_rows: q {tuple(q.shape)} (last stride {q.stride(-1)}), n={n}: need a unit last "
                         f"stride, n a power of two in [16, T], a power-of-two head dim in [16, 256]")
    if q.dtype not in _DTYPES:
        raise ValueError(f"q dtype {q.dtype} is not one of {sorted(map(str, _DTYPES))}")
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    out = torch.empty(B, H, n, D, dtype=q.dtype, device=q.device)
    rb = min(n, max(1, 4096 // D))
    _kernels(interpret)[5][(B * H, n // rb)](q, out, table, slot, T, q.stride(0), q.stride(1), q.stride(2), H,
                                             float(scale), D=D, RB=rb, DT=_DTYPES[q.dtype],
                                             Q_TABLE=table is not None, num_warps=4)
    return out


def means_supported(head_dim: int, last_q: int) -> bool:
    """Whether `last_q_scores_and_means_triton` takes this configuration (the row-block kernels)."""
    return supports(head_dim, last_q) is None and _use_rows(None, head_dim, False, last_q, False)


def last_q_scores_and_means_triton(q_last: torch.Tensor, k: torch.Tensor, scale: float, q: torch.Tensor, size: int,
                                   q_scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(vertical, slash, k_mean, q_mean)`: `last_q_scores_triton(q_last, k, scale)` through the row-block kernels
    and, in the same stats launch, FlexPrefill's block means `block_means_naive(k, size)` and
    `block_means_naive(q, size, q_scale)` (`kernels/block_means`; equal up to the order of the fp32 sums) of the
    whole queries `q [B, H, S, D]` (S = k's length) and keys. Needs the row-block kernels (more than 32 queries, a
    power-of-two head dim); `size` a power of two."""
    B, H, L, D, HKV, S = _check(q_last, k)
    if tuple(q.shape) != (B, H, S, D) or q.dtype != q_last.dtype:
        raise ValueError(f"q {tuple(q.shape)} {q.dtype}: need the whole queries, [{B}, {H}, {S}, {D}] {q_last.dtype}")
    if size < 1 or size & (size - 1):
        raise ValueError(f"size={size} must be a power of two")
    if not means_supported(D, L):
        raise ValueError(f"last_q_scores_and_means_triton needs the row-block kernels (more than {_ROWS_MIN_L - 1} "
                         f"queries, a power-of-two head dim in [16, 256]); got {L} queries, head dim {D}")
    qq, k, block_n, interpret, prec, G, _, _, _ = _prepare(q_last, k, _ROWS_BLOCK_N, False)
    q = q if q.stride(-1) == 1 else q.contiguous()
    nb = -(-S // size)
    k_mean = torch.empty(B, HKV, nb, D, dtype=q.dtype, device=q.device)
    q_mean = torch.empty(B, H, nb, D, dtype=q.dtype, device=q.device)
    vertical, slash = _rows_path(qq, k, scale, L, S, False, block_n, _TPP, 4, _ROWS_STAGES, interpret, prec, G,
                                 means=(q, size, q_scale, k_mean, q_mean))
    return vertical.view(B, H, S), slash.reshape(B, H, S), k_mean, q_mean


def last_q_scores_stacked_triton(q_last: torch.Tensor, k: torch.Tensor, scale: float, n: int,
                                 k_table: tuple[torch.Tensor, int] | None = None,
                                 stats_programs: int | None = None, scores_maxnreg: int | None = None
                                 ) -> torch.Tensor:
    """`torch.stack([vertical, slash.flip(-1)]).div_(n)` `[2, B, H, S]` of `last_q_scores_triton(q_last, k, scale,
    k_table=k_table)` (FlexPrefill's `scores`, the slash sums in diagonal order): on the row-block path with the
    combine kernel written so by it (`_STACK_IN_COMBINE`) where n is a power of two (a product by 1 / n: exact, as
    torch's division), else by torch (`naive.stack_scores`). `stats_programs`, `scores_maxnreg`: as `_rows_path`
    takes them."""
    stacked = n if _STACK_IN_COMBINE and n & (n - 1) == 0 else None
    got = last_q_scores_triton(q_last, k, scale, k_table=k_table, _stacked=stacked, _stats_programs=stats_programs,
                               _scores_maxnreg=scores_maxnreg)
    return got if isinstance(got, torch.Tensor) else stack_scores(*got, n)


def last_q_scores_triton(q_last: torch.Tensor, k: torch.Tensor, scale: float, block_n: int | None = None,
                         num_warps: int = 4, num_stages: int | None = None, pack_heads: bool = False,
                         rows: bool | None = None, tiles_per_program: int | None = None,
                         k_table: tuple[torch.Tensor, int] | None = None, _stacked: int | None = None,
                         _stats_programs: int | None = None, _scores_maxnreg: int | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """`(vertical [B, H, S], slash [B, H, S])` fp32 of `last_q_scores_naive` (arguments as there).

    `pack_heads`: one program per (key tile, KV head) serving its G query heads, else one per (key tile, query
    head) (default: measured faster, see `_default_block_n`). Same outputs either way, up to the dot's summation
    order. `rows`: the row-block kernels (module doc) if True, the per-tile ones if False, if None as `_use_rows`
    decides (more than 32 queries). `block_n` None: `_ROWS_BLOCK_N` for the row-block kernels, `_default_block_n(L)`
    for the per-tile ones. `tiles_per_program` (row-block kernels): default `_TPP`. `num_stages` None: `_ROWS_STAGES`
    for the row-block kernels, 2 for the per-tile ones. `k_table` `(table, slot)` (row-block kernels only): the
    passes read K's address from the int64 device tensor `table[slot]` when they run, `k` giving only its shape,
    strides and dtype (a CUDA graph captured once then replays on other keys of that layout); that address must be a
    multiple of 16 bytes.

    Scratch: fp32 `[B*H, n_tiles, L]` twice (pass 1) and `[B*H, n_tiles, BT]` (diagonal partials), n_tiles =
    ceil(S / block_n), BT = next power of two >= block_n + L - 1. (`_stacked`, `_scores_maxnreg`:
    `last_q_scores_stacked_triton`'s.)
    """
    B, H, L, D, HKV, S = _check(q_last, k)
    why = supports(D, L)
    if why:
        raise ValueError(f"last_q_scores_triton: {why}")
    if k_table is not None and k.stride(-1) != 1:
        raise ValueError(f"k_table needs keys with a unit last stride; got strides {k.stride()}")
    use_rows = _use_rows(rows, D, pack_heads, L, False)
    if use_rows and block_n is None:
        block_n = _ROWS_BLOCK_N
    q, k, block_n, interpret, prec, G, HP, RC, NCH = _prepare(q_last, k, block_n, pack_heads)
    if k_table is not None and not use_rows:
        raise ValueError("k_table needs the row-block kernels")
    if use_rows:
        vertical, slash = _rows_path(q, k, scale, L, S, False, block_n, tiles_per_program or _TPP, num_warps,
                                     num_stages or _ROWS_STAGES, interpret, prec, G, k_table=k_table,
                                     stacked=_stacked, stats_programs=_stats_programs,
                                     scores_maxnreg=_scores_maxnreg)
        if slash is None:  # the combine kernel wrote them stacked
            return vertical.view(2, B, H, S)
        return vertical.view(B, H, S), slash.reshape(B, H, S)
    num_stages = num_stages or 2
    BT = _pow2ceil(block_n + NCH * RC - 1)
    nt = -(-S // block_n)
    # the scores pass also holds the gathered [rows, BT] diagonals, so it may stack fewer heads than the stats pass
    gp_stats = _heads_per_tile(HP, RC, block_n)
    gp_scores = _heads_per_tile(HP, RC, BT)
    dev = q.device
    mt = torch.empty(B * H, nt, L, dtype=torch.float32, device=dev)
    lt = torch.empty(B * H, nt, L, dtype=torch.float32, device=dev)
    stats, scores = _kernels(interpret)[:2]
    common = {"D": D, "BD": _head_slice(D), "RC": RC, "NCH": NCH, "BLOCK_N": block_n, "INTERPRET": interpret,
              "PREC": prec, "FAST": _FAST and _FAST_TILE, "num_warps": num_warps, "num_stages": num_stages}
    grid = (nt, B * H // HP)
    stats[grid](q, k, mt, lt, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                mt.stride(0), mt.stride(1), S, L, H, G, HP, float(scale), GP=gp_stats, NG=-(-HP // gp_stats),
                EVEN=_even_rows(L, RC, HP, gp_stats), **common)
    m, l = _row_stats(mt, lt)
    del mt, lt
    vertical = torch.empty(B * H, S, dtype=torch.float32, device=dev)
    dg = torch.empty(B * H, nt, BT, dtype=torch.float32, device=dev)
    scores[grid](q, k, m, l, vertical, dg, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1),
                 k.stride(2), m.stride(0), vertical.stride(0), dg.stride(0), dg.stride(1), S, L, H, G, HP,
                 float(scale), GP=gp_scores, NG=-(-HP // gp_scores), BT=BT, IMPORTANCE=False,
                 EVEN=_even_rows(L, RC, HP, gp_scores), **common)
    slash = _combine(dg[None], None, S, L, block_n, 0, interpret)[0] if _COMBINE_KERNEL else \
        _overlap_add(dg, S, L, block_n)
    return vertical.view(B, H, S), slash.reshape(B, H, S)


def last_q_importance_triton(q_last: torch.Tensor, k: torch.Tensor, scale: float, n_keys: int | None = None,
                             block_n: int | None = None, num_warps: int = 4, num_stages: int = 2,
                             pack_heads: bool = False, rows: bool | None = None,
                             tiles_per_program: int | None = None) -> torch.Tensor:
    """`importance [B, H, n_keys]` fp32 of `last_q_importance_naive` (arguments as there): pass 1 of the scores
    kernels without the causal mask, then pass 2 with `IMPORTANCE` (column means, no diagonals). Equal to the
    reference up to rounding (the dot's accumulation, the softmax sums over key tiles, the column sums over rows,
    and with `_FAST` the fast exponential).

    Scratch: fp32 `[B*H, n_tiles, L]` twice, n_tiles = ceil(n_keys / block_n).
    """
    B, H, L, D, HKV, S = _check(q_last, k, causal=False)
    n_keys = S if n_keys is None else n_keys
    if isinstance(n_keys, bool) or not isinstance(n_keys, int) or not 1 <= n_keys <= S:
        raise ValueError(f"n_keys={n_keys!r} must be an integer in [1, {S}]")
    if _head_slice(D) < 16:
        raise ValueError(f"last_q_importance_triton: head dim {D} is not a multiple of 16")
    q, k, block_n, interpret, prec, G, HP, RC, NCH = _prepare(q_last, k, block_n, pack_heads)
    if _use_rows(rows, D, pack_heads, L, True):
        imp, _ = _rows_path(q, k, scale, L, n_keys, True, block_n, tiles_per_program or _TPP, num_warps, num_stages,
                            interpret, prec, G)
        return imp.view(B, H, n_keys)
    # both passes hold [rows, block_n] fp32 tiles (no diagonal gather): the same head stacking in each
    GP = _heads_per_tile(HP, RC, block_n)
    nt = -(-n_keys // block_n)
    dev = q.device
    mt = torch.empty(B * H, nt, L, dtype=torch.float32, device=dev)
    lt = torch.empty(B * H, nt, L, dtype=torch.float32, device=dev)
    stats, pass2 = _kernels(interpret)[:2]
    common = {"D": D, "BD": _head_slice(D), "RC": RC, "NCH": NCH, "GP": GP, "NG": -(-HP // GP), "BLOCK_N": block_n,
              "INTERPRET": interpret, "PREC": prec, "FAST": _FAST, "EVEN": _even_rows(L, RC, HP, GP),
              "num_warps": num_warps, "num_stages": num_stages}
    grid = (nt, B * H // HP)
    stats[grid](q, k, mt, lt, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                mt.stride(0), mt.stride(1), n_keys, L, H, G, HP, float(scale), CAUSAL=False, ROUND_DOT=True,
                **common)
    m, l = _row_stats(mt, lt)
    del mt, lt
    imp = torch.empty(B * H, n_keys, dtype=torch.float32, device=dev)
    # no diagonals: the DG pointer and strides go unused (imp and 0 fill their slots), BT a minimal width
    pass2[grid](q, k, m, l, imp, imp, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                m.stride(0), imp.stride(0), 0, 0, n_keys, L, H, G, HP, float(scale), BT=16, IMPORTANCE=True, **common)
    return imp.view(B, H, n_keys)
