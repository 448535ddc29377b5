"""Triton kernels for `kernels/flex_blocks` (semantics in naive.py), in two launches instead of about twenty torch
ops (a stable sort and its rank scatter, the causal and diagonal index tables, the mask, `stable_partition`'s
scan and scatter).

1. `_fb_keep`, one program per (kind, head, block of entries): each entry's rank in the stable descending order,
   counted directly (the entries above it, plus the equal ones at lower indices; the forced entry as +inf), kept
   below the budget (given, or with `flex_blocks_from_counts_triton` worked out from FlexPrefill's cover counts).
2. `_fb_lists`, one program per (head, query-block row): the row's flags from the kept columns and diagonals and
   the query-aware cover, written as `stable_partition` writes them (listed blocks ascending, then the others
   ascending) in two walks over the row, and their count.

Bit for bit the reference's output: ranks and flags are integer decisions on the same fp32 values.
Under `TRITON_INTERPRET=1` (set before triton is imported) the loops take the constexpr length `I_NB`.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .._jit import per_mode
from .naive import _check

__all__ = ["flex_blocks_from_counts_triton", "flex_blocks_triton"]


def _forced(row_ptr, idx, ok, forced_at):
    """The row's scores at `idx`, the forced entry as +inf."""
    x = tl.load(row_ptr + idx, mask=ok, other=0.0)
    return tl.where(idx == forced_at, float("inf"), x)


