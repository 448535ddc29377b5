"""Triton block-sparse attention against the naive reference.

Two sets of cases share one checker. CPU cases run the kernel under the Triton interpreter; TRITON_INTERPRET=1 must
be set before triton is first imported (triton.language's own helpers are jitted at import), which pytest cannot
promise, so one subprocess (this file run as a script) checks all of them and each test reads its verdict. GPU cases
compile the kernel and run in-process.
Error measure: max |out - ref| / max |ref|; the log-sum-exp is compared on finite entries and its -inf entries (rows
with no key) must coincide.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from sparsebench.kernels.block_sparse_attn import block_sparse_attn_naive

from sparsebench.selection import Selection
from sparsebench.testing import assert_verdict, report_verdicts

triton = pytest.importorskip("triton")

HEADS = {"query_head": lambda H, HKV: H, "kv_head": lambda H, HKV: HKV, "shared": lambda H, HKV: 1}


def _diag_blocks(T, S, BQ, BK):
    """Key block holding the last position of each query block (the diagonal block)."""
    qb = torch.arange(-(-T // BQ))
    last = torch.clamp((qb + 1) * BQ, max=T) - 1 + S - T
    return qb, last // BK


def _extra(sel, per_block, gen):
    """Unique extra key columns per (batch, list, query block), none inside a listed block; some beyond causality."""
    bm = sel.to_block_mask()
    B, HS, NQ, _ = bm.shape
    cols = torch.zeros(B, HS, NQ, per_block, dtype=torch.int32)
    counts = torch.zeros(B, HS, NQ, dtype=torch.int32)
    for b in range(B):
        for h in range(HS):
            for qb in range(NQ):
                free = torch.nonzero(~bm[b, h, qb][torch.arange(sel.k_len) // sel.block_k]).flatten()
                n = min(per_block, int(torch.randint(0, per_block + 1, (1,), generator=gen)), free.numel())
                pick = free[torch.randperm(free.numel(), generator=gen)[:n]]
                cols[b, h, qb, :n] = pick.to(torch.int32)
                counts[b, h, qb] = n
    return cols, counts


def make_case(B, T, S, H, HKV, D, BQ, BK, gran, density, *, dtype=torch.float32, window=None, sink=0,
              extra=0, empty=False, bthd=False, seed=42):
    """Inputs and a `Selection` for one case: random block lists that always hold the diagonal block, or the
    sink/window pattern when `window` is given (`gran` is then "shared"). `bthd` gives q/k/v as transposed views
    of [B, T, H, D] tensors (the layout HF models hand over), which the kernel must read in place."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    if bthd:
        q = torch.randn(B, T, H, D, dtype=dtype).transpose(1, 2)
        k = torch.randn(B, S, HKV, D, dtype=dtype).transpose(1, 2)
        v = torch.randn(B, S, HKV, D, dtype=dtype).transpose(1, 2)
    else:
        q = torch.randn(B, H, T, D, dtype=dtype)
        k = torch.randn(B, HKV, S, D, dtype=dtype)
        v = torch.randn(B, HKV, S, D, dtype=dtype)
    if window is not None:
        sel = Selection.local(batch=B, q_len=T, k_len=S, num_heads=H, num_kv_heads=HKV, window=window, sink=sink,
                              block_q=BQ, block_k=BK)
    else:
        HS, NQ, NK = HEADS[gran](H, HKV), -(-T // BQ), -(-S // BK)
        # density is the share of listed blocks among all key blocks; some of them lie past the diagonal
        bm = torch.rand(B, HS, NQ, NK, generator=gen) < density
        qb, kb = _diag_blocks(T, S, BQ, BK)
        bm[:, :, qb, kb] = True
        sel = Selection.from_block_mask(bm, block_q=BQ, block_k=BK, q_len=T, k_len=S, num_heads=H,
                                        num_kv_heads=HKV, granularity=gran)
    if empty:
        # whole query blocks with nothing listed: their rows must give 0 and lse = -inf
        counts = sel.kv_counts.clone()
        counts[..., ::2] = 0
        sel = Selection(sel.kv_indices, counts, BQ, BK, T, S, H, HKV, sel.granularity, sel.sink, sel.window)
    kw = {"sink": sel.sink, "window": sel.window}
    if extra:
        kw["extra_cols"], kw["extra_counts"] = _extra(sel, extra, gen)
    sel.validate()
    return q, k, v, sel, kw


def check(q, k, v, sel, kw, tol, device="cpu"):
    from sparsebench.kernels.block_sparse_attn import block_sparse_attn_triton

    mv = lambda t: None if t is None else t.to(device)
    args = [mv(x) for x in (q, k, v, sel.kv_indices, sel.kv_counts)]
    kwd = {n: mv(x) if isinstance(x, torch.Tensor) else x for n, x in kw.items()}
    ref, ref_lse = block_sparse_attn_naive(*args, sel.block_q, sel.block_k, return_lse=True, **kwd)
    out, lse = block_sparse_attn_triton(*args, sel.block_q, sel.block_k, return_lse=True, **kwd)
    assert out.dtype == q.dtype and out.shape == q.shape
    assert lse.dtype == torch.float32 and lse.shape == q.shape[:3]
    ref, out = ref.float().cpu(), out.float().cpu()
    ref_lse, lse = ref_lse.cpu(), lse.cpu()
    assert torch.isfinite(out).all()
    err = ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-6)).item()
    assert err < tol, f"output error {err:.3e}"
    fin = torch.isfinite(ref_lse)
    assert torch.equal(fin, torch.isfinite(lse)), "rows without keys differ"
    assert (lse[~fin] == float("-inf")).all() and (out[~fin.unsqueeze(-1).expand_as(out)] == 0).all()
    if fin.any():
        lerr = ((lse[fin] - ref_lse[fin]).abs().max() / ref_lse[fin].abs().max().clamp_min(1.0)).item()
        assert lerr < tol, f"lse error {lerr:.3e}"


