"""Triton kernel for `kernels/flex_switch` (semantics in naive.py): one program per (batch entry, query head) takes
the mean of its last queries, scores the key-block means against it (each product rounded to the input dtype, as
the matmul returns it), and with an online softmax over the blocks in a first walk and the Jensen-Shannon sums in a
second, writes the distance and the decision. One launch instead of about twenty torch ops.

Equal to the reference up to rounding: the fp32 sums (the mean over the queries, each dot product, the softmax
normaliser, the divergence sums) are added in another order, and the mean is rounded to the input dtype from it; a
distance within rounding of tau may decide the other way.
Under `TRITON_INTERPRET=1` (set before triton is imported) the loops take the constexpr lengths `I_N`, `I_NB`.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .._jit import per_mode
from .naive import _check

__all__ = ["flex_switch_triton"]


def _logits(KM, probe, j, nb, dd, D, skn, DT: tl.constexpr):
    """The probe's products with the key-block means `j` (fp32 sums rounded to the input dtype, as a matmul
    returns them), -inf past nb."""
    ok = j < nb
    km = tl.load(KM + j[:, None] * skn + dd[None, :], mask=ok[:, None] & (dd < D)[None, :], other=0.0)
    s = tl.sum(km.to(tl.float32) * probe[None, :], 1).to(DT).to(tl.float32)
    return tl.where(ok, s, float("-inf"))


def _switch_fwd(QL, KM, VERT, QA, DIST, H, G, n, nb, D, sqb, sqh, sqn, skb, skh, skn, svb, svh, tau,
                DT: tl.constexpr, BD: tl.constexpr, BR: tl.constexpr, BN: tl.constexpr, I_N: tl.constexpr,
                I_NB: tl.constexpr, INTERPRET: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // H
    h = pid % H
    dd = tl.arange(0, BD)
    # the probe: the mean of the last queries, in the input dtype
    q_base = QL + b * sqb + h * sqh
    acc = tl.zeros([BD], dtype=tl.float32)
    for r0 in range(0, I_N if INTERPRET else n, BR):
        rr = r0 + tl.arange(0, BR)
        x = tl.load(q_base + rr[:, None] * sqn + dd[None, :], mask=(rr < n)[:, None] & (dd < D)[None, :], other=0.0)
        acc += tl.sum(x.to(tl.float32), 0)
    probe = (acc / n).to(DT).to(tl.float32)
    k_base = KM + b * skb + (h // G) * skh
    v_base = VERT + b * svb + h * svh
    # walk 1: the softmax's maximum and normaliser over the key blocks (online)
    m = tl.full([], float("-inf"), tl.float32)
    l = tl.zeros([], dtype=tl.float32)
    for j0 in range(0, I_NB if INTERPRET else nb, BN):
        s = _logits(k_base, probe, j0 + tl.arange(0, BN), nb, dd, D, skn, DT)
        m_new = tl.maximum(m, tl.max(s))
        l = l * tl.exp(m - m_new) + tl.sum(tl.exp(s - m_new))
        m = m_new
    # walk 2: the divergence sums of a against the pooled vertical scores (no zero guard, as the reference)
    kl_a = tl.zeros([], dtype=tl.float32)
    kl_v = tl.zeros([], dtype=tl.float32)
    for j0 in range(0, I_NB if INTERPRET else nb, BN):
        j = j0 + tl.arange(0, BN)
        ok = j < nb
        a = tl.exp(_logits(k_base, probe, j, nb, dd, D, skn, DT) - m) / l
        p = tl.load(v_base + j, mask=ok, other=1.0)
        mid = 0.5 * (a + p)
        kl_a += tl.sum(tl.where(ok, a * tl.log(a / mid), 0.0))
        kl_v += tl.sum(tl.where(ok, p * tl.log(p / mid), 0.0))
    dist = tl.sqrt(0.5 * kl_a + 0.5 * kl_v)
    tl.store(DIST + pid, dist)
    tl.store(QA + pid, (dist < tau).to(tl.int8))


_kernel = per_mode((_switch_fwd,), (_logits,), one=True)

_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}
# elements loaded by one step of the walk over the last queries (Q_TILE) and over the key-block means (K_TILE), and
# the warps of a program. Since session 12 16384 / 32768 / 8: FlexPrefill's 128 last queries and 256 key blocks of
# 128 dims in one step each, 6.7 against 14.6 us a launch for 32 heads (H200, profiled; 9.3 against 19.0 us inside
# its whole graph, where it follows the score passes). Session 11's 4096 / 8192 / 4 (bench row `flexprefill_switch4k`):
# FlexPrefill's estimate 0.669 / 1.353 / 3.130 ms against 0.664 / 1.345 / 3.124 ms at 32K / 64K / 128K
# (`bench_methods_cost_s12a.csv`)
Q_TILE = 16384
K_TILE = 32768
WARPS = 8


def flex_switch_triton(q_last: torch.Tensor, k_mean: torch.Tensor, vertical: torch.Tensor,
                       tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`(query_aware [B, H] bool, distance [B, H] fp32)` of `flex_switch_naive` (arguments as there), up to the
    rounding in the module docstring."""
    _check(q_last, k_mean, vertical)
    if q_last.dtype not in _DTYPES or k_mean.dtype != q_last.dtype:
        raise ValueError(f"q_last and k_mean must share a dtype of {sorted(map(str, _DTYPES))}; got {q_last.dtype}, "
                         f"{k_mean.dtype}")
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    B, H, n, D = q_last.shape
    HKV, nb = k_mean.shape[1], k_mean.shape[2]
    if q_last.stride(-1) != 1:
        q_last = q_last.contiguous()
    if k_mean.stride(-1) != 1:
        k_mean = k_mean.contiguous()
    vertical = vertical if vertical.stride(-1) == 1 else vertical.contiguous()
    qa = torch.empty(B, H, dtype=torch.int8, device=q_last.device)
    dist = torch.empty(B, H, dtype=torch.float32, device=q_last.device)
    bd = max(16, triton.next_power_of_2(D))
    _kernel(interpret)[(B * H,)](
        q_last, k_mean, vertical, qa, dist, H, H // HKV, n, nb, D, q_last.stride(0), q_last.stride(1),
        q_last.stride(2), k_mean.stride(0), k_mean.stride(1), k_mean.stride(2), vertical.stride(0),
        vertical.stride(1), float(tau), DT=_DTYPES[q_last.dtype], BD=bd,
        BR=max(1, min(triton.next_power_of_2(n), Q_TILE // bd)),
        BN=max(1, min(triton.next_power_of_2(nb), K_TILE // bd)),
        I_N=n if interpret else 0, I_NB=nb if interpret else 0, INTERPRET=interpret, num_warps=WARPS)
    return qa.view(torch.bool), dist
