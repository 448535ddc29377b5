"""Triton kernels for `kernels/row_rank` (semantics in naive.py), for rows of non-negative fp32 values (NaN allowed
in `mass_prefix_triton`, read as 0) up to `MAX_N` entries.

Each row is held as one power-of-two tile of `NP >= N` lanes and sorted in registers (`tl.sort`, a bitonic sort)
on unique int64 keys that reproduce the stable descending order: the high bits hold the value's fp32 bit pattern
(for values >= 0 it orders as the value; -0.0 is folded to +0.0 first, since a sort treats them as equal), the low
`log2(NP)` bits hold `NP - 1 - index`, so that equal values go lower index first; padding lanes get negative keys
and sort last. `desc_order_triton` returns the recovered indices, bit for bit the stable sort's.
`mass_prefix_triton` then takes the running sum of the sorted values (`tl.cumsum`, fp32), keeps the sorted
positions up to the first one whose running sum reaches the threshold (none if no position does) and scatters the
flags back by index. Its only arithmetic is that fp32 running sum: the interpreter adds in sequence; torch's CPU
cumsum accumulates in double and torch's and Triton's GPU scans use their own trees, so a decision can differ from
the reference's only where a running sum lies within a few ulps of the threshold.

Under `TRITON_INTERPRET=1` (set before triton is imported) the same code runs on the CPU for the tests.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .._jit import per_mode

__all__ = ["MAX_N", "desc_order_triton", "mass_prefix_triton"]

MAX_N = 4096


def _row_rank(X, OUT, n_rows, N, sx, so, threshold,
              NP: tl.constexpr, IB: tl.constexpr, BR: tl.constexpr, MASS: tl.constexpr):
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    cols = tl.arange(0, NP)
    ok = (rows < n_rows)[:, None] & (cols < N)[None, :]
    x = tl.load(X + rows.to(tl.int64)[:, None] * sx + cols[None, :], mask=ok, other=0.0)
    if MASS:
        x = tl.where(x != x, 0.0, x)  # NaN -> 0
    x = x + 0.0  # -0.0 -> +0.0
    bits = x.to(tl.int32, bitcast=True).to(tl.int64)
    key = tl.where(ok, (bits << IB) | (NP - 1 - cols)[None, :], -1 - cols[None, :].to(tl.int64))
    key = tl.sort(key, dim=1, descending=True)
    idx = NP - 1 - (key & (NP - 1))
    live = key >= 0
    if MASS:
        vals = tl.where(live, (key >> IB).to(tl.int32).to(tl.float32, bitcast=True), 0.0)
        reached = tl.cumsum(vals, axis=1) >= threshold
        first = tl.min(tl.where(reached, cols[None, :], NP), axis=1)  # NP where the row never reaches it
        keep = (cols[None, :] <= first[:, None]) & (first < NP)[:, None]
        tl.store(OUT + rows.to(tl.int64)[:, None] * so + idx, keep.to(tl.int8), mask=live & (rows < n_rows)[:, None])
    else:
        tl.store(OUT + rows.to(tl.int64)[:, None] * so + cols[None, :], idx, mask=live & (rows < n_rows)[:, None])


_kernel = per_mode((_row_rank,), one=True)


def _launch(x: torch.Tensor, out: torch.Tensor, threshold: float, mass: bool) -> None:
    N = x.shape[-1]
    if x.dtype != torch.float32 or not 1 <= N <= MAX_N:
        raise ValueError(f"row_rank kernels take fp32 rows of 1..{MAX_N} entries; got {x.dtype}, N={N}")
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    x2 = x.reshape(-1, N)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    n_rows = x2.shape[0]
    NP = max(16, triton.next_power_of_2(N))
    BR = max(1, min(16, 4096 // NP))  # rows a program: a 4096-lane tile at most
    o2 = out.view(n_rows, N)
    _kernel(interpret)[(triton.cdiv(n_rows, BR),)](
        x2, o2, n_rows, N, x2.stride(0), o2.stride(0), float(threshold), NP=NP, IB=NP.bit_length() - 1, BR=BR,
        MASS=mass, num_warps=4 if NP * BR <= 2048 else 8)


def desc_order_triton(x: torch.Tensor) -> torch.Tensor:
    """`desc_order_naive(x)` for rows of non-negative fp32 values (int64 `[..., N]`); negative values are not
    ordered correctly (the caller's promise, as for PBS's importances)."""
    out = torch.empty(x.shape, dtype=torch.int64, device=x.device)
    if x.numel():
        _launch(x, out, 0.0, mass=False)
    return out


def mass_prefix_triton(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """`mass_prefix_naive(probs, threshold)` for rows of probabilities (>= 0 or NaN), up to the running sum's
    rounding (module doc)."""
    out = torch.empty(probs.shape, dtype=torch.int8, device=probs.device)  # the kernel writes every entry
    if probs.numel():
        _launch(probs, out, threshold, mass=True)
    return out.view(torch.bool)
