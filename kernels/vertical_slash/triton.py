"""Vertical-slash attention on the project's Triton kernels: the index build of naive.py (vectorised torch, no host
synchronisation), with its extra-column compaction done by one Triton program per (head, query block) instead of
full-size `[heads, query blocks, columns]` torch passes (gather, cumsum, scatter: ~2 ms of a 128K MInference
estimate on an H200), its block lists written in one pass (`_LIST_KERNEL`, on) and its slash maps built in one
launch (`_MAP_KERNEL`, on), feeding `block_sparse_attn_triton`, which walks the 64x64 key
blocks and then gathers the extra columns token by token in the same online softmax. Every kernel here gives
naive.py's torch build bit for bit."""
from __future__ import annotations

import torch
import triton.language as tl

from .._jit import per_mode
from ..block_sparse_attn.triton import block_sparse_attn_triton
from .naive import vertical_slash_to_blocks

__all__ = ["block_lists_triton", "diagonal_maps_triton", "extra_columns_triton", "vertical_slash_attn_triton"]


def vertical_slash_attn_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, v_idx: torch.Tensor,
                               s_idx: torch.Tensor, block_size: int = 64, scale: float | None = None,
                               return_lse: bool = False):
    """Same result as `vertical_slash_attn_naive` (q `[B, H, T, D]`, k / v `[B, HKV, S, D]`, HS in {H, HKV, 1})."""
    T, S = q.shape[2], k.shape[2]
    idx, cnt, cols, ccnt = vertical_slash_to_blocks(v_idx, s_idx, T, S, block_size, extra="triton")
    return block_sparse_attn_triton(q, k, v, idx, cnt, block_size, block_size, scale=scale, extra_cols=cols,
                                    extra_counts=ccnt, return_lse=return_lse)


def _extra_cols_fwd(V, VC, KB, EM, LM, OUT, OUTN, NQ, NK, NE, NV, NL, SL, bs, q_len, k_len, base_last, d, x_lo,
                    x_hi, RAGGED: tl.constexpr, SORTED: tl.constexpr, BLOCK: tl.constexpr, INTERPRET: tl.constexpr,
                    I_NV: tl.constexpr):
    # One program per (list head, query block): the head's sorted vertical columns, kept where no listed block
    # covers them and causality allows, compacted in order by a prefix sum; the rest of the row is zeroed.
    qb = tl.program_id(0)
    r = tl.program_id(1).to(tl.int64)
    p_hi = tl.minimum((qb + 1) * bs, q_len) - 1 + (k_len - q_len)
    out_row = OUT + (r * NQ + qb) * NV
    count = 0
    # runtime loops over the columns: one compiled kernel for every column count (budget searches vary it); the
    # interpreter cannot take a runtime loop bound, so there it is the constexpr I_NV
    for c0 in range(0, I_NV if INTERPRET else NV, BLOCK):
        j = c0 + tl.arange(0, BLOCK)
        ok = j < NV
        vv = tl.load(V + r * NV + j, mask=ok, other=0)
        if SORTED:
            # columns known live (`v_sorted`): the causal key is the column, its key block a division
            vc = vv
            kb = vv // bs
        else:
            vc = tl.load(VC + r * NV + j, mask=ok, other=0)
            kb = tl.load(KB + r * NV + j, mask=ok, other=0)
        # covered(qb, v) = F[x], x = qb + NK - 1 - kb(v), the Toeplitz table of naive.py: the map's entry x + d,
        # False outside [x_lo, x_hi)
        x = qb + (NK - 1 - kb)
        cov = tl.load(EM + r * NE + x + d, mask=ok & (x >= x_lo) & (x < x_hi), other=0) != 0
        if RAGGED:
            # the ragged last query block has its own diagonal set; a slot outside it is no diagonal
            slot = base_last - kb
            slot_ok = ok & (slot >= 0) & (slot < NL)
            cov_last = tl.load(LM + r * SL + slot, mask=slot_ok, other=0) != 0
            cov = tl.where(qb == NQ - 1, cov_last, cov)
        keep = ok & (~cov) & (vc <= p_hi)
        k32 = keep.to(tl.int32)
        dest = tl.cumsum(k32, 0) + count - 1
        tl.store(out_row + dest, vv, mask=keep)
        count += tl.sum(k32, 0)
    for c0 in range(0, I_NV if INTERPRET else NV, BLOCK):
        j = c0 + tl.arange(0, BLOCK)
        tl.store(out_row + j, tl.zeros([BLOCK], dtype=tl.int32), mask=(j < NV) & (j >= count))
    tl.store(OUTN + r * NQ + qb, count)


