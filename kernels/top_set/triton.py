"""Triton kernel for `kernels/top_set` (semantics in naive.py): one program per row, a radix select on 32-bit keys.

Each entry's key orders as the value (fp32 bit pattern made unsigned-monotone: -0.0 folded to +0.0, negative values'
bits flipped, positive ones' sign bit set; the first `forced` entries get the largest key). Four passes over the row,
one per key byte from the top, histogram the byte among the entries that match the bytes fixed so far and fix the
byte in which the k-th largest key lies; after them `T` is the k-th largest key and `need` the number of entries equal
to `T` that belong to the set. A last pass walks the row in index order and writes every entry with a key above `T`,
and the first `need` entries equal to `T` (the lower indices: the stable rule), at their running count: ascending
indices, bit for bit the reference's set. No sort, no atomics; the row is read five times (from L2 after the first).

Under `TRITON_INTERPRET=1` (set before triton is imported) the same code runs on the CPU for the tests; there the
loops over the row take the constexpr length (`I_N`), since the interpreter cannot take a runtime loop bound.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .._jit import per_mode
from .naive import _check

__all__ = ["top_set_triton"]


def _keys(X, idx, ok, forced):
    """Unsigned-monotone 32-bit keys of the entries `idx` (module doc); 0 outside the row."""
    x = tl.load(X + idx, mask=ok, other=0.0) + 0.0  # -0.0 -> +0.0
    bits = x.to(tl.uint32, bitcast=True)
    sign = tl.full([1], 0x80000000, tl.uint32)
    ones = tl.full([1], 0xFFFFFFFF, tl.uint32)  # xor with it, not `~`: the interpreter's `~` overflows uint32
    key = tl.where((bits & sign) != 0, bits ^ ones, bits | sign)
    key = tl.where(idx < forced, ones, key)
    return tl.where(ok, key, key & 0)


def _top_set(X, OUT, N, sx, so, k, forced, BLOCK: tl.constexpr, I_N: tl.constexpr, INTERPRET: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = X + row * sx
    offs = tl.arange(0, BLOCK)
    bins = tl.arange(0, 256)
    prefix = tl.zeros([], dtype=tl.uint32)
    need = tl.zeros([], dtype=tl.int32) + k
    for d in tl.static_range(4):
        hist = tl.zeros([256], dtype=tl.int32)
        for b0 in range(0, I_N if INTERPRET else N, BLOCK):
            idx = b0 + offs
            ok = idx < N
            key = _keys(x_row, idx, ok, forced)
            match = ok
            if d > 0:
                match = match & ((key >> (32 - 8 * d)) == (prefix >> (32 - 8 * d)))
            hist += tl.histogram(((key >> (24 - 8 * d)) & 255).to(tl.int32), 256, mask=match)
        # entries in bins above b, for every b; the k-th largest lies in the highest bin b with above + hist >= need
        above = tl.sum(hist) - tl.cumsum(hist, 0)
        b_star = tl.max(tl.where(above + hist >= need, bins, -1))
        need = need - tl.sum(tl.where(bins > b_star, hist, 0))
        prefix = prefix | (b_star.to(tl.uint32) << (24 - 8 * d))
    taken = tl.zeros([], dtype=tl.int32)
    ties = tl.zeros([], dtype=tl.int32)
    out_row = OUT + row * so
    for b0 in range(0, I_N if INTERPRET else N, BLOCK):
        idx = b0 + offs
        ok = idx < N
        key = _keys(x_row, idx, ok, forced)
        gt = (ok & (key > prefix)).to(tl.int32)
        eq = (ok & (key == prefix)).to(tl.int32)
        tie_rank = ties + tl.cumsum(eq, 0) - eq  # ties before this entry, in index order
        sel = gt | (eq & (tie_rank < need).to(tl.int32))
        pos = taken + tl.cumsum(sel, 0) - sel
        tl.store(out_row + pos, idx.to(tl.int64), mask=sel != 0)
        taken += tl.sum(sel)
        ties += tl.sum(eq)


_kernel = per_mode((_top_set,), (_keys,), one=True)


def top_set_triton(x: torch.Tensor, k: int, forced: int = 0, block: int = 1024, num_warps: int = 8) -> torch.Tensor:
    """int64 `[R, k]` of `top_set_naive` (arguments as there): one program per row."""
    _check(x, k, forced)
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    x = x if x.stride(-1) == 1 else x.contiguous()
    R, N = x.shape
    out = torch.empty(R, k, dtype=torch.int64, device=x.device)
    block = min(block, max(16, triton.next_power_of_2(N)))
    _kernel(interpret)[(R,)](x, out, N, x.stride(0), out.stride(0), k, forced, BLOCK=block,
                              I_N=N if interpret else 0, INTERPRET=interpret, num_warps=num_warps)
    return out
