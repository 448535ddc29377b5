"""Reference semantics of `kernels/top_set`.

`top_set_naive(x, k, forced)`: per row of fp32 `x [R, N]`, the indices of its k best entries in ascending index
order, where "best" is the order of a stable descending sort (equal values: lower index first; -0.0 equals 0.0) and
the first `forced` entries count as +inf. The same set as the first k entries of `methods.minference.top_ranked`.
"""
from __future__ import annotations

import torch


def _check(x: torch.Tensor, k: int, forced: int) -> None:
    if x.dim() != 2 or x.dtype != torch.float32:
        raise ValueError(f"x must be a 2-D fp32 tensor [R, N]; got {tuple(x.shape)} {x.dtype}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= x.shape[1]:
        raise ValueError(f"k={k!r} must be an integer in [1, {x.shape[1]}] (the row length)")
    if isinstance(forced, bool) or not isinstance(forced, int) or forced < 0:
        raise ValueError(f"forced={forced!r} must be an integer >= 0")


def top_set_naive(x: torch.Tensor, k: int, forced: int = 0) -> torch.Tensor:
    """int64 `[R, k]`: each row's k best entries (module docstring), ascending."""
    _check(x, k, forced)
    sc = x.clone()
    sc[:, :forced] = float("inf")
    best = torch.sort(sc, dim=-1, descending=True, stable=True).indices[:, :k]
    return torch.sort(best, dim=-1).values
