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
block, with fewer rows, gets its own set. The lists are one int32 subtraction clamped at 0, the counts a
`searchsorted`. A vertical column v is covered in row qb iff qb + A - kb(v) is in E: one gather from the set seen as
an [NQ, NK] Toeplitz view (strides (1, 1), no copy, no [rows, NQ, NV] index); the kept columns are compacted by one
scatter of a per-row permutation (kept ones first, ascending; the dropped ones fill the tail with zeros).
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
                             block_size: int = 64, extra: str = "torch", v_sorted: bool = False):
    """Block lists and extra columns for vertical columns `v_idx` and slash offsets `s_idx` (module docstring).

    Args:
        v_idx: `[B, HS, NV]` integer key positions (NV may be 0).
        s_idx: `[B, HS, NS]` integer diagonal offsets (NS may be 0).
        q_len, k_len: `T` and `S` (S >= T).
        block_size: query and key block size `bs`.
        extra: how the extra columns are compacted: `torch` (this module's vectorised gather/cumsum/scatter) or
            `triton` (one program per (head, query block) in `triton.py`; CUDA or `TRITON_INTERPRET=1`). Same
            output, bit for bit.
        v_sorted: the caller's promise that every row of `v_idx` is ascending, distinct and inside [0, k_len)
            (`kernels/top_set`'s output): the columns are then used as given, without the sort, the duplicate and
            range checks and, with `extra="triton"`, the per-column keys (the kernel derives them). The same output
            as without it for such input.

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
    if extra not in ("torch", "triton"):
        raise ValueError(f"extra={extra!r}: choose torch or triton")
    bs = block_size
    B, HS, NV = v_idx.shape
    NS = s_idx.shape[-1]
    dev = s_idx.device
    NQ, NK = -(-q_len // bs), -(-k_len // bs)
    A, c = divmod(k_len - q_len, bs)
    last_rows = q_len - (NQ - 1) * bs

    # ---- slashes -> block diagonals E (per head) -> per-row block lists
    maxk = max(1, min(2 * NS, NK))
    vs_triton = None
    if extra == "triton":
        from . import triton as vs_triton
    if vs_triton is not None and vs_triton._MAP_KERNEL and NS > 0:
        maps, e1s = vs_triton.diagonal_maps_triton(s_idx, c, bs, last_rows, NK, maxk, k_len)
    else:
        o = s_idx.long()
        live_o = (o >= 0) & (o < k_len)
        maps = [_diagonal_map(o, live_o, c, bs, bs, NK)]
        if last_rows != bs:
            maps.append(_diagonal_map(o, live_o, c, last_rows, bs, NK))
        ar = torch.arange(NK + 2, device=dev, dtype=torch.int32)
        # sorted distinct e + 1 per head, [B, HS, maxk] int32; dead slots hold NK + 2 and sort last
        e1s = [torch.sort(torch.where(m, ar, NK + 2), dim=-1).values[..., :maxk].contiguous() for m in maps]
    # row qb lists qb + A - e = base - (e + 1), descending along the list: live exactly while >= 0 (a dead slot gives
    # qb + A - NK - 1 < 0, since qb + A <= NK - 1), so the list is a prefix; past it the entries are 0
    if vs_triton is not None and vs_triton._LIST_KERNEL:
        kv_indices, kv_counts = vs_triton.block_lists_triton(e1s[0], e1s[1] if len(e1s) == 2 else None, A + 1, NQ)
        return _extra_columns(v_idx, kv_indices, kv_counts, maps, extra, q_len, k_len, bs, A, NQ, NK, v_sorted)
    base = (torch.arange(NQ, device=dev) + A + 1).to(torch.int32)  # [NQ]
    kv_indices = torch.empty(B, HS, NQ, maxk, dtype=torch.int32, device=dev)
    torch.sub(base[:, None], e1s[0][:, :, None, :], out=kv_indices)
    kv_counts = torch.searchsorted(e1s[0], base.expand(B, HS, NQ).contiguous(), right=True, out_int32=True)
    if len(e1s) == 2:  # the ragged last query block takes its own set
        torch.sub(base[-1], e1s[1], out=kv_indices[:, :, -1])
        kv_counts[:, :, -1:] = torch.searchsorted(e1s[1], base[-1:].expand(B, HS, 1).contiguous(), right=True,
                                                  out_int32=True)
    kv_indices.clamp_(min=0)
    return _extra_columns(v_idx, kv_indices, kv_counts, maps, extra, q_len, k_len, bs, A, NQ, NK, v_sorted)


def _extra_columns(v_idx, kv_indices, kv_counts, maps, extra, q_len, k_len, bs, A, NQ, NK, v_sorted=False):
    """`vertical_slash_to_blocks`' second half: the verticals as extra columns where no listed block covers them;
    returns its four outputs."""
    B, HS, NV = v_idx.shape
    dev = v_idx.device
    # ---- verticals -> extra columns where no listed block covers them
    maxc = max(1, NV)
    if NV == 0:
        zeros = torch.zeros(B, HS, NQ, dtype=torch.int32, device=dev)
        return kv_indices, kv_counts, zeros[..., None].clone(), zeros
    if v_sorted:
        # every column live: its causal key is itself and its key block a plain division (the Triton kernel derives
        # both from the column, given None)
        v = v_idx.to(torch.int32)
        v_cmp = kbv = None
        if extra != "triton":
            v_cmp, kbv = v, _floor_div(v, bs)
    else:
        v = torch.sort(v_idx.to(torch.int32), dim=-1).values
        dup = torch.zeros_like(v, dtype=torch.bool)
        dup[..., 1:] = v[..., 1:] == v[..., :-1]
        live_v = (v >= 0) & (v < k_len) & ~dup
        # a dead column is never causal: it compares as the largest int32
        v_cmp = torch.where(live_v, v, torch.iinfo(torch.int32).max)
        kbv = _floor_div(v.clamp(0, k_len - 1), bs)  # [B, HS, NV], in [0, NK - 1]
    # covered(qb, v) = emap[qb + A + 1 - kb(v)] = F[qb + y] with y = NK - 1 - kb(v) in [0, NK - 1] and
    # F[x] = emap[x + d], d = A + 2 - NK (False outside the map): F seen with strides (1, 1) is the [NQ, NK] table
    # the gather reads, so no [rows, NQ, NV] index is ever built
    nf, d = NQ + NK - 1, A + 2 - NK
    x_lo, x_hi = max(0, -d), min(nf, NK + 2 - d)
    if extra == "triton":
        from .triton import extra_columns_triton

        # the kernel reads F straight from the map (x + d for x in [x_lo, x_hi)): no zeroed copy
        out_c, out_n = extra_columns_triton(v, v_cmp, kbv, maps[0], d, x_lo, x_hi,
                                            maps[-1] if len(maps) == 2 else None, NQ + A, q_len, k_len, bs, NQ, NK)
        return kv_indices, kv_counts, out_c, out_n
    qb = torch.arange(NQ, device=dev)
    p_hi = (torch.clamp((qb + 1) * bs, max=q_len) - 1 + (k_len - q_len)).to(torch.int32)  # [NQ]
    fmap = torch.zeros(B, HS, nf, dtype=torch.bool, device=dev)
    if x_hi > x_lo:
        fmap[..., x_lo:x_hi] = maps[0][..., x_lo + d:x_hi + d]
    y = (NK - 1 - kbv).long()
    ragged = len(maps) == 2
    rows_per_chunk = max(1, _MAX_ELEMS // max(1, NQ * NV))
    flat = [t.reshape(B * HS, *t.shape[2:]) for t in (v, v_cmp, kbv, y, fmap, maps[-1])]
    out_c = torch.empty(B * HS, NQ, maxc, dtype=torch.int32, device=dev)
    out_n = torch.empty(B * HS, NQ, dtype=torch.int32, device=dev)
    tail = (NV - 1 - torch.arange(NV, device=dev, dtype=torch.int32)).view(1, 1, NV)  # a dropped column's slot
    for r0 in range(0, B * HS, rows_per_chunk):
        vc, vcmp, kbc, yc, fc, lastc = (t[r0:r0 + rows_per_chunk] for t in flat)
        R = vc.shape[0]
        table = fc.as_strided((R, NQ, NK), (fc.stride(0), 1, 1))  # table[qb, y] = F[qb + y]
        keep = torch.gather(table, -1, yc[:, None, :].expand(R, NQ, NV)).logical_not_()
        if ragged:  # the last query block's own diagonal set
            slot = (NQ + A - kbc).long()
            slot = torch.where((slot < 0) | (slot > NK + 1), NK + 2, slot)  # slot NK + 2: never a diagonal
            keep[:, -1] = ~torch.gather(torch.nn.functional.pad(lastc, (0, 1)), -1, slot)
        keep &= vcmp[:, None, :] <= p_hi[None, :, None]
        pos = torch.cumsum(keep, -1, dtype=torch.int32)  # kept columns up to and including this one
        out_n[r0:r0 + R] = pos[..., -1]
        # a permutation of the row: kept columns to pos - 1 (ascending), dropped ones fill the tail with zeros
        dest = torch.where(keep, -1, tail).add_(pos).long()  # int32 arithmetic, one widening for the scatter
        src = torch.where(keep, vc[:, None, :], 0)
        out_c[r0:r0 + R].scatter_(-1, dest, src)
    return kv_indices, kv_counts, out_c.view(B, HS, NQ, maxc), out_n.view(B, HS, NQ)


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
