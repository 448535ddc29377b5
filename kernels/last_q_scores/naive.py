"""Reference vertical and slash scores of the last L queries (MInference's vertical-slash estimator).

Pure tensor code (no sparsebench import). Inputs:

    q_last [B, H, L, D]   the last L query rows; row i sits at position pos_i = S - L + i
    k      [B, HKV, S, D] S >= L, H % HKV == 0; query head h reads KV head h // (H / HKV) (K never repeated)

    logit[i, j] = scale * q_last[i] . k[j], as one GEMM in the input dtype: fp32 accumulation, the scale applied in
                  fp32, one rounding to the input dtype (`methods.minference._scaled_logits`)
    p[i, :]     = softmax (fp32) over the keys j <= pos_i (keys past the row's position are -inf)
    vertical[j] = sum_i p[i, j]                              column sums
    slash[o]    = sum_{i : pos_i - o >= 0} p[i, pos_i - o]   o = offset from the diagonal (0 = the main diagonal)

Both `[B, H, S]` fp32: the layout of `methods.minference.vs_scores` (its `.flip(-1)` puts offset o at index o).
"""
from __future__ import annotations

import torch


def stack_scores(vertical: torch.Tensor, slash: torch.Tensor, n: int) -> torch.Tensor:
    """`[2, ...]`: the column sums and the slash sums (indexed by offset here, flipped into diagonal order: the main
    diagonal last), both divided by the n queries (FlexPrefill's `scores`)."""
    return torch.stack([vertical, slash.flip(-1)]).div_(n)


def _check(q_last: torch.Tensor, k: torch.Tensor, causal: bool = True):
    if q_last.dim() != 4 or k.dim() != 4 or q_last.shape[0] != k.shape[0] or q_last.shape[3] != k.shape[3]:
        raise ValueError(f"q_last {tuple(q_last.shape)} and k {tuple(k.shape)} must be [B, H, L, D] and "
                         f"[B, HKV, S, D]")
    B, H, L, D = q_last.shape
    HKV, S = k.shape[1], k.shape[2]
    if causal and (H % HKV or S < L or L < 1):
        raise ValueError(f"need H % HKV == 0 and S >= L >= 1; got H={H}, HKV={HKV}, L={L}, S={S}")
    # without the causal mask the rows need no key positions of their own, so S < L is allowed
    if not causal and (H % HKV or L < 1 or S < 1):
        raise ValueError(f"need H % HKV == 0, L >= 1 and S >= 1; got H={H}, HKV={HKV}, L={L}, S={S}")
    return B, H, L, D, HKV, S


def last_q_scores_naive(q_last: torch.Tensor, k: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`(vertical [B, H, S], slash [B, H, S])` fp32 of the module docstring, one query head at a time."""
    B, H, L, _, HKV, S = _check(q_last, k)
    G = H // HKV
    dev = q_last.device
    pos = torch.arange(S - L, S, device=dev)
    cols = torch.arange(S, device=dev)
    key_of = pos[:, None] - cols[None, :]  # [L, S]: the key on offset o (column) for row i
    vertical = torch.empty(B, H, S, dtype=torch.float32, device=dev)
    slash = torch.empty(B, H, S, dtype=torch.float32, device=dev)
    for h in range(H):
        kh = k[:, h // G]
        # beta=0: the 0-dim input is ignored; logits in the input dtype exactly as `_scaled_logits`
        s = torch.baddbmm(q_last.new_zeros(()), q_last[:, h], kh.transpose(-1, -2), beta=0, alpha=scale)
        s = s.masked_fill(cols[None, :] > pos[:, None], float("-inf"))
        p = torch.softmax(s, dim=-1, dtype=torch.float32)
        vertical[:, h] = p.sum(-2)
        on_diag = p.gather(-1, key_of.clamp(min=0).expand(B, L, S))
        slash[:, h] = torch.where(key_of >= 0, on_diag, torch.zeros_like(on_diag)).sum(-2)
    return vertical, slash


def last_q_importance_naive(q_last: torch.Tensor, k: torch.Tensor, scale: float,
                            n_keys: int | None = None) -> torch.Tensor:
    """PBS-Attn's key importance `[B, H, n_keys]` fp32, one query head at a time (`methods.pbs`, step 1):

        logit[i, j]   = (q_last[i] . k[j]) * scale for the first n_keys keys (default all S), no causal mask:
                        `torch.matmul` in the input dtype (fp32 accumulation, rounded to the input dtype), then the
                        scale applied in fp32 and rounded again (`.mul_(scale)` on the matmul's output)
        p[i, :]       = softmax (fp32) over those keys
        importance[j] = mean_i p[i, j]

    Inputs as `last_q_scores_naive`, except that S may be smaller than L.
    """
    B, H, _, _, HKV, S = _check(q_last, k, causal=False)
    n_keys = S if n_keys is None else n_keys
    if isinstance(n_keys, bool) or not isinstance(n_keys, int) or not 1 <= n_keys <= S:
        raise ValueError(f"n_keys={n_keys!r} must be an integer in [1, {S}]")
    G = H // HKV
    imp = torch.empty(B, H, n_keys, dtype=torch.float32, device=q_last.device)
    for h in range(H):
        s = torch.matmul(q_last[:, h], k[:, h // G, :n_keys].transpose(-1, -2)).mul_(scale)
        imp[:, h] = torch.softmax(s, dim=-1, dtype=torch.float32).mean(-2)
    return imp
