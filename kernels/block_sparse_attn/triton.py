"""Triton forward kernel for block-sparse prefill attention over per-row key-block lists.

Same semantics as `naive.py` (which pins them): query row `t` sits at position `t + S - T`; pair `(t, s)` is computed
iff `s` lies in a key block listed for `t`'s query block (or among its extra key columns), `s <= pos(t)`, and, with a
window, `pos(t) - s < window` or `s < sink`. Rows with no key give output 0 and log-sum-exp -inf.

The kernel is FlashAttention-2's forward pass (online softmax over key tiles with fp32 running max / sum, one
normalisation at the end; Dao, arXiv:2307.08691), walking a padded per-row list of key blocks instead of the dense
causal range, the block-list layout FlexAttention uses (`kv_indices` / `kv_counts`). Design points:

* One program owns one query tile of one list. When several query heads share a list and a KV head ("kv_head" or
  "shared" granularity), the program stacks those heads' query rows into the tile, so each K/V tile is loaded once
  for the whole group and fed to one wider matmul. K/V are never repeated for GQA.
* Tiles may be smaller than the selection's blocks: a query block is split into row sub-tiles and a key block into
  `BLOCK_N`-wide sub-tiles, so 128-blocks can run with 64-wide key tiles (needed at head dim 256 for shared memory).
* The token rule (causality, window, ragged last block) is applied only to key tiles that cross it for some row of
  the tile; interior tiles take the unmasked path.
* On Hopper and later, K/V tiles arrive by TMA (host-side descriptors over K/V viewed as `[B*HKV*S, D]`); with
  pointer loads the same kernel ran ~10% slower on an H200. Non-flattenable K/V fall back to pointer loads.
* Under `TRITON_INTERPRET=1` tiles are cast to fp32 before `tl.dot`, since the interpreter's bf16 dot is unreliable.
  The variable must be set before triton is first imported (triton.language jits its own helpers at import); this
  module itself reads it at call time and decorates the kernel for the mode in use.
"""
from __future__ import annotations

import inspect
import math
import os

import torch
import triton
import triton.language as tl

from .._jit import per_mode

__all__ = ["block_sparse_attn_triton"]

_LOG2E = 1.4426950408889634
# Query heads stacked into one tile at most; beyond this the rows per head get too few for the matmul to pay off.
_MAX_PACK = 16


def _softmax_step(qk, v, m_i, l_i, acc, qk_scale, INTERPRET: tl.constexpr, PREC: tl.constexpr):
    """One online-softmax step (FlashAttention-2) over a tile of masked logits `qk` and its values `v`: the new row
    max, running sum and accumulator, base 2 (scores are pre-multiplied by log2(e) through `qk_scale`)."""
    m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    # A row with no key yet has m = -inf; shifting by 0 instead keeps exp2 away from (-inf) - (-inf).
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(qk * qk_scale - m_use[:, None])
    alpha = tl.math.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, 1)
    if INTERPRET:
        pv = tl.dot(p, v, input_precision=PREC)
    else:
        pv = tl.dot(p.to(v.dtype), v, input_precision=PREC)
    return m_new, l_i, acc * alpha[:, None] + pv


