"""Reference semantics of `kernels/block_scores` (FlexPrefill, arXiv:2502.20766; `methods/flexprefill.py` step 7).

`block_scores_naive(q_mean, k_mean)` per batch entry and query head h (KV head h // G):

    logits = q_mean[h] @ k_mean[h // G]^T, `[nb, nb]`, rounded to the input dtype as a matmul returns it
    attn   = softmax over the last dim, in fp32, of the logits with the blocks above the diagonal (key block after
             the query block) set to -inf

Inputs: `q_mean [B, H, nb, D]` (the scaled query block means) and `k_mean [B, HKV, nb, D]` (the key block means),
one dtype. Returns `attn [B, H, nb, nb]` fp32 (zeros above the diagonal).
"""
from __future__ import annotations

import torch


def _check(q_mean: torch.Tensor, k_mean: torch.Tensor) -> None:
    if q_mean.dim() != 4 or k_mean.dim() != 4:
        raise ValueError(f"q_mean [B, H, nb, D] and k_mean [B, HKV, nb, D]; got {tuple(q_mean.shape)}, "
                         f"{tuple(k_mean.shape)}")
    B, H, nb, D = q_mean.shape
    if k_mean.shape[0] != B or k_mean.shape[2] != nb or k_mean.shape[3] != D or H % k_mean.shape[1]:
        raise ValueError(f"shapes do not agree: q_mean {tuple(q_mean.shape)}, k_mean {tuple(k_mean.shape)}")
    if q_mean.dtype != k_mean.dtype:
        raise ValueError(f"q_mean and k_mean must share a dtype; got {q_mean.dtype}, {k_mean.dtype}")


def block_scores_naive(q_mean: torch.Tensor, k_mean: torch.Tensor) -> torch.Tensor:
    """`attn [B, H, nb, nb]` fp32 (module docstring)."""
    _check(q_mean, k_mean)
    B, H, nb, D = q_mean.shape
    HKV = k_mean.shape[1]
    logits = torch.matmul(q_mean.reshape(B, HKV, H // HKV * nb, D), k_mean.transpose(-1, -2)).view(B, H, nb, nb)
    above = torch.ones(nb, nb, dtype=torch.bool, device=q_mean.device).triu(1)
    return torch.softmax(logits.masked_fill(above, float("-inf")), dim=-1, dtype=torch.float32)
