"""Triton kernel for `kernels/block_scores` (semantics in naive.py): one program per (batch entry and query head,
block of BM query-block rows) takes the rows' products with the key-block means BN columns at a time (fp32 dots
rounded to the input dtype, as the matmul returns them; fp32 inputs in full fp32, not TF32), masks the blocks above
the diagonal, and writes the fp32 softmax in three walks over the columns up to the block's last row: the maximum,
the sum of exp(x - max), then exp(x - max) / sum (the reference's formula); the columns after it get zeros. One
launch instead of the reference's matmul, mask, cast and softmax.

Equal to the reference up to rounding: the dots and the softmax's sum are added in another order (a logit may round
to the neighbouring value of the input dtype), and the exponential is Triton's.
Under `TRITON_INTERPRET=1` (set before triton is imported) the loads are cast to fp32 before `tl.dot` (the
interpreter's low-precision dot is unreliable) and the column loops take the constexpr length `I_NB`.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .._jit import per_mode
from ..block_means.triton import _DTYPES, _to_dtype
from .naive import _check

__all__ = ["block_scores_triton"]


def _logits(qm, K, c, r, nb, skn, dd, D: tl.constexpr, DT: tl.constexpr, INTERPRET: tl.constexpr,
            PREC: tl.constexpr):
    """The rows' logits against key blocks `c` (rounded to DT), -inf above the diagonal and past nb."""
    kt = tl.load(K + c.to(tl.int64)[:, None] * skn + dd[None, :], mask=(c < nb)[:, None] & (dd < D)[None, :],
                 other=0.0)
    if INTERPRET:
        kt = kt.to(tl.float32)
    s = _to_dtype(tl.dot(qm, tl.trans(kt), input_precision=PREC), DT).to(tl.float32)
    return tl.where((c[None, :] <= r[:, None]) & (c < nb)[None, :], s, float("-inf"))


def _block_scores_fwd(QM, KM, OUT, H, G, nb, D, sqb, sqh, sqn, skb, skh, skn, sob, soh, son,
                      BD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, DT: tl.constexpr, I_NB: tl.constexpr,
                      INTERPRET: tl.constexpr, PREC: tl.constexpr):
    bh = tl.program_id(0).to(tl.int64)
    b = bh // H
    h = bh % H
    r = tl.program_id(1) * BM + tl.arange(0, BM)
    r_ok = r < nb
    dd = tl.arange(0, BD)
    qm = tl.load(QM + b * sqb + h * sqh + r.to(tl.int64)[:, None] * sqn + dd[None, :],
                 mask=r_ok[:, None] & (dd < D)[None, :], other=0.0)
    if INTERPRET:
        qm = qm.to(tl.float32)
    k_base = KM + b * skb + (h // G) * skh
    cols = tl.arange(0, BN)
    # columns past the block's last row are all above the diagonal
    hi = tl.minimum(nb, (tl.program_id(1) + 1) * BM)
    m = tl.full([BM], float("-inf"), dtype=tl.float32)
    for c0 in range(0, I_NB if INTERPRET else hi, BN):
        m = tl.maximum(m, tl.max(_logits(qm, k_base, c0 + cols, r, nb, skn, dd, D, DT, INTERPRET, PREC), 1))
    m = tl.where(r_ok, m, 0.0)
    l = tl.zeros([BM], dtype=tl.float32)
    for c0 in range(0, I_NB if INTERPRET else hi, BN):
        l += tl.sum(tl.exp(_logits(qm, k_base, c0 + cols, r, nb, skn, dd, D, DT, INTERPRET, PREC) - m[:, None]), 1)
    l = tl.where(r_ok, l, 1.0)
    out = OUT + b * sob + h * soh + r.to(tl.int64)[:, None] * son
    for c0 in range(0, I_NB if INTERPRET else nb, BN):
        c = c0 + cols
        if c0 < hi:
            p = tl.exp(_logits(qm, k_base, c, r, nb, skn, dd, D, DT, INTERPRET, PREC) - m[:, None]) / l[:, None]
        else:  # wholly above the diagonal: zeros, without the products
            p = tl.zeros([BM, BN], dtype=tl.float32)
        tl.store(out + c[None, :], p, mask=r_ok[:, None] & (c < nb)[None, :])


_kernel = per_mode((_block_scores_fwd,), (_logits, _to_dtype), one=True)
# query-block rows a program, key blocks a step, warps of a program
BM = 32
BN = 64
WARPS = 4


def block_scores_triton(q_mean: torch.Tensor, k_mean: torch.Tensor, bn: int | None = None,
                        maxnreg: int | None = None) -> torch.Tensor:
    """`attn [B, H, nb, nb]` fp32 of `block_scores_naive(q_mean, k_mean)`, up to the rounding in the module
    docstring. Head dims of at least 16. `bn`: key blocks a step (default `BN`; a power of two, at least 16);
    `maxnreg`: a register cap for the compiled kernel (CUDA only)."""
    if bn is not None and (isinstance(bn, bool) or not isinstance(bn, int) or bn < 16 or bn & (bn - 1)):
        raise ValueError(f"bn={bn!r} must be a power of two of at least 16")
    _check(q_mean, k_mean)
    if q_mean.dtype not in _DTYPES:
        raise ValueError(f"q_mean dtype {q_mean.dtype} is not one of {sorted(map(str, _DTYPES))}")
    B, H, nb, D = q_mean.shape
    if D < 16:
        raise ValueError(f"head dim {D} must be at least 16 (tl.dot)")
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    q_mean = q_mean if q_mean.stride(-1) == 1 else q_mean.contiguous()
    k_mean = k_mean if k_mean.stride(-1) == 1 else k_mean.contiguous()
    out = torch.empty(B, H, nb, nb, dtype=torch.float32, device=q_mean.device)
    bd = triton.next_power_of_2(D)
    bm = min(BM, max(16, triton.next_power_of_2(nb)))
    bn = min(bn or BN, max(16, triton.next_power_of_2(nb)))
    _kernel(interpret)[(B * H, -(-nb // bm))](
        q_mean, k_mean, out, H, H // k_mean.shape[1], nb, D, q_mean.stride(0), q_mean.stride(1), q_mean.stride(2),
        k_mean.stride(0), k_mean.stride(1), k_mean.stride(2), out.stride(0), out.stride(1), out.stride(2),
        BD=bd, BM=bm, BN=bn, DT=_DTYPES[q_mean.dtype], I_NB=-(-nb // bn) * bn if interpret else 0,
        INTERPRET=interpret, PREC="ieee" if q_mean.dtype == torch.float32 else "tf32", num_warps=WARPS,
        **({"maxnreg": maxnreg} if maxnreg and not interpret else {}))
    return out