def _p(B, T, S, H, HKV, D, BQ, BK, gran, density=0.5, **kw):
    tag = "".join(f"-{n}{kw[n]}" for n in ("window", "sink", "extra") if kw.get(n))
    tag += "-empty" if kw.get("empty") else ""
    tag += "-bthd" if kw.get("bthd") else ""
    tag += "-notrim" if kw.get("trim") is False else ""
    tag += f"-{str(kw['dtype']).split('.')[-1]}" if "dtype" in kw else ""
    s = f"-S{S}" if S != T else ""
    return pytest.param((B, T, S, H, HKV, D, BQ, BK, gran, density), kw,
                        id=f"B{B}-T{T}{s}-H{H}-HKV{HKV}-D{D}-BQ{BQ}-BK{BK}-{gran}-d{density}{tag}")


# ---------------------------------------------------------------------------------------------- CPU interpreter
# fp32 / fp16, small shapes so the interpreter stays fast; block sizes down to 16 (and ragged 24/40 ones).
CPU_CASES = [
    _p(1, 77, 77, 4, 1, 64, 64, 64, "query_head"),
    _p(1, 77, 77, 4, 1, 64, 64, 64, "kv_head", 1.0),
    _p(1, 77, 77, 4, 1, 64, 64, 64, "shared", 0.0),
    _p(1, 200, 200, 8, 1, 32, 32, 32, "kv_head", 0.3),
    _p(1, 200, 200, 8, 1, 32, 64, 32, "query_head", 1.0),
    _p(1, 200, 200, 2, 2, 64, 16, 16, "query_head", 0.0),
    _p(1, 200, 200, 2, 2, 64, 32, 64, "shared", 0.5),
    _p(2, 100, 100, 4, 2, 16, 32, 16, "kv_head", 0.7),
    _p(1, 120, 290, 4, 1, 32, 32, 64, "shared", 0.4),
    _p(1, 150, 300, 4, 2, 64, 64, 32, "kv_head", 1.0),
    _p(1, 100, 130, 3, 1, 32, 24, 40, "kv_head", 0.5),
    _p(1, 77, 77, 4, 1, 64, 16, 32, "kv_head", 0.5, dtype=torch.float16),
    _p(1, 200, 256, 4, 1, 32, 32, 32, "shared", window=40, sink=4),
    _p(1, 200, 200, 2, 2, 32, 64, 32, "shared", window=64),
    _p(1, 180, 180, 4, 1, 32, 32, 16, "shared", window=17, sink=19),
    _p(1, 160, 160, 4, 1, 32, 32, 32, "kv_head", 0.3, extra=6),
    _p(1, 100, 140, 2, 2, 32, 16, 32, "query_head", 0.3, extra=4),
    _p(1, 160, 160, 4, 4, 32, 32, 32, "query_head", 0.5, empty=True),
    _p(1, 100, 100, 8, 1, 32, 32, 32, "kv_head", 0.3, extra=3, empty=True),
    _p(1, 90, 120, 4, 2, 32, 32, 32, "kv_head", 0.5, bthd=True),
    # the full trip count (trimming of the last block's wholly-future key sub-tiles off; every other case trims)
    _p(1, 200, 200, 4, 1, 32, 64, 64, "kv_head", 0.3, trim=False),
    _p(1, 150, 300, 4, 2, 64, 64, 64, "kv_head", 1.0, trim=False),
    _p(1, 100, 130, 3, 1, 32, 24, 40, "kv_head", 0.5, trim=False),
    _p(1, 200, 256, 4, 1, 32, 64, 64, "shared", window=40, sink=4, trim=False),
    _p(1, 160, 160, 4, 1, 32, 64, 64, "kv_head", 0.3, extra=6, empty=True, trim=False),
]


