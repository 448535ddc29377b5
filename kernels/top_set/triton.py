"""Triton kernels for `kernels/top_set` (semantics in naive.py): a radix select on 32-bit keys, each row cut into
chunks with one program per (chunk, row).

Each entry's key orders as the value (fp32 bit pattern made unsigned-monotone: -0.0 folded to +0.0, negative values'
bits flipped, positive ones' sign bit set; the first `forced` entries get the largest key). Four launches, one per
key byte from the top, histogram the byte per chunk among the entries that match the bytes fixed so far; every
program of a row first sums the earlier bytes' histograms over the chunks (fixed order, integers) and fixes the byte
in which the k-th largest key lies, so all of them agree on the prefix without a separate launch. After the four,
`T` is the k-th largest key and `need` the number of entries equal to `T` that belong to the set. A write launch
has each chunk count the keys above and equal to `T` in the chunks before it (re-read from L2), then walk its own
in index order and write every entry above `T` and the first `need` ties of the row (lower indices: the stable
rule) at their running count: ascending indices, bit for bit the reference's set. No sort, no atomics.
`top_set_pair_triton` runs two matrices of one row length (other k and forced) in the same five launches.
(One program per row, the first version, took 0.33 ms per call at 32 rows of 64K on an H200: 32 programs.)

Under `TRITON_INTERPRET=1` (set before triton is imported) the same code runs on the CPU for the tests; there the
loops over a chunk and over the chunks take constexpr lengths (`I_CH`, `I_C`), since the interpreter cannot take a
runtime loop bound.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .._jit import per_mode
from .naive import _check

__all__ = ["top_set_pair_triton", "top_set_triton"]


def _monotone(x):
    """Unsigned 32-bit keys of fp32 values that order as the values (-0.0 as +0.0; also `kernels/cover`'s keys)."""
    bits = (x + 0.0).to(tl.uint32, bitcast=True)
    sign = tl.full([1], 0x80000000, tl.uint32)
    ones = tl.full([1], 0xFFFFFFFF, tl.uint32)  # xor with it, not `~`: the interpreter's `~` overflows uint32
    return tl.where((bits & sign) != 0, bits ^ ones, bits | sign)


def _keys(X, idx, ok, forced):
    """Keys of the entries `idx` (module doc): `_monotone`, the largest for the first `forced`; 0 outside the row."""
    key = _monotone(tl.load(X + idx, mask=ok, other=0.0))
    key = tl.where(idx < forced, tl.full([1], 0xFFFFFFFF, tl.uint32), key)
    return tl.where(ok, key, key & 0)


def _pick(H, row, R, C, k, DIG: tl.constexpr, CB: tl.constexpr, I_C: tl.constexpr, INTERPRET: tl.constexpr):
    """`(prefix, need)` after the first `DIG` digits: each digit's histogram summed over the row's C chunks (fixed
    order, integers: every program of the row derives the same values), then the bin of the k-th largest key fixed."""
    bins = tl.arange(0, 256)
    cc = tl.arange(0, CB)
    prefix = tl.zeros([], dtype=tl.uint32)
    need = tl.zeros([], dtype=tl.int32) + k
    for d in tl.static_range(DIG):
        hist = tl.zeros([256], dtype=tl.int32)
        base = H + ((d * R + row) * C) * 256
        for c0 in range(0, I_C if INTERPRET else C, CB):
            part = tl.load(base + (c0 + cc)[:, None] * 256 + bins[None, :], mask=(c0 + cc < C)[:, None], other=0)
            hist += tl.sum(part, 0)
        # entries in bins above b, for every b; the k-th largest lies in the highest bin b with above + hist >= need
        above = tl.sum(hist) - tl.cumsum(hist, 0)
        b_star = tl.max(tl.where(above + hist >= need, bins, -1))
        need = need - tl.sum(tl.where(bins > b_star, hist, 0))
        prefix = prefix | (b_star.to(tl.uint32) << (24 - 8 * d))
    return prefix, need


def _row_args(X, X2, OUT, OUT2, row, R1, sx, sx2, so, so2, k, k2, forced, forced2):
    """The row's source, output row, k and forced: rows below R1 are the first matrix's, the others the second's."""
    x_row = X + row * sx
    out_row = OUT + row * so
    kk = k
    ff = forced
    if row >= R1:
        x_row = X2 + (row - R1) * sx2
        out_row = OUT2 + (row - R1) * so2
        kk = k2
        ff = forced2
    return x_row, out_row, kk, ff


def _ts_hist(X, X2, OUT, OUT2, H, R1, N, CH, sx, sx2, so, so2, R, C, k, k2, forced, forced2, DIG: tl.constexpr,
             BLOCK: tl.constexpr, CB: tl.constexpr, I_CH: tl.constexpr, I_C: tl.constexpr, I_N: tl.constexpr,
             INTERPRET: tl.constexpr):
    """Program (chunk, row): the histogram of key byte `DIG` over the chunk's entries whose higher bytes match the
    prefix fixed so far -> `H[DIG, row, chunk]`."""
    c = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64)
    x_row, out_row, kk, ff = _row_args(X, X2, OUT, OUT2, row, R1, sx, sx2, so, so2, k, k2, forced, forced2)
    prefix, need = _pick(H, row, R, C, kk, DIG, CB, I_C, INTERPRET)
    offs = tl.arange(0, BLOCK)
    hist = tl.zeros([256], dtype=tl.int32)
    for b0 in range(0, I_CH if INTERPRET else CH, BLOCK):
        idx = c * CH + b0 + offs
        ok = (idx < N) & (b0 + offs < CH)
        key = _keys(x_row, idx, ok, ff)
        match = ok
        if DIG > 0:
            match = match & ((key >> (32 - 8 * DIG)) == (prefix >> (32 - 8 * DIG)))
        hist += tl.histogram(((key >> (24 - 8 * DIG)) & 255).to(tl.int32), 256, mask=match)
    tl.store(H + ((DIG * R + row) * C + c) * 256 + tl.arange(0, 256), hist)


