"""Fused Triton kernel for the vertical and slash scores of the last L queries: same output as
`naive.last_q_scores_naive` (which pins the semantics), without materialising their `[B, H, L, S]` softmax.

The grid is (key tile of `BLOCK_N` keys, query head); every program takes all L rows, `RC` at a time, and the head
dim in `BD`-wide slices (head dim 256 fits in shared memory). The logits are rounded as
`methods.minference._scaled_logits` rounds them (fp32 dot, scale in fp32, one rounding to the input dtype).

* pass 1 (`_lastq_stats`): per (row, key tile), the tile's max `m_t` and `sum exp(s - m_t)`, written to scratch;
  torch reduces them over the tiles to each row's final `(m, l)` (deterministic: no atomics).
* pass 2 (`_lastq_scores`): the logits again, `p = exp(s - m) / l`; the tile's column sums are the program's own
  slice of `vertical`; its diagonal sums (`tl.gather` skews each row chunk so that diagonals become columns) go to
  a scratch `[B*H, n_tiles, BT]` (BT >= BLOCK_N + L - 1), and torch adds the overlapping partials of neighbouring
  tiles into `slash` by shifted slice adds (deterministic).

K is read at its KV head (`h // G`), never repeated. Under `TRITON_INTERPRET=1` the loads are cast to fp32 before
`tl.dot` (the interpreter's low-precision dot is unreliable); the variable must be set before triton is first
imported.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .naive import _check

__all__ = ["last_q_scores_triton", "supports"]


def _tile_logits(q_base, k_base, rows, row_ok, keys, key_ok, sqt, sks, scale, S, L,
                 D: tl.constexpr, BD: tl.constexpr, RC: tl.constexpr, BLOCK_N: tl.constexpr,
                 INTERPRET: tl.constexpr, PREC: tl.constexpr):
    dd = tl.arange(0, BD)
    acc = tl.zeros([RC, BLOCK_N], dtype=tl.float32)
    q_ptr = q_base + rows.to(tl.int64)[:, None] * sqt
    k_ptr = k_base + keys.to(tl.int64)[:, None] * sks
    for d0 in tl.static_range(0, D, BD):
        qt = tl.load(q_ptr + (d0 + dd)[None, :], mask=row_ok[:, None], other=0.0)
        kt = tl.load(k_ptr + (d0 + dd)[None, :], mask=key_ok[:, None], other=0.0)
        if INTERPRET:
            qt = qt.to(tl.float32)
            kt = kt.to(tl.float32)
        acc = tl.dot(qt, tl.trans(kt), acc, input_precision=PREC)
    # `_scaled_logits`: scale in fp32, one rounding to the input dtype
    s = (acc * scale).to(q_base.dtype.element_ty).to(tl.float32)
    pos = S - L + rows
    keep = row_ok[:, None] & key_ok[None, :] & (keys[None, :] <= pos[:, None])
    return tl.where(keep, s, float("-inf"))


def _lastq_stats(Q, K, MT, LT, sqb, sqh, sqt, skb, skh, sks, smb, smt, S, L, H, G, scale,
                 D: tl.constexpr, BD: tl.constexpr, RC: tl.constexpr, NCH: tl.constexpr, BLOCK_N: tl.constexpr,
                 INTERPRET: tl.constexpr, PREC: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    q_base = Q + b * sqb + h * sqh
    k_base = K + b * skb + (h // G) * skh
    keys = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    key_ok = keys < S
    out = pid_bh.to(tl.int64) * smb + pid_n.to(tl.int64) * smt
    for c in tl.static_range(NCH):
        rows = c * RC + tl.arange(0, RC)
        row_ok = rows < L
        s = _tile_logits(q_base, k_base, rows, row_ok, keys, key_ok, sqt, sks, scale, S, L,
                         D, BD, RC, BLOCK_N, INTERPRET, PREC)
        m = tl.max(s, 1)
        m_safe = tl.where(m == float("-inf"), 0.0, m)  # a row that sees no key of this tile: l = 0
        l = tl.sum(tl.exp(s - m_safe[:, None]), 1)
        tl.store(MT + out + rows, m, mask=row_ok)
        tl.store(LT + out + rows, l, mask=row_ok)


def _lastq_scores(Q, K, M, LS, V, DG, sqb, sqh, sqt, skb, skh, sks, smb, svb, sdb, sdt, S, L, H, G, scale,
                  D: tl.constexpr, BD: tl.constexpr, RC: tl.constexpr, NCH: tl.constexpr, BLOCK_N: tl.constexpr,
                  BT: tl.constexpr, INTERPRET: tl.constexpr, PREC: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    q_base = Q + b * sqb + h * sqh
    k_base = K + b * skb + (h // G) * skh
    nn = tl.arange(0, BLOCK_N)
    keys = pid_n * BLOCK_N + nn
    key_ok = keys < S
    tt = tl.arange(0, BT)
    col = tl.zeros([BLOCK_N], dtype=tl.float32)
    diag = tl.zeros([BT], dtype=tl.float32)
    for c in tl.static_range(NCH):
        rl = tl.arange(0, RC)
        rows = c * RC + rl
        row_ok = rows < L
        s = _tile_logits(q_base, k_base, rows, row_ok, keys, key_ok, sqt, sks, scale, S, L,
                         D, BD, RC, BLOCK_N, INTERPRET, PREC)
        m = tl.load(M + pid_bh.to(tl.int64) * smb + rows, mask=row_ok, other=0.0)
        l = tl.load(LS + pid_bh.to(tl.int64) * smb + rows, mask=row_ok, other=1.0)
        p = tl.exp(s - m[:, None]) / l[:, None]  # masked logits (-inf) give exactly 0
        col += tl.sum(p, 0)
        # diagonal t = row - key_in_tile + BLOCK_N - 1: entry (r, t) of the skewed chunk is p[r, rows[r] + BN-1 - t]
        idx = rows[:, None] + (BLOCK_N - 1) - tt[None, :]
        inside = (idx >= 0) & (idx < BLOCK_N)
        g = tl.gather(p, tl.where(inside, idx, 0), 1)
        diag += tl.sum(tl.where(inside, g, 0.0), 0)
    tl.store(V + pid_bh.to(tl.int64) * svb + keys, col, mask=key_ok)
    tl.store(DG + pid_bh.to(tl.int64) * sdb + pid_n.to(tl.int64) * sdt + tt, diag)


_KERNELS: dict[bool, tuple] = {}


def _kernels(interpret: bool):
    # triton.jit decides between compiled and interpreted at decoration time, so decorate per mode on first use
    if interpret not in _KERNELS:
        tile = triton.jit(_tile_logits)
        g = dict(globals(), _tile_logits=tile)
        _KERNELS[interpret] = (triton.jit(_rebind(_lastq_stats, g)), triton.jit(_rebind(_lastq_scores, g)))
    return _KERNELS[interpret]


def _rebind(fn, g):
    """`fn` with globals `g`. The annotations travel too: triton reads `tl.constexpr` from them, and a function
    rebuilt from its code object alone has none (every constexpr would then be specialised as a runtime value)."""
    new = type(fn)(fn.__code__, g, fn.__name__, fn.__defaults__, fn.__closure__)
    new.__annotations__ = dict(fn.__annotations__)
    new.__kwdefaults__ = fn.__kwdefaults__
    return new


def _pow2ceil(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _head_slice(D: int) -> int:
    """Widest power-of-two slice of the head dim, at most 64, that divides it (tl.dot needs K >= 16)."""
    bd = 64
    while bd >= 16 and D % bd:
        bd //= 2
    return bd


def supports(head_dim: int, last_q: int) -> str | None:
    """None if the kernel takes this configuration, else the reason it does not."""
    if _head_slice(head_dim) < 16:
        return f"head dim {head_dim} is not a multiple of 16"
    if not 1 <= last_q <= 256:
        return f"last_q={last_q} must be in [1, 256]"
    return None


def _overlap_add(dg: torch.Tensor, S: int, L: int, block_n: int) -> torch.Tensor:
    """slash `[N, S]` from the per-tile diagonal partials `dg [N, n_tiles, BT]`: tile j's entry t is offset
    o = S - L - j*BN - BN + 1 + t. Tiles reversed, consecutive ones start BN apart: W shifted slice adds."""
    N, nt, BT = dg.shape
    W = -(-BT // block_n)
    if W * block_n != BT:
        dg = torch.nn.functional.pad(dg, (0, W * block_n - BT))
    d = dg.flip(1).view(N, nt, W, block_n)
    acc = torch.zeros(N, nt + W - 1, block_n, dtype=dg.dtype, device=dg.device)
    for w in range(W):
        acc[:, w:w + nt] += d[:, :, w]
    c0 = S - L - block_n + 1 - (nt - 1) * block_n  # offset of acc's first cell, <= 0
    return acc.view(N, -1)[:, -c0:-c0 + S]


def last_q_scores_triton(q_last: torch.Tensor, k: torch.Tensor, scale: float, block_n: int = 64,
                         num_warps: int = 4, num_stages: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """`(vertical [B, H, S], slash [B, H, S])` fp32 of `last_q_scores_naive` (arguments as there).

    Scratch: fp32 `[B*H, n_tiles, L]` twice (pass 1) and `[B*H, n_tiles, BT]` (diagonal partials), n_tiles =
    ceil(S / block_n), BT = next power of two >= block_n + L - 1.
    """
    B, H, L, D, HKV, S = _check(q_last, k)
    why = supports(D, L)
    if why:
        raise ValueError(f"last_q_scores_triton: {why}")
    if q_last.dtype not in (torch.float16, torch.bfloat16, torch.float32) or k.dtype != q_last.dtype:
        raise ValueError(f"q/k dtypes {q_last.dtype}/{k.dtype}: need one of fp16, bf16, fp32, the same for both")
    if block_n < 16 or block_n & (block_n - 1):
        raise ValueError(f"block_n={block_n} must be a power of two >= 16")
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    q = q_last if q_last.stride(-1) == 1 else q_last.contiguous()
    k = k if k.stride(-1) == 1 else k.contiguous()
    RC = 16 if L <= 16 else 32
    NCH = -(-L // RC)
    BT = _pow2ceil(block_n + NCH * RC - 1)
    nt = -(-S // block_n)
    dev = q.device
    mt = torch.empty(B * H, nt, L, dtype=torch.float32, device=dev)
    lt = torch.empty(B * H, nt, L, dtype=torch.float32, device=dev)
    stats, scores = _kernels(interpret)
    prec = "ieee" if interpret or q.dtype == torch.float32 else "tf32"
    common = {"D": D, "BD": _head_slice(D), "RC": RC, "NCH": NCH, "BLOCK_N": block_n, "INTERPRET": interpret,
              "PREC": prec, "num_warps": num_warps, "num_stages": num_stages}
    grid = (nt, B * H)
    stats[grid](q, k, mt, lt, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                mt.stride(0), mt.stride(1), S, L, H, H // HKV, float(scale), **common)
    # final (m, l) per row, reduced over the key tiles in a fixed order
    m = mt.amax(1)
    l = (lt * torch.exp(mt - m[:, None])).sum(1)
    del mt, lt
    vertical = torch.empty(B * H, S, dtype=torch.float32, device=dev)
    dg = torch.empty(B * H, nt, BT, dtype=torch.float32, device=dev)
    scores[grid](q, k, m, l, vertical, dg, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1),
                 k.stride(2), m.stride(0), vertical.stride(0), dg.stride(0), dg.stride(1), S, L, H, H // HKV,
                 float(scale), BT=BT, **common)
    slash = _overlap_add(dg, S, L, block_n)
    return vertical.view(B, H, S), slash.reshape(B, H, S)