_extra_kernel = per_mode((_extra_cols_fwd,), one=True)


def _lists_fwd(E1, E1L, OUT, CNT, NQ, MAXK, A1, RAGGED: tl.constexpr, BLOCK: tl.constexpr,
               INTERPRET: tl.constexpr, I_K: tl.constexpr):
    # One program per (list head, query block): row qb lists qb + A + 1 - (e + 1) for the head's sorted block
    # diagonals, clamped at 0 past its live prefix, whose length is the count (naive.py's subtraction, clamp and
    # searchsorted in one pass: each list entry written once)
    qb = tl.program_id(0)
    r = tl.program_id(1).to(tl.int64)
    base = qb + A1
    src = E1 + r * MAXK
    if RAGGED:
        if qb == NQ - 1:
            src = E1L + r * MAXK  # the ragged last query block's own set
    out_row = OUT + (r * NQ + qb) * MAXK
    count = 0
    for c0 in range(0, I_K if INTERPRET else MAXK, BLOCK):
        j = c0 + tl.arange(0, BLOCK)
        ok = j < MAXK
        val = base - tl.load(src + j, mask=ok, other=0)
        tl.store(out_row + j, tl.maximum(val, 0), mask=ok)
        count += tl.sum((ok & (val >= 0)).to(tl.int32), 0)
    tl.store(CNT + r * NQ + qb, count)


_lists_kernel = per_mode((_lists_fwd,), one=True)


def block_lists_triton(e1s, e1s_last, A1: int, NQ: int):
    """`(kv_indices [B, HS, NQ, MAXK], kv_counts [B, HS, NQ])` int32 of `naive.vertical_slash_to_blocks` from its
    sorted block-diagonal sets `e1s [B, HS, MAXK]` (int32, e + 1, dead slots past every base) and, for a ragged
    last query block, that block's own set `e1s_last` (else None); `A1` = (S - T) // bs + 1."""
    import os

    import triton

    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    B, HS, maxk = e1s.shape
    R = B * HS
    e1 = e1s.reshape(R, maxk).contiguous()
    e1l = e1s_last.reshape(R, maxk).contiguous() if e1s_last is not None else e1
    out = torch.empty(R, NQ, maxk, dtype=torch.int32, device=e1.device)
    cnt = torch.empty(R, NQ, dtype=torch.int32, device=e1.device)
    block = min(1024, max(16, triton.next_power_of_2(maxk)))
    _lists_kernel(interpret)[(NQ, R)](e1, e1l, out, cnt, NQ, maxk, A1, RAGGED=e1s_last is not None, BLOCK=block,
                                      INTERPRET=interpret, I_K=maxk if interpret else 0, num_warps=4)
    return out.view(B, HS, NQ, maxk), cnt.view(B, HS, NQ)


