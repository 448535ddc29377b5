"""Reference semantics of `kernels/flex_blocks` (FlexPrefill, arXiv:2502.20766; `methods/flexprefill.py`).

`flex_blocks_naive(pooled, budget, qa_blocks, query_aware)` per batch entry and query head, with nb key blocks:

1. The vertical scores `pooled[0] [nb]` with key block 0 forced first, and the slash scores `pooled[1] [nb]` (entry
   c stands for block offset nb - 1 - c) with the main diagonal (entry nb - 1) forced first, are each ranked by a
   stable descending sort (equal scores: the lower index first); an entry is kept when its rank is below its
   budget (`budget[0]` columns, `budget[1]` diagonals).
2. Block (r, c), c <= r, is listed when its column is kept, or its diagonal (entry nb - 1 - (r - c)) is, or the head
   is query-aware and `qa_blocks[r, c]` is set. No block above the diagonal is listed.
3. Each row r gives `stable_partition` of its flags: the listed key blocks in ascending order, then the others in
   ascending order, and the count of listed ones.

Inputs: `pooled [2, B, H, nb]` fp32 (NaN-free), `budget [2, B, H]` integer, `qa_blocks [B, H, nb, nb]` bool,
`query_aware [B, H]` bool. Returns `(kv_indices [B, H, nb, nb], kv_counts [B, H, nb])`, int32.
"""
from __future__ import annotations

import functools

import torch

from sparsebench.selection import stable_partition


def _check(pooled, budget, qa_blocks, query_aware) -> None:
    if pooled.dim() != 4 or pooled.shape[0] != 2 or pooled.dtype != torch.float32:
        raise ValueError(f"pooled must be fp32 [2, B, H, nb]; got {tuple(pooled.shape)} {pooled.dtype}")
    _, B, H, nb = pooled.shape
    if tuple(budget.shape) != (2, B, H):
        raise ValueError(f"budget must be [2, B, H] = {(2, B, H)}; got {tuple(budget.shape)}")
    if tuple(qa_blocks.shape) != (B, H, nb, nb) or qa_blocks.dtype != torch.bool:
        raise ValueError(f"qa_blocks must be bool [B, H, nb, nb] = {(B, H, nb, nb)}; got {tuple(qa_blocks.shape)} "
                         f"{qa_blocks.dtype}")
    if tuple(query_aware.shape) != (B, H) or query_aware.dtype != torch.bool:
        raise ValueError(f"query_aware must be bool [B, H] = {(B, H)}; got {tuple(query_aware.shape)} "
                         f"{query_aware.dtype}")


def stable_rank(score: torch.Tensor) -> torch.Tensor:
    """Rank of every entry in a stable descending sort over the last dim (ties: lower index first)."""
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices
    ar = torch.arange(score.shape[-1], device=score.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, ar)


@functools.lru_cache(maxsize=8)
def block_tables(nb: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(causal [nb, nb] bool, diag [nb, nb] int64, above [nb, nb] bool, tril [nb (nb + 1) / 2] int64)`: c <= r; the
    slash entry nb - 1 - (r - c) of block (r, c) (clamped into range above the diagonal); c > r; and the flat
    indices r * nb + c of the causal blocks in row-major order. Made once per (nb, device); never written."""
    r = torch.arange(nb, device=device)[:, None]
    c = torch.arange(nb, device=device)[None, :]
    tri = torch.tril_indices(nb, nb, device=device)
    return c <= r, (nb - 1 - (r - c)).clamp(0, nb - 1), c > r, tri[0] * nb + tri[1]


def flex_blocks_mask(pooled: torch.Tensor, budget: torch.Tensor, qa_blocks: torch.Tensor,
                     query_aware: torch.Tensor, overwrite: bool = False) -> torch.Tensor:
    """bool `[B, H, nb, nb]`: the listed blocks (steps 1-2 of the module docstring). With `overwrite` the forced
    entries are written into `pooled` itself (a caller that has no further use for it spares the copy)."""
    _check(pooled, budget, qa_blocks, query_aware)
    nb = pooled.shape[-1]
    if not overwrite:
        pooled = pooled.clone()
    pooled[0, ..., 0] = float("inf")
    pooled[1, ..., -1] = float("inf")
    keep_v, keep_s = stable_rank(pooled) < budget[..., None]
    causal, diag, _, _ = block_tables(nb, pooled.device)
    mask = causal & (keep_v[..., None, :] | keep_s[..., diag])
    return mask | (qa_blocks & causal & query_aware[..., None, None])


def flex_blocks_naive(pooled: torch.Tensor, budget: torch.Tensor, qa_blocks: torch.Tensor,
                      query_aware: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(kv_indices, kv_counts)` int32 (module docstring)."""
    return stable_partition(flex_blocks_mask(pooled, budget, qa_blocks, query_aware))
