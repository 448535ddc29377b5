"""Reference XAttention block scores (strided antidiagonal estimate) and the exact block attention mass it estimates.

Pure tensor code (no sparsebench import), fp32 throughout, chunked over query rows. Inputs:

    q [B, H, T, D], k [B, HKV, S, D], S >= T, H % HKV == 0; query row t sits at position t + S - T.
    Query head h reads KV head h // G (G = H / HKV); K is never repeated across a group.

**Antidiagonal scores** (`antidiag_block_scores_naive`), with stride `st` and block size `BS` (`BS % st == 0`,
`R = BS / st` strided units per block):

    strided row i  = query rows [i*st, i*st + st),  key tile j = keys [j*st, j*st + st)
                     (rows past T and keys past S are zeros: the official code's zero padding)
    logit[i, j]    = scale * sum_{u < st} q[i*st + st-1-u] . k[j*st + u]        the antidiagonal of the st x st tile
    allowed[i, j]  = j <= i + ceil((S - T) / st)  and  j < ceil(S / st)          tile-level causality on positions:
                     the tile holds a key at or before the row's last position
    P[i, :]        = softmax over the allowed j (fp32; every row allows j = 0)
    score[qb, kb]  = sum over the strided rows i of query block qb and the tiles j of key block kb of P[i, j]

so a query block's scores sum to its number of strided rows (R, fewer in a ragged last block). With `S == T` this is
the official estimator exactly; a partly padded row or tile is kept (its missing entries are zeros), a wholly
padded one does not exist.

**Exact block mass** (`exact_block_scores_naive`): the same block sums over the true token-level causal softmax
(`scale * q . k`), the ground truth XAttention's threshold profiling compares the estimate with.

Both return `[B, H, NQc, NK]` fp32 for the query blocks of rows `[row_start, row_end)`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _check(q: torch.Tensor, k: torch.Tensor, block_size: int, row_start: int, row_end: int | None):
    if q.dim() != 4 or k.dim() != 4 or q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must be [B, H, T, D] and [B, HKV, S, D]")
    B, H, T, D = q.shape
    HKV, S = k.shape[1], k.shape[2]
    if H % HKV or S < T:
        raise ValueError(f"need H % HKV == 0 and S >= T; got H={H}, HKV={HKV}, T={T}, S={S}")
    row_end = T if row_end is None else min(row_end, T)
    if row_start % block_size or not 0 <= row_start < row_end:
        raise ValueError(f"row range [{row_start}, {row_end}) must start on a multiple of block_size={block_size} "
                         f"inside [0, T={T})")
    if row_end != T and row_end % block_size:
        raise ValueError(f"row_end={row_end} must be T={T} or a multiple of block_size={block_size}")
    return B, H, T, D, HKV, S, row_end


def antidiag_block_scores_naive(q: torch.Tensor, k: torch.Tensor, stride: int, block_size: int, scale: float,
                                row_start: int = 0, row_end: int | None = None,
                                max_scores: int = 1 << 26) -> torch.Tensor:
    """XAttention's block scores for the query blocks of rows `[row_start, row_end)` (module docstring).

    Args:
        q, k: `[B, H, T, D]`, `[B, HKV, S, D]`.
        stride: strided unit `st` (a divisor of `block_size`).
        block_size: query and key block size `BS`.
        scale: factor on the raw antidiagonal dot product (XAttention: softmax scale / (stride * norm)).
        row_start, row_end: query rows; `row_start` a multiple of `block_size`, `row_end` one too or `T`.
        max_scores: logits held at once (sets the row chunk; at least one block of strided rows). The rows also
            go in about 8 chunks or more, each skipping the key tiles past its causal limit.

    Returns:
        `[B, H, NQc, NK]` fp32 block scores.
    """
    if stride < 1 or block_size % stride:
        raise ValueError(f"stride={stride} must be a positive divisor of block_size={block_size}")
    B, H, T, D, HKV, S, row_end = _check(q, k, block_size, row_start, row_end)
    G, R = H // HKV, block_size // stride
    SR, NK = -(-S // stride), -(-S // block_size)
    c = -(-(S - T) // stride)
    # key tile j laid end to end with its st keys in reverse order, so that row i's queries in their natural order
    # meet them on the tile's antidiagonal (q[i*st + u] . k[j*st + st-1-u]): Q is used in place, only K is copied
    # (once, with the official zero padding past S when S is not a multiple of st)
    kf = k.float()
    if SR * stride != S:
        kf = F.pad(kf, (0, 0, 0, SR * stride - S))
    kr = kf.reshape(B, HKV, SR, stride, D).flip(3).reshape(B, HKV, SR, stride * D)
    del kf
    i_lo, i_hi = row_start // stride, -(-row_end // stride)
    nq = -(-(row_end - row_start) // block_size)
    out = torch.zeros(B, H, nq, NK, dtype=torch.float32, device=q.device)
    rows_mem = max(R, max_scores // max(B * H * SR, 1) // R * R)
    # at least ~8 chunks, so that the key tiles past each chunk's causal limit stay out of the matmuls
    rows_per = min(rows_mem, max(R, -(-(i_hi - i_lo) // (8 * R)) * R))
    for i0 in range(i_lo, i_hi, rows_per):
        i1 = min(i0 + rows_per, i_hi)
        n = i1 - i0
        # keys past the chunk's last causal tile are never allowed: leave them out of the matmul
        cols = min(SR, i1 - 1 + c + 1)
        qc = q[:, :, i0 * stride: min(i1 * stride, T)].float()
        if qc.shape[2] != n * stride:  # the ragged last strided row: zero queries past T
            qc = F.pad(qc, (0, 0, 0, n * stride - qc.shape[2]))
        qr = qc.reshape(B, HKV, G * n, stride * D)
        logits = torch.matmul(qr, kr[:, :, :cols].transpose(-1, -2)).view(B, H, n, cols).mul_(scale)
        lim = torch.arange(i0, i1, device=q.device)[:, None] + c
        logits.masked_fill_(torch.arange(cols, device=q.device)[None, :] > lim, float("-inf"))
        p = torch.softmax(logits, dim=-1)
        del logits
        # block sums of whole R x R tiles, then the partial last row block / column block (missing rows and tiles
        # count as zero mass); no padded copy of p
        b0 = (i0 - i_lo) // R
        nbf, rr = divmod(n, R)
        nkf, rc = divmod(cols, R)
        if nbf and nkf:
            out[:, :, b0:b0 + nbf, :nkf] = p[:, :, :nbf * R, :nkf * R].reshape(B, H, nbf, R, nkf, R).sum(dim=(3, 5))
        if nbf and rc:
            out[:, :, b0:b0 + nbf, nkf] = p[:, :, :nbf * R, nkf * R:].reshape(B, H, nbf, R, rc).sum(dim=(3, 4))
        if rr and nkf:
            out[:, :, b0 + nbf, :nkf] = p[:, :, nbf * R:, :nkf * R].reshape(B, H, rr, nkf, R).sum(dim=(2, 4))
        if rr and rc:
            out[:, :, b0 + nbf, nkf] = p[:, :, nbf * R:, nkf * R:].sum(dim=(2, 3))
        del p
    return out


def exact_block_scores_naive(q: torch.Tensor, k: torch.Tensor, block_size: int, scale: float, row_start: int = 0,
                             row_end: int | None = None, max_scores: int = 1 << 26) -> torch.Tensor:
    """Block sums `[B, H, NQc, NK]` of the exact causal softmax `softmax(scale * q k^T)` (fp32) for rows
    `[row_start, row_end)`; each real query row contributes mass 1."""
    B, H, T, D, HKV, S, row_end = _check(q, k, block_size, row_start, row_end)
    G = H // HKV
    NK = -(-S // block_size)
    nq = -(-(row_end - row_start) // block_size)
    out = torch.empty(B, H, nq, NK, dtype=torch.float32, device=q.device)
    kf = k.float()
    cols = torch.arange(S, device=q.device)
    rows_per = max(block_size, max_scores // max(B * H * S, 1) // block_size * block_size)
    for r0 in range(row_start, row_end, rows_per):
        r1 = min(r0 + rows_per, row_end)
        n = r1 - r0
        qg = q[:, :, r0:r1].float().reshape(B, HKV, G * n, D)
        s = torch.matmul(qg, kf.transpose(-1, -2)).view(B, H, n, S) * scale
        pos = torch.arange(r0, r1, device=q.device)[:, None] + (S - T)
        p = torch.softmax(s.masked_fill(cols[None, :] > pos, float("-inf")), dim=-1)
        nb = -(-n // block_size)
        p = F.pad(p, (0, NK * block_size - S, 0, nb * block_size - n))
        b0 = (r0 - row_start) // block_size
        out[:, :, b0:b0 + nb] = p.view(B, H, nb, block_size, NK, block_size).sum(dim=(3, 5))
    return out