def _run_cpu_case(shape, kw):
    from sparsebench.kernels.block_sparse_attn import triton as bt

    B, T, S, H, HKV, D, BQ, BK, gran, density = shape
    kw = dict(kw)
    bt._TRIM_LAST = kw.pop("trim", True)
    q, k, v, sel, kwd = make_case(B, T, S, H, HKV, D, BQ, BK, gran, density, **kw)
    check(q, k, v, sel, kwd, 1e-3 if q.dtype == torch.float32 else 2e-3)


@pytest.mark.parametrize("shape,kw", CPU_CASES)
def test_block_sparse_attn_interpret(shape, kw, request, interpret_verdicts):
    assert_verdict(interpret_verdicts, request)


def test_import_is_lazy():
    code = ("import sys, sparsebench.kernels.block_sparse_attn as m; assert 'triton' not in sys.modules; "
            "m.block_sparse_attn_triton; assert 'triton' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------- GPU
BF16 = {"dtype": torch.bfloat16}
GPU_CASES = [
    _p(1, 77, 77, 4, 1, 64, 64, 64, "query_head", **BF16),
    _p(1, 200, 200, 4, 1, 128, 64, 64, "kv_head", 0.5, **BF16),
    _p(2, 200, 200, 8, 1, 128, 128, 128, "kv_head", 1.0, **BF16),
    _p(1, 200, 333, 8, 2, 128, 64, 128, "query_head", 0.3, **BF16),
    _p(1, 1000, 1000, 8, 2, 128, 128, 128, "query_head", 0.0, **BF16),
    _p(1, 1000, 1000, 8, 8, 64, 128, 64, "shared", 0.5, **BF16),
    _p(1, 777, 1500, 8, 1, 128, 128, 64, "kv_head", 0.25, **BF16),
    _p(1, 1024, 1024, 32, 8, 128, 128, 128, "kv_head", 0.25, **BF16),
    _p(1, 1024, 1024, 32, 4, 128, 64, 64, "shared", 1.0, **BF16),
    _p(1, 500, 500, 4, 1, 256, 64, 64, "kv_head", 0.5, **BF16),
    _p(1, 500, 700, 4, 1, 256, 128, 128, "query_head", 1.0, **BF16),
    _p(1, 500, 500, 8, 2, 256, 64, 128, "shared", 0.3, **BF16),
    _p(1, 300, 300, 4, 4, 64, 128, 128, "query_head", 0.5, dtype=torch.float16),
    _p(1, 300, 300, 4, 1, 128, 64, 64, "kv_head", 0.5, dtype=torch.float32),
    _p(1, 2000, 2000, 4, 1, 128, 128, 128, "shared", window=300, sink=64, **BF16),
    _p(1, 1000, 1200, 8, 2, 64, 64, 64, "shared", window=129, sink=5, **BF16),
    _p(1, 1000, 1000, 4, 1, 256, 64, 128, "shared", window=512, **BF16),
    _p(1, 600, 600, 8, 2, 128, 128, 128, "kv_head", 0.2, extra=40, **BF16),
    _p(1, 600, 700, 4, 4, 64, 64, 64, "query_head", 0.2, extra=70, **BF16),
    _p(1, 600, 600, 8, 1, 128, 64, 128, "kv_head", 0.5, empty=True, **BF16),
    _p(1, 600, 700, 8, 2, 128, 128, 128, "kv_head", 0.5, bthd=True, **BF16),
    _p(1, 600, 700, 4, 4, 64, 64, 64, "query_head", 0.3, bthd=True, extra=30, **BF16),
    _p(1, 300, 300, 8, 2, 32, 64, 64, "kv_head", 0.5, **BF16),
]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("shape,kw", GPU_CASES)
def test_block_sparse_attn_gpu(shape, kw):
    B, T, S, H, HKV, D, BQ, BK, gran, density = shape
    q, k, v, sel, kwd = make_case(B, T, S, H, HKV, D, BQ, BK, gran, density, **kw)
    check(q, k, v, sel, kwd, 2e-2, device="cuda")


if __name__ == "__main__" and sys.argv[1:] == ["--interpret"]:
    report_verdicts(_run_cpu_case, CPU_CASES)  # interpreter worker for `interpret_verdicts`


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_block_sparse_attn_gpu_autotune(monkeypatch):
    """The opt-in tuner times every candidate, keeps one, and the kept config still matches the reference."""
    from sparsebench.kernels.block_sparse_attn import triton as bsa

    monkeypatch.setenv("SPARSEBENCH_BSA_AUTOTUNE", "1")
    monkeypatch.setattr(bsa, "_TUNED", {})
    q, k, v, sel, kwd = make_case(1, 1000, 1000, 8, 2, 128, 128, 128, "kv_head", 0.5, dtype=torch.bfloat16)
    check(q, k, v, sel, kwd, 2e-2, device="cuda")
    assert len(bsa._TUNED) == 1 and next(iter(bsa._TUNED.values())) is not None


def _rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6)).item()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_block_sparse_attn_gpu_launch_plan(monkeypatch):
    """A repeat call with new tensors of the same layout skips triton's JIT path (its launch plan is reused) and
    still matches the reference, with and without the log-sum-exp; a misaligned tensor or int64 lists take the
    checked path again and match too."""
    from sparsebench.kernels.block_sparse_attn import triton as bsa

    monkeypatch.setattr(bsa, "_PLANS", {})
    q, k, v, sel, kwd = make_case(1, 700, 900, 8, 2, 128, 64, 64, "kv_head", 0.4, extra=20, dtype=torch.bfloat16)
    check(q, k, v, sel, kwd, 2e-2, device="cuda")
    assert len(bsa._PLANS) == 1, list(bsa._PLANS)
    real_launch = bsa._launch

    def no_jit(*a, **k):
        raise AssertionError("the JIT launch path ran on a planned call")

    monkeypatch.setattr(bsa, "_launch", no_jit)
    q2, k2, v2, _, _ = make_case(1, 700, 900, 8, 2, 128, 64, 64, "kv_head", 0.4, dtype=torch.bfloat16, seed=7)
    check(q2, k2, v2, sel, kwd, 2e-2, device="cuda")
    dev = {n: x.cuda() if isinstance(x, torch.Tensor) else x for n, x in kwd.items()}
    args = [x.cuda() for x in (q2, k2, v2, sel.kv_indices.to(torch.int32), sel.kv_counts.to(torch.int32))]
    out_lse, _ = bsa.block_sparse_attn_triton(*args, sel.block_q, sel.block_k, return_lse=True, **dev)
    monkeypatch.setattr(bsa, "_launch", real_launch)
    bsa.block_sparse_attn_triton(*args, sel.block_q, sel.block_k, **dev)  # makes its own (lse-free) plan
    monkeypatch.setattr(bsa, "_launch", no_jit)
    out = bsa.block_sparse_attn_triton(*args, sel.block_q, sel.block_k, **dev)
    assert _rel(out, out_lse) < 2e-2, "lse-free variant"  # another compiled variant: bf16 roundings may differ

    monkeypatch.setattr(bsa, "_launch", real_launch)
    n_plans = len(bsa._PLANS)
    buf = torch.empty(q2.numel() + 1, dtype=q2.dtype, device="cuda")
    q_mis = buf[1:].view(q2.shape).copy_(q2)  # 2 bytes off a 16-byte boundary
    assert q_mis.data_ptr() % 16
    out_mis = bsa.block_sparse_attn_triton(q_mis, *args[1:], sel.block_q, sel.block_k, **dev)
    assert _rel(out_mis, out) < 2e-2, "misaligned q"
    assert len(bsa._PLANS) == n_plans  # misaligned calls make no plan
    out64 = bsa.block_sparse_attn_triton(*args[:3], sel.kv_indices.cuda().long(), sel.kv_counts.cuda().long(),
                                         sel.block_q, sel.block_k, **dev)
    assert _rel(out64, out) < 2e-2, "int64 lists"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("shape", [(1, 1000, 1000, 8, 2, 128, 128, 128, "kv_head", 0.3),
                                   (1, 700, 900, 4, 1, 256, 128, 128, "kv_head", 1.0),
                                   (1, 1000, 1000, 4, 4, 64, 64, 64, "query_head", 0.5)])
