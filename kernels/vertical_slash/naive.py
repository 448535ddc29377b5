"""Vertical-slash index building (MInference's execution form) and its reference attention.

Inputs per list head (query heads at `query_head` granularity; the functions do not care what a list head is):

    v_idx [B, HS, NV]  vertical key columns (token positions), any order; duplicates, negatives and positions
                       >= S are ignored
    s_idx [B, HS, NS]  slash diagonal offsets: offset o means key = pos(t) - o; negatives are ignored

Query row t sits at position pos(t) = t + S - T (bottom-right aligned, as everywhere in sparsebench). Query block
qb (size `bs`, default 64) covers positions p_lo(qb) = qb*bs + S - T .. p_hi(qb) = min((qb+1)*bs, T) - 1 + S - T.

**The promise** (pinned by the tests): pair (t, s) is computed iff s <= pos(t) and

    s is a vertical column, or
    the key block of s (s // bs) lies in [(p_lo(qb) - o) // bs, (p_hi(qb) - o) // bs] for some offset o,
    qb = t // bs (floor division; a block index below 0 is no block).

That is, every slash line becomes the whole 64-wide key blocks its diagonal crosses inside the query block (at most
two, since the block has at most `bs` rows), and a vertical column that falls in such a block is computed there as
part of the block, never a second time. The other vertical columns are gathered token by token ("extra columns").

Output (`vertical_slash_to_blocks`): the block lists and extra columns of a sparsebench `Selection` with
`block_q = block_k = bs` (`kv_indices [B, HS, NQ, MAXK]`, `kv_counts`, `extra_cols [B, HS, NQ, MAXC]`,
`extra_counts`, all int32). Only causal parts are listed: no block lies wholly above the diagonal, no extra column
lies past the block's last query position (columns inside the block's query range are masked per row by executors).
Blocks come nearest-diagonal first; extra columns ascending. MAXK = min(2*NS, NK) and MAXC = NV are static upper
bounds, so building needs no host synchronisation.

Difference from MInference's `convert_vertical_slash_indexes` (`csrc/vertical_slash_index.cu`): there each offset
becomes the 64 key columns [end - o - 64, end - o) (end = the block's last row + 1), a band not aligned to the
64-grid; here the band is rounded out to aligned 64-blocks, so the computed set is a superset of MInference's
(up to twice the slash columns when o is not a multiple of 64) and fits the aligned block lists every sparsebench
executor takes. Verticals are treated alike (skipped where a selected block covers them), but here extra columns
obey causality, where MInference assumes they lie left of the diagonal band.

How it is built without per-row work: since every query block starts on a multiple of `bs`, the key block a
diagonal o crosses at the block's first (last) row is qb + A - e, with A = (S - T) // bs and an e that depends on o
(and on the block's row count) but not on qb. So each head's offsets reduce to one sorted set of block diagonals E;
row qb lists qb + A - e for e in E while that is >= 0 (a prefix of the sorted set). Only the ragged last query
block, with fewer rows, gets its own set.
"""
from __future__ import annotations

import torch

from ..block_sparse_attn.naive import block_sparse_attn_naive

__all__ = ["vertical_slash_attn_naive", "vertical_slash_to_blocks"]

# extra-column membership tests materialise [rows, NQ, NV] index tensors; above this many elements, go in chunks
_MAX_ELEMS = 1 << 25


def _floor_div(x: torch.Tensor, d: int) -> torch.Tensor:
    return torch.div(x, d, rounding_mode="floor")


def _diagonal_map(o: torch.Tensor, live: torch.Tensor, c: int, rows: int, bs: int, nk: int) -> torch.Tensor:
    """`[B, HS, NK + 2]` bool over e + 1 (e in [-1, NK]): block diagonals crossed by the live offsets in a query
    block of `rows` rows whose first position is c modulo bs."""
    e_lo = -_floor_div(c - o, bs)  # key block at the first row is qb + A - e_lo
    e_hi = -_floor_div(c + rows - 1 - o, bs)  # ... and at the last row qb + A - e_hi (e_hi >= e_lo - 1, >= -1)
    trash = nk + 2
    slots = torch.cat([torch.where(live, e_lo + 1, trash), torch.where(live, e_hi + 1, trash)], dim=-1)
    slots = slots.clamp(0, trash)  # e beyond NK never yields a block >= 0 for any row
    emap = torch.zeros(*o.shape[:-1], nk + 3, dtype=torch.bool, device=o.device)
    emap.scatter_(-1, slots, True)
    return emap[..., :trash]


