"""`Selection`: which (query, key) pairs one attention call computes, kept apart from how they are computed.

A selection is a block list in FlexAttention's padded layout (`kv_indices[B, HS, NQ, MAXK]` with per-row
`kv_counts[B, HS, NQ]`), where `HS` is `H` (`granularity="query_head"`), `HKV` (`"kv_head"`: the query heads of one
KV group share a list, so a kernel can share K/V loads) or 1 (`"shared"`). On top of the blocks, a token-level rule
always holds: causality on original positions (query row `t` sits at position `t + S - T`, bottom-right aligned),
and, where `window` is set, key `s` is kept only if `pos(t) - s < window` or `s < sink` (StreamingLLM / A-shape,
sliding-window layers). Optional extra key columns per query block carry single tokens outside the blocks
(vertical-slash leftovers); they obey causality only.

Density is exact: executed (query, key) pairs inside the causal region divided by the causal pairs, counted in
tokens per query head (a block counts only its allowed part), computed in closed form so it costs nothing at 128K.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

GRANULARITIES = ("query_head", "kv_head", "shared")


def _cum_clamp(n: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """sum over integers x <= n of clamp(x, 0, L), elementwise (int64)."""
    n = n.to(torch.int64)
    L = L.to(torch.int64)
    inside = n * (n + 1) // 2
    above = L * (L + 1) // 2 + (n - L) * L
    return torch.where(n < 0, torch.zeros_like(n), torch.where(n <= L, inside, above))


def _sum_clamp(a: torch.Tensor, b: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """sum_{x=a}^{b} clamp(x, 0, L); zero where b < a."""
    s = _cum_clamp(b, L) - _cum_clamp(a - 1, L)
    return torch.where(b < a, torch.zeros_like(s), s)


def stable_partition(flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(order, counts)` of a bool `[..., N]` tensor, both int32: per row the indices of its True entries in
    ascending order, then those of its False entries in ascending order (what a stable descending argsort of the
    flags gives), and the number of True entries. One cumsum and one scatter instead of a sort."""
    N = flags.shape[-1]
    if N == 0:
        return (torch.empty(flags.shape, dtype=torch.int32, device=flags.device),
                torch.zeros(flags.shape[:-1], dtype=torch.int32, device=flags.device))
    pos = torch.cumsum(flags, -1, dtype=torch.int32)  # True entries up to and including this one
    counts = pos[..., -1].contiguous()
    ar = torch.arange(N, device=flags.device, dtype=torch.int32)
    # a True entry goes to pos - 1, a False one to counts + (False entries before it) = counts + j - pos
    dest = torch.where(flags, pos - 1, (counts[..., None] - pos).add_(ar)).long()
    order = torch.empty_like(pos).scatter_(-1, dest, ar.expand_as(pos))
    return order, counts


def causal_pairs(q_len: int, k_len: int) -> int:
    """Number of (query, key) pairs with key position <= query position (bottom-right aligned)."""
    if k_len < q_len:
        raise ValueError(f"k_len={k_len} < q_len={q_len}")
    return q_len * (k_len - q_len) + q_len * (q_len + 1) // 2