def test_block_sparse_attn_gpu_no_trim(shape, monkeypatch):
    """Without trimming the last block's wholly-future key sub-tiles (the default trims), the kernel matches the
    reference on the GPU."""
    from sparsebench.kernels.block_sparse_attn import triton as bsa

    monkeypatch.setattr(bsa, "_TRIM_LAST", False)
    q, k, v, sel, kwd = make_case(*shape, dtype=torch.bfloat16)
    check(q, k, v, sel, kwd, 2e-2, device="cuda")


def test_small_row_tiles_take_four_warps(monkeypatch):
    """A candidate fitted down to a 64-row tile (one query head's 64-block: `query_head` lists) runs 4 warps instead
    of its 8 (measured faster on an H200, see `_SMALL_TILE_WARPS`); packed heads keep the candidate's warps."""
    pytest.importorskip("triton")
    from sparsebench.kernels.block_sparse_attn import triton as bsa

    assert bsa._fit((128, 64, 8, 2), 256, 64, 64, 1) == (64, 64, 4, 2)
    assert bsa._fit((128, 128, 8, 3), 128, 64, 64, 1) == (64, 64, 4, 3)
    assert bsa._fit((128, 128, 8, 3), 128, 64, 64, 4) == (128, 64, 8, 3)
    assert bsa._fit((128, 128, 8, 3), 128, 128, 128, 1) == (128, 128, 8, 3)
    monkeypatch.setattr(bsa, "_SMALL_TILE_WARPS", 0)
    assert bsa._fit((128, 64, 8, 2), 256, 64, 64, 1) == (64, 64, 8, 2)
