"""Triton kernel for `kernels/block_means` (semantics in naive.py): one program per (head, block of rows) sums the
block's rows in fp32, divides by their count, rounds to the input dtype and applies the scale, one launch instead
of the reference's sum, count, division, cast and multiply (FlexPrefill's `_WHOLE_GRAPH` means; the rows are summed
per row slot and reduced once per block). Equal to it up to the order of the fp32 sums (exact
where they are, e.g. 16-bit inputs whose sums need at most 24 significant bits) and, for a short last block of a
row count that is not a power of two, the rounding of the GPU's fp32 division.
Under `TRITON_INTERPRET=1` (set before triton is imported) the loop over rows takes the constexpr length `I_S`.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .._jit import per_mode

__all__ = ["block_means_triton"]

_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def _to_dtype(x, DT: tl.constexpr):
    """fp32 -> DT rounded to nearest, ties to even. For bf16 the rounding is done on the bits first, so the cast
    only drops zeros: the interpreter's own fp32 -> bf16 cast truncates, the compiled one rounds; both then agree
    with torch."""
    if DT == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
    return x.to(DT)


def _mean_of(acc, count, scale, HAS_SCALE: tl.constexpr, DT: tl.constexpr):
    """The block mean from its fp32 sums as the reference rounds it: divided by the row count, rounded to DT, then
    (`HAS_SCALE`) times the scale, rounded again."""
    mean = _to_dtype(acc / count, DT)
    if HAS_SCALE:
        mean = _to_dtype(mean.to(tl.float32) * scale, DT)
    return mean


def _means_fwd(X, OUT, N, D, size, sxh, sxn, soh, son, scale, HAS_SCALE: tl.constexpr, DT: tl.constexpr,
               BD: tl.constexpr, BR: tl.constexpr, I_S: tl.constexpr, INTERPRET: tl.constexpr, XT=None, slot=0,
               FROM_TABLE: tl.constexpr = False):
    """Program (head, block)."""
    if FROM_TABLE:
        # x's address read at run time (a CUDA graph replays with whatever the table then holds)
        X = tl.multiple_of(tl.load(XT + slot).to(tl.pointer_type(DT)), 16)
    h = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    dd = tl.arange(0, BD)
    row0 = blk * size
    # [BR, BD] running sums, reduced over the rows once after the loop (a reduction per load crossed warps through
    # shared memory each time: offline sm_90, 12 shared-memory stores and 16 shuffles per iteration before)
    acc2 = tl.zeros([BR, BD], dtype=tl.float32)
    for r0 in range(0, I_S if INTERPRET else size, BR):
        rr = r0 + tl.arange(0, BR)
        rows = row0 + rr
        ok = (rr < size) & (rows < N)
        x = tl.load(X + h * sxh + rows.to(tl.int64)[:, None] * sxn + dd[None, :], mask=ok[:, None] & (dd < D)[None, :],
                    other=0.0)
        acc2 += x.to(tl.float32)
    count = tl.minimum(size, N - row0).to(tl.float32)
    tl.store(OUT + h * soh + blk * son + dd, _mean_of(tl.sum(acc2, 0), count, scale, HAS_SCALE, DT), mask=dd < D)


_kernel = per_mode((_means_fwd,), (_to_dtype, _mean_of), one=True)


# elements of x loaded by one step of a program's loop over its block's rows (rows per step = TILE // the padded head
# dim), and the warps of a program. Session 12 (H200, FlexPrefill's means of 32 query heads and 8 key heads of
# 32K x 128 bf16 in blocks of 128, profiled): 110.6 us (3.0 TB/s) at 4096 / 4 warps; 116 / 129 us at 8192 / 16384;
# 130-250 us at 8 or 16 warps. (A few resident programs a multiprocessor walking every block, session 11's
# `programs=`, took 340-612 us inside FlexPrefill's graph against 123 us and was removed; session 12's, each block
# loaded whole with the next in flight, one program a multiprocessor beside the stats pass, made the whole estimate
# 0.663 / 1.356 / 3.182 ms against 0.638 / 1.306 / 3.085 ms at 32K / 64K / 128K, session 13, and was removed too;
# so were session 13's means of q and k in one resident launch, 700 against 638 us at 32K, and its loads marked
# evict_first or four row steps in flight beside the stats pass, no faster: `results/logs/flexprefill_knobs_s13.txt`)
TILE = 4096
WARPS = 4


def block_means_triton(x: torch.Tensor, size: int, scale: float | None = None, table: torch.Tensor | None = None,
                       slot: int = 0, tile: int | None = None, warps: int | None = None) -> torch.Tensor:
    """`block_means_naive(x, size, scale)` (arguments as there) for `x [..., N, D]` of fp32, fp16 or bf16, up to the
    order of the fp32 sums. With `table` (int64, on x's device) the kernel reads the address of the tensor to average
    from `table[slot]` when it runs: `x` then only gives the shape, strides and dtype of that tensor. `tile`, `warps`:
    the launch's elements a step and warps (default `TILE`, `WARPS`; powers of two)."""
    if x.dim() < 2 or size < 1:
        raise ValueError(f"x must be [..., N, D] and size >= 1; got {tuple(x.shape)}, size={size}")
    for name, v in (("tile", tile), ("warps", warps)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1 or v & (v - 1)):
            raise ValueError(f"{name}={v!r} must be a power of two")
    if x.dtype not in _DTYPES:
        raise ValueError(f"x dtype {x.dtype} is not one of {sorted(map(str, _DTYPES))}")
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    *lead, N, D = x.shape
    nb = -(-N // size)
    xr = x.reshape(-1, N, D)
    if table is not None and (xr.stride(-1) != 1 or
                              xr.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()):
        raise ValueError(f"table: x {tuple(x.shape)} with strides {x.stride()} must be viewable as [-1, N, D] with "
                         f"unit last stride")
    if xr.stride(-1) != 1:
        xr = xr.contiguous()
    out = torch.empty(xr.shape[0], nb, D, dtype=x.dtype, device=x.device)
    bd = max(16, triton.next_power_of_2(D))
    _kernel(interpret)[(xr.shape[0], nb)](
        xr, out, N, D, size, xr.stride(0), xr.stride(1), out.stride(0), out.stride(1),
        1.0 if scale is None else float(scale), HAS_SCALE=scale is not None, DT=_DTYPES[x.dtype], BD=bd,
        BR=max(1, min(triton.next_power_of_2(size), (tile or TILE) // bd)), I_S=size if interpret else 0,
        INTERPRET=interpret, num_warps=warps or WARPS, XT=table, slot=slot, FROM_TABLE=table is not None)
    return out.view(*lead, nb, D)

