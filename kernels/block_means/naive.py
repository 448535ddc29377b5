"""Reference semantics of `kernels/block_means`.

`block_means_naive(x, size, scale=None)`: `x [..., N, D]` -> `[..., ceil(N / size), D]` in x's dtype: each run of
`size` consecutive rows summed in fp32 and divided by its row count (the last run may be short and averages only
its rows), rounded to x's dtype; with `scale`, that mean times `scale` in x's dtype (the product computed in fp32
and rounded, as a tensor-by-scalar multiply does). FlexPrefill's `block_mean(k, B).to(k.dtype)` and
`block_mean(q, B).to(q.dtype) * scale`.
"""
from __future__ import annotations

import torch


def split_blocks(x: torch.Tensor, size: int, dim: int = -2) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Views of `x` along `dim` (-1 or -2): the complete runs of `size`, `[..., nfull, size(, D)]`, and the short last
    run zero-padded to `size` (a copy of at most `size` entries per row), `[..., 1, size(, D)]`, or None."""
    N = x.shape[dim]
    nfull, tail = divmod(N, size)
    full = x.narrow(dim, 0, nfull * size).unflatten(dim, (nfull, size))
    if not tail:
        return full, None
    pad = (0, size - tail) if dim == -1 else (0, 0, 0, size - tail)
    return full, torch.nn.functional.pad(x.narrow(dim, nfull * size, tail), pad).unflatten(dim, (1, size))


def block_mean(x: torch.Tensor, size: int) -> torch.Tensor:
    """fp32 means of `x [..., N, D]` over consecutive runs of `size` rows; the last run averages only its rows.

    Sums accumulate in fp32 straight from the input (`sum(dtype=float32)`), never from an fp32 copy of `x`; the
    complete runs are read through a view and only the short last run is padded."""
    N = x.shape[-2]
    full, tail = split_blocks(x, size)
    sums = full.sum(-2, dtype=torch.float32)
    if tail is None:
        return sums / size
    sums = torch.cat([sums, tail.sum(-2, dtype=torch.float32)], dim=-2)
    nb = sums.shape[-2]
    counts = torch.full((nb, 1), float(size), device=x.device)
    counts[-1] = N - (nb - 1) * size
    return sums / counts


def block_means_naive(x: torch.Tensor, size: int, scale: float | None = None) -> torch.Tensor:
    """`[..., ceil(N / size), D]` in x's dtype (module docstring)."""
    if x.dim() < 2 or size < 1:
        raise ValueError(f"x must be [..., N, D] and size >= 1; got {tuple(x.shape)}, size={size}")
    out = block_mean(x, size).to(x.dtype)
    return out if scale is None else out * scale
