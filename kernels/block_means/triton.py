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

__all__ = ["block_means_pair_triton", "block_means_triton"]

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


def _pair_tile(XA, XB, item, NA, NITEMS, NB, N, size, sah, san, sbh, sbn, D, BD: tl.constexpr,
               BS: tl.constexpr):
    """The whole block of item `item` as one `[BS, BD]` tile in the inputs' dtype: items below NA are blocks of
    XA's heads, the others of XB's (zeros past the block, the tensor, or the last item)."""
    is_a = item < NA
    j = tl.where(is_a, item, item - NA)
    h = (j // NB).to(tl.int64)
    base = tl.where(is_a, XA + h * sah, XB + h * sbh)
    rstride = tl.where(is_a, san, sbn).to(tl.int64)
    rr = tl.arange(0, BS)
    rows = (j % NB) * size + rr
    dd = tl.arange(0, BD)
    ok = (rr < size) & (rows < N) & (item < NITEMS)
    return tl.load(base + rows.to(tl.int64)[:, None] * rstride + dd[None, :], mask=ok[:, None] & (dd < D)[None, :],
                   other=0.0)


def _means_pair(XA, XB, OA, OB, N, D, size, sah, san, sbh, sbn, soah, soan, sobh, sobn, scale_b, NB, NA, NITEMS,
                DT: tl.constexpr, BD: tl.constexpr, BS: tl.constexpr, I_IT: tl.constexpr, INTERPRET: tl.constexpr,
                XT=None, FROM_TABLE: tl.constexpr = False):
    """Program p of a 1-D grid of resident programs: the items p, p + grid, ... over the blocks of both tensors (XA's
    unscaled, then XB's times `scale_b`), each block loaded whole, the next one's load issued before the current one
    is summed. With `FROM_TABLE` the addresses are `XT[1]` (XA) and `XT[0]` (XB), read when the kernel runs."""
    if FROM_TABLE:
        XB = tl.multiple_of(tl.load(XT).to(tl.pointer_type(DT)), 16)
        XA = tl.multiple_of(tl.load(XT + 1).to(tl.pointer_type(DT)), 16)
    pid = tl.program_id(0)
    grid = tl.num_programs(0)
    dd = tl.arange(0, BD)
    x = _pair_tile(XA, XB, pid, NA, NITEMS, NB, N, size, sah, san, sbh, sbn, D, BD, BS)
    for i in range(0, I_IT if INTERPRET else (NITEMS - pid + grid - 1) // grid):
        item = pid + i * grid
        x_next = _pair_tile(XA, XB, item + grid, NA, NITEMS, NB, N, size, sah, san, sbh, sbn, D, BD, BS)
        is_a = item < NA
        j = tl.where(is_a, item, item - NA)
        blk = j % NB
        h = (j // NB).to(tl.int64)
        count = tl.minimum(size, N - blk * size).to(tl.float32)
        # XA's means times 1.0: the second rounding of `_mean_of` leaves them as they are
        mean = _mean_of(tl.sum(x.to(tl.float32), 0), count, tl.where(is_a, 1.0, scale_b), True, DT)
        out = tl.where(is_a, OA + h * soah + blk * soan, OB + h * sobh + blk * sobn)
        tl.store(out + dd, mean, mask=(dd < D) & (item < NITEMS))
        x = x_next


_kernel = per_mode((_means_fwd,), (_to_dtype, _mean_of), one=True)
_pair = per_mode((_means_pair,), (_to_dtype, _mean_of, _pair_tile), one=True)


# elements of x loaded by one step of a program's loop over its block's rows (rows per step = TILE // the padded head
# dim), and the warps of a program. Session 12 (H200, FlexPrefill's means of 32 query heads and 8 key heads of
# 32K x 128 bf16 in blocks of 128, profiled): 110.6 us (3.0 TB/s) at 4096 / 4 warps; 116 / 129 us at 8192 / 16384;
# 130-250 us at 8 or 16 warps. (A few resident programs a multiprocessor walking every block, session 11's
# `programs=`, took 340-612 us inside FlexPrefill's graph against 123 us and was removed; session 12's, each block
# loaded whole with the next in flight, one program a multiprocessor beside the stats pass, made the whole estimate
# 0.663 / 1.356 / 3.182 ms against 0.638 / 1.306 / 3.085 ms at 32K / 64K / 128K, session 13, and was removed too)
TILE = 4096
WARPS = 4


def block_means_triton(x: torch.Tensor, size: int, scale: float | None = None, table: torch.Tensor | None = None,
                       slot: int = 0) -> torch.Tensor:
    """`block_means_naive(x, size, scale)` (arguments as there) for `x [..., N, D]` of fp32, fp16 or bf16, up to the
    order of the fp32 sums. With `table` (int64, on x's device) the kernel reads the address of the tensor to average
    from `table[slot]` when it runs: `x` then only gives the shape, strides and dtype of that tensor."""
    if x.dim() < 2 or size < 1:
        raise ValueError(f"x must be [..., N, D] and size >= 1; got {tuple(x.shape)}, size={size}")
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
        BR=max(1, min(triton.next_power_of_2(size), TILE // bd)), I_S=size if interpret else 0, INTERPRET=interpret,
        num_warps=WARPS, XT=table, slot=slot, FROM_TABLE=table is not None)
    return out.view(*lead, nb, D)


# `block_means_pair_triton`'s warps a program, register cap and the largest block it takes (elements of the padded
# [rows, head dim] tile). 4 warps capped at 208 registers (no spills offline on sm_90 at FlexPrefill's bf16 128 x 128
# blocks): one such program a multiprocessor fits beside two programs of FlexPrefill's stats pass (4 warps at 148
# registers: 38,912 of a multiprocessor's 65,536 once rounded to the allocation unit; 26,624 left)
PAIR_WARPS = 4
PAIR_MAXNREG: int | None = 208
PAIR_TILE = 16384


def pair_supported(head_dim: int, size: int) -> bool:
    """Whether `block_means_pair_triton` takes blocks of `size` rows of this head dim (one tile a block)."""
    return triton.next_power_of_2(size) * max(16, triton.next_power_of_2(head_dim)) <= PAIR_TILE


def block_means_pair_triton(q: torch.Tensor, k: torch.Tensor, size: int, scale: float, programs: int,
                            table: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`(block_means_naive(k, size), block_means_naive(q, size, scale))` (up to the order of the fp32 sums) in ONE
    launch of at most `programs` resident programs that walk the blocks of both in turn (`_means_pair`): launched
    before a kernel that leaves room beside it, such a grid is all on the GPU at once, and the other kernel's
    programs fill the rest (a grid of a program a block would take every slot first). q `[..., N, D]` and k
    `[..., N, D]` share N, D and dtype. With `table` (int64, on the device) the addresses are read from `table[0]`
    (q) and `table[1]` (k) when the kernel runs; q and k then give the layout."""
    if programs < 1:
        raise ValueError(f"programs={programs} must be at least 1")
    if q.dim() < 2 or k.dim() < 2 or q.shape[-2:] != k.shape[-2:] or q.dtype != k.dtype:
        raise ValueError(f"q {tuple(q.shape)} {q.dtype} and k {tuple(k.shape)} {k.dtype} must share N, D and dtype")
    if q.dtype not in _DTYPES:
        raise ValueError(f"dtype {q.dtype} is not one of {sorted(map(str, _DTYPES))}")
    *lq, N, D = q.shape
    *lk, _, _ = k.shape
    if size < 1 or not pair_supported(D, size):
        raise ValueError(f"size={size} with head dim {D} must be at least 1 and fit one tile of {PAIR_TILE}")
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    qr, kr = q.reshape(-1, N, D), k.reshape(-1, N, D)
    for name, x, xr in (("q", q, qr), ("k", k, kr)):
        if xr.stride(-1) != 1 or (table is not None and
                                  xr.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()):
            raise ValueError(f"{name} {tuple(x.shape)} with strides {x.stride()} must be viewable as [-1, N, D] with "
                             f"unit last stride")
    nb = -(-N // size)
    ko = torch.empty(kr.shape[0], nb, D, dtype=k.dtype, device=k.device)
    qo = torch.empty(qr.shape[0], nb, D, dtype=q.dtype, device=q.device)
    na = kr.shape[0] * nb
    items = na + qr.shape[0] * nb
    grid = min(programs, items)
    _pair(interpret)[(grid,)](
        kr, qr, ko, qo, N, D, size, kr.stride(0), kr.stride(1), qr.stride(0), qr.stride(1), ko.stride(0),
        ko.stride(1), qo.stride(0), qo.stride(1), float(scale), nb, na, items, DT=_DTYPES[q.dtype],
        BD=max(16, triton.next_power_of_2(D)), BS=triton.next_power_of_2(size),
        I_IT=-(-items // grid) if interpret else 0, INTERPRET=interpret, XT=table, FROM_TABLE=table is not None,
        num_warps=PAIR_WARPS, **({"maxnreg": PAIR_MAXNREG} if PAIR_MAXNREG and not interpret else {}))
    return ko.view(*lk, nb, D), qo.view(*lq, nb, D)