def _fb_keep(P, BUD, KEEP, NB, BH, BI: tl.constexpr, BJ: tl.constexpr, I_NB: tl.constexpr,
             INTERPRET: tl.constexpr, COUNTS: tl.constexpr = False, QAW=None, minb=0, maxb=0, per_block=1):
    row = tl.program_id(0).to(tl.int64)  # kind * BH + head
    kind = row // BH
    forced_at = tl.where(kind == 0, 0, NB - 1)  # block 0 of the columns, the main diagonal of the slashes
    if COUNTS:
        # BUD holds cover counts: the budget is count // per_block + 1 clamped to [minb, maxb] (min, then max: the
        # official order), minb on the query-aware heads
        budget = tl.minimum(tl.maximum(tl.load(BUD + row).to(tl.int64) // per_block + 1, minb), maxb)
        budget = tl.where(tl.load(QAW + row % BH) != 0, minb, budget)
    else:
        budget = tl.load(BUD + row)
    row_ptr = P + row * NB
    ii = tl.program_id(1) * BI + tl.arange(0, BI)
    xi = _forced(row_ptr, ii, ii < NB, forced_at)
    rank = tl.zeros([BI], dtype=tl.int32)
    for j0 in range(0, I_NB if INTERPRET else NB, BJ):
        jj = j0 + tl.arange(0, BJ)
        xj = _forced(row_ptr, jj, jj < NB, forced_at)
        before = (xj[None, :] > xi[:, None]) | ((xj[None, :] == xi[:, None]) & (jj[None, :] < ii[:, None]))
        rank += tl.sum((before & (jj < NB)[None, :]).to(tl.int32), 1)
    tl.store(KEEP + row * NB + ii, (rank < budget).to(tl.int8), mask=ii < NB)


def _row_flags(KEEP, QA, qa_on, bh, r, c, NB, BH):
    """Flags of blocks (r, c) of head `bh` (c a block of indices)."""
    ok = (c <= r) & (c < NB)
    kv = tl.load(KEEP + bh * NB + c, mask=ok, other=0) != 0
    ks = tl.load(KEEP + (BH + bh) * NB + (NB - 1 - (r - c)), mask=ok, other=0) != 0
    qa = tl.load(QA + (bh * NB + r) * NB + c, mask=ok & qa_on, other=0) != 0
    return ok & (kv | ks | qa)


def _fb_lists(KEEP, QA, QAW, IDX, CNT, NB, BH, BC: tl.constexpr, I_NB: tl.constexpr, INTERPRET: tl.constexpr,
              ONE: tl.constexpr = False):
    r = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    qa_on = tl.load(QAW + bh) != 0
    out = IDX + (bh * NB + r) * NB
    if ONE:
        # the whole row in one block (NB <= BC): its flags once, every block's place from one scan
        c = tl.arange(0, BC)
        f = _row_flags(KEEP, QA, qa_on, bh, r, c, NB, BH).to(tl.int32)
        listed_before = tl.cumsum(f, 0) - f
        count = tl.sum(f)
        tl.store(out + tl.where(f != 0, listed_before, count + c - listed_before), c, mask=c < NB)
        tl.store(CNT + bh * NB + r, count)
        return
    count = tl.zeros([], dtype=tl.int32)
    for c0 in range(0, I_NB if INTERPRET else NB, BC):
        c = c0 + tl.arange(0, BC)
        f = _row_flags(KEEP, QA, qa_on, bh, r, c, NB, BH).to(tl.int32)
        tl.store(out + count + tl.cumsum(f, 0) - f, c, mask=f != 0)
        count += tl.sum(f)
    tl.store(CNT + bh * NB + r, count)
    seen = tl.zeros([], dtype=tl.int32)  # listed blocks before the current one
    for c0 in range(0, I_NB if INTERPRET else NB, BC):
        c = c0 + tl.arange(0, BC)
        f = _row_flags(KEEP, QA, qa_on, bh, r, c, NB, BH).to(tl.int32)
        listed_before = seen + tl.cumsum(f, 0) - f
        # an unlisted block goes after every listed one, after the unlisted ones before it
        tl.store(out + count + (c - listed_before), c, mask=(f == 0) & (c < NB))
        seen += tl.sum(f)


_kernels = per_mode((_fb_keep, _fb_lists), (_forced, _row_flags))
# rows of at most 1024 blocks listed in one walk (`_fb_lists`' ONE: the flags read once, one scan) instead of two
# (the listed blocks, then the others); the same lists. On since session 12: FlexPrefill's estimate 0.664 / 1.345 /
# 3.124 ms against 0.667 / 1.366 / 3.222 ms at 32K / 64K / 128K (H200, Llama-3.1-8B heads,
# `bench_methods_cost_s12a.csv`, row `flexprefill_twowalks`; the lists' launch 10.4 against 18.3 us at 32K, profiled)
ONE_WALK = True


def flex_blocks_triton(pooled: torch.Tensor, budget: torch.Tensor, qa_blocks: torch.Tensor,
                       query_aware: torch.Tensor, block: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """`(kv_indices [B, H, nb, nb], kv_counts [B, H, nb])` int32 of `flex_blocks_naive` (arguments as there)."""
    _check(pooled, budget, qa_blocks, query_aware)
    return _launch(pooled, budget.to(torch.int32), qa_blocks, query_aware, block, {})


def flex_blocks_from_counts_triton(pooled: torch.Tensor, counts: torch.Tensor, minb: int, maxb: int, per_block: int,
                                   qa_cover: torch.Tensor, query_aware: torch.Tensor, block: int = 64
                                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """`flex_blocks_triton(pooled, budget, qa_cover & query_aware[..., None, None], query_aware)` with
    `budget = (counts // per_block + 1).clamp(min=minb, max=maxb)`, minb on the query-aware heads: FlexPrefill's
    budgets from its cover counts (`counts [2, B, H]`, non-negative integers; any value on the query-aware heads),
    worked out by the first launch, and the cover read only on the query-aware heads (which the lists kernel does
    anyway), instead of five torch launches for the budgets and one for the mask. `qa_cover`: bool `[B, H, nb, nb]`,
    any values on the other heads."""
    _check(pooled, counts, qa_cover, query_aware)
    if counts.dtype.is_floating_point or counts.dtype == torch.bool:
        raise ValueError(f"counts must be integers; got {counts.dtype}")
    if isinstance(per_block, bool) or not isinstance(per_block, int) or per_block < 1:
        raise ValueError(f"per_block={per_block!r} must be a positive integer")
    return _launch(pooled, counts, qa_cover, query_aware, block,
                   {"COUNTS": True, "minb": int(minb), "maxb": int(maxb), "per_block": per_block})


def _launch(pooled, bud, qa_blocks, query_aware, block: int, keep_kw: dict) -> tuple[torch.Tensor, torch.Tensor]:
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    _, B, H, nb = pooled.shape
    BH = B * H
    dev = pooled.device
    p = pooled.contiguous()
    bud = bud.contiguous()
    qa = qa_blocks.contiguous().view(torch.int8)
    qaw = query_aware.contiguous().view(torch.int8)
    keep = torch.empty(2, BH, nb, dtype=torch.int8, device=dev)
    idx = torch.empty(B, H, nb, nb, dtype=torch.int32, device=dev)
    cnt = torch.empty(B, H, nb, dtype=torch.int32, device=dev)
    keep_k, lists_k = _kernels(interpret)
    bi = min(block, max(16, triton.next_power_of_2(nb)))
    i_nb = nb if interpret else 0
    # one program per (kind, head, block of BI entries): a program per (kind, head) left most of the GPU idle (64
    # programs for Llama-3.1-8B heads), each walking all nb^2 pairs (session 9; not yet timed apart)
    keep_k[(2 * BH, -(-nb // bi))](p, bud, keep, nb, BH, BI=bi, BJ=bi, I_NB=i_nb, INTERPRET=interpret, num_warps=4,
                                   QAW=qaw, **keep_kw)
    bc = min(1024, max(16, triton.next_power_of_2(nb)))
    lists_k[(nb, BH)](keep, qa, qaw, idx, cnt, nb, BH, BC=bc, I_NB=i_nb, INTERPRET=interpret, num_warps=4,
                      ONE=ONE_WALK and nb <= bc)
    return idx, cnt