def vertical_slash_to_blocks(v_idx: torch.Tensor, s_idx: torch.Tensor, q_len: int, k_len: int,
                             block_size: int = 64):
    """Block lists and extra columns for vertical columns `v_idx` and slash offsets `s_idx` (module docstring).

    Args:
        v_idx: `[B, HS, NV]` integer key positions (NV may be 0).
        s_idx: `[B, HS, NS]` integer diagonal offsets (NS may be 0).
        q_len, k_len: `T` and `S` (S >= T).
        block_size: query and key block size `bs`.

    Returns:
        `(kv_indices [B, HS, NQ, MAXK], kv_counts [B, HS, NQ], extra_cols [B, HS, NQ, MAXC], extra_counts
        [B, HS, NQ])`, int32, on the inputs' device, with MAXK = max(1, min(2*NS, NK)), MAXC = max(1, NV).
        Build a `Selection(kv_indices, kv_counts, bs, bs, q_len, k_len, H, HKV, "query_head",
        extra_cols=extra_cols, extra_counts=extra_counts)` from them.
    """
    if v_idx.dim() != 3 or s_idx.dim() != 3 or v_idx.shape[:2] != s_idx.shape[:2]:
        raise ValueError(f"v_idx {tuple(v_idx.shape)} and s_idx {tuple(s_idx.shape)} must be [B, HS, N] alike")
    if k_len < q_len or q_len < 1 or block_size < 1:
        raise ValueError(f"need k_len >= q_len >= 1 and block_size >= 1; got {q_len}, {k_len}, {block_size}")
    bs = block_size
    B, HS, NV = v_idx.shape
    NS = s_idx.shape[-1]
    dev = s_idx.device
    NQ, NK = -(-q_len // bs), -(-k_len // bs)
    A, c = divmod(k_len - q_len, bs)
    last_rows = q_len - (NQ - 1) * bs
    qb = torch.arange(NQ, device=dev)

    # ---- slashes -> block diagonals E (per head) -> per-row block lists
    o = s_idx.long()
    live_o = (o >= 0) & (o < k_len)
    maps = [_diagonal_map(o, live_o, c, bs, bs, NK)]
    if last_rows != bs:
        maps.append(_diagonal_map(o, live_o, c, last_rows, bs, NK))
    maxk = max(1, min(2 * NS, NK))
    ar = torch.arange(NK + 2, device=dev, dtype=torch.int32)  # int32 keeps the [B, HS, NQ, MAXK] temporaries small
    # sorted distinct e + 1 per head (dead slots sort last), and how many there are
    lists = [(torch.sort(torch.where(m, ar, NK + 2), dim=-1).values[..., :maxk], m.sum(-1)) for m in maps]
    e1 = lists[0][0][:, :, None, :].expand(B, HS, NQ, maxk)
    ne = lists[0][1][:, :, None].expand(B, HS, NQ)
    if len(lists) == 2:  # the ragged last query block takes its own set
        e1 = torch.cat([e1[:, :, :-1], lists[1][0][:, :, None, :]], dim=2)
        ne = torch.cat([ne[:, :, :-1], lists[1][1][:, :, None]], dim=2)
    kv = (qb + A + 1).to(torch.int32)[None, None, :, None] - e1  # = qb + A - e, descending along the list
    live = (torch.arange(maxk, device=dev) < ne[..., None]) & (kv >= 0)  # a prefix of each row
    kv_counts = live.sum(-1, dtype=torch.int32)
    kv_indices = torch.where(live, kv, 0)

    # ---- verticals -> extra columns where no listed block covers them
    maxc = max(1, NV)
    extra_cols = torch.zeros(B, HS, NQ, maxc, dtype=torch.int32, device=dev)
    extra_counts = torch.zeros(B, HS, NQ, dtype=torch.int32, device=dev)
    if NV == 0:
        return kv_indices, kv_counts, extra_cols, extra_counts
    v = torch.sort(v_idx.long(), dim=-1).values
    dup = torch.zeros_like(v, dtype=torch.bool)
    dup[..., 1:] = v[..., 1:] == v[..., :-1]
    live_v = (v >= 0) & (v < k_len) & ~dup
    kbv = _floor_div(v, bs)
    p_hi = torch.clamp((qb + 1) * bs, max=q_len) - 1 + (k_len - q_len)  # [NQ]
    emaps = [torch.nn.functional.pad(m, (0, 1)) for m in maps]  # slot NK + 2: never a diagonal
    rows_per_chunk = max(1, _MAX_ELEMS // max(1, NQ * NV))
    flat = [t.reshape(B * HS, *t.shape[2:]) for t in (v, live_v, kbv, *emaps)]
    out_c, out_n = extra_cols.view(B * HS, NQ, maxc), extra_counts.view(B * HS, NQ)
    for r0 in range(0, B * HS, rows_per_chunk):
        vc, lvc, kbc, *emc = (t[r0:r0 + rows_per_chunk] for t in flat)
        R = vc.shape[0]
        # block diagonal e = qb + A - kb(v); covered iff e is in the row's set (slot e + 1 in the map)
        slot = (qb + A + 1)[None, :, None] - kbc[:, None, :]  # [R, NQ, NV]
        slot = torch.where((slot < 0) | (slot > NK + 1), NK + 2, slot)
        covered = torch.gather(emc[0][:, None, :].expand(R, NQ, NK + 3), -1, slot)
        if len(emc) == 2:
            covered[:, -1] = torch.gather(emc[1], -1, slot[:, -1])
        keep = lvc[:, None, :] & (vc[:, None, :] <= p_hi[None, :, None]) & ~covered
        pos = torch.cumsum(keep, -1, dtype=torch.int32) - 1
        dest = torch.where(keep, pos.long(), maxc)
        buf = torch.zeros(R, NQ, maxc + 1, dtype=torch.int32, device=dev)
        buf.scatter_(-1, dest, vc[:, None, :].expand(R, NQ, NV).to(torch.int32))
        out_c[r0:r0 + R] = buf[..., :maxc]
        out_n[r0:r0 + R] = keep.sum(-1, dtype=torch.int32)
    return kv_indices, kv_counts, extra_cols, extra_counts


def vertical_slash_attn_naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, v_idx: torch.Tensor,
                              s_idx: torch.Tensor, block_size: int = 64, scale: float | None = None,
                              return_lse: bool = False):
    """Reference vertical-slash attention: `vertical_slash_to_blocks` then exact masked softmax (fp32).

    q `[B, H, T, D]`, k / v `[B, HKV, S, D]`; `v_idx` / `s_idx` with HS in {H, HKV, 1} list heads.
    """
    T, S = q.shape[2], k.shape[2]
    idx, cnt, cols, ccnt = vertical_slash_to_blocks(v_idx, s_idx, T, S, block_size)
    return block_sparse_attn_naive(q, k, v, idx, cnt, block_size, block_size, scale=scale, extra_cols=cols,
                                   extra_counts=ccnt, return_lse=return_lse)
