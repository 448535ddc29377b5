"""Triton kernels for `kernels/cover` (semantics in naive.py): the cumulative-coverage cut of a row found by bisection
on the values' bit patterns instead of a sort.

One program per row. Each value gets an unsigned key that orders as the value (the fp32 bit pattern made monotone;
-0.0 folded to +0.0). With f(t) the row's mass at keys >= t (non-increasing in t), 32 passes fix, from the top bit
down, the largest key t' with f(t') > target: the entries with keys above t' all fit under the target, the value v*
of key t' is the one whose ties cross it, and j = floor((target - f(t' + 1)) / v*) of those ties still fit (each
adds v*). The count is #(keys > t') + min(j, #ties) + 1, or the whole row + 1 when the row's mass is within the
target; the mask keeps the keys above t' and the first min(j, #ties) ties in index order (the stable rule). A last
pass counts or writes. No sort, no atomics; the row is read 34 times (from L2 after the first).

Rounding: the masses are fp32 sums in block order, where the reference adds the sorted values one by one; a running
sum within rounding of the target may fall on the other side (so may the reference's own CUDA scan, which is not
sequential either). Exact where the sums are (e.g. values on a binary grid).

Under `TRITON_INTERPRET=1` (set before triton is imported) the loops over the row take the constexpr length `I_N`.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .._jit import per_mode
from ..top_set.triton import _monotone
from .naive import _check

__all__ = ["cover_count_triton", "cover_mask_triton"]


def _entries(x_row, b0, N, COLS, TRIL: tl.constexpr, BLOCK: tl.constexpr):
    """A block's indices, which of them take part (inside the row and, with `TRIL`, on the lower triangle of the
    row read as `[N / COLS, COLS]`), their values (0 elsewhere) and keys."""
    idx = b0 + tl.arange(0, BLOCK)
    ok = idx < N
    if TRIL:
        ok = ok & (idx % COLS <= idx // COLS)
    x = tl.load(x_row + idx, mask=ok, other=0.0)
    return idx, ok, x, _monotone(x)


def _mass_from(x_row, t, N, COLS, TRIL: tl.constexpr, BLOCK: tl.constexpr, INTERPRET: tl.constexpr,
               I_N: tl.constexpr):
    """The row's mass at keys >= t (fp32, block order)."""
    acc = tl.zeros([], dtype=tl.float32)
    for b0 in range(0, I_N if INTERPRET else N, BLOCK):
        idx, ok, x, key = _entries(x_row, b0, N, COLS, TRIL, BLOCK)
        acc += tl.sum(tl.where(ok & (key >= t), x, 0.0))
    return acc


def _cover_fwd(X, OUT, CNT, N, sx, so, target, COLS, MASK: tl.constexpr, TRIL: tl.constexpr, BLOCK: tl.constexpr,
               INTERPRET: tl.constexpr, I_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = X + row * sx
    zero = tl.zeros([], dtype=tl.uint32)
    all_in = _mass_from(x_row, zero, N, COLS, TRIL, BLOCK, INTERPRET, I_N) <= target
    # the largest key t' whose mass f(t') exceeds the target, one bit at a time from the top
    tp = zero
    bit = tl.full([], 0x80000000, tl.uint32)
    for _ in range(32):
        cand = tp | bit
        if _mass_from(x_row, cand, N, COLS, TRIL, BLOCK, INTERPRET, I_N) > target:
            tp = cand
        bit = bit >> 1
    above = tl.zeros([], dtype=tl.int32)
    ties = tl.zeros([], dtype=tl.int32)
    valid = tl.zeros([], dtype=tl.int32)
    mass = tl.zeros([], dtype=tl.float32)
    v_star = tl.zeros([], dtype=tl.float32)
    for b0 in range(0, I_N if INTERPRET else N, BLOCK):
        idx, ok, x, key = _entries(x_row, b0, N, COLS, TRIL, BLOCK)
        gt = ok & (key > tp)
        eq = ok & (key == tp)
        above += tl.sum(gt.to(tl.int32))
        ties += tl.sum(eq.to(tl.int32))
        valid += tl.sum(ok.to(tl.int32))
        mass += tl.sum(tl.where(gt, x, 0.0))
        v_star = tl.maximum(v_star, tl.max(tl.where(eq, x, 0.0)))
    # how many of the ties of v* still fit; v* > 0 whenever the row's mass exceeds the target
    fit = tl.floor((target - mass) / tl.where(v_star > 0, v_star, 1.0))
    fit = tl.minimum(tl.maximum(fit, 0.0), ties.to(tl.float32)).to(tl.int32)
    if MASK:
        seen = tl.zeros([], dtype=tl.int32)
        out_row = OUT + row * so
        for b0 in range(0, I_N if INTERPRET else N, BLOCK):
            idx, ok, x, key = _entries(x_row, b0, N, COLS, TRIL, BLOCK)
            eq = (ok & (key == tp)).to(tl.int32)
            rank = seen + tl.cumsum(eq, 0) - eq  # ties before this entry, in index order
            keep = tl.where(all_in, ok, ok & ((key > tp) | ((eq != 0) & (rank < fit))))
            tl.store(out_row + idx, keep.to(tl.int8), mask=idx < N)
            seen += tl.sum(eq)
    else:
        tl.store(CNT + row, (tl.where(all_in, valid, above + fit) + 1).to(tl.int64))


_kernel = per_mode((_cover_fwd,), (_monotone, _entries, _mass_from), one=True)


def _launch(x, target, cols, mask, block):
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    x = x if x.stride(-1) == 1 else x.contiguous()
    R, N = x.shape
    out = torch.empty(R, N, dtype=torch.int8, device=x.device) if mask else x
    cnt = torch.empty(R, dtype=torch.int64, device=x.device)
    block = min(block, max(16, triton.next_power_of_2(N)))
    _kernel(interpret)[(R,)](x, out, cnt, N, x.stride(0), out.stride(0), float(target), cols, MASK=mask,
                             TRIL=mask, BLOCK=block, INTERPRET=interpret, I_N=N if interpret else 0, num_warps=8)
    return out.view(torch.bool) if mask else cnt


def cover_count_triton(x: torch.Tensor, target: float, block: int = 2048) -> torch.Tensor:
    """int64 `[R]` of `cover_count_naive` (arguments as there), up to the rounding in the module docstring."""
    _check(x, target)
    return _launch(x, target, 1, False, block)


def cover_mask_triton(x: torch.Tensor, target: float, cols: int, block: int = 2048) -> torch.Tensor:
    """bool like `x` of `cover_mask_naive` (arguments as there), up to the rounding in the module docstring."""
    _check(x, target)
    if cols < 1 or x.shape[1] % cols:
        raise ValueError(f"cols={cols} must divide the row length {x.shape[1]}")
    return _launch(x, target, cols, True, block)
