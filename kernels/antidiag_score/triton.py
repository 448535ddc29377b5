"""Fused Triton kernel for XAttention's block scores: same output as `naive.antidiag_block_scores_naive` (which pins
the semantics), without materialising the strided logits.

One program owns `BLOCK_M` strided query rows (whole query blocks) of one query head and walks the key tiles up to
the tile-level causal limit of its last row, `BLOCK_N` tiles at a time:

* pass 1, per key chunk: the antidiagonal logits are a sum of `st` ordinary dot products, row i's query
  `st-1-u` against tile j's key `u` (Triton port of the strided GEMM idea in XAttention's
  `flat_group_gemm_fuse_reshape`), each split over the head dimension in `BD`-wide slices so that head dim 256
  fits in shared memory. The online softmax updates the row max `m` and sum `l` (base 2), and the chunk's
  unnormalised mass per (row, key block), `sum_j exp2(s - m_now)`, is written to a scratch buffer together with
  the `m_now` it is relative to.
* pass 2, over the same chunks: each stored partial is rescaled to the final max, `* exp2(m_now - m) / l`, and the
  rows of each query block are summed into the `[NQc, NK]` output.

So the matmul is done once (as in the official two-kernel version, which stores the whole logit slice instead) and
the scratch holds one value per (row, key block), `BS / st` times fewer than the logits. Blocks past the causal
limit stay 0. Rows past T and keys past S are zero vectors (masked loads), as in the reference.

K is read at its KV head (`h // G`), never repeated. Under `TRITON_INTERPRET=1` the loads are cast to fp32 before
`tl.dot` (the interpreter's bf16 dot is unreliable) and loops run to a constexpr bound with a guard (the
interpreter cannot take a computed loop bound); the variable must be set before triton is first imported.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .._jit import per_mode

__all__ = ["antidiag_block_scores_triton", "supports"]

_LOG2E = 1.4426950408889634


def _antidiag_tile(QD, KD, q_base, k_base, i, row_ok, j, sqt, sks, q_row0, k_row0, n, T, S,
                   STRIDE: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, INTERPRET: tl.constexpr, PREC: tl.constexpr, USE_TMA: tl.constexpr):
    """fp32 `[BLOCK_M, BLOCK_N]` antidiagonal dot products of the program's strided rows `i` with key tile `n`
    (strided keys `j`), unscaled and unmasked."""
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if USE_TMA:
        for c in range(STRIDE * (D // BD)):
            u = c // (D // BD)
            d0 = (c % (D // BD)) * BD
            qt = QD.load([q_row0, (STRIDE - 1 - u) * D + d0])
            kt = KD.load([k_row0 + n * BLOCK_N, u * D + d0])
            acc = tl.dot(qt, tl.trans(kt), acc, input_precision=PREC)
    else:
        dd = tl.arange(0, BD)
        for u in range(STRIDE):
            # row i pairs its query st-1-u with tile j's key u: the antidiagonal of the st x st tile
            tq = i * STRIDE + (STRIDE - 1 - u)
            q_ok = row_ok & (tq < T)
            tk = j * STRIDE + u
            k_ok = tk < S
            q_ptr = q_base + tq.to(tl.int64)[:, None] * sqt
            k_ptr = k_base + tk.to(tl.int64)[:, None] * sks
            for d0 in tl.static_range(0, D, BD):
                qt = tl.load(q_ptr + (d0 + dd)[None, :], mask=q_ok[:, None], other=0.0)
                kt = tl.load(k_ptr + (d0 + dd)[None, :], mask=k_ok[:, None], other=0.0)
                if INTERPRET:
                    qt = qt.to(tl.float32)
                    kt = kt.to(tl.float32)
                acc = tl.dot(qt, tl.trans(kt), acc, input_precision=PREC)
    return acc


def _antidiag_store(p, m_new, m_i, l_i, cs_base, mu_base, n, kb_loc, row_ok,
                    BLOCK_M: tl.constexpr, NB_N: tl.constexpr, R: tl.constexpr):
    """One key tile's online-softmax step: the rows' new running sum (returned), the tile's per-block partial sums
    `cs` under the running max `m_new`, and `m_new` itself (`mu`), for pass 2 to rescale."""
    l_i = l_i * tl.math.exp2(m_i - m_new) + tl.sum(p, 1)
    part = tl.sum(tl.reshape(p, (BLOCK_M, NB_N, R)), 2)
    tl.store(cs_base + (n * NB_N + kb_loc)[None, :], part, mask=row_ok[:, None])
    tl.store(mu_base + n, m_new, mask=row_ok)
    return l_i


def _antidiag_fwd(Q, K, QD, KD, OUT, CS, MU,
                  sqb, sqh, sqt, skb, skh, sks, sob, soh, soq, scb, sci, smb, smi,
                  T, S, H, G, I0, NROWS, SR, NK, NQC, C_OFF, scale_log2,
                  STRIDE: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, R: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MAX_TILES: tl.constexpr,
                  INTERPRET: tl.constexpr, PREC: tl.constexpr, USE_TMA: tl.constexpr, FLATTEN: tl.constexpr,
                  SPLIT: tl.constexpr):
    # Later rows see more key tiles: launching them first shortens the tail of the grid.
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    kvh = h // G

    r = tl.arange(0, BLOCK_M)
    i_loc = pid_m * BLOCK_M + r  # row inside this launch
    row_ok = i_loc < NROWS
    i = I0 + i_loc  # strided row in the whole query
    lim = i + C_OFF  # last allowed key tile of each row
    last_row = tl.minimum(pid_m * BLOCK_M + BLOCK_M, NROWS) - 1 + I0
    n_tiles = tl.minimum(last_row + C_OFF, SR - 1) // BLOCK_N + 1
    # SPLIT: the key tiles every row of the program sees whole (before the first row's causal limit, inside SR) run
    # without the causal mask (fewer vector ops a tile: the max taken before scaling, the scale fused into exp2's
    # argument); only the rest take it
    n_full = tl.minimum(tl.minimum(I0 + pid_m * BLOCK_M + C_OFF + 1, SR) // BLOCK_N, n_tiles) if SPLIT else 0

    nn = tl.arange(0, BLOCK_N)
    q_base = Q + b * sqb + h * sqh
    k_base = K + b * skb + kvh * skh
    NB_N: tl.constexpr = BLOCK_N // R
    kb_loc = tl.arange(0, NB_N)
    cs_base = CS + pid_bh.to(tl.int64) * scb + i_loc.to(tl.int64)[:, None] * sci
    mu_base = MU + pid_bh.to(tl.int64) * smb + i_loc.to(tl.int64) * smi

    # TMA views (T and S multiples of the stride, q/k contiguous): Q as [B*H*T/st, st*D], K as [B*HKV*S/st, st*D],
    # so strided row i's query st-1-u is columns [(st-1-u)*D, (st-u)*D) of row i, and key tile j's key u is columns
    # [u*D, (u+1)*D) of row j. Rows past this head's range read the next head's rows (or TMA's zero fill); they
    # are masked below (keys) or never stored (queries).
    q_row0 = ((b * H + h) * (T // STRIDE) + I0 + pid_m * BLOCK_M).to(tl.int32)
    k_row0 = ((b * (H // G) + kvh) * (S // STRIDE)).to(tl.int32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    # FLATTEN: one software-pipelined loop over (key tile, K chunk) instead of a drained pipeline per key tile. The
    # tile guards exist for the interpreter's constexpr bound only; compiled, they fold away (no branch in the nest).
    if SPLIT:
        for n in tl.range(0, MAX_TILES if INTERPRET else n_full, flatten=FLATTEN):
            if (not INTERPRET) or (n < n_full):
                acc = _antidiag_tile(QD, KD, q_base, k_base, i, row_ok, n * BLOCK_N + nn, sqt, sks, q_row0, k_row0,
                                     n, T, S, STRIDE, D, BD, BLOCK_M, BLOCK_N, INTERPRET, PREC, USE_TMA)
                # the scale is positive: the max of the scaled row is the scaled max
                m_new = tl.maximum(m_i, tl.max(acc, 1) * scale_log2)
                p = tl.math.exp2(acc * scale_log2 - m_new[:, None])
                l_i = _antidiag_store(p, m_new, m_i, l_i, cs_base, mu_base, n, kb_loc, row_ok, BLOCK_M, NB_N, R)
                m_i = m_new
    for n in tl.range(0 if INTERPRET else n_full, MAX_TILES if INTERPRET else n_tiles, flatten=FLATTEN):
        if (not INTERPRET) or ((n >= n_full) & (n < n_tiles)):
            j = n * BLOCK_N + nn
            acc = _antidiag_tile(QD, KD, q_base, k_base, i, row_ok, j, sqt, sks, q_row0, k_row0, n, T, S,
                                 STRIDE, D, BD, BLOCK_M, BLOCK_N, INTERPRET, PREC, USE_TMA)
            keep = (j[None, :] <= lim[:, None]) & (j[None, :] < SR)
            s = tl.where(keep, acc * scale_log2, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: tile 0 is allowed for every row
            p = tl.math.exp2(s - m_new[:, None])
            l_i = _antidiag_store(p, m_new, m_i, l_i, cs_base, mu_base, n, kb_loc, row_ok, BLOCK_M, NB_N, R)
            m_i = m_new

    # pass 2 reads what other threads of this program wrote in pass 1
    tl.debug_barrier()
    inv = tl.where(row_ok, 1.0 / l_i, 0.0)
    NB_M: tl.constexpr = BLOCK_M // R
    qb = pid_m * NB_M + tl.arange(0, NB_M)
    out_base = OUT + b * sob + h * soh + qb.to(tl.int64)[:, None] * soq
    for n in range(MAX_TILES if INTERPRET else n_tiles):
        if (not INTERPRET) or (n < n_tiles):
            part = tl.load(cs_base + (n * NB_N + kb_loc)[None, :], mask=row_ok[:, None], other=0.0)
            mu = tl.load(mu_base + n, mask=row_ok, other=0.0)
            w = tl.where(row_ok, tl.math.exp2(mu - m_i) * inv, 0.0)
            blk = tl.sum(tl.reshape(part * w[:, None], (NB_M, R, NB_N)), 1)
            kb = n * NB_N + kb_loc
            tl.store(out_base + kb[None, :], blk, mask=(qb[:, None] < NQC) & (kb[None, :] < NK))


_kernel = per_mode((_antidiag_fwd,), (_antidiag_tile, _antidiag_store), one=True)


def _pow2(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


def _head_slice(D: int) -> int:
    """Widest power-of-two slice of the head dim, at most 64, that divides it (tl.dot needs K >= 16)."""
    bd = 64
    while bd >= 16 and D % bd:
        bd //= 2
    return bd


def supports(head_dim: int, stride: int, block_size: int) -> str | None:
    """None if the kernel takes this configuration, else the reason it does not."""
    if stride < 1 or block_size % stride:
        return f"stride={stride} does not divide block_size={block_size}"
    R = block_size // stride
    if not _pow2(R) or R > 128:
        return f"block_size/stride={R} must be a power of two <= 128"
    if _head_slice(head_dim) < 16:
        return f"head dim {head_dim} is not a multiple of 16"
    return None


# (block_m, block_n, num_warps, num_stages): the first is the default for pointer loads; with
# SPARSEBENCH_ANTIDIAG_AUTOTUNE=1 the first call of each shape key times them all (triton.testing.do_bench) and keeps
# the fastest for that key.
# More rows a program (block_m) means fewer passes over the strided K of a head, which bounds this kernel at long T.
_CANDIDATES = [(64, 128, 4, 2), (128, 128, 8, 2), (128, 64, 8, 3), (64, 64, 4, 3), (128, 128, 4, 3), (64, 256, 8, 2),
               (256, 64, 8, 2), (128, 128, 8, 4), (128, 128, 4, 4), (128, 256, 8, 3)]
_TUNED: dict[tuple, tuple] = {}
# Defaults with TMA loads, by stride: the fastest measured on an H200 (bf16, H=32, HKV=8, D=128, 128K tokens,
# session 4; results/tables/profile_antidiag.csv): 256-wide key tiles at 3 stages, 19.9 ms (stride 8) and 9.3 ms
# (stride 16) against 22.4 and 12.2 ms for the best 128-wide tiles. More stages pay once the tiles arrive by TMA.
_TMA_DEFAULTS = {8: (128, 256, 8, 3), 16: (128, 256, 8, 3), None: (128, 256, 8, 3)}
# Shared memory a launch may plan for its pipelined Q/K slices (an H200 SM has 227 KiB; the rest is the kernel's
# own scratch). Stages left to the defaults drop until (block_m + block_n) * block_d * bytes * stages fits.
_SMEM_BUDGET = 200 * 1024
# Q/K tiles by TMA where the layout allows (Hopper+, 16-bit, T and S multiples of the stride, contiguous q/k);
# False forces the pointer loads (scripts/profile_kernels.py --antidiag compares the two).
_TMA = True
# Flatten pass 1's loop nest (key tiles x K chunks) into one pipelined loop (TMA path only): on an H200 (bf16, H=32,
# HKV=8, D=128, 128x256 tiles, 3 stages; session 5, scripts/profile_kernels.py --antidiag) stride 8 took 4.48 ms at
# 64K and 19.4 ms at 128K against 4.88 and 21.2 ms unflattened; stride 16 2.38 / 9.95 ms against 2.48 / 9.81 ms.
_FLATTEN = True
# Key tiles that every row of a program sees whole run without the causal mask (`SPLIT` in the kernel); False puts
# every tile through the masked path. Same values up to the exp2 argument's rounding (the scale fused into it).
_SPLIT = True


def _fit_stages(block_m: int, block_n: int, block_d: int, elem_bytes: int, stages: int) -> int:
    """`stages`, lowered until the pipelined Q and K slices fit `_SMEM_BUDGET` (at least 1)."""
    while stages > 1 and (block_m + block_n) * block_d * elem_bytes * stages > _SMEM_BUDGET:
        stages -= 1
    return stages


def _tuned_config(key, call) -> tuple:
    """The fastest candidate for `key`, timing `call(cfg)` for each on first use (a candidate that fails to compile
    for this GPU is skipped; the default if all do)."""
    if key not in _TUNED:
        from .._tune import fastest

        _TUNED[key] = fastest(_CANDIDATES, call) or _CANDIDATES[0]
    return _TUNED[key]


def antidiag_block_scores_triton(q: torch.Tensor, k: torch.Tensor, stride: int, block_size: int, scale: float,
                                 row_start: int = 0, row_end: int | None = None, block_m: int | None = None,
                                 block_n: int | None = None, num_warps: int | None = None,
                                 num_stages: int | None = None, block_d: int | None = None) -> torch.Tensor:
    """XAttention block scores `[B, H, NQc, NK]` (fp32) for the query blocks of rows `[row_start, row_end)`; the
    arguments and output are those of `antidiag_block_scores_naive`.

    Tiles: `block_m` strided rows by `block_n` key tiles (both raised to `block_size / stride` when smaller), head
    dim in slices of `block_d` (default: the widest power of two up to 64 dividing D). Tile arguments left None take
    `_TMA_DEFAULTS[stride]` when the tiles arrive by TMA (Hopper or later, fp16/bf16, T and S multiples of the
    stride; q/k are made contiguous for it; stages lowered to fit shared memory, `_fit_stages`), else the first of
    `_CANDIDATES` (64, 128, 4 warps, 2 stages); with `SPARSEBENCH_ANTIDIAG_AUTOTUNE=1` on a GPU, the fastest
    candidate for the shape, timed once. Scratch: fp32 `[B*H, rows, NKT * block_n / R]` plus `[B*H, rows, NKT]` for
    the launch's strided rows (NKT = key tiles / block_n), freed on return.
    """
    B, H, T, D = q.shape
    if k.dim() != 4 or k.shape[0] != B or k.shape[3] != D:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must be [B, H, T, D] and [B, HKV, S, D]")
    HKV, S = k.shape[1], k.shape[2]
    if H % HKV or S < T:
        raise ValueError(f"need H % HKV == 0 and S >= T; got H={H}, HKV={HKV}, T={T}, S={S}")
    why = supports(D, stride, block_size)
    if why:
        raise ValueError(f"antidiag_block_scores_triton: {why}")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32) or k.dtype != q.dtype:
        raise ValueError(f"q/k dtypes {q.dtype}/{k.dtype}: need one of fp16, bf16, fp32, the same for both")
    if not scale > 0:
        # the unmasked whole tiles take each row's max before scaling (`SPLIT`): a positive scale keeps it the max
        raise ValueError(f"scale={scale!r} must be > 0 (a softmax scale)")
    row_end = T if row_end is None else min(row_end, T)
    if row_start % block_size or not 0 <= row_start < row_end or (row_end != T and row_end % block_size):
        raise ValueError(f"row range [{row_start}, {row_end}) must be whole blocks of {block_size} inside [0, {T})")
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    given = (block_m, block_n, num_warps, num_stages)
    if (None in given and not interpret and q.is_cuda
            and os.environ.get("SPARSEBENCH_ANTIDIAG_AUTOTUNE") == "1"):
        key = (D, stride, block_size, q.dtype, H, HKV, (row_end - row_start).bit_length(), S.bit_length())
        cfg = _tuned_config(key, lambda c: antidiag_block_scores_triton(
            q, k, stride, block_size, scale, row_start, row_end,
            *(g if g is not None else d for g, d in zip(given, c))))
    else:
        cfg = None  # chosen below, once it is known whether the tiles arrive by TMA
    use_tma = (_TMA and not interpret and q.is_cuda and torch.cuda.get_device_capability(q.device)[0] >= 9
               and q.dtype != torch.float32 and T % stride == 0 and S % stride == 0)
    if use_tma:
        # A model hands q/k over as transposed [B, T, H, D] views; one copy (a pass over q and k, well under 1% of
        # dense attention time) buys the TMA path, which is ~25% faster at 32K-128K.
        q = q if q.stride() == (H * T * D, T * D, D, 1) and q.data_ptr() % 16 == 0 else q.contiguous()
        k = k if k.stride() == (HKV * S * D, S * D, D, 1) and k.data_ptr() % 16 == 0 else k.contiguous()
        use_tma = q.data_ptr() % 16 == 0 and k.data_ptr() % 16 == 0
    if cfg is None:
        cfg = _TMA_DEFAULTS.get(stride, _TMA_DEFAULTS[None]) if use_tma else _CANDIDATES[0]
    block_m, block_n, num_warps, num_stages = (g if g is not None else d for g, d in zip(given, cfg))
    # head-dim slice per dot: at most 64 by default; 128 (wider MMAs, half the K-loop trips) on request
    block_d = _head_slice(D) if block_d is None else block_d
    if not _pow2(block_d) or block_d < 16 or D % block_d:
        raise ValueError(f"block_d={block_d} must be a power of two >= 16 dividing the head dim {D}")
    R = block_size // stride
    block_m, block_n = max(block_m, R), max(block_n, R)
    if given[3] is None:
        num_stages = _fit_stages(block_m, block_n, block_d, q.element_size(), num_stages)
    if not (_pow2(block_m) and _pow2(block_n)) or block_m < 16 or block_n < 16:
        raise ValueError(f"block_m={block_m} and block_n={block_n} must be powers of two >= 16")
    q = q if q.stride(-1) == 1 else q.contiguous()
    k = k if k.stride(-1) == 1 else k.contiguous()
    SR, NK = -(-S // stride), -(-S // block_size)
    i0, i1 = row_start // stride, -(-row_end // stride)
    nrows = i1 - i0
    nqc = -(-(row_end - row_start) // block_size)
    nkt = -(-SR // block_n)
    out = torch.zeros(B, H, nqc, NK, dtype=torch.float32, device=q.device)
    cs = torch.empty(B * H, nrows, nkt * (block_n // R), dtype=torch.float32, device=q.device)
    mu = torch.empty(B * H, nrows, nkt, dtype=torch.float32, device=q.device)
    grid = (triton.cdiv(nrows, block_m), B * H)
    B_, HKV_ = q.shape[0], k.shape[1]
    if use_tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        bd = block_d
        qd = TensorDescriptor.from_tensor(q.view(B_ * H * T // stride, stride * D), [block_m, bd])
        kd = TensorDescriptor.from_tensor(k.view(B_ * HKV_ * S // stride, stride * D), [block_n, bd])
    else:
        qd, kd = q, k
    _kernel(interpret)[grid](
        q, k, qd, kd, out, cs, mu,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        out.stride(0), out.stride(1), out.stride(2), cs.stride(0), cs.stride(1), mu.stride(0), mu.stride(1),
        T, S, H, H // HKV, i0, nrows, SR, NK, nqc, -(-(S - T) // stride), float(scale) * _LOG2E,
        STRIDE=stride, D=D, BD=block_d, R=R, BLOCK_M=block_m, BLOCK_N=block_n,
        # a constexpr: only the interpreter needs it (a per-length value would recompile the GPU kernel)
        MAX_TILES=nkt if interpret else 0,
        INTERPRET=interpret, PREC="ieee" if interpret or q.dtype == torch.float32 else "tf32", USE_TMA=use_tma,
        FLATTEN=_FLATTEN and use_tma, SPLIT=_SPLIT, num_warps=num_warps, num_stages=num_stages)
    return out
