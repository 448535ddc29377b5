"""Reference semantics of `kernels/flex_switch` (FlexPrefill, arXiv:2502.20766; `methods/flexprefill.py` step 5).

`flex_switch_naive(q_last, k_mean, vertical, tau)` per batch entry and query head h (KV head h // G):

    probe = mean over the n rows of q_last (the last n queries, already multiplied by the softmax scale), in the
            input dtype
    a     = softmax over the nb key blocks of (probe . k_mean), the product rounded to the input dtype as a matmul
            returns it, the softmax in fp32
    d     = sqrt(JS(a, vertical)) with natural logs and no zero guard (a zero probability gives NaN)
    query_aware = d < tau (NaN compares False: the head stays vertical-slash)

Inputs: `q_last [B, H, n, D]` (input dtype), `k_mean [B, HKV, nb, D]` (input dtype), `vertical [B, H, nb]` fp32
(the pooled vertical scores). Returns `query_aware [B, H]` bool and the distance `[B, H]` fp32.
"""
from __future__ import annotations

import torch


def js_distance(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Square root of the Jensen-Shannon divergence (natural log) over the last dim.

    As in the official code no zero guard is applied: a zero probability yields NaN, which compares False with tau
    (the head stays vertical-slash).
    """
    m = 0.5 * (p + q)
    kl_p = (p * torch.log(p / m)).sum(-1)
    kl_q = (q * torch.log(q / m)).sum(-1)
    return torch.sqrt(0.5 * kl_p + 0.5 * kl_q)


def _check(q_last, k_mean, vertical) -> None:
    if q_last.dim() != 4 or k_mean.dim() != 4 or vertical.dim() != 3:
        raise ValueError(f"q_last [B, H, n, D], k_mean [B, HKV, nb, D], vertical [B, H, nb]; got "
                         f"{tuple(q_last.shape)}, {tuple(k_mean.shape)}, {tuple(vertical.shape)}")
    B, H, _, D = q_last.shape
    HKV, nb = k_mean.shape[1], k_mean.shape[2]
    if k_mean.shape[0] != B or k_mean.shape[3] != D or H % HKV or tuple(vertical.shape) != (B, H, nb):
        raise ValueError(f"shapes do not agree: q_last {tuple(q_last.shape)}, k_mean {tuple(k_mean.shape)}, "
                         f"vertical {tuple(vertical.shape)}")


def flex_switch_naive(q_last: torch.Tensor, k_mean: torch.Tensor, vertical: torch.Tensor,
                      tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`(query_aware [B, H] bool, distance [B, H] fp32)` (module docstring)."""
    _check(q_last, k_mean, vertical)
    B, H, _, D = q_last.shape
    HKV, nb = k_mean.shape[1], k_mean.shape[2]
    probe = q_last.mean(-2).view(B, HKV, H // HKV, D)
    a = torch.softmax(torch.matmul(probe, k_mean.transpose(-1, -2)), dim=-1, dtype=torch.float32)
    d = js_distance(a.view(B, H, nb), vertical)
    return d < tau, d