def _slot(pos, o, live, bs, trash):
    """naive.py's `_diagonal_map` slot e + 1 of the block diagonal that offset `o` crosses at in-block row position
    `pos` (c for a query block's first row, c + rows - 1 for its last), clamped to [0, trash]; `trash` where the
    offset is dead. floor((pos - o) / bs) by hand: integer `//` on tensors truncates toward zero."""
    a = pos - o
    fl = tl.where(a >= 0, a // bs, -((bs - 1 - a) // bs))
    return tl.where(live, tl.minimum(tl.maximum(1 - fl, 0), trash), trash)


def _maps_fwd(O, EM, EML, E1, E1L, NS, NK, MAXK, c, k_len, bs, last_rows, RAGGED: tl.constexpr, BLOCK: tl.constexpr,
              INTERPRET: tl.constexpr, I_NS: tl.constexpr, I_W: tl.constexpr, I_K: tl.constexpr):
    # One program per list head: naive.py's block-diagonal map of the head's slash offsets (each live offset marks
    # the slots e + 1 of the block diagonals it crosses at a query block's first and last row) and its sorted
    # distinct slots, for whole query blocks and (RAGGED) for the shorter last one. Zero, mark, compact, each phase
    # after a barrier: the marks are plain stores of 1 (duplicates write the same value).
    r = tl.program_id(0).to(tl.int64)
    W = NK + 3
    offs = tl.arange(0, BLOCK)
    for j0 in range(0, I_W if INTERPRET else W, BLOCK):
        j = j0 + offs
        tl.store(EM + r * W + j, tl.zeros([BLOCK], dtype=tl.int8), mask=j < W)
        if RAGGED:
            tl.store(EML + r * W + j, tl.zeros([BLOCK], dtype=tl.int8), mask=j < W)
    tl.debug_barrier()
    trash = NK + 2
    ones = tl.full([BLOCK], 1, dtype=tl.int8)
    for j0 in range(0, I_NS if INTERPRET else NS, BLOCK):
        j = j0 + offs
        ok = j < NS
        o = tl.load(O + r * NS + j, mask=ok, other=-1)
        live = ok & (o >= 0) & (o < k_len)
        lo = _slot(c, o, live, bs, trash)
        tl.store(EM + r * W + lo, ones, mask=ok)
        tl.store(EM + r * W + _slot(c + bs - 1, o, live, bs, trash), ones, mask=ok)
        if RAGGED:
            tl.store(EML + r * W + lo, ones, mask=ok)
            tl.store(EML + r * W + _slot(c + last_rows - 1, o, live, bs, trash), ones, mask=ok)
    tl.debug_barrier()
    _compact_slots(EM, E1, r, W, NK, MAXK, BLOCK, INTERPRET, I_W, I_K)
    if RAGGED:
        _compact_slots(EML, E1L, r, W, NK, MAXK, BLOCK, INTERPRET, I_W, I_K)


def _compact_slots(EM, E1, r, W, NK, MAXK, BLOCK: tl.constexpr, INTERPRET: tl.constexpr, I_W: tl.constexpr,
                   I_K: tl.constexpr):
    """The marked slots below NK + 2 in ascending order into `E1[r, :MAXK]`, the rest of the row NK + 2."""
    offs = tl.arange(0, BLOCK)
    count = 0
    for j0 in range(0, I_W if INTERPRET else W, BLOCK):
        j = j0 + offs
        f = (tl.load(EM + r * W + j, mask=j < NK + 2, other=0) != 0).to(tl.int32)
        pos = count + tl.cumsum(f, 0) - f
        tl.store(E1 + r * MAXK + pos, j, mask=(f != 0) & (pos < MAXK))
        count += tl.sum(f, 0)
    for j0 in range(0, I_K if INTERPRET else MAXK, BLOCK):
        j = j0 + offs
        tl.store(E1 + r * MAXK + j, tl.zeros([BLOCK], dtype=tl.int32) + NK + 2, mask=(j >= count) & (j < MAXK))


_maps_kernel = per_mode((_maps_fwd,), (_slot, _compact_slots), one=True)


def diagonal_maps_triton(s_idx, c: int, bs: int, last_rows: int, NK: int, maxk: int, k_len: int):
    """`(maps, e1s)` of `naive.vertical_slash_to_blocks`: the block-diagonal maps `[B, HS, NK + 2]` bool (one for
    whole query blocks, and one for a ragged last block when `last_rows != bs`) and their sorted distinct slots
    `[B, HS, maxk]` int32 (padded with NK + 2), from the slash offsets `s_idx [B, HS, NS]` in one launch."""
    import os

    import triton

    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    B, HS, NS = s_idx.shape
    R = B * HS
    dev = s_idx.device
    ragged = last_rows != bs
    W = NK + 3
    em = torch.empty(R, W, dtype=torch.int8, device=dev)
    eml = torch.empty(R, W, dtype=torch.int8, device=dev) if ragged else em
    e1 = torch.empty(R, maxk, dtype=torch.int32, device=dev)
    e1l = torch.empty(R, maxk, dtype=torch.int32, device=dev) if ragged else e1
    o = s_idx.reshape(R, NS)
    o = o if o.is_contiguous() else o.contiguous()
    block = min(1024, max(16, triton.next_power_of_2(max(NS, W, maxk))))
    _maps_kernel(interpret)[(R,)](o, em, eml, e1, e1l, NS, NK, maxk, c, k_len, bs, last_rows, RAGGED=ragged,
                                  BLOCK=block, INTERPRET=interpret, I_NS=NS if interpret else 0,
                                  I_W=W if interpret else 0, I_K=maxk if interpret else 0, num_warps=4)
    as_map = lambda t: t.view(torch.bool)[:, :NK + 2].view(B, HS, NK + 2)  # noqa: E731
    maps = [as_map(em)] + ([as_map(eml)] if ragged else [])
    e1s = [e1.view(B, HS, maxk)] + ([e1l.view(B, HS, maxk)] if ragged else [])
    return maps, e1s


# the slash offsets' block-diagonal maps and sorted slots of `extra="triton"` by `diagonal_maps_triton` (one launch)
# instead of naive.py's torch ops (two scatters into zeroed maps, a where and a sort per map, about a dozen launches
# a call). On an H200 (session 8, bench_methods, medians of 3, Llama-3.1-8B shape) MInference's whole estimate took
# 1.60 / 1.16 / 2.13 ms with it against 2.06 / 2.11 / 2.21 ms without at 32K / 64K / 128K (the 64K row without it
# spread 1.48-2.22 ms; `results/tables/bench_methods_cost_s8.csv`). bench_methods row `minference_vs_nomaps` is the
# torch path.
_MAP_KERNEL = True


# the block lists of `extra="triton"` by `block_lists_triton` (one pass) instead of torch's subtraction, clamp and
# searchsorted (at 64K keys, bs 64 and 6096 slashes per head: 134 MB of int32 lists written twice, 0.15 ms on an
# H200 in session 6; the kernel profiled 0.031 ms per call in session 7). bench_methods row `minference_vs_nolists`
# is the torch path.
_LIST_KERNEL = True


def extra_columns_triton(v, v_cmp, kbv, emap, d: int, x_lo: int, x_hi: int, last_map, base_last: int, q_len: int,
                         k_len: int, bs: int, NQ: int, NK: int):
    """The extra-column compaction of `naive.vertical_slash_to_blocks` (its `extra="triton"`): `(extra_cols
    [B, HS, NQ, NV], extra_counts [B, HS, NQ])` int32 from its sorted columns `v`, their causal keys `v_cmp`, key
    blocks `kbv` (all `[B, HS, NV]` int32; `v_cmp` and `kbv` None when every column is live, `v_sorted`: the kernel
    derives them), the block-diagonal map `emap [B, HS, NK + 2]` (bool; naive.py's Toeplitz table F[x] is its entry
    x + d for x in [x_lo, x_hi), False elsewhere) and, for a ragged last query block, its own map
    `last_map [B, HS, NK + 2]` (bool)."""
    import os

    import triton

    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    B, HS, NV = v.shape
    R = B * HS
    dev = v.device
    ragged = last_map is not None
    # the maps are row views of wider buffers: read in place through their row strides
    em = emap.reshape(R, -1).view(torch.int8)
    lm = last_map.reshape(R, -1).view(torch.int8) if ragged else em
    out_c = torch.empty(R, NQ, NV, dtype=torch.int32, device=dev)
    out_n = torch.empty(R, NQ, dtype=torch.int32, device=dev)
    block = min(1024, max(16, triton.next_power_of_2(NV)))
    sorted_v = v_cmp is None
    vr = v.reshape(R, NV).contiguous()
    vcr = vr if sorted_v else v_cmp.reshape(R, NV).contiguous()
    kbr = vr if sorted_v else kbv.reshape(R, NV).to(torch.int32).contiguous()
    _extra_kernel(interpret)[(NQ, R)](
        vr, vcr, kbr, em, lm, out_c, out_n, NQ, NK, em.stride(0), NV, lm.shape[-1], lm.stride(0), bs, q_len, k_len,
        base_last, d, x_lo, x_hi,
        RAGGED=ragged, SORTED=sorted_v, BLOCK=block, INTERPRET=interpret, I_NV=NV if interpret else 0, num_warps=4)
    return out_c.view(B, HS, NQ, NV), out_n.view(B, HS, NQ)