def _ts_write(X, X2, OUT, OUT2, H, R1, N, CH, sx, sx2, so, so2, R, C, k, k2, forced, forced2, BLOCK: tl.constexpr,
              CB: tl.constexpr, I_CH: tl.constexpr, I_C: tl.constexpr, I_N: tl.constexpr, INTERPRET: tl.constexpr):
    """Program (chunk, row): counts the keys above `T` and equal to it in the row's chunks before its own, then walks
    its chunk in index order and writes every entry above `T` and the first `need` entries equal to `T` of the row
    (the lower indices) at their running count."""
    c = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64)
    x_row, out_row, kk, ff = _row_args(X, X2, OUT, OUT2, row, R1, sx, sx2, so, so2, k, k2, forced, forced2)
    prefix, need = _pick(H, row, R, C, kk, 4, CB, I_C, INTERPRET)
    offs = tl.arange(0, BLOCK)
    # the chunks before this one (a re-read from L2 rather than a separate counting launch and its counts buffer)
    gt_before = tl.zeros([], dtype=tl.int32)
    ties = tl.zeros([], dtype=tl.int32)
    for b0 in range(0, I_N if INTERPRET else c * CH, BLOCK):
        idx = b0 + offs
        ok = idx < c * CH
        key = _keys(x_row, idx, ok, ff)
        gt_before += tl.sum((ok & (key > prefix)).to(tl.int32))
        ties += tl.sum((ok & (key == prefix)).to(tl.int32))
    taken = gt_before + tl.minimum(ties, need)
    for b0 in range(0, I_CH if INTERPRET else CH, BLOCK):
        idx = c * CH + b0 + offs
        ok = (idx < N) & (b0 + offs < CH)
        key = _keys(x_row, idx, ok, ff)
        gt = (ok & (key > prefix)).to(tl.int32)
        eq = (ok & (key == prefix)).to(tl.int32)
        tie_rank = ties + tl.cumsum(eq, 0) - eq  # ties before this entry, in index order
        sel = gt | (eq & (tie_rank < need).to(tl.int32))
        pos = taken + tl.cumsum(sel, 0) - sel
        tl.store(out_row + pos, idx.to(tl.int64), mask=sel != 0)
        taken += tl.sum(sel)
        ties += tl.sum(eq)


