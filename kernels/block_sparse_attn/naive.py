"""Reference block-sparse prefill attention: exact masked softmax with fp32 accumulation, chunked over queries.

This file pins the semantics every faster executor must reproduce. Inputs are plain tensors (no sparsebench import):

    q [B, H, T, D], k / v [B, HKV, S, D], S >= T (query row t sits at position t + S - T)
    kv_indices [B, HS, NQ, MAXK] int key-block indices, kv_counts [B, HS, NQ]; HS in {H, HKV, 1}
    extra_cols [B, HS, NQ, MAXC] key token indices, extra_counts [B, HS, NQ] (optional)

Pair (t, s) is computed iff s is in a listed block of t's query block or among its extra columns, s <= pos(t), and,
when `window` is set, pos(t) - s < window or s < sink. Rows with no pair give output 0 and log-sum-exp -inf.
K/V are never repeated across a GQA group; the score matrix of one chunk is the only large buffer.
"""
from __future__ import annotations

import math

import torch


def _row_mask(kv_indices, kv_counts, extra_cols, extra_counts, rows, S, BQ, BK):
    """[B, HS, Tc, S] bool: pairs listed by blocks or extra columns for query rows `rows`."""
    B, HS, NQ, MAXK = kv_indices.shape
    NK = -(-S // BK)
    dev = kv_indices.device
    qb = rows // BQ
    live = torch.arange(MAXK, device=dev) < kv_counts[:, :, qb, None]  # [B, HS, Tc, MAXK]
    idx = torch.where(live, kv_indices[:, :, qb].long(), NK)
    bm = torch.zeros(B, HS, rows.numel(), NK + 1, dtype=torch.bool, device=dev)
    bm.scatter_(-1, idx, True)
    mask = bm[..., torch.arange(S, device=dev) // BK]
    if extra_cols is not None:
        C = extra_cols.shape[-1]
        live = torch.arange(C, device=dev) < extra_counts[:, :, qb, None]
        cols = torch.where(live, extra_cols[:, :, qb].long(), S)
        em = torch.zeros(B, HS, rows.numel(), S + 1, dtype=torch.bool, device=dev)
        em.scatter_(-1, cols, True)
        mask |= em[..., :S]
    return mask


def block_sparse_attn_naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_indices: torch.Tensor,
                            kv_counts: torch.Tensor, block_q: int, block_k: int, scale: float | None = None,
                            sink: int = 0, window: int | None = None, extra_cols: torch.Tensor | None = None,
                            extra_counts: torch.Tensor | None = None, return_lse: bool = False,
                            q_rows: torch.Tensor | None = None, max_scores: int = 1 << 26, max_rows: int = 512):
    """Block-sparse attention by dense masked softmax (see the module docstring for the semantics).

    Args:
        q, k, v: `[B, H, T, D]`, `[B, HKV, S, D]`, `[B, HKV, S, D]`.
        kv_indices, kv_counts: block lists `[B, HS, NQ, MAXK]` and counts `[B, HS, NQ]`.
        block_q, block_k: block sizes.
        scale: softmax scale. Default: `1/sqrt(D)`.
        sink, window: token-level rule; `window=None` means none.
        extra_cols, extra_counts: optional single key columns per query block.
        return_lse: also return the natural-log log-sum-exp `[B, H, T]` (fp32) of the scaled scores.
        q_rows: compute only these query rows (1-D, ascending); outputs then have `len(q_rows)` rows.
        max_scores: scores held at once (sets the query chunk). Default: 2**26 (256 MB of fp32).
        max_rows: most query rows per chunk; small chunks keep the gathered key set close to what the rows use.
            Default: 512.

    Returns:
        `out [B, H, T, D]` in q's dtype, and `lse` when asked.

    Only the keys some row of a chunk can reach are gathered, so a local window costs O(T * window) and a causal
    pattern skips the upper triangle's key columns.
    """
    B, H, T, D = q.shape
    HKV, S = k.shape[1], k.shape[2]
    G = H // HKV
    HS = kv_indices.shape[1]
    if HS not in (H, HKV, 1):
        raise ValueError(f"kv_indices has {HS} head lists; expected H={H}, HKV={HKV} or 1")
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    off = S - T
    all_rows = torch.arange(T, device=q.device) if q_rows is None else q_rows.to(q.device)
    R = all_rows.numel()
    chunk = max(block_q, min(max_rows, max_scores // max(B * H * S, 1)) // block_q * block_q)
    out = torch.empty(B, H, R, v.shape[-1], dtype=q.dtype, device=q.device)
    lse = torch.empty(B, H, R, dtype=torch.float32, device=q.device)
    cols = torch.arange(S, device=q.device)
    for r0 in range(0, R, chunk):
        rows = all_rows[r0:r0 + chunk]
        mask = _row_mask(kv_indices, kv_counts, extra_cols, extra_counts, rows, S, block_q, block_k)
        pos = rows + off
        allowed = cols[None, :] <= pos[:, None]
        if window is not None:
            allowed &= (pos[:, None] - cols[None, :] < window) | (cols[None, :] < sink)
        mask &= allowed
        keys = mask.flatten(0, 2).any(0).nonzero().squeeze(1)  # key columns some row of the chunk uses
        mask = mask[..., keys]
        Sc, Tc = keys.numel(), rows.numel()
        kf, vf = k[:, :, keys].float(), v[:, :, keys].float()
        # group query heads by their KV head: [B, HKV, G, Tc, D]
        qg = q[:, :, rows].float().view(B, HKV, G, Tc, D)
        s = torch.einsum("bkgtd,bksd->bkgts", qg, kf) * scale
        m = mask.view(B, HKV, G, Tc, Sc) if HS == H else (
            mask[:, :, None] if HS == HKV else mask[:, :, None].expand(B, HKV, 1, Tc, Sc))
        s = s.masked_fill(~m, float("-inf"))
        row_max = s.amax(-1, keepdim=True) if Sc else s.new_full((*s.shape[:-1], 1), float("-inf"))
        safe_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
        p = torch.exp(s - safe_max)
        denom = p.sum(-1, keepdim=True)
        o = torch.einsum("bkgts,bksd->bkgtd", p, vf) / denom.clamp_min(1e-30)
        out[:, :, r0:r0 + Tc] = o.reshape(B, H, Tc, -1).to(q.dtype)
        lse[:, :, r0:r0 + Tc] = (safe_max + torch.log(denom)).reshape(B, H, Tc)
    return (out, lse) if return_lse else out


def dense_attn_naive(q, k, v, scale=None, return_lse=False):
    """Dense causal attention (bottom-right aligned) in fp32, for tests: every block listed."""
    B, H, T, _ = q.shape
    S = k.shape[2]
    idx = torch.arange(S, device=q.device, dtype=torch.int32).expand(B, 1, T, S).contiguous()
    cnt = torch.full((B, 1, T), S, dtype=torch.int32, device=q.device)
    return block_sparse_attn_naive(q, k, v, idx, cnt, 1, 1, scale=scale, return_lse=return_lse)