@dataclass
class Selection:
    """The sparse pattern of one attention call (see the module docstring).

    Args:
        kv_indices: `[B, HS, NQ, MAXK]` int32 key-block indices; entries at or past `kv_counts` are ignored.
        kv_counts: `[B, HS, NQ]` int32 number of valid entries per row.
        block_q, block_k: query and key block sizes `BQ`, `BK`.
        q_len, k_len: `T` and `S`.
        num_heads, num_kv_heads: `H` and `HKV`.
        granularity: `query_head`, `kv_head` or `shared`.
        sink, window: token-level sink/local rule (window `None` = no rule).
        extra_cols, extra_counts: `[B, HS, NQ, MAXC]` key token indices and `[B, HS, NQ]` counts, or `None`.
    """

    kv_indices: torch.Tensor
    kv_counts: torch.Tensor
    block_q: int
    block_k: int
    q_len: int
    k_len: int
    num_heads: int
    num_kv_heads: int
    granularity: str = "query_head"
    sink: int = 0
    window: int | None = None
    extra_cols: torch.Tensor | None = None
    extra_counts: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity={self.granularity!r} is not one of {GRANULARITIES}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        hs = self.list_heads
        if self.kv_indices.dim() != 4 or self.kv_indices.shape[1] != hs or self.kv_indices.shape[2] != self.num_q_blocks:
            raise ValueError(f"kv_indices has shape {tuple(self.kv_indices.shape)}; expected [B, {hs}, "
                             f"{self.num_q_blocks}, MAXK] for granularity={self.granularity!r}")
        if self.kv_counts.shape != self.kv_indices.shape[:3]:
            raise ValueError(f"kv_counts shape {tuple(self.kv_counts.shape)} != {tuple(self.kv_indices.shape[:3])}")
        if (self.extra_cols is None) != (self.extra_counts is None):
            raise ValueError("extra_cols and extra_counts come together")
        if self.extra_cols is not None and self.window is not None:
            raise ValueError("extra key columns cannot be combined with a sink/window rule")
        if self.k_len < self.q_len:
            raise ValueError(f"k_len={self.k_len} < q_len={self.q_len}: keys must include every query position")

    # ------------------------------------------------------------------ shape helpers
    @property
    def list_heads(self) -> int:
        return {"query_head": self.num_heads, "kv_head": self.num_kv_heads, "shared": 1}[self.granularity]

    @property
    def heads_per_list(self) -> int:
        return self.num_heads // self.list_heads

    @property
    def q_offset(self) -> int:
        return self.k_len - self.q_len

    @property
    def num_q_blocks(self) -> int:
        return -(-self.q_len // self.block_q)

    @property
    def num_k_blocks(self) -> int:
        return -(-self.k_len // self.block_k)

    def valid(self) -> torch.Tensor:
        """`[B, HS, NQ, MAXK]` bool: which index entries are live."""
        ar = torch.arange(self.kv_indices.shape[-1], device=self.kv_indices.device)
        return ar < self.kv_counts[..., None]

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_block_mask(cls, block_mask: torch.Tensor, *, block_q: int, block_k: int, q_len: int, k_len: int,
                        num_heads: int, num_kv_heads: int, granularity: str = "query_head", **kw) -> Selection:
        """Index lists (ascending key-block order) from a boolean `[B, HS, NQ, NK]` block map."""
        order, counts = stable_partition(block_mask)
        maxk = max(int(counts.max().item()) if counts.numel() else 0, 1)
        idx = order[..., :maxk]
        return cls(idx.contiguous(), counts, block_q, block_k, q_len, k_len, num_heads, num_kv_heads, granularity, **kw)

    @classmethod
    def causal(cls, *, batch: int, q_len: int, k_len: int, num_heads: int, num_kv_heads: int,
               block_q: int = 128, block_k: int = 128, device: torch.device | str = "cpu") -> Selection:
        """Every causal block, shared by all heads: dense causal attention."""
        return cls.local(batch=batch, q_len=q_len, k_len=k_len, num_heads=num_heads, num_kv_heads=num_kv_heads,
                         window=None, sink=0, block_q=block_q, block_k=block_k, device=device)

    @classmethod
    def local(cls, *, batch: int, q_len: int, k_len: int, num_heads: int, num_kv_heads: int, window: int | None,
              sink: int = 0, block_q: int = 128, block_k: int = 128, device: torch.device | str = "cpu") -> Selection:
        """Sink + sliding window on tokens (the A-shape / StreamingLLM / sliding-layer pattern), shared by all heads.

        Query at position p keeps keys `[0, sink)` and `(p - window, p]`; `window=None` keeps every causal key.
        """
        nq, nk = -(-q_len // block_q), -(-k_len // block_k)
        off = k_len - q_len
        qb = torch.arange(nq, device=device)
        p_lo = qb * block_q + off
        p_hi = torch.clamp((qb + 1) * block_q, max=q_len) - 1 + off
        kb = torch.arange(nk, device=device)
        k0, k1 = kb * block_k, torch.clamp((kb + 1) * block_k, max=k_len) - 1
        keep = k0[None, :] <= p_hi[:, None]
        if window is not None:
            in_window = k1[None, :] > p_lo[:, None] - window
            in_sink = k0[None, :] < sink
            keep = keep & (in_window | in_sink)
        mask = keep[None, None].expand(batch, 1, nq, nk)
        return cls.from_block_mask(mask, block_q=block_q, block_k=block_k, q_len=q_len, k_len=k_len,
                                   num_heads=num_heads, num_kv_heads=num_kv_heads, granularity="shared",
                                   sink=sink if window is not None else 0, window=window)

    # ------------------------------------------------------------------ conversions
    def to_block_mask(self) -> torch.Tensor:
        """`[B, HS, NQ, NK]` bool map of the listed blocks."""
        B, HS, NQ, _ = self.kv_indices.shape
        out = torch.zeros(B, HS, NQ, self.num_k_blocks + 1, dtype=torch.bool, device=self.kv_indices.device)
        idx = torch.where(self.valid(), self.kv_indices.long(), self.num_k_blocks)
        out.scatter_(-1, idx, True)
        return out[..., :-1]

    def token_mask(self, q_start: int = 0, q_end: int | None = None) -> torch.Tensor:
        """Dense `[B, HS, Tc, S]` bool mask of executed pairs for query rows `[q_start, q_end)` (small shapes)."""
        q_end = self.q_len if q_end is None else q_end
        dev = self.kv_indices.device
        rows = torch.arange(q_start, q_end, device=dev)
        cols = torch.arange(self.k_len, device=dev)
        bm = self.to_block_mask()[:, :, rows // self.block_q]  # [B, HS, Tc, NK]
        mask = bm[..., cols // self.block_k]  # [B, HS, Tc, S]
        if self.extra_cols is not None:
            B, HS, NQ, C = self.extra_cols.shape
            ar = torch.arange(C, device=dev)
            live = ar < self.extra_counts[..., None]
            cols_e = torch.where(live, self.extra_cols.long(), self.k_len)
            em = torch.zeros(B, HS, NQ, self.k_len + 1, dtype=torch.bool, device=dev)
            em.scatter_(-1, cols_e, True)
            mask = mask | em[:, :, rows // self.block_q, : self.k_len]
        pos = rows + self.q_offset
        allowed = cols[None, :] <= pos[:, None]
        if self.window is not None:
            allowed = allowed & ((pos[:, None] - cols[None, :] < self.window) | (cols[None, :] < self.sink))
        return mask & allowed

    def expand_heads(self, x: torch.Tensor) -> torch.Tensor:
        """Broadcast a per-list tensor `[B, HS, ...]` to per-query-head `[B, H, ...]`."""
        return x.repeat_interleave(self.heads_per_list, dim=1) if self.heads_per_list > 1 else x.expand(
            x.shape[0], self.num_heads, *x.shape[2:])

    # ------------------------------------------------------------------ accounting
    def pair_counts(self) -> torch.Tensor:
        """Executed (query, key) pairs per list, `[B, HS]` int64, in closed form."""
        off, BQ, BK = self.q_offset, self.block_q, self.block_k
        qb = torch.arange(self.num_q_blocks, device=self.kv_indices.device, dtype=torch.int64)
        p_lo = (qb * BQ + off)[None, None, :, None]
        p_hi = (torch.clamp((qb + 1) * BQ, max=self.q_len) - 1 + off)[None, None, :, None]
        kb = self.kv_indices.long()
        k0 = kb * BK
        L = torch.clamp((kb + 1) * BK, max=self.k_len) - k0
        # keys of the block with k <= p, summed over the block's rows p
        n = _sum_clamp(p_lo - k0 + 1, p_hi - k0 + 1, L)
        if self.window is not None:
            # minus causal keys outside the window and past the sink: sink <= k <= p - window
            k0s = torch.maximum(k0, torch.full_like(k0, self.sink))
            Ls = torch.clamp(k0 + L - k0s, min=0)
            n = n - _sum_clamp(p_lo - self.window - k0s + 1, p_hi - self.window - k0s + 1, Ls)
        total = torch.where(self.valid(), n, torch.zeros_like(n)).sum(dim=(-1, -2))
        if self.extra_cols is not None:
            c = self.extra_cols.long()
            rows = torch.clamp(p_hi - torch.maximum(c, p_lo) + 1, min=0)
            live = torch.arange(c.shape[-1], device=c.device) < self.extra_counts[..., None]
            total = total + torch.where(live, rows, torch.zeros_like(rows)).sum(dim=(-1, -2))
        return total

    def executed_pairs(self) -> int:
        """Executed pairs summed over batch and query heads."""
        return int(self.pair_counts().sum().item()) * self.heads_per_list

    def density(self) -> float:
        """Executed pairs / causal pairs, over all batch entries and query heads."""
        B = self.kv_indices.shape[0]
        return self.executed_pairs() / (B * self.num_heads * causal_pairs(self.q_len, self.k_len))

    def validate(self) -> None:
        """Raise if indices are out of range or repeated within a row (tests and debug runs)."""
        v = self.valid()
        kb = self.kv_indices.long()
        if ((kb < 0) | (kb >= self.num_k_blocks))[v].any():
            raise ValueError("kv_indices out of range [0, NK)")
        srt = torch.sort(torch.where(v, kb, -1 - torch.arange(kb.shape[-1], device=kb.device)), dim=-1).values
        if (srt[..., 1:] == srt[..., :-1]).any():
            raise ValueError("kv_indices repeat a block within a row")

    def to(self, device: torch.device | str) -> Selection:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(self, kv_indices=move(self.kv_indices), kv_counts=move(self.kv_counts),
                       extra_cols=move(self.extra_cols), extra_counts=move(self.extra_counts))