_kernels = per_mode((_ts_hist, _ts_write), (_monotone, _keys, _pick, _row_args))


def top_set_triton(x: torch.Tensor, k: int, forced: int = 0, chunk: int = 16384, block: int = 2048,
                   num_warps: int = 4) -> torch.Tensor:
    """int64 `[R, k]` of `top_set_naive` (arguments as there); each row cut into chunks of `chunk` entries (a power
    of two), one program per (chunk, row), walking its chunk `block` entries at a time.

    Defaults: the best of chunk 2K-16K, 4 or 8 warps and blocks of 1K or 2K on an H200 (session 7, 32 rows, k=6096,
    do_bench): 169 / 119 / 151 us at rows of 32K / 64K / 128K, against 198 / 198 / 435 us with 4K chunks, 8 warps,
    1K blocks, and 835 / 734 / 490 us for `top_ranked`'s int64 topk."""
    return _launch(x, k, forced, None, 0, 0, chunk, block, num_warps)[0]


def top_set_pair_triton(x: torch.Tensor, k: int, forced: int, x2: torch.Tensor, k2: int, forced2: int,
                        chunk: int = 16384, block: int = 2048, num_warps: int = 4
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """`(top_set_triton(x, k, forced), top_set_triton(x2, k2, forced2))` for two matrices of the same row length in
    one set of launches (5 instead of 10; MInference's columns and diagonals)."""
    if x2.dim() != 2 or x2.shape[1] != x.shape[1]:
        raise ValueError(f"x {tuple(x.shape)} and x2 {tuple(x2.shape)} must be [R, N] with the same N")
    return _launch(x, k, forced, x2, k2, forced2, chunk, block, num_warps)


def _launch(x, k, forced, x2, k2, forced2, chunk, block, num_warps):
    _check(x, k, forced)
    if x2 is not None:
        _check(x2, k2, forced2)
    if chunk < 16 or chunk & (chunk - 1):
        raise ValueError(f"chunk={chunk} must be a power of two >= 16")
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    x = x if x.stride(-1) == 1 else x.contiguous()
    R1, N = x.shape
    out = torch.empty(R1, k, dtype=torch.int64, device=x.device)
    if x2 is None:
        x2, k2, forced2, out2, R2 = x, k, forced, out, 0
    else:
        x2 = x2 if x2.stride(-1) == 1 else x2.contiguous()
        R2 = x2.shape[0]
        out2 = torch.empty(R2, k2, dtype=torch.int64, device=x.device)
    R = R1 + R2
    chunk = min(chunk, max(16, triton.next_power_of_2(N)))
    C = -(-N // chunk)
    block = min(block, chunk)
    hist = torch.empty(4, R, C, 256, dtype=torch.int32, device=x.device)
    hist_k, write_k = _kernels(interpret)
    args = (x, x2, out, out2, hist, R1, N, chunk, x.stride(0), x2.stride(0), out.stride(0), out2.stride(0), R, C,
            k, k2, forced, forced2)
    common = {"BLOCK": block, "CB": 8, "I_CH": chunk if interpret else 0, "I_C": C if interpret else 0,
              "I_N": N if interpret else 0, "INTERPRET": interpret, "num_warps": num_warps}
    for d in range(4):
        hist_k[(C, R)](*args, DIG=d, **common)
    write_k[(C, R)](*args, **common)
    return out, out2
