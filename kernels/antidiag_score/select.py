"""Fused Triton kernel for XAttention's block selection: `methods.xattn.find_blocks` (the cumulative-threshold rule,
which stays the reference and pins the semantics) and `methods.xattn.block_mask_to_selection` (the padded ascending
block lists) in one pass over the block scores, one program per (batch, head, tile of query-block rows).

XAttention (Xu et al., 2025, arXiv:2503.16428) keeps, per query-block row, the forced blocks (key block 0 and the
blocks holding the row's own positions) and then the other causal blocks by descending score until the float64
score mass before a block reaches `threshold * row total`. On an H200 at 128K tokens the torch version of this
(argsort, gather, float64 cumsum, scatter, then cumsum + scatter for the lists) was measured at about 3.3 ms per
call; this kernel does the same work in registers (its sort algorithm: about 0.71 ms per launch at 128K tokens,
32 heads, 1024 rows of 1024 blocks, on an H200). Written for this repository from the reference's definition.

Per row, with the row held as one power-of-two tile of `NKP >= NK` lanes:

1. Unique int64 sort keys reproduce the reference's stable descending argsort: bit `32 + IB` says "forced" (the
   reference's +inf key; forced blocks tie and so keep ascending block order), bits `IB .. 32 + IB - 1` hold the
   order-preserving unsigned image of the fp32 sort key (the score for causal blocks, -1.0 for non-causal ones,
   as in the reference; 0 for forced blocks and padding lanes), and the low `IB = log2(NKP)` bits hold
   `NKP - 1 - block`, so that equal scores go lower block first in a descending sort. -0.0 is folded to +0.0
   first, since the reference's sort treats them as equal.
2. After the sort, each lane recovers its block index and score from the key (forced blocks, whose key holds no
   score, reload theirs), and a float64 scan over the sorted scores gives the mass *before* each item: a scan of
   (sum, sum without the last item) pairs, whose second part at item k is the running sum at k - 1 plus an exact
   0, i.e. the reference's `cumsum[k - 1]` (not `cumsum[k] - x[k]`, which rounds differently). (Moving the
   inclusive scan one lane with `tl.gather` would do too, but compiled for sm_90 it replicated the row in every
   warp: 238 registers against 118.)
3. Item k is kept iff it is causal and (forced, or mass before it < threshold * row total (float64), or
   threshold >= 1), exactly the reference's rule.
4. The lists are the stable partition of the kept flags (kept blocks ascending, then the others ascending, as in
   `block_mask_to_selection`): a second, int32 sort of `(not kept) * NKP + block` yields them directly; the counts
   are the number of kept blocks. Optionally the bool mask is written too, scattered by block index.

A second algorithm without sorts (`nonneg=True`, the caller's promise that every score is >= 0, as XAttention's
softmax block sums are; with a negative score its result is undefined) keeps steps 1 and 3's definitions:

2b. With every lane's value v >= 0 (forced and causal: the score; non-causal and padding: 0), the mass before the
   item of key k, M(k) = sum of v over the lanes of key > k, is non-increasing in k. So the kept non-forced items
   are the causal lanes of key > t, where t is the largest integer with M(t) >= required: the item whose mass before
   first reaches the requirement is dropped, the one just before it kept, as in the reference. t is found by
   bisection over the causal keys' range, bit by bit from the top (31 + IB steps, each one compare and one float64
   masked row sum in registers); a row where already M(2**(31+IB) - 1) < required (threshold >= 1, say) keeps every
   causal block.
3b. The lists come without a sort: the lanes are in block order, so a prefix count of the kept flags gives each
   kept block's position (its kept-before count) and each dropped real block's (n_kept + its dropped-before count);
   the block indices are scattered there. The mask is the kept flags in block order.

Exactness. The order, the kept set's structure and every comparison are the reference's; the only float arithmetic
is the float64 prefix scan and the row total. Under the Triton interpreter (`TRITON_INTERPRET=1`) the scan is a
sequential left fold, bit-identical to torch's CPU `cumsum` over the same sorted values, and the row total is
numpy's pairwise `sum` of the same float64 values in block order, which can differ from torch's CPU sum (a
different summation tree) in the last bits when a row holds scores many binades below its total. Compiled on a GPU,
both the scan and the total are Triton's reduction trees; torch's own GPU cumsum and sum use other trees still.
So a decision can differ from the reference's only when the mass before some block lies within a few units in the
last place (relative ~1e-16 times the number of blocks) of `threshold * total`: rows of dyadic scores (all sums
exact) agree bit for bit, and the tests check that their random cases keep a margin far above that. (The tests
also compare the order, the masses and the totals themselves through a debug output, `_debug_masses`, which always
runs the sort algorithm.)

The bisection's M(k) is a float64 row sum in block order (numpy's pairwise sum under the interpreter, Triton's
reduction tree compiled), not the reference's sequential cumsum in sorted order, so the same caveat applies to it
(and under the interpreter too): it agrees with the reference bit for bit on rows whose sums are exact (dyadic
scores, boundaries hit exactly included), and otherwise can differ only within a few units in the last place of
`threshold * total`. Within itself it is exact: a fixed summation tree over terms >= 0, some replaced by zeros, is
monotone in each term (rounding is monotone), so the computed M is non-increasing too and the bisection finds its
crossing exactly.

Limits: finite scores (any sign for the sort algorithm, >= 0 for the bisection; NaN unsupported), fp32/fp16/bf16
(widened to fp32 exactly), `NK <= MAX_NK` (8192 blocks: 1M tokens at block 128; callers fall back to the torch path
above). No host synchronisation: the threshold travels as a float64 device tensor (a Python float would be passed to
Triton as fp32).

Under the interpreter the sorts run as an explicit bitonic network whose partner lanes come from `tl.gather` (fast
in numpy); compiled, they are `tl.sort`. Both sort the same unique keys, so they give the same permutation. The
variable `TRITON_INTERPRET` must be set before triton is first imported.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .._jit import per_mode

__all__ = ["MAX_NK", "find_blocks_triton", "select_blocks_triton"]

# widest row (key blocks) one program sorts: a [1, 8192] int64 tile, 32 warps (compile-checked for sm_90: 64
# registers and a 56-byte spill; 1024 blocks take 4 warps, 118 registers, no spill)
MAX_NK = 8192
# Whether XAttention (`methods.xattn`) asks for the sort-free bisection algorithm (`nonneg=True`): on, since on an
# H200 it took 0.23 ms against the sort's 0.70 ms at 64K tokens and 0.68 against 3.43 ms at 128K (32 heads,
# block 128; results/tables/profile_select.csv, session 4). SPARSEBENCH_XATTN_BISECT=0 in the environment at import
# keeps the sort algorithm; direct callers choose with `nonneg` themselves.
_BISECT = os.environ.get("SPARSEBENCH_XATTN_BISECT", "1") != "0"
# lanes per program when several short rows share one (compiled); the interpreter takes wider tiles (fewer programs)
_TILE = 1024
_TILE_INTERPRET = 16384


def _sort_rows(x, LOG: tl.constexpr, DESCENDING: tl.constexpr, INTERPRET: tl.constexpr):
    """Sort each row of a [R, 2**LOG] tile of unique keys."""
    if INTERPRET:
        # bitonic network, one stage per (merge size 2**s, partner distance j); the interpreter runs tl.sort's own
        # network through a per-element Python reduction (about 1.4 s per 1024 keys), this one in numpy
        lane = tl.arange(0, 1 << LOG)[None, :] + tl.zeros(x.shape, tl.int32)
        for s in tl.static_range(1, LOG + 1):
            for t in tl.static_range(s):
                j: tl.constexpr = 1 << (s - 1 - t)
                y = tl.gather(x, lane ^ j, 1)
                lower = (lane & j) == 0
                rising = (lane & (1 << s)) == 0  # this merge block sorts ascending (all of them at s == LOG)
                want_min = lower == rising
                if DESCENDING:
                    want_min = lower != rising
                x = tl.where(want_min, tl.minimum(x, y), tl.maximum(x, y))
        return x
    else:
        return tl.sort(x, dim=1, descending=DESCENDING)


def _mass_before(s1, e1, s2, e2):
    # (s, e): the sum of a run of items and the sum of all its items but the last; a single item is (x, 0).
    # Associative; folded left to right it computes s_k = s_(k-1) + x_k and e_k = s_(k-1) + 0.
    return s1 + s2, s1 + e2


def _select_fwd(SC, TAU, IDX, CNT, MSK, ORD, MASS,
                s_b, s_h, s_q, i_b, i_h, i_q, c_b, c_h, m_b, m_h, m_q, tau_h,
                H, NQC, NK, QB0, Q_LEN, OFF, BS,
                R: tl.constexpr, IB: tl.constexpr, LISTS: tl.constexpr, MASK: tl.constexpr,
                DEBUG: tl.constexpr, INTERPRET: tl.constexpr, NONNEG: tl.constexpr):
    NKP: tl.constexpr = 1 << IB
    pid_r = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    rr = pid_r * R + tl.arange(0, R)  # row inside this chunk
    row_ok = rr < NQC
    lane = tl.arange(0, NKP)
    kb = lane[None, :] + tl.zeros([R, NKP], tl.int32)  # block index of each lane, block order

    # the reference's masks: query block qb holds positions p_lo .. p_hi (offset diagonal when S > T)
    qb = QB0 + rr
    p_lo = qb * BS + OFF
    p_hi = tl.minimum((qb + 1) * BS, Q_LEN) - 1 + OFF
    real = (kb < NK) & row_ok[:, None]
    causal = (kb * BS <= p_hi[:, None]) & real
    forced = ((kb == 0) | ((kb >= (p_lo // BS)[:, None]) & (kb <= (p_hi // BS)[:, None]))) & causal

    row_ptr = SC + b * s_b + h * s_h + rr.to(tl.int64)[:, None] * s_q
    x = tl.load(row_ptr + kb, mask=real, other=0.0).to(tl.float32)
    s = tl.where(causal, x, 0.0)
    s = tl.where(s == 0.0, 0.0, s)  # -0.0 -> +0.0: the reference's sort sees them as equal, the bit keys would not
    total = tl.sum(s.to(tl.float64), 1)

    # 1. unique descending keys: forced flag | order-preserving unsigned image of the fp32 key | NKP - 1 - block
    bits = tl.where(causal, s, -1.0).to(tl.int32, bitcast=True)
    u = tl.where(bits >= 0, bits.to(tl.int64) + 2147483648, (~bits).to(tl.int64))
    u = tl.where(forced | (kb >= NK), 0, u)
    key = (forced.to(tl.int64) << (32 + IB)) | (u << IB) | (NKP - 1 - kb).to(tl.int64)
    tau = tl.load(TAU + h * tau_h)
    # threshold >= 1 keeps every causal block: an infinite requirement (every prefix mass is finite)
    required = tl.where(tau >= 1.0, float("inf"), total * tau)
    if NONNEG:
        # 2b. no sort (every score >= 0): the mass before the item of key c is M(c) = sum of v over the lanes of
        # key > c, non-increasing in c, so the kept non-forced items are the causal lanes of key > t, where t is the
        # largest key value with M(t) >= required. Non-causal lanes and padding have v = 0 and forced lanes, whose
        # keys exceed every searched value, always count, so v is simply `s`.
        v = s.to(tl.float64)
        # Causal non-forced keys lie in [2**(31+IB), 2**(32+IB) - 2] (a score >= +0.0 maps to u >= 2**31, at most
        # the image of +inf); non-causal ones lie below, forced ones above. Build t bit by bit from BASE, the value
        # just below that range: add 2**bit whenever M(t + 2**bit) >= required still. If M(BASE) < required
        # already (e.g. threshold >= 1), t stays BASE and every causal lane is kept, which is right since M only
        # falls above BASE. Each step is one compare and one float64 row sum; as a fixed summation tree over
        # non-negative terms with some zeroed, the computed M is itself monotone, so the search is exact with
        # respect to it (no off-by-one at the crossing item).
        NB: tl.constexpr = 31 + IB
        t = tl.full([R], (1 << NB) - 1, tl.int64)
        for i in range(NB):
            cand = t + (tl.full([R], 1, tl.int64) << (NB - 1 - i))
            m = tl.sum(tl.where(key > cand[:, None], v, 0.0), 1)
            t = tl.where(m >= required, cand, t)
        kept = causal & (forced | (key > t[:, None]))
        if MASK:
            m_ptr = MSK + b * m_b + h * m_h + rr.to(tl.int64)[:, None] * m_q
            tl.store(m_ptr + kb, kept, mask=real)
        if LISTS:
            # 3b. the stable partition without a sort: lanes are in block order, so a kept block goes to its
            # kept-before count and a dropped real block to n_kept + its dropped-before count (padding lanes,
            # after every real block, are not stored)
            k32 = kept.to(tl.int32)
            n_kept = tl.sum(k32, 1)
            kept_before = tl.cumsum(k32, 1) - k32
            pos = tl.where(kept, kept_before, n_kept[:, None] + kb - kept_before)
            i_ptr = IDX + b * i_b + h * i_h + rr.to(tl.int64)[:, None] * i_q
            tl.store(i_ptr + pos, kb, mask=real)
            tl.store(CNT + b * c_b + h * c_h + rr, n_kept, mask=row_ok)
    else:
        key = _sort_rows(key, IB, True, INTERPRET)

        # 2. sorted order: block index, forced flag and score back from the key
        idx = (NKP - 1 - (key & (NKP - 1))).to(tl.int32)
        f_s = (key >> (32 + IB)) != 0
        u_s = (key >> IB) & 0xFFFFFFFF
        bits_s = tl.where(u_s >= 2147483648, (u_s - 2147483648).to(tl.int32), ~(u_s.to(tl.int32)))
        val = bits_s.to(tl.float32, bitcast=True)
        causal_s = (idx * BS <= p_hi[:, None]) & (idx < NK) & row_ok[:, None]
        fv = tl.load(row_ptr + idx, mask=f_s & row_ok[:, None], other=0.0).to(tl.float32)  # <= 3 forced blocks a row
        fv = tl.where(fv == 0.0, 0.0, fv)
        v = tl.where(f_s, fv, tl.where(causal_s, val, 0.0)).to(tl.float64)
        # the mass before each item: a scan of (sum, sum before the last item) pairs, so that `before` is the inclusive
        # sum one item back as the same chain of additions (plus an exact + 0.0), not `incl - v`
        _, before = tl.associative_scan((v, tl.zeros_like(v)), 1, _mass_before)

        # 3. the reference's rule
        take = before < required[:, None]
        kept = causal_s & (f_s | take)

        if DEBUG:
            # tests only: the sorted order, the mass before each item and the row total (contiguous rows)
            d_row = bh.to(tl.int64) * NQC + rr.to(tl.int64)
            tl.store(ORD + d_row[:, None] * NK + kb, idx, mask=real)
            tl.store(MASS + d_row[:, None] * (NK + 1) + kb, before, mask=real)
            tl.store(MASS + d_row * (NK + 1) + NK, total, mask=row_ok)
        if MASK:
            m_ptr = MSK + b * m_b + h * m_h + rr.to(tl.int64)[:, None] * m_q
            tl.store(m_ptr + idx, kept, mask=(idx < NK) & row_ok[:, None])
        if LISTS:
            # 4. stable partition by a second sort: kept blocks (key = block) before dropped ones (key = NKP + block);
            # padding lanes are dropped with block >= NK, so they sort last
            key2 = tl.where(kept, 0, NKP) + idx
            key2 = _sort_rows(key2, IB, False, INTERPRET)
            i_ptr = IDX + b * i_b + h * i_h + rr.to(tl.int64)[:, None] * i_q
            tl.store(i_ptr + kb, key2 & (NKP - 1), mask=real)
            tl.store(CNT + b * c_b + h * c_h + rr, tl.sum(kept.to(tl.int32), 1), mask=row_ok)


_kernel = per_mode((_select_fwd,), (_sort_rows, _mass_before), one=True)


def _pow2ceil(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def launch_config(nk: int, nqc: int, interpret: bool = False) -> tuple[int, int, int]:
    """(IB, rows per program, warps) for rows of `nk` key blocks: one power-of-two tile of `2**IB >= nk` lanes per
    row, short rows stacked up to `_TILE` lanes a program, about 8 lanes a thread."""
    ib = max(4, (nk - 1).bit_length())
    nkp = 1 << ib
    tile = _TILE_INTERPRET if interpret else _TILE
    rows = max(1, min(_pow2ceil(nqc), tile // nkp))
    warps = max(1, min(32, rows * nkp // 256))
    return ib, rows, warps


def _check(scores: torch.Tensor, threshold, q_len: int, k_len: int, block_size: int, qb_start: int) -> torch.Tensor:
    if scores.dim() != 4 or scores.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"scores must be a [B, H, NQc, NK] fp32/fp16/bf16 tensor, got {scores.dtype} "
                         f"{tuple(scores.shape)}")
    H, NK = scores.shape[1], scores.shape[3]
    if NK > MAX_NK:
        raise ValueError(f"select kernel: NK={NK} key blocks exceed MAX_NK={MAX_NK} (use the torch find_blocks)")
    if not 0 < q_len <= k_len or block_size < 1 or qb_start < 0:
        # (the positions below are then >= 0, where Triton's truncating // is the reference's floor division)
        raise ValueError(f"need 0 < q_len <= k_len, block_size >= 1, qb_start >= 0; got q_len={q_len}, "
                         f"k_len={k_len}, block_size={block_size}, qb_start={qb_start}")
    if isinstance(threshold, torch.Tensor):
        if threshold.numel() != H:
            raise ValueError(f"per-head threshold has {threshold.numel()} values for {H} heads")
        tau = threshold.to(device=scores.device, dtype=torch.float64).reshape(H).contiguous()
    else:
        # a device tensor (no sync); as a plain argument Triton would pass the float as fp32
        tau = torch.full((1,), float(threshold), dtype=torch.float64, device=scores.device)
    return tau


def _launch(scores, tau, q_len, k_len, block_size, qb_start, idx, cnt, mask, debug=None, nonneg=False):
    B, H, NQc, NK = scores.shape
    if scores.stride(-1) != 1:
        scores = scores.contiguous()
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    ib, rows, warps = launch_config(NK, NQc, interpret)
    lists, want_mask = idx is not None, mask is not None
    # unused outputs get a dummy pointer and zero strides (the constexpr flags drop their stores)
    dummy = torch.empty(1, dtype=torch.int32, device=scores.device)
    idx_t, cnt_t = (idx, cnt) if lists else (dummy, dummy)
    msk_t = mask if want_mask else torch.empty(1, dtype=torch.bool, device=scores.device)
    i_st = idx.stride()[:3] if lists else (0, 0, 0)
    c_st = cnt.stride()[:2] if lists else (0, 0)
    m_st = mask.stride()[:3] if want_mask else (0, 0, 0)
    grid = (triton.cdiv(NQc, rows), B * H)
    ord_t, mass_t = debug if debug is not None else (dummy, torch.empty(1, dtype=torch.float64, device=scores.device))
    _kernel(interpret)[grid](
        scores, tau, idx_t, cnt_t, msk_t, ord_t, mass_t,
        scores.stride(0), scores.stride(1), scores.stride(2), *i_st, *c_st, *m_st, 1 if tau.numel() > 1 else 0,
        H, NQc, NK, qb_start, q_len, k_len - q_len, block_size,
        R=rows, IB=ib, LISTS=lists, MASK=want_mask, DEBUG=debug is not None, INTERPRET=interpret,
        NONNEG=nonneg and debug is None, num_warps=warps)


def select_blocks_triton(scores: torch.Tensor, threshold: float | torch.Tensor, q_len: int, k_len: int,
                         block_size: int, qb_start: int = 0, out: tuple[torch.Tensor, torch.Tensor] | None = None,
                         return_mask: bool = False, nonneg: bool = False):
    """`find_blocks` + `block_mask_to_selection` in one kernel: `[B, H, NQc, NK]` scores (query blocks
    `qb_start ..`) -> `(kv_indices [B, H, NQc, NK] int32, kv_counts [B, H, NQc] int32)`, kept blocks ascending
    first, then the others ascending; plus the `[B, H, NQc, NK]` bool mask when `return_mask`.

    Arguments as `find_blocks` (threshold: a float or a per-head `[H]` tensor). `out`: tensors to write the lists
    and counts into (views with those shapes, e.g. the rows of a longer selection; last dim contiguous).
    `nonneg`: the caller promises every score is >= 0 (XAttention's softmax block sums are), which lets the kernel
    use the sort-free bisection algorithm; with a negative score its result is undefined (nothing checks).
    """
    tau = _check(scores, threshold, q_len, k_len, block_size, qb_start)
    B, H, NQc, NK = scores.shape
    if out is None:
        idx = torch.empty(B, H, NQc, NK, dtype=torch.int32, device=scores.device)
        cnt = torch.empty(B, H, NQc, dtype=torch.int32, device=scores.device)
    else:
        idx, cnt = out
        if (idx.shape != (B, H, NQc, NK) or cnt.shape != (B, H, NQc) or idx.dtype != torch.int32
                or cnt.dtype != torch.int32 or idx.stride(-1) != 1 or cnt.stride(-1) != 1):
            raise ValueError(f"out must be int32 [B, H, NQc, NK] and [B, H, NQc] (last dims contiguous); got "
                             f"{tuple(idx.shape)} {idx.dtype}, {tuple(cnt.shape)} {cnt.dtype}")
    mask = torch.empty(B, H, NQc, NK, dtype=torch.bool, device=scores.device) if return_mask else None
    _launch(scores, tau, q_len, k_len, block_size, qb_start, idx, cnt, mask, nonneg=nonneg)
    return (idx, cnt, mask) if return_mask else (idx, cnt)


def find_blocks_triton(scores: torch.Tensor, threshold: float | torch.Tensor, q_len: int, k_len: int,
                       block_size: int, qb_start: int = 0, nonneg: bool = False) -> torch.Tensor:
    """`find_blocks` as a kernel: the `[B, H, NQc, NK]` bool mask only (no lists). `nonneg` as in
    `select_blocks_triton`."""
    tau = _check(scores, threshold, q_len, k_len, block_size, qb_start)
    mask = torch.empty(scores.shape, dtype=torch.bool, device=scores.device)
    _launch(scores, tau, q_len, k_len, block_size, qb_start, None, None, mask, nonneg=nonneg)
    return mask


def _debug_masses(scores: torch.Tensor, threshold: float | torch.Tensor, q_len: int, k_len: int, block_size: int,
                  qb_start: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tests only: the kernel's sorted block order `[B, H, NQc, NK]` int32, float64 mass before each sorted item
    `[B, H, NQc, NK]` and row total `[B, H, NQc]`, to compare bit for bit with the reference's intermediates.
    Always the sort algorithm (the bisection has no sorted order or per-item masses to show)."""
    tau = _check(scores, threshold, q_len, k_len, block_size, qb_start)
    B, H, NQc, NK = scores.shape
    order = torch.empty(B, H, NQc, NK, dtype=torch.int32, device=scores.device)
    mass = torch.empty(B, H, NQc, NK + 1, dtype=torch.float64, device=scores.device)
    mask = torch.empty(B, H, NQc, NK, dtype=torch.bool, device=scores.device)
    _launch(scores, tau, q_len, k_len, block_size, qb_start, None, None, mask, debug=(order, mass))
    return order, mass[..., :NK], mass[..., NK]
