"""Vertical/slash scores of the last queries: the reference against MInference's `vs_scores_naive` / `vs_scores`
and a float64 brute force, and the Triton kernel against the reference (CPU: Triton interpreter in one subprocess;
GPU: compiled).

TRITON_INTERPRET=1 must be set before triton is first imported, so the interpreter cases run in a subprocess (this
file as a script) and each test reads its verdict, as in test_antidiag_score.py.
"""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from sparsebench.kernels.last_q_scores import last_q_scores_naive

from sparsebench.testing import assert_verdict, interpreter_verdicts, report_verdicts


def _qk(B, H, HKV, L, S, D, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, L, D, generator=g).to(dtype)
    k = torch.randn(B, HKV, S, D, generator=g).to(dtype)
    return q, k


def brute(q, k, scale):
    """The naive module docstring's definition, loop by loop, in float64."""
    B, H, L, _ = q.shape
    HKV, S = k.shape[1], k.shape[2]
    kk = k.double().repeat_interleave(H // HKV, 1)
    s = q.double() @ kk.transpose(-1, -2) * scale
    pos = torch.arange(S - L, S)
    p = torch.softmax(s.masked_fill(torch.arange(S)[None, :] > pos[:, None], float("-inf")), -1)
    slash = torch.zeros(B, H, S, dtype=torch.float64)
    for i in range(L):
        for o in range(int(pos[i]) + 1):
            slash[..., o] += p[..., i, int(pos[i]) - o]
    return p.sum(-2), slash


@pytest.mark.parametrize("B,H,HKV,L,S,D", [(1, 2, 1, 5, 9, 4), (2, 4, 2, 16, 40, 8), (1, 3, 3, 7, 7, 8)])
def test_reference_matches_brute_force(B, H, HKV, L, S, D):
    q, k = _qk(B, H, HKV, L, S, D)
    v, s = last_q_scores_naive(q, k, 0.3)
    vb, sb = brute(q, k, 0.3)
    torch.testing.assert_close(v.double(), vb, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s.double(), sb, rtol=1e-5, atol=1e-6)
    # every row's mass is 1, on both views
    torch.testing.assert_close(v.sum(-1), torch.full_like(v.sum(-1), float(L)))
    torch.testing.assert_close(s.sum(-1), torch.full_like(s.sum(-1), float(L)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("HKV", [1, 4])
def test_reference_matches_minference(dtype, HKV):
    from sparsebench.methods.minference import vs_scores, vs_scores_naive

    q, k = _qk(1, 4, HKV, 90, 333, 32, dtype)  # T = 90 queries, the last 64 scored
    scale = 1 / math.sqrt(32)
    v, s = last_q_scores_naive(q[:, :, -64:], k, scale)
    vn, sn = vs_scores_naive(q, k, 64, scale)
    assert torch.equal(v, vn) and torch.equal(s, sn)
    vf, sf = vs_scores(q, k, 64, scale)
    torch.testing.assert_close(v, vf, rtol=0, atol=1e-6)
    torch.testing.assert_close(s, sf, rtol=0, atol=1e-6)


def test_bad_arguments_raise():
    q, k = _qk(1, 3, 2, 8, 20, 8)
    with pytest.raises(ValueError, match="H % HKV"):
        last_q_scores_naive(q, k, 1.0)
    q, k = _qk(1, 2, 1, 30, 20, 8)
    with pytest.raises(ValueError, match="S >= L"):
        last_q_scores_naive(q, k, 1.0)


def test_import_is_lazy():
    code = ("import sys, sparsebench.kernels.last_q_scores as m; assert 'triton' not in sys.modules; "
            "m.last_q_scores_triton; assert 'triton' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------- Triton
def _p(B, H, HKV, L, S, D, dtype="float32", block_n=64, pack=True):
    return pytest.param((B, H, HKV, L, S, D, dtype, block_n, pack),
                        id=f"B{B}-H{H}-HKV{HKV}-L{L}-S{S}-D{D}-{dtype}-bn{block_n}-{'packed' if pack else 'perhead'}")


def _both(*args, **kw):
    """The case with the heads of a KV head packed into one program, and one program per query head."""
    return [_p(*args, **kw, pack=True), _p(*args, **kw, pack=False)]


CPU_CASES = [
    *_both(1, 2, 2, 16, 64, 64),
    *_both(1, 4, 1, 64, 200, 64),            # GQA 4
    *_both(2, 2, 1, 16, 333, 64, "float16"),
    *_both(1, 4, 1, 16, 333, 256),           # head dim 256 in slices, GQA 4
    *_both(1, 2, 2, 64, 64, 256, "float16"), # S == L
    *_both(1, 4, 1, 64, 333, 64, "float16"),
    *_both(1, 2, 1, 16, 200, 64, block_n=16),
    *_both(1, 2, 2, 100, 333, 64),           # L not a power of two, several row chunks
    *_both(1, 2, 1, 1, 70, 64),              # a single query row
    # packing: GQA 4 with L = 128 (two head groups in pass 1, four in pass 2)
    *_both(1, 4, 1, 128, 150, 64),
    *_both(2, 4, 2, 40, 101, 128, "float16"),  # GQA 2, D = 128, S not a multiple of BLOCK_N
    *_both(1, 6, 2, 50, 77, 64),             # GQA 3: the stats pass's second head group has a masked slot
    *_both(1, 6, 2, 12, 77, 64),             # GQA 3, one 16-row chunk: masked head slots in both passes
    *_both(1, 8, 1, 24, 90, 256, "float16", block_n=32),  # GQA 8: both passes split the pack into head groups
    *_both(1, 8, 1, 9, 40, 128),             # GQA 8, 16-row chunks: 4 heads a dot in pass 1, 2 in pass 2
]


def _check_case(case, device="cpu", tol=1e-5):
    """Kernel vs reference, max error relative to the largest score. fp32: `tol`. Half precision: the fp16 logits
    of two GEMMs with different summation orders round one ulp apart now and then, which moves that entry's
    probability by up to ~ulp(logit) relative; 1e-4 covers it."""
    from sparsebench.kernels.last_q_scores import last_q_scores_triton

    B, H, HKV, L, S, D, dtype, block_n, pack = case
    q, k = _qk(B, H, HKV, L, S, D, getattr(torch, dtype))
    q, k = q.to(device), k.to(device)
    scale = 1.0 / math.sqrt(D)
    if dtype != "float32":
        tol = max(tol, 1e-4)
    vr, sr = last_q_scores_naive(q, k, scale)
    v, s = last_q_scores_triton(q, k, scale, block_n=block_n, pack_heads=pack)
    assert v.shape == vr.shape == s.shape and v.dtype == s.dtype == torch.float32
    # relative to the largest score (the sums run up to L)
    for name, a, b in (("vertical", v, vr), ("slash", s, sr)):
        err = (a - b).abs().max().item() / max(1.0, b.abs().max().item())
        assert err <= tol, f"{name}: max relative error {err:.3e}"


@pytest.fixture(scope="module")
def interpret_verdicts():
    """{case id: None if it passed, else the failure} from one interpreter subprocess over all CPU cases."""
    return interpreter_verdicts(__file__)


@pytest.mark.parametrize("case", CPU_CASES)
def test_triton_interpret_matches_reference(case, request, interpret_verdicts):
    assert_verdict(interpret_verdicts, request)


SELECT_CASES = [pytest.param((4, 1, 300, 64, 40, 60), id="select-H4-HKV1-T300-D64"),
                pytest.param((4, 4, 257, 32, 25, 30), id="select-H4-HKV4-T257-D32")]


def _check_select(case):
    """MInference's vertical-slash selection with scores_kernel="triton" equals the torch path's, block for block
    and column for column (fp32 random inputs: no near-ties at the cut)."""
    from sparsebench.attention import AttnContext
    from sparsebench.methods.minference import MInference

    H, HKV, T, D, vsz, ssz = case
    q, k = _qk(1, H, HKV, T, T, D, seed=3)
    ctx = AttnContext(0, H, HKV, D, 1 / math.sqrt(D))
    knobs = dict(vertical_size=vsz, slash_size=ssz, forced_columns=4, forced_diagonals=8, min_vertical=4,
                 min_slash=8, block_size=32)
    a = MInference(scores_kernel="triton", **knobs).select(q, k, ctx)
    b = MInference(**knobs).select(q, k, ctx)
    assert torch.equal(a.to_block_mask(), b.to_block_mask())
    assert (a.extra_cols is None) == (b.extra_cols is None)
    if a.extra_cols is not None:
        assert torch.equal(a.extra_counts, b.extra_counts) and torch.equal(a.extra_cols, b.extra_cols)
    assert 0 < a.density() < 1


FLEX_CASES = [pytest.param(("official", 4, 1, 520, 64), id="flex-official-H4-HKV1-T520"),
              pytest.param(("sparse_frontier", 4, 2, 600, 32), id="flex-sf-H4-HKV2-T600")]


def _check_flex(case):
    """FlexPrefill with scores_kernel="triton" selects what the torch path selects (fp32 random inputs), in both
    variants, pattern decisions included."""
    from sparsebench.attention import AttnContext
    from sparsebench.methods.flexprefill import FlexPrefill

    variant, H, HKV, T, D = case
    q, k = _qk(1, H, HKV, T, T, D, seed=5)
    q, k = q * 4, k * 4  # peaked attention: a few columns and diagonals carry the mass, so the cut is selective
    ctx = AttnContext(0, H, HKV, D, 1 / math.sqrt(D))
    knobs = dict(gamma=0.9, min_budget=64, block_size=64) if variant == "official" else dict(
        gamma=0.6, min_budget=8, variant=variant, approximation_size=64)
    fa, fb = FlexPrefill(scores_kernel="triton", **knobs), FlexPrefill(**knobs)
    a, b = fa.select(q, k, ctx), fb.select(q, k, ctx)
    assert torch.equal(a.to_block_mask(), b.to_block_mask())
    assert torch.equal(fa.last_decision, fb.last_decision)
    if b.extra_cols is not None:
        assert torch.equal(a.extra_counts, b.extra_counts) and torch.equal(a.extra_cols, b.extra_cols)
    assert 0 < a.density() < 1


@pytest.mark.parametrize("case", SELECT_CASES + FLEX_CASES)
def test_minference_triton_scores_select_like_torch(case, request, interpret_verdicts):
    assert_verdict(interpret_verdicts, request)


GPU_CASES = [
    *_both(1, 32, 8, 64, 32768, 128, "float16"),
    *_both(1, 8, 2, 64, 5001, 256, "float32"),
    *_both(1, 8, 8, 128, 4097, 64, "float16"),
    *_both(2, 4, 1, 16, 3000, 128, "float32", block_n=128),
    _p(1, 28, 4, 128, 4097, 128, "float16"),  # GQA 7 (Qwen2-7B-like), packed
]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", GPU_CASES)
def test_triton_gpu_matches_reference(case):
    _check_case(case, device="cuda", tol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("pack", [True, False], ids=["packed", "perhead"])
def test_triton_gpu_128k_bf16_matches_vs_scores(pack):
    """128K keys, llama-like heads, bf16: against MInference's torch path (bf16 logits: one-ulp rounding flips
    between GEMM orders, so a looser bound), and each row's mass sums to 1 on both views."""
    from sparsebench.kernels.last_q_scores import last_q_scores_triton
    from sparsebench.methods.minference import vs_scores

    q, k = _qk(1, 32, 8, 64, 131072, 128, torch.bfloat16)
    q, k = q.cuda(), k.cuda()
    v, s = last_q_scores_triton(q, k, 1 / math.sqrt(128), pack_heads=pack)
    vr, sr = vs_scores(q, k, 64, 1 / math.sqrt(128))
    torch.testing.assert_close(v.sum(-1), torch.full_like(v.sum(-1), 64.0), rtol=0, atol=1e-3)
    torch.testing.assert_close(s.sum(-1), torch.full_like(s.sum(-1), 64.0), rtol=0, atol=1e-3)
    assert (v - vr).abs().max().item() < 2e-2 * vr.abs().max().item()
    assert (s - sr).abs().max().item() < 2e-2 * sr.abs().max().item()


if __name__ == "__main__" and sys.argv[1:] == ["--interpret"]:
    for check, cases in ((_check_case, CPU_CASES), (_check_select, SELECT_CASES), (_check_flex, FLEX_CASES)):
        report_verdicts(check, cases)


def test_compiled_kernels_keep_their_constexprs():
    """The GPU-mode kernels are rebuilt with the jitted helper in their globals; triton must still see every
    `tl.constexpr` parameter (a rebuilt function without annotations made PREC a runtime str: no launch compiled)."""
    import triton  # noqa: F401  (the module imports it; here only to skip cleanly where it is absent)

    from sparsebench.kernels.last_q_scores import triton as lq

    stats, scores = lq._kernels(False)
    assert [p.name for p in stats.params if p.is_constexpr] == ["D", "BD", "RC", "NCH", "GP", "NG", "BLOCK_N",
                                                                "INTERPRET", "PREC"]
    assert [p.name for p in scores.params if p.is_constexpr] == ["D", "BD", "RC", "NCH", "GP", "NG", "BLOCK_N", "BT",
                                                                 "INTERPRET", "PREC"]