def _bsa_fwd(Q, K, V, KD, VD, O, LSE, IDX, CNT, XCOL, XCNT,
             sqb, sqh, sqt, skb, skh, sks, svb, svh, svs, sob, soh, sot, slb, slh,
             sib, sih, siq, scb, sch, sxb, sxh, sxq, sxcb, sxch,
             T, S, H, HKV, G, HPL, MAXK, qk_scale, sink, window,
             D: tl.constexpr, BQ: tl.constexpr, BK: tl.constexpr, PACK: tl.constexpr,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, M_H: tl.constexpr, SUBQ: tl.constexpr,
             SUBK: tl.constexpr, EVEN_BK: tl.constexpr, USE_TMA: tl.constexpr, HAS_WINDOW: tl.constexpr,
             HAS_EXTRA: tl.constexpr, INTERPRET: tl.constexpr, PREC: tl.constexpr, I_MAXK: tl.constexpr,
             I_MAXC: tl.constexpr, STORE_LSE: tl.constexpr, TRIM_LAST: tl.constexpr):
    # Latest query tiles have the longest causal lists: launching them first shortens the tail of the grid.
    pid_t = tl.num_programs(0) - 1 - tl.program_id(0)
    pid_h = tl.program_id(1)
    n_hchunks = H // PACK
    b = (pid_h // n_hchunks).to(tl.int64)
    h0 = (pid_h % n_hchunks) * PACK
    kvh = (h0 // G).to(tl.int64)
    lh = (h0 // HPL).to(tl.int64)
    qb = pid_t // SUBQ
    t0 = qb * BQ + (pid_t % SUBQ) * M_H
    t1 = tl.minimum(tl.minimum(qb * BQ + BQ, t0 + M_H), T)
    off = S - T
    p_lo = t0 + off
    p_hi = t1 - 1 + off

    # Tile row r is head h0 + r // M_H, query t0 + r % M_H; padding rows are computed but never stored.
    r = tl.arange(0, BLOCK_M)
    g = r // M_H
    t = t0 + r % M_H
    row_ok = (g < PACK) & (t < t1)
    pos = t + off
    h = (h0 + tl.where(g < PACK, g, 0)).to(tl.int64)
    t64 = tl.where(row_ok, t, 0).to(tl.int64)
    d = tl.arange(0, D)
    q = tl.load(Q + (b * sqb + h * sqh + t64 * sqt)[:, None] + d[None, :], mask=row_ok[:, None], other=0.0)
    if INTERPRET:
        q = q.to(tl.float32)

    k_base = K + b * skb + kvh * skh
    kv_row0 = ((b * HKV + kvh) * S).to(tl.int32)
    v_base = V + b * svb + kvh * svh
    cnt = tl.minimum(tl.load(CNT + b * scb + lh * sch + qb), MAXK)
    idx_base = IDX + b * sib + lh * sih + qb * siq

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    nn = tl.arange(0, BLOCK_N)

    n_live = cnt * SUBK
    NK = (S + BK - 1) // BK
    if TRIM_LAST:
        # The list's last block (the diagonal one in a sorted list) may end in key sub-tiles wholly after this
        # tile's last query, e.g. the upper half of a diagonal block split into row sub-tiles: they contribute
        # nothing, so the trip count drops them (a branch inside the loop would cost the loads their pipelining).
        kb_last = tl.minimum(tl.maximum(tl.load(idx_base + tl.maximum(cnt - 1, 0)), 0), NK - 1)
        rel = p_hi - kb_last * BK
        keep_subs = tl.where(rel < 0, 0, tl.minimum(rel // BLOCK_N + 1, SUBK))
        n_live = tl.where(cnt > 0, n_live - (SUBK - keep_subs), 0)
    # The interpreter turns every assigned int into a 1-element array, which numpy 2 will not take as a range
    # bound; so there the loop walks the whole padded row (a constexpr, used inline) and masks the dead tail.
    for j in range(I_MAXK * SUBK if INTERPRET else n_live):
        live_j = j < n_live
        # Clamped so a dead or corrupt entry can never address memory outside K/V.
        kb = tl.minimum(tl.maximum(tl.load(idx_base + j // SUBK), 0), NK - 1)
        sub = j % SUBK
        n0 = kb * BK + sub * BLOCK_N
        cols = n0 + nn
        if USE_TMA:
            # K/V seen as [B*HKV*S, D]: a tile running past S reads the next head's rows (or TMA's zero fill),
            # all of which the causal rule removes.
            k = KD.load([kv_row0 + n0, 0])
            v = VD.load([kv_row0 + n0, 0])
        else:
            # Clamping instead of masking keeps the loads unpredicated; rows past S are removed by the causal rule.
            cols_ld = tl.minimum(cols, S - 1).to(tl.int64)
            k = tl.load(k_base + cols_ld[:, None] * sks + d[None, :])
            v = tl.load(v_base + cols_ld[:, None] * svs + d[None, :])
        if INTERPRET:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        qk = tl.dot(q, tl.trans(k), input_precision=PREC)

        if EVEN_BK:
            n_hi = n0 + BLOCK_N - 1
            need = n_hi > p_lo
        else:
            n_hi = tl.minimum(n0 + BLOCK_N, kb * BK + BK) - 1
            need = (n_hi > p_lo) | (sub == SUBK - 1)
        if HAS_WINDOW:
            need = need | ((p_hi - n0 >= window) & (n_hi >= sink))
        if INTERPRET:
            need = need | (not live_j)
        if need:
            keep = cols[None, :] <= pos[:, None]
            if INTERPRET:
                keep = keep & live_j
            if HAS_WINDOW:
                keep = keep & (((pos[:, None] - cols[None, :]) < window) | (cols[None, :] < sink))
            if not EVEN_BK:
                keep = keep & ((sub * BLOCK_N + nn) < BK)[None, :]
            qk = tl.where(keep, qk, float("-inf"))

        m_i, l_i, acc = _softmax_step(qk, v, m_i, l_i, acc, qk_scale, INTERPRET, PREC)

    if HAS_EXTRA:
        # Single key tokens gathered BLOCK_N at a time; always masked (liveness, causality, window).
        xcnt = tl.load(XCNT + b * sxcb + lh * sxch + qb)
        x_base = XCOL + b * sxb + lh * sxh + qb * sxq
        for c0 in range(0, I_MAXC if INTERPRET else xcnt, BLOCK_N):
            live = (c0 + nn) < xcnt
            cols = tl.load(x_base + c0 + nn, mask=live, other=0)
            cols_ld = tl.minimum(tl.maximum(cols, 0), S - 1).to(tl.int64)
            k = tl.load(k_base + cols_ld[:, None] * sks + d[None, :])
            v = tl.load(v_base + cols_ld[:, None] * svs + d[None, :])
            if INTERPRET:
                k = k.to(tl.float32)
                v = v.to(tl.float32)
            qk = tl.dot(q, tl.trans(k), input_precision=PREC)
            keep = live[None, :] & (cols[None, :] <= pos[:, None])
            if HAS_WINDOW:
                keep = keep & (((pos[:, None] - cols[None, :]) < window) | (cols[None, :] < sink))
            qk = tl.where(keep, qk, float("-inf"))
            m_i, l_i, acc = _softmax_step(qk, v, m_i, l_i, acc, qk_scale, INTERPRET, PREC)

    has = l_i > 0.0
    l_safe = tl.where(has, l_i, 1.0)
    out = acc / l_safe[:, None]
    # m_i and log2(l) are in base 2 (scores were pre-multiplied by log2(e)); times ln(2) gives the natural-log lse
    lse = tl.where(has, (m_i + tl.math.log2(l_safe)) * 0.6931471805599453, float("-inf"))
    tl.store(O + (b * sob + h * soh + t64 * sot)[:, None] + d[None, :], out.to(O.dtype.element_ty),
             mask=row_ok[:, None])
    if STORE_LSE:
        tl.store(LSE + b * slb + h * slh + t64, lse, mask=row_ok)


_kernel = per_mode((_bsa_fwd,), (_softmax_step,), one=True)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


# (BLOCK_M, BLOCK_N, num_warps, num_stages) candidates by head dim (<= 64, 128, 256); the first is the default
# without tuning, the fastest measured on an H200 (bf16, dense causal, 16K-64K tokens, 128-blocks).
# Head dim 256 keeps BLOCK_N <= 64 and 2 stages so Q + 2 x (K, V) tiles fit in H100/H200 shared memory; at 128,
# 4 warps on a 128-row tile spill registers, hence 8. Without tuning, the first candidate that compiles within the
# GPU's shared memory runs (fp32 tiles take twice the bytes: the default at head dim 256 asked 320 KB of the
# H200's 227 KB; the one-stage 32x32 candidate is there as a last resort).
_CANDIDATES = {
    64: [(128, 128, 4, 3), (128, 64, 4, 3), (128, 64, 8, 3), (64, 64, 4, 3), (128, 128, 8, 3)],
    128: [(128, 128, 8, 3), (128, 64, 8, 3), (128, 128, 8, 2), (128, 64, 4, 3), (64, 64, 4, 3)],
    256: [(128, 64, 8, 2), (64, 64, 4, 2), (64, 32, 4, 2), (128, 32, 8, 2), (32, 32, 4, 1)],
}
_INTERPRET_CONFIG = (64, 32, 4, 1)
# K/V by TMA where possible; False forces pointer loads (scripts/profile_kernels.py compares the launch cost: host-side
# descriptors are encoded at every launch).
_TMA = True
# Drop the trailing key sub-tiles of a list's last block that lie wholly after the tile's last query (see the
# kernel). On: on an H200 it took the D=256 16K density-0.02 kernel from 60.3 to 56.5 us and was within noise at 32K
# D=128 (results/tables/profile_kernels.csv, `triton_trim` rows). False keeps the full trip count (the interpreter
# tests cover both). Skipping those sub-tiles with a branch inside the loop instead cost every case 10-30%: the K/V
# loads lost their pipelining.
_TRIM_LAST = True
_TUNED: dict[tuple, tuple] = {}
# Warps for a row tile fitted down to 64 rows or fewer (one query head's 64-row block: every `query_head` selection
# at block 64, e.g. MInference's), in place of the candidate's 8. On an H200 (session 6, profile_kernels --vs-exec,
# bf16, the causal lists given per query head) the 8-warp default took 9.45 ms at 32K for H=4, HKV=1, D=256 and
# 41.1 ms for H=32, HKV=8, D=128, the tuner's 4-warp picks 5.38 and 17.6 ms (the same lists shared by a KV group's
# heads: 4.10 and 17.3 ms). 0 keeps the candidates' warps.
_SMALL_TILE_WARPS = 4


def _fit(cfg, D, BQ, BK, pack):
    """Shrink a candidate to the selection: key tiles no wider than a key block, rows no more than a group's block."""
    bm, bn, warps, stages = cfg
    bn = min(bn, max(16, triton.next_power_of_2(BK)))
    bm = min(bm, max(16, triton.next_power_of_2(pack * BQ)))
    if bm <= 64 and _SMALL_TILE_WARPS:
        warps = min(warps, _SMALL_TILE_WARPS)
    return bm, bn, warps, stages


def _meta(cfg, BQ, BK, pack):
    bm, bn, warps, stages = cfg
    per = max(1, bm // pack)
    subq = -(-BQ // per)
    m_h = -(-BQ // subq)  # balance the row sub-tiles of a block instead of leaving a thin last one
    return {"BLOCK_M": bm, "BLOCK_N": bn, "M_H": m_h, "SUBQ": subq, "SUBK": -(-BK // bn), "EVEN_BK": BK % bn == 0,
            "num_warps": warps, "num_stages": stages}


def _pack(H, HKV, HS):
    if HS == H:
        return 1
    G = H // HKV
    return max(p for p in range(1, min(G, _MAX_PACK) + 1) if G % p == 0)


def _launch_args(q, k, v, out, lse, kv_indices, kv_counts, extra_cols, extra_counts, BQ, BK, scale, sink, window,
                 cfg, interpret):
    """The launch of one call: grid, positional arguments, constexprs and compile options."""
    B, H, T, D = q.shape
    HKV, S = k.shape[1], k.shape[2]
    HS, NQ, MAXK = kv_indices.shape[1:]
    pack = _pack(H, HKV, HS)
    meta = _meta(cfg, BQ, BK, pack)
    options = {"num_warps": meta.pop("num_warps"), "num_stages": meta.pop("num_stages")}
    has_extra = extra_cols is not None
    xc, xn = (extra_cols, extra_counts) if has_extra else (kv_indices, kv_counts)
    store_lse = lse is not None
    lse_ = lse if store_lse else out  # never written: STORE_LSE=False
    lse_strides = lse.stride()[:2] if store_lse else (0, 0)
    grid = (NQ * meta["SUBQ"], B * (H // pack))
    f32 = interpret or q.dtype == torch.float32
    # TMA tiles need K/V flattenable to [B*HKV*S, D] (and no interpreter); otherwise pointer loads.
    use_tma = (_TMA and not interpret and q.is_cuda and torch.cuda.get_device_capability(q.device)[0] >= 9
               and all(t.stride() == (HKV * S * D, S * D, D, 1) and t.data_ptr() % 16 == 0 for t in (k, v)))
    if use_tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        kd = TensorDescriptor.from_tensor(k.view(B * HKV * S, D), [meta["BLOCK_N"], D])
        vd = TensorDescriptor.from_tensor(v.view(B * HKV * S, D), [meta["BLOCK_N"], D])
    else:
        kd, vd = k, v
    pos = (q, k, v, kd, vd, out, lse_, kv_indices, kv_counts, xc, xn,
           *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3], *lse_strides,
           *kv_indices.stride()[:3], *kv_counts.stride()[:2], *xc.stride()[:3], *xn.stride()[:2],
           T, S, H, HKV, H // HKV, H // HS, MAXK, scale * _LOG2E, int(sink), int(window) if window is not None else 0)
    const = dict(D=D, BQ=BQ, BK=BK, PACK=pack, USE_TMA=use_tma, HAS_WINDOW=window is not None, HAS_EXTRA=has_extra,
                 INTERPRET=interpret, PREC="ieee" if f32 else "tf32", I_MAXK=MAXK if interpret else 0,
                 I_MAXC=xc.shape[-1] if interpret else 0, STORE_LSE=store_lse, TRIM_LAST=_TRIM_LAST, **meta)
    return grid, pos, const, options


def _launch(*args, cfg, interpret):
    """Launch through triton's JIT (binding, specialisation, compile cache); returns `(compiled kernel, grid,
    positional arguments, constexprs)`, what a launch plan is made of."""
    grid, pos, const, options = _launch_args(*args, cfg=cfg, interpret=interpret)
    kernel = _kernel(interpret)[grid](*pos, **const, **options)
    return (kernel.result() if hasattr(kernel, "result") else kernel), grid, pos, const


def _autotune(key, args, D, BQ, BK, pack):
    from .._tune import fastest

    cands = dict.fromkeys(_fit(c, D, BQ, BK, pack) for c in _CANDIDATES[max(D, 64)])
    _TUNED[key] = fastest(cands, lambda cand: _launch(*args, cfg=cand, interpret=False))
    return _TUNED[key]


def block_sparse_attn_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_indices: torch.Tensor,
                             kv_counts: torch.Tensor, block_q: int, block_k: int, scale: float | None = None,
                             sink: int = 0, window: int | None = None, extra_cols: torch.Tensor | None = None,
                             extra_counts: torch.Tensor | None = None, return_lse: bool = False):
    """Block-sparse attention with the semantics of `block_sparse_attn_naive` (see the module docstring).

    Args:
        q, k, v: `[B, H, T, D]`, `[B, HKV, S, D]`, `[B, HKV, S, D]`; fp16, bf16 or fp32 (fp32 accumulation);
            D a power of two in [16, 256]; S >= T.
        kv_indices, kv_counts: key-block lists `[B, HS, NQ, MAXK]` and counts `[B, HS, NQ]`, HS in {H, HKV, 1}.
        block_q, block_k: selection block sizes (any positive ints; powers of two >= 16 avoid wasted lanes).
        scale: softmax scale. Default: `1/sqrt(D)`.
        sink, window: token-level sink / sliding-window rule; `window=None` means none.
        extra_cols, extra_counts: optional extra key tokens `[B, HS, NQ, MAXC]` with counts `[B, HS, NQ]`.
        return_lse: also return the natural-log log-sum-exp `[B, H, T]` (fp32).

    Setting `SPARSEBENCH_BSA_AUTOTUNE=1` times the tile candidates on the first call of each
    (head dim, block sizes, packing, window/extra flags, dtype, key-length octave) and keeps the fastest.

    A repeat call (same shapes, strides, dtype, block sizes and scalars; 16-byte aligned tensors) reuses the first
    call's launch plan and goes straight to the compiled kernel's launcher (see `_fast_call`).

    Returns:
        `out [B, H, T, D]` in q's dtype, and `lse` when asked.
    """
    key = None
    if q.is_cuda and not _interpreting() and q.stride(-1) == k.stride(-1) == v.stride(-1) == 1:
        key = (q.shape, q.stride(), k.shape, k.stride(), v.shape, v.stride(), q.dtype, k.dtype, v.dtype, q.device,
               kv_indices.shape, kv_counts.shape, None if extra_cols is None else (extra_cols.shape, getattr(extra_counts, "shape", None)),
               block_q, block_k, scale, sink, window, return_lse, _TRIM_LAST, _TMA)
        plan = _PLANS.get(key)
        if plan is not None:
            res = _fast_call(plan, q, k, v, kv_indices, kv_counts, extra_cols, extra_counts)
            if res is not None:
                return res if return_lse else res[0]
    B, H, T, D = q.shape
    if k.dim() != 4 or k.shape != v.shape or k.shape[0] != B or k.shape[3] != D:
        raise ValueError(f"k {tuple(k.shape)} / v {tuple(v.shape)} do not match q {tuple(q.shape)}")
    HKV, S = k.shape[1], k.shape[2]
    if H % HKV or S < T:
        raise ValueError(f"need H % HKV == 0 and S >= T; got H={H}, HKV={HKV}, T={T}, S={S}")
    if D not in (16, 32, 64, 128, 256):
        raise ValueError(f"head dim {D} not supported (powers of two 16..256)")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"q/k/v dtypes {q.dtype}/{k.dtype}/{v.dtype}: need one of fp16, bf16, fp32")
    HS, NQ = kv_indices.shape[1], kv_indices.shape[2]
    if HS not in (H, HKV, 1):
        raise ValueError(f"kv_indices has {HS} head lists; expected H={H}, HKV={HKV} or 1")
    if NQ != -(-T // block_q) or kv_counts.shape != kv_indices.shape[:3]:
        raise ValueError(f"kv_indices {tuple(kv_indices.shape)} / kv_counts {tuple(kv_counts.shape)} do not fit "
                         f"T={T}, block_q={block_q}")
    if (extra_cols is None) != (extra_counts is None):
        raise ValueError("extra_cols and extra_counts come together")
    scale_ = 1.0 / math.sqrt(D) if scale is None else float(scale)

    def prep(x):
        return x if x.stride(-1) == 1 else x.contiguous()

    q, k, v = prep(q), prep(k), prep(v)
    kv_indices = kv_indices.to(torch.int32).contiguous()
    kv_counts = kv_counts.to(torch.int32).contiguous()
    if extra_cols is not None:
        extra_cols = extra_cols.to(torch.int32).contiguous()
        extra_counts = extra_counts.to(torch.int32).contiguous()
    out = torch.empty(B, H, T, D, dtype=q.dtype, device=q.device)
    # Without return_lse nothing is stored (STORE_LSE=False), so no buffer is allocated.
    lse = torch.empty(B, H, T, dtype=torch.float32, device=q.device) if return_lse else None
    if out.numel() == 0:
        return (out, torch.empty(B, H, T, dtype=torch.float32, device=q.device)) if return_lse else out

    interpret = _interpreting()
    pack = _pack(H, HKV, HS)
    args = (q, k, v, out, lse, kv_indices, kv_counts, extra_cols, extra_counts, block_q, block_k, scale_, sink, window)
    if interpret:
        cfg = _fit(_INTERPRET_CONFIG, D, block_q, block_k, pack)
        _launch(*args, cfg=cfg, interpret=True)
        return (out, lse) if return_lse else out
    tkey = (D, block_q, block_k, pack, window is not None, extra_cols is not None, q.dtype, S.bit_length())
    cfg = _TUNED.get(tkey)
    if cfg is None and os.environ.get("SPARSEBENCH_BSA_AUTOTUNE") == "1":
        cfg = _autotune(tkey, args, D, block_q, block_k, pack)
    if cfg is None:
        launched = _first_fitting(tkey, args, D, block_q, block_k, pack)
    else:
        launched = _launch(*args, cfg=cfg, interpret=False)
    if key is not None:
        _remember_plan(key, launched, args)
    return (out, lse) if return_lse else out


# Launch plans by call key (shapes, strides, dtypes, device, block sizes, scalars, flags): the compiled kernel, its
# grid, its full argument list in signature order with the tensors left to fill, and how to rebuild the TMA
# descriptors. Triton's own launch path re-binds and re-specialises ~50 arguments on every call, which at small
# sizes cost more host time than the kernel takes on the GPU (scripts/profile_kernels.py).
_PLANS: dict[tuple, tuple] = {}
_N_TENSOR_ARGS = 11  # Q, K, V, KD, VD, O, LSE, IDX, CNT, XCOL, XCNT lead the signature


def _aligned(*ts) -> bool:
    return all(t.data_ptr() % 16 == 0 for t in ts)


def _remember_plan(key, launched, args):
    """Store the launch of a call that went through triton's JIT, for `_fast_call` to repeat. Only calls whose
    tensors are all 16-byte aligned make a plan (triton specialised the kernel on that alignment), and only those
    reuse one."""
    q, k, v, out, lse, idx, cnt, xc, xn = args[:9]
    if not _aligned(*(t for t in (q, k, v, out, idx, cnt, xc, xn) if t is not None)):
        return
    kernel, grid, pos, const = launched
    names = list(inspect.signature(_bsa_fwd).parameters)[len(pos):]
    template = list(pos) + [const[n] for n in names]
    template[:_N_TENSOR_ARGS] = [None] * _N_TENSOR_ARGS  # filled per call; holding these would keep them alive
    tma = None
    if const["USE_TMA"]:
        B, HKV, S, D = k.shape
        tma = ((B * HKV * S, D), (D, 1), [const["BLOCK_N"], D])
    _PLANS[key] = (kernel[(*grid, 1)], template, tma, q.shape, q.dtype, lse is not None, kernel)


def _fast_call(plan, q, k, v, idx, cnt, xc, xn):
    """Repeat a planned launch on new tensors: (out, lse or None), or None when the tensors do not fit the plan's
    specialisation (misaligned or non-contiguous lists), which sends the call down the checked path."""
    runner, template, tma, shape, dtype, with_lse, _ = plan
    if idx.dtype != torch.int32 or not idx.is_contiguous() or cnt.dtype != torch.int32 or not cnt.is_contiguous():
        return None
    if xc is not None and (xc.dtype != torch.int32 or not xc.is_contiguous() or xn.dtype != torch.int32
                           or not xn.is_contiguous()):
        return None
    if not _aligned(q, k, v, idx, cnt, *((xc, xn) if xc is not None else ())):
        return None
    out = torch.empty(shape, dtype=dtype, device=q.device)
    lse = torch.empty(shape[:3], dtype=torch.float32, device=q.device) if with_lse else None
    if tma is not None:
        from triton.tools.tensor_descriptor import TensorDescriptor

        flat, strides, block = tma
        kd = TensorDescriptor(k.view(flat), flat, strides, block)
        vd = TensorDescriptor(v.view(flat), flat, strides, block)
    else:
        kd, vd = k, v
    a = list(template)
    a[:_N_TENSOR_ARGS] = (q, k, v, kd, vd, out, out if lse is None else lse, idx, cnt,
                          idx if xc is None else xc, cnt if xn is None else xn)
    runner(*a)
    return out, lse


def _first_fitting(key, args, D, BQ, BK, pack):
    """Launch the first candidate whose tiles fit this GPU's shared memory (fp32 at head dim 256 needs the smaller
    ones: 4-byte tiles), remember it for the key, and return what `_launch` returned. Only a compile-time resource
    error moves on."""
    from triton.runtime.errors import OutOfResources

    last = None
    for cand in dict.fromkeys(_fit(c, D, BQ, BK, pack) for c in _CANDIDATES[max(D, 64)]):
        try:
            launched = _launch(*args, cfg=cand, interpret=False)
        except OutOfResources as e:
            last = e
            continue
        _TUNED[key] = cand
        return launched
    raise last
