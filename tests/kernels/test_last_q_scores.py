"""Vertical/slash scores of the last queries: the reference against MInference's `vs_scores_naive` / `vs_scores`
and a float64 brute force, and the Triton kernel against the reference (CPU: Triton interpreter in one subprocess;
GPU: compiled). PBS's key importance likewise: its reference against PBS's torch path and a float64 brute force, the
fused kernel against the reference, PBS with `scores_kernel="triton"` against the default.

TRITON_INTERPRET=1 must be set before triton is first imported, so the interpreter cases run in a subprocess (this
file as a script) and each test reads its verdict, as in test_antidiag_score.py.
"""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from sparsebench.kernels.last_q_scores import last_q_importance_naive, last_q_scores_naive

from sparsebench.testing import assert_verdict, off_and_on, report_verdicts, switched


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
    code = ("import sys, sparsebench.kernels.last_q_scores as m; assert 'triton' not in sys.modules; "
            "m.last_q_importance_triton; assert 'triton' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------- PBS importance
def brute_importance(q, k, scale, n_keys):
    """PBS's importance in float64, without the input-dtype roundings of the logits."""
    kk = k[:, :, :n_keys].double().repeat_interleave(q.shape[1] // k.shape[1], 1)
    return torch.softmax(q.double() @ kk.transpose(-1, -2) * scale, -1).mean(-2)


@pytest.mark.parametrize("B,H,HKV,L,S,n_keys,D", [(1, 2, 1, 5, 9, 8, 4), (2, 4, 2, 16, 40, 32, 8),
                                                  (1, 3, 3, 7, 5, 5, 8)])  # the last: S < L, allowed here
def test_importance_reference_matches_brute_force(B, H, HKV, L, S, n_keys, D):
    q, k = _qk(B, H, HKV, L, S, D)
    imp = last_q_importance_naive(q, k, 0.3, n_keys)
    assert imp.shape == (B, H, n_keys) and imp.dtype == torch.float32
    torch.testing.assert_close(imp.double(), brute_importance(q, k, 0.3, n_keys), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(imp.sum(-1), torch.ones(B, H))  # a mean of probability rows
    assert torch.equal(last_q_importance_naive(q, k, 0.3), last_q_importance_naive(q, k, 0.3, S))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("H,HKV,T,D,L,Sc", [(4, 2, 300, 32, 40, 256), (8, 2, 777, 64, 128, 768),
                                            (4, 4, 500, 128, 128, 256)])
def test_importance_reference_is_pbs_torch_path(dtype, H, HKV, T, D, L, Sc):
    """Bit for bit PBS's step 1 (fast path: the query heads of a KV head stacked into one matmul; naive path: K
    repeated), logit roundings included."""
    from sparsebench.methods.pbs import _importance_torch

    q, k = _qk(2, H, HKV, T, T, D, dtype)
    scale = D ** -0.5
    imp = last_q_importance_naive(q[:, :, T - L:], k, scale, Sc)
    assert torch.equal(imp, _importance_torch(q, k, scale, L, Sc))
    kr = k.repeat_interleave(H // HKV, 1)
    official = torch.softmax(torch.matmul(q[:, :, -L:], kr[:, :, :Sc].transpose(-1, -2)) * scale, dim=-1,
                             dtype=torch.float32).mean(dim=-2)
    assert torch.equal(imp, official)


def test_importance_bad_arguments_raise():
    q, k = _qk(1, 3, 2, 8, 20, 8)
    with pytest.raises(ValueError, match="H % HKV"):
        last_q_importance_naive(q, k, 1.0)
    q, k = _qk(1, 2, 1, 8, 20, 8)
    for n in (0, 21, True, 3.0):
        with pytest.raises(ValueError, match="n_keys="):
            last_q_importance_naive(q, k, 1.0, n)


# ---------------------------------------------------------------------------------------------- Triton
_MODES = {True: "packed", False: "perhead", "rows": "rows"}
_IMP_MODES = (True, False, "rows")


def _mode_kw(pack) -> dict:
    """Kernel arguments of a case's mode: heads packed, one program per query head (tile kernels), or the row-block
    kernels (3 key tiles a program, so that runs of tiles end inside and past the keys)."""
    if pack == "rows":
        return {"pack_heads": False, "rows": True, "tiles_per_program": 3}
    return {"pack_heads": pack, "rows": False}


def _p(B, H, HKV, L, S, D, dtype="float32", block_n=64, pack=True):
    return pytest.param((B, H, HKV, L, S, D, dtype, block_n, pack),
                        id=f"B{B}-H{H}-HKV{HKV}-L{L}-S{S}-D{D}-{dtype}-bn{block_n}-{_MODES[pack]}")


def _both(*args, **kw):
    """The case with the heads of a KV head packed into one program, one program per (key tile, query head), and
    the row-block kernels."""
    return [_p(*args, **kw, pack=m) for m in _MODES]


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
    v, s = last_q_scores_triton(q, k, scale, block_n=block_n, **_mode_kw(pack))
    assert v.shape == vr.shape == s.shape and v.dtype == s.dtype == torch.float32
    # relative to the largest score (the sums run up to L)
    for name, a, b in (("vertical", v, vr), ("slash", s, sr)):
        err = (a - b).abs().max().item() / max(1.0, b.abs().max().item())
        assert err <= tol, f"{name}: max relative error {err:.3e}"


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


# (B, H, HKV, S, D, dtype, size, L): short last blocks, GQA 2 and 4, two batch entries, the three dtypes
MEANS_CASES = [pytest.param(c, id="means-B{}-H{}-HKV{}-S{}-D{}-{}-size{}-L{}".format(*c)) for c in (
    (1, 4, 2, 300, 64, "bfloat16", 32, 40), (2, 4, 1, 257, 32, "float32", 16, 64),
    (1, 2, 2, 200, 64, "float16", 64, 48))]


def _check_means(case):
    """`last_q_scores_and_means_triton`: the scores of `last_q_scores_triton` bit for bit, and the block means of
    `block_means_naive` exactly (values on a binary grid: every fp32 sum exact, whatever its order)."""
    from sparsebench.kernels.block_means import block_means_naive
    from sparsebench.kernels.last_q_scores import last_q_scores_and_means_triton, last_q_scores_triton

    B, H, HKV, S, D, dtype, size, L = case
    g = torch.Generator().manual_seed(0)
    q = (torch.randint(-64, 64, (B, H, S, D), generator=g).float() / 64).to(getattr(torch, dtype))
    k = (torch.randint(-64, 64, (B, HKV, S, D), generator=g).float() / 64).to(q.dtype)
    q_last = q[:, :, -L:] * 0.125
    v, sl, k_mean, q_mean = last_q_scores_and_means_triton(q_last, k, 1.0, q, size, 0.3)
    v0, s0 = last_q_scores_triton(q_last, k, 1.0)
    assert torch.equal(v, v0) and torch.equal(sl, s0)
    assert torch.equal(k_mean, block_means_naive(k, size))
    assert torch.equal(q_mean, block_means_naive(q, size, 0.3))


def _check_flex_means(case):
    """FlexPrefill's official selection with the block means from the stats launch (`_FUSED_MEANS`) equals its
    selection with torch's means (grid-valued inputs: the same means exactly), pattern decisions included."""
    from sparsebench.attention import AttnContext
    from sparsebench.methods import flexprefill as fp

    H, HKV, T, D = case
    g = torch.Generator().manual_seed(7)
    # peaked attention on a binary grid: every head query-aware and its cover selective (density about 0.43)
    q = torch.randint(-128, 128, (1, H, T, D), generator=g).float() / 16
    k = torch.randint(-128, 128, (1, HKV, T, D), generator=g).float() / 16
    ctx = AttnContext(0, H, HKV, D, 1 / math.sqrt(D))
    m = fp.FlexPrefill(scores_kernel="triton", gamma=0.5, tau=0.3, min_budget=64, block_size=64)
    with switched(fp, _FUSED_MEANS=False, _WHOLE_GRAPH=False):
        want, d_want = m.select(q, k, ctx), m.last_decision
    with switched(fp, _FUSED_MEANS=True, _WHOLE_GRAPH=False):
        got, d_got = m.select(q, k, ctx), m.last_decision
    assert torch.equal(got.to_block_mask(), want.to_block_mask()) and torch.equal(d_got, d_want)
    assert bool(d_want.all()) and 0.2 < want.density() < 0.7


FLEX_MEANS_CASES = [pytest.param((4, 2, 520, 64), id="flexmeans-H4-HKV2-T520")]


@pytest.mark.parametrize("case", MEANS_CASES + FLEX_MEANS_CASES)
def test_scores_and_means_interpret(case, request, interpret_verdicts):
    assert_verdict(interpret_verdicts, request)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("S,D,size", [(32768, 128, 128), (5000, 256, 128), (4099, 64, 64)])
def test_scores_and_means_gpu(S, D, size):
    """Compiled: the scores bit for bit as `last_q_scores_triton`'s; the block means of random bf16 q / k as
    `block_means_naive`'s up to the order of the fp32 sums (at most one bf16 step apart, nearly all equal)."""
    from sparsebench.kernels.block_means import block_means_naive
    from sparsebench.kernels.last_q_scores import last_q_scores_and_means_triton, last_q_scores_triton

    q, k = _qk(1, 8, 2, S, S, D, torch.bfloat16)
    q, k = q.cuda(), k.cuda()
    q_last = q[:, :, -size:] * D ** -0.5
    v, sl, k_mean, q_mean = last_q_scores_and_means_triton(q_last, k, 1.0, q, size, D ** -0.5)
    v0, s0 = last_q_scores_triton(q_last, k, 1.0)
    assert torch.equal(v, v0) and torch.equal(sl, s0)
    for got, want in ((k_mean, block_means_naive(k, size)), (q_mean, block_means_naive(q, size, D ** -0.5))):
        step = torch.finfo(torch.bfloat16).eps * want.float().abs().clamp_min(1e-30)
        assert ((got.float() - want.float()).abs() <= step * 1.01).all()
        assert (got == want).float().mean().item() > 0.98


TABLE_CASES = [pytest.param(dt, id=f"table-{dt}") for dt in ("bfloat16", "float32")]


def _check_table(dtype):
    """Address tables (for a CUDA graph that replays on other tensors): `scaled_last_rows` equals torch's
    `q[:, :, -n:] * scale` bit for bit, on q or on the tensor whose address the table holds; the row-block passes
    with `k_table` score the keys whose address the table holds (other than the `k` that gave the layout)."""
    from sparsebench.kernels.last_q_scores.triton import last_q_scores_triton, scaled_last_rows

    g = torch.Generator().manual_seed(0)
    dt = getattr(torch, dtype)
    q, q2 = (torch.randn(1, 4, 300, 64, generator=g).to(dt) for _ in range(2))
    k0, k1 = (torch.randn(1, 2, 300, 64, generator=g).to(dt) for _ in range(2))
    q_last = scaled_last_rows(q, 64, 0.3)
    assert torch.equal(q_last, q[:, :, -64:] * 0.3)
    table = torch.tensor([q2.data_ptr(), k1.data_ptr()], dtype=torch.int64)
    assert torch.equal(scaled_last_rows(q, 64, 0.3, table=table, slot=0), q2[:, :, -64:] * 0.3)
    got = last_q_scores_triton(q_last, k0, 1.0, k_table=(table, 1))
    want = last_q_scores_triton(q_last, k1, 1.0)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert not torch.equal(got[0], last_q_scores_triton(q_last, k0, 1.0)[0])


@pytest.mark.parametrize("case", TABLE_CASES)
def test_address_tables_interpret(case, request, interpret_verdicts):
    assert_verdict(interpret_verdicts, request)


def _check_table_reads(case):
    """FlexPrefill's reads for its whole-estimate graph (`_table_reads`, q's and k's addresses from a table that
    here holds other tensors than the layout's) equal `official_reads` of those tensors with the fused scores kernel
    and `kernels/block_means` (`_POOL_KERNEL`), bit for bit."""
    from sparsebench.methods import flexprefill as fp

    H, HKV, T, D, dtype = case
    g = torch.Generator().manual_seed(11)
    dt = getattr(torch, dtype)
    q0, q1 = (torch.randn(1, H, T, D, generator=g).to(dt) for _ in range(2))
    k0, k1 = (torch.randn(1, HKV, T, D, generator=g).to(dt) for _ in range(2))
    table = torch.tensor([q1.data_ptr(), k1.data_ptr()], dtype=torch.int64)
    got = fp._table_reads(q0, k0, table, 64, 0.125)
    with switched(fp, _POOL_KERNEL=True):
        want = fp.official_reads(q1, k1, block_size=64, scale=0.125, scores_kernel="triton")
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and torch.equal(a, b)


def _check_stacked(case, device="cpu"):
    """`last_q_scores_stacked_triton` (the combine launch writing FlexPrefill's stacked, flipped and divided scores)
    equals torch's stack, flip and division of `last_q_scores_triton`'s outputs bit for bit (one and two row blocks;
    a last-query count that is not a power of two takes torch's path); FlexPrefill's reads with and without it
    (`_STACK_IN_COMBINE`) are the same."""
    from sparsebench.kernels.last_q_scores import triton as lq
    from sparsebench.kernels.last_q_scores.triton import last_q_scores_stacked_triton, last_q_scores_triton
    from sparsebench.methods import flexprefill as fp

    H, HKV, L, S, D, dtype = case
    g = torch.Generator().manual_seed(5)
    dt = getattr(torch, dtype)
    q = torch.randn(1, H, L, D, generator=g).to(dt).to(device)
    k = torch.randn(1, HKV, S, D, generator=g).to(dt).to(device)
    v, sl = last_q_scores_triton(q, k, 0.2)
    assert torch.equal(last_q_scores_stacked_triton(q, k, 0.2, L), torch.stack([v, sl.flip(-1)]).div_(L))
    qf = torch.randn(1, H, S, D, generator=g).to(dt).to(device)
    reads = [off for off in off_and_on(lq, "_STACK_IN_COMBINE", lambda: fp.official_reads(
        qf, k, block_size=L, scale=0.125, scores_kernel="triton"))]
    for a, b in zip(*reads):
        assert torch.equal(a, b)


STACKED_CASES = [pytest.param((4, 2, 128, 300, 64, "float32"), id="stacked-L128-two-row-blocks"),
                 pytest.param((2, 1, 64, 257, 32, "float32"), id="stacked-L64-one-row-block"),
                 pytest.param((2, 2, 48, 200, 32, "float32"), id="stacked-L48-torch")]


@pytest.mark.parametrize("case", STACKED_CASES)
def test_stacked_scores_interpret(case, request, interpret_verdicts):
    assert_verdict(interpret_verdicts, request)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", [pytest.param((32, 8, 128, 32768, 128, "bfloat16"), id="stacked-llama-32K"),
                                  pytest.param((4, 1, 128, 5000, 256, "bfloat16"), id="stacked-gemma-D256")])
def test_stacked_scores_gpu(case):
    _check_stacked(case, device="cuda")


def _check_stats_kernel(case, device="cpu"):
    """`_row_stats` by one launch (`_STATS_KERNEL`) against torch's: the same maxima, the sums within rounding (another
    order, Triton's exp), a row whose parts are all -inf but one included; and the scores of 128 queries over many
    programs (two row blocks, so the reduction is not fused) within rounding of torch's reduction."""
    from sparsebench.kernels.last_q_scores import triton as lq

    N, NP, L, S = case
    g = torch.Generator().manual_seed(3)
    mt = (torch.randn(N, NP, L, generator=g) * 5).to(device)
    lt = (torch.rand(N, NP, L, generator=g) * 50).to(device)
    mt[0, 1:, 3] = float("-inf")
    (m0, l0), (m1, l1) = off_and_on(lq, "_STATS_KERNEL", lambda: lq._row_stats(mt, lt))
    assert torch.equal(m0, m1)
    torch.testing.assert_close(l1, l0, rtol=1e-6, atol=0)
    q = torch.randn(1, 4, 128, 64, generator=g).to(device)
    k = torch.randn(1, 2, S, 64, generator=g).to(device)
    with switched(lq, _TPP=2):  # many programs, many parts to reduce
        (v0, s0), (v1, s1) = off_and_on(lq, "_STATS_KERNEL", lambda: lq.last_q_scores_triton(q, k, 0.125))
    torch.testing.assert_close(v1, v0, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(s1, s0, rtol=1e-5, atol=1e-9)


STATS_KERNEL_CASES = [pytest.param((3, 37, 100, 900), id="statskernel-37parts"),
                      pytest.param((2, 5, 16, 300), id="statskernel-5parts")]


@pytest.mark.parametrize("case", STATS_KERNEL_CASES)
def test_stats_kernel_interpret(case, request, interpret_verdicts):
    assert_verdict(interpret_verdicts, request)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_stats_kernel_gpu():
    _check_stats_kernel((32, 32, 128, 32768), device="cuda")


def _check_stats_persist(case, device="cpu", per_sm=None):
    """The row-block stats pass as a few programs taking its units in turn (`PERSIST`: fewer programs than units,
    one, and more than units) gives exactly the scores of a program a unit: one and two row blocks in either pass
    (the stats pass takes 128 rows a block), a ragged last
    run of tiles, grouped heads, K's address from a table or not. `per_sm` (CUDA): also as `stats_programs` takes it,
    that many programs a multiprocessor."""
    from sparsebench.kernels.last_q_scores import triton as lq

    H, HKV, L, S, D, dtype = case
    g = torch.Generator().manual_seed(4)
    dt = getattr(torch, dtype)
    q = torch.randn(1, H, L, D, generator=g).to(dt).to(device)
    k = torch.randn(1, HKV, S, D, generator=g).to(dt).to(device)
    table = torch.tensor([0, k.data_ptr()], dtype=torch.int64, device=device)
    for k_table, counts in ((None, (3, 1, 10_000)), ((table, 1), (3,))):
        with switched(lq, _TPP=2):
            want = lq.last_q_scores_triton(q, k, 0.2, rows=True, k_table=k_table)
            for progs in counts:
                with switched(lq, _STATS_PERSIST_PROGRAMS=progs):
                    got = lq.last_q_scores_triton(q, k, 0.2, rows=True, k_table=k_table)
                assert all(torch.equal(a, b) for a, b in zip(got, want)), progs
            if per_sm:
                got = lq.last_q_scores_triton(q, k, 0.2, rows=True, k_table=k_table, _stats_programs=per_sm)
                assert all(torch.equal(a, b) for a, b in zip(got, want))


STATS_PERSIST_CASES = [pytest.param((4, 2, 128, 200, 32, "float32"), id="persist-L128-two-row-blocks"),
                       pytest.param((2, 1, 256, 300, 16, "bfloat16"), id="persist-L256-bf16-two-stats-row-blocks")]


@pytest.mark.parametrize("case", STATS_PERSIST_CASES)
def test_stats_persist_interpret(case, request, interpret_verdicts):
    assert_verdict(interpret_verdicts, request)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_stats_persist_gpu():
    _check_stats_persist((32, 8, 128, 32768, 128, "bfloat16"), device="cuda", per_sm=2)
    _check_stats_persist((8, 2, 128, 5000, 128, "bfloat16"), device="cuda", per_sm=1)


TABLE_READS_CASES = [pytest.param((4, 2, 300, 64, "bfloat16"), id="tablereads-H4-HKV2-T300-bf16"),
                     pytest.param((2, 1, 200, 32, "float32"), id="tablereads-H2-HKV1-T200-fp32")]


@pytest.mark.parametrize("case", TABLE_READS_CASES)
def test_flexprefill_table_reads_interpret(case, request, interpret_verdicts):
    assert_verdict(interpret_verdicts, request)


def test_tables_bad_arguments_raise():
    from sparsebench.kernels.last_q_scores.triton import last_q_scores_triton, scaled_last_rows

    q = torch.zeros(1, 2, 100, 64)
    with pytest.raises(ValueError, match="n a power of two"):
        scaled_last_rows(q, 24, 1.0)
    k = torch.zeros(1, 1, 64, 100).transpose(-1, -2)
    with pytest.raises(ValueError, match="unit last stride"):
        last_q_scores_triton(q[:, :, -40:], k, 1.0, k_table=(torch.zeros(2, dtype=torch.int64), 1))
    with pytest.raises(ValueError, match="needs the row-block kernels"):
        last_q_scores_triton(q[:, :, -16:], torch.zeros(1, 1, 100, 64), 1.0,
                             k_table=(torch.zeros(2, dtype=torch.int64), 1))


def test_scores_and_means_bad_arguments_raise():
    from sparsebench.kernels.last_q_scores import last_q_scores_and_means_triton

    q = torch.zeros(1, 2, 100, 64)
    k = torch.zeros(1, 1, 100, 64)
    with pytest.raises(ValueError, match=r"whole queries, \[1, 2, 100, 64\]"):
        last_q_scores_and_means_triton(q[:, :, -40:], k, 1.0, q[:, :, :50], 32, 1.0)
    with pytest.raises(ValueError, match="size=24 must be a power of two"):
        last_q_scores_and_means_triton(q[:, :, -40:], k, 1.0, q, 24, 1.0)
    with pytest.raises(ValueError, match="needs the row-block kernels"):
        last_q_scores_and_means_triton(q[:, :, -16:], k, 1.0, q, 32, 1.0)


def _p_imp(B, H, HKV, L, S, n_keys, D, dtype="float32", block_n=64, pack=True):
    return pytest.param((B, H, HKV, L, S, n_keys, D, dtype, block_n, pack),
                        id=f"imp-B{B}-H{H}-HKV{HKV}-L{L}-S{S}-n{n_keys}-D{D}-{dtype}-bn{block_n}-{_MODES[pack]}")


def _imp_both(*args, **kw):
    return [_p_imp(*args, **kw, pack=m) for m in _IMP_MODES]


IMP_CASES = [  # (B, H, HKV, L, S, n_keys, D): G = H / HKV
    *_imp_both(1, 2, 2, 40, 333, 256, 64),                # G 1, L not a multiple of the 32-row chunk, Sc < S
    *_imp_both(2, 4, 2, 100, 333, 300, 128, "float16"),   # G 2, n_keys not a multiple of the key tile
    *_imp_both(1, 4, 1, 128, 300, 256, 64),               # G 4 at PBS's L = 128: two head groups a program
    *_imp_both(1, 4, 1, 9, 200, 200, 256),                # G 4, one 16-row chunk, D = 256 in slices, n_keys = S
    *_imp_both(1, 4, 2, 50, 77, 48, 128, "float16", block_n=16),  # n_keys < L (no causal positions needed)
    *_imp_both(1, 6, 2, 33, 150, 100, 64),                # G 3: a masked head slot in the second group
    *_imp_both(1, 8, 2, 70, 130, 130, 256, "float16", block_n=32),  # G 4, D = 256, fp16
]


def _check_importance(case, device="cpu", tol=1e-5):
    """Fused importance vs reference, max error relative to the largest importance. Half precision: two GEMM orders
    round a logit one ulp apart now and then, which moves that row's probabilities by up to ~ulp(logit) relative;
    the logits here are twice the scores check's, so 2e-4 (seen: up to 9e-5); such flips stay rare, so the mean
    error is still asked to be small."""
    from sparsebench.kernels.last_q_scores import last_q_importance_triton

    B, H, HKV, L, S, n_keys, D, dtype, block_n, pack = case
    q, k = _qk(B, H, HKV, L, S, D, getattr(torch, dtype))
    q, k = (q * 2).to(device), k.to(device)  # peakier rows than unit logits
    scale = 1.0 / math.sqrt(D)
    if dtype != "float32":
        tol = max(tol, 2e-4)
    ref = last_q_importance_naive(q, k, scale, n_keys)
    got = last_q_importance_triton(q, k, scale, n_keys, block_n=block_n, **_mode_kw(pack))
    assert got.shape == ref.shape == (B, H, n_keys) and got.dtype == torch.float32
    err = (got - ref).abs().max().item() / ref.abs().max().item()
    assert err <= tol, f"importance: max relative error {err:.3e}"
    mean_err = ((got - ref).abs().mean() / ref.mean()).item()
    assert mean_err <= 1e-5, f"importance: mean relative error {mean_err:.3e}"
    torch.testing.assert_close(got.sum(-1), torch.ones(B, H, device=device), rtol=0, atol=1e-4)


# fp16 only: the interpreter converts fp32 to bf16 by truncation, not round-to-nearest-even (bf16: GPU test below)
ROUNDING_CASES = [pytest.param("float16", id="rounding-float16")]


def _check_rounding(dtype, device="cpu"):
    """The kernel rounds the logits as PBS does (product to the input dtype, then the scaled value again), not once
    as the scores kernel does. Integer inputs make every dot exact in fp32, so the roundings are the only
    difference: the reference is met to summation order, the single-rounding variant misses by far more."""
    from sparsebench.kernels.last_q_scores import last_q_importance_triton

    g = torch.Generator().manual_seed(7)
    dt = getattr(torch, dtype)
    q = torch.randint(-24, 25, (1, 2, 20, 64), generator=g).to(dt).to(device)
    k = torch.randint(-24, 25, (1, 1, 150, 64), generator=g).to(dt).to(device)
    scale = 0.0123  # dots of a few thousand: the fp16 product's ulp is 2-4, so both roundings move the logits
    ref = last_q_importance_naive(q, k, scale, 140)
    logits = (q.float() @ k[:, :, :140].float().repeat_interleave(2, 1).transpose(-1, -2)) * scale
    once = torch.softmax(logits.to(dt), -1, dtype=torch.float32).mean(-2)
    got = last_q_importance_triton(q, k, scale, 140)
    err = (got - ref).abs().max().item() / ref.abs().max().item()
    miss = (once - ref).abs().max().item() / ref.abs().max().item()
    assert err <= 1e-5 and miss > 1e-3, (err, miss)


PBS_CASES = [  # (B, H, HKV, T, D, knobs, dtype)
    pytest.param((1, 4, 2, 777, 32, {"block_size": 32, "segment_size": 64}, "float32"), id="pbs-G2-T777-D32"),
    pytest.param((1, 4, 1, 1001, 64, {"block_size": 16, "segment_size": 48, "threshold": 0.5, "last_q": 40},
                  "float32"), id="pbs-G4-T1001-D64"),
    pytest.param((1, 2, 2, 1100, 64, {"threshold": 0.5}, "float32"), id="pbs-G1-T1100-D64-bs128"),
    pytest.param((2, 8, 2, 600, 128, {"block_size": 32, "segment_size": 96, "threshold": 0.7, "last_q": 100},
                  "float32"), id="pbs-B2-G4-T600-D128"),
    pytest.param((1, 4, 1, 455, 32, {"block_size": 32, "segment_size": 96, "threshold": 0.6,
                                     "force_first_block": False, "last_q": 1000}, "float32"), id="pbs-L455"),
    pytest.param((1, 4, 2, 777, 32, {"block_size": 32, "segment_size": 64}, "float16"), id="pbs-G2-T777-fp16"),
    pytest.param((1, 4, 1, 900, 256, {"block_size": 64, "segment_size": 128, "threshold": 0.8, "last_q": 50},
                  "float16"), id="pbs-G4-T900-D256-fp16"),
]


def _check_pbs(case):
    """PBS with scores_kernel="triton" permutes and selects what the default does, block for block and column for
    column (random inputs: no two keys of a segment with importances within the summation-order error), in one
    chunk of KV heads and in one per KV head."""
    from sparsebench.attention import AttnContext
    from sparsebench.methods.pbs import PBS, pbs_estimate

    B, H, HKV, T, D, knobs, dtype = case
    q, k = _qk(B, H, HKV, T, T, D, getattr(torch, dtype), seed=11)
    q = q * 2
    scale = D ** -0.5
    ref_perm, ref_mask = pbs_estimate(q, k, scale, **knobs)
    for chunk in (1, 1 << 40):
        perm, mask = pbs_estimate(q, k, scale, **knobs, chunk_bytes=chunk, scores_kernel="triton")
        assert torch.equal(perm, ref_perm), f"perm differs at {(perm != ref_perm).sum().item()} positions"
        assert torch.equal(mask, ref_mask), f"mask differs at {(mask != ref_mask).sum().item()} blocks"
    ctx = AttnContext(0, H, HKV, D, scale)
    a, b = PBS(scores_kernel="triton", **knobs).select(q, k, ctx), PBS(**knobs).select(q, k, ctx)
    assert torch.equal(a.kv_indices, b.kv_indices) and torch.equal(a.kv_counts, b.kv_counts)
    assert (a.extra_cols is None) == (b.extra_cols is None)
    if a.extra_cols is not None:
        assert torch.equal(a.extra_counts, b.extra_counts) and torch.equal(a.extra_cols, b.extra_cols)
    assert 0 < a.density() < 1


@pytest.mark.parametrize("case", IMP_CASES)
def test_importance_interpret_matches_reference(case, request, interpret_verdicts):
    assert_verdict(interpret_verdicts, request)


@pytest.mark.parametrize("case", ROUNDING_CASES)
def test_importance_interpret_rounds_like_pbs(case, request, interpret_verdicts):
    assert_verdict(interpret_verdicts, request)


@pytest.mark.parametrize("case", PBS_CASES)
def test_pbs_triton_importance_selects_like_torch(case, request, interpret_verdicts):
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
@pytest.mark.parametrize("case", [c for c in GPU_CASES if c.values[0][-1] == "rows"])
def test_triton_gpu_wrap_gather_matches_reference(case):
    """The row-block scores pass without the cyclic diagonal skew (`_WRAP_GATHER` off; the default since session
    7) on the GPU's compiled kernels."""
    _with_switches(lambda c: _check_case(c, device="cuda", tol=1e-4))(case, {"_WRAP_GATHER": False})
    _with_switches(lambda c: _check_case(c, device="cuda", tol=1e-4))(case, {"_FUSED_ROW_STATS": True})
    _with_switches(lambda c: _check_case(c, device="cuda", tol=1e-4))(case, {"_FUSED_ROW_STATS": False})
    _with_switches(lambda c: _check_case(c, device="cuda", tol=1e-4))(case, {"_TRANS_SCORES": False})
    _with_switches(lambda c: _check_case(c, device="cuda", tol=1e-4))(case, {"_TRANS_FOLD_L": True})
    _with_switches(lambda c: _check_case(c, device="cuda", tol=1e-4))(case, {"_KEY_GATHER": False})
    _with_switches(lambda c: _check_case(c, device="cuda", tol=1e-4))(case, {"_ROWS_STAGES": 2})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("L,S", [(128, 65536), (64, 4097), (128, 3001)])
def test_triton_gpu_asm_round_equals_the_casts(L, S):
    """The row-block passes' packed PTX rounding (`_ASM_ROUND`, the default) gives the casts' values bit for bit
    (bf16, Llama-3.1-8B heads)."""
    from sparsebench.kernels.last_q_scores import triton as lq

    q, k = _qk(1, 32, 8, L, S, 128, torch.bfloat16)
    q, k = q.cuda(), k.cuda()
    (v0, s0), (v1, s1) = off_and_on(lq, "_ASM_ROUND", lambda: lq.last_q_scores_triton(q, k, 128 ** -0.5, rows=True))
    assert torch.equal(v0, v1) and torch.equal(s0, s1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("pack", list(_MODES), ids=list(_MODES.values()))
def test_triton_gpu_128k_bf16_matches_vs_scores(pack):
    """128K keys, llama-like heads, bf16: against MInference's torch path (bf16 logits: one-ulp rounding flips
    between GEMM orders, so a looser bound), and each row's mass sums to 1 on both views."""
    from sparsebench.kernels.last_q_scores import last_q_scores_triton
    from sparsebench.methods.minference import vs_scores

    q, k = _qk(1, 32, 8, 64, 131072, 128, torch.bfloat16)
    q, k = q.cuda(), k.cuda()
    v, s = last_q_scores_triton(q, k, 1 / math.sqrt(128), **_mode_kw(pack))
    vr, sr = vs_scores(q, k, 64, 1 / math.sqrt(128))
    torch.testing.assert_close(v.sum(-1), torch.full_like(v.sum(-1), 64.0), rtol=0, atol=1e-3)
    torch.testing.assert_close(s.sum(-1), torch.full_like(s.sum(-1), 64.0), rtol=0, atol=1e-3)
    assert (v - vr).abs().max().item() < 2e-2 * vr.abs().max().item()
    assert (s - sr).abs().max().item() < 2e-2 * sr.abs().max().item()


IMP_GPU_CASES = [
    *_imp_both(1, 32, 8, 128, 32768, 32768 - 200, 128, "float16"),  # Llama-3.1-8B heads, PBS's L, Sc < S
    *_imp_both(1, 8, 2, 128, 5001, 4864, 256, "float32"),
    *_imp_both(2, 4, 1, 40, 3000, 2944, 64, "float16", block_n=128),
    *_imp_both(1, 28, 4, 128, 4097, 4096, 128, "float16"),  # G 7 (Qwen2-7B-like)
]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", IMP_GPU_CASES)
def test_importance_gpu_matches_reference(case):
    _check_importance(case, device="cuda", tol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_importance_gpu_rounds_like_pbs(dtype):
    _check_rounding(dtype, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("S", [32768, 131072])
def test_importance_gpu_bf16_matches_pbs_torch_path(S):
    """bf16 at Llama-3.1-8B's heads against PBS's own torch step 1 (cuBLAS): every head's importance sums to 1, and
    the one-ulp bf16 logit flips between GEMM orders stay small once averaged over L = 128 rows."""
    from sparsebench.kernels.last_q_scores import last_q_importance_triton
    from sparsebench.methods.pbs import _importance_torch

    q, k = _qk(1, 32, 8, 128, S, 128, torch.bfloat16)
    q, k = (q * 2).cuda(), k.cuda()
    Sc = S - 256
    got = last_q_importance_triton(q, k, 128 ** -0.5, Sc)
    ref = torch.cat([_importance_torch(q[:, h:h + 4], k[:, h // 4:h // 4 + 1], 128 ** -0.5, 128, Sc)
                     for h in range(0, 32, 4)], 1)
    torch.testing.assert_close(got.sum(-1), torch.ones(1, 32, device="cuda"), rtol=0, atol=1e-3)
    assert (got - ref).abs().max().item() < 2e-2 * ref.abs().max().item()
    # the ranking that PBS sorts by: nearly every key keeps its rank within its 256-key segment
    rank = lambda x: torch.argsort(x.view(1, 32, -1, 256), dim=-1, descending=True, stable=True)  # noqa: E731
    assert (rank(got) == rank(ref)).float().mean().item() > 0.9


# module switches that are not the defaults: the plain arithmetic (`_FAST` off), the fast arithmetic in the
# per-tile causal kernels too (`_FAST_TILE`), the partial sums added by torch (`_COMBINE_KERNEL` off), the
# row-block scores pass's plain diagonal skew (`_WRAP_GATHER` off, which also leaves the transposed tiles; the
# other modes ignore it), its untransposed tiles (`_TRANS_SCORES` off), 1 / l in the exponent on the transposed
# ones (`_TRANS_FOLD_L`) and their skew along the rows (`_KEY_GATHER` off), the row-block path's
# (m, l) reduced inside its scores kernel or by torch whatever the shape (`_FUSED_ROW_STATS` True / False; by
# default it depends on the shape, so the defaults' cases take both); each case
# against the reference as above. Shapes with whole tiles (no mask) and, in rows mode, runs of tiles past the keys.
SWITCH_CASES = [pytest.param(case.values[0], sw, id=f"{case.id}-{'-'.join(f'{k}{v}' for k, v in sw.items())}")
                for sw in ({"_FAST": False}, {"_FAST_TILE": True}, {"_COMBINE_KERNEL": False}, {"_WRAP_GATHER": False},
                           {"_FUSED_ROW_STATS": True}, {"_FUSED_ROW_STATS": False}, {"_TRANS_SCORES": False},
                           {"_TRANS_FOLD_L": True}, {"_KEY_GATHER": False})
                for case in (*_both(1, 4, 1, 64, 333, 64, "float16"), *_both(1, 2, 2, 100, 333, 64))]
IMP_SWITCH_CASES = [pytest.param(case.values[0], {"_FAST": False}, id=f"{case.id}-_FASTFalse")
                    for case in _imp_both(1, 4, 1, 128, 300, 256, 64)]


def _with_switches(check):
    def run(case, switches):
        from sparsebench.kernels.last_q_scores import triton as lq

        with switched(lq, **switches):
            check(case)
    return run


@pytest.mark.parametrize("case,switches", SWITCH_CASES + IMP_SWITCH_CASES)
def test_triton_interpret_switches_match_reference(case, switches, request, interpret_verdicts):
    assert_verdict(interpret_verdicts, request)


def _check_combine(S, L, block_n, RB, NRB, BT):
    """The combine kernel adds the same partials as torch's shifted slice adds (`_overlap_add` after the row
    blocks), on random partials: equal up to the order of the few additions per entry."""
    from sparsebench.kernels.last_q_scores import triton as lq

    g = torch.Generator().manual_seed(S + L)
    nt = -(-S // block_n)
    dg = torch.rand(NRB, 3, nt, BT, generator=g)
    v = torch.rand(NRB, 3, S, generator=g)
    dg_all = torch.zeros(3, nt, BT + (NRB - 1) * RB)
    for rb in range(NRB):
        dg_all[..., rb * RB:rb * RB + BT] += dg[rb]
    want = lq._overlap_add(dg_all, S, L, block_n)
    got_s, got_v = lq._combine(dg, v if NRB > 1 else None, S, L, block_n, RB, True)
    torch.testing.assert_close(got_s, want, rtol=1e-6, atol=1e-6)
    if NRB > 1:
        torch.testing.assert_close(got_v, v.sum(0), rtol=1e-6, atol=1e-6)


COMBINE_CASES = [pytest.param(*c, id="S{}-L{}-bn{}-RB{}-NRB{}-BT{}".format(*c))
                 for c in ((333, 64, 64, 0, 1, 128), (64, 64, 64, 0, 1, 128), (200, 16, 16, 0, 1, 32),
                           (333, 100, 64, 32, 4, 128), (1000, 128, 64, 32, 4, 128), (77, 50, 32, 16, 4, 64))]


@pytest.mark.parametrize("S,L,block_n,RB,NRB,BT", COMBINE_CASES)
def test_combine_kernel_adds_like_torch(S, L, block_n, RB, NRB, BT, request, interpret_verdicts):
    assert_verdict(interpret_verdicts, request)


if __name__ == "__main__" and sys.argv[1:] == ["--interpret"]:
    for check, cases in ((_check_case, CPU_CASES), (_check_select, SELECT_CASES), (_check_flex, FLEX_CASES),
                         (_check_importance, IMP_CASES), (_check_rounding, ROUNDING_CASES), (_check_pbs, PBS_CASES),
                         (_with_switches(_check_case), SWITCH_CASES),
                         (_with_switches(_check_importance), IMP_SWITCH_CASES), (_check_combine, COMBINE_CASES),
                         (_check_means, MEANS_CASES), (_check_flex_means, FLEX_MEANS_CASES),
                         (_check_table, TABLE_CASES), (_check_table_reads, TABLE_READS_CASES),
                         (_check_stacked, STACKED_CASES), (_check_stats_kernel, STATS_KERNEL_CASES),
                         (_check_stats_persist, STATS_PERSIST_CASES)):
        report_verdicts(check, cases)


def test_compiled_kernels_keep_their_constexprs():
    """The GPU-mode kernels are rebuilt with the jitted helper in their globals; triton must still see every
    `tl.constexpr` parameter (a rebuilt function without annotations made PREC a runtime str: no launch compiled)."""
    import triton  # noqa: F401  (the module imports it; here only to skip cleanly where it is absent)

    from sparsebench.kernels.last_q_scores import triton as lq

    stats, scores, stats_rows, scores_rows = lq._kernels(False)[:4]
    assert [p.name for p in stats.params if p.is_constexpr] == ["D", "BD", "RC", "NCH", "GP", "NG", "BLOCK_N",
                                                                "INTERPRET", "PREC", "CAUSAL", "ROUND_DOT", "FAST",
                                                                "EVEN"]
    assert [p.name for p in scores.params if p.is_constexpr] == ["D", "BD", "RC", "NCH", "GP", "NG", "BLOCK_N", "BT",
                                                                 "INTERPRET", "PREC", "IMPORTANCE", "FAST", "EVEN"]
    assert [p.name for p in stats_rows.params if p.is_constexpr] == ["D", "RB", "BLOCK_N", "TPP", "INTERPRET", "PREC",
                                                                     "CAUSAL", "ROUND_DOT", "FAST", "EVEN",
                                                                     "ASM_ROUND", "MEANS", "MBS", "BR", "DT", "I_QB",
                                                                     "I_KB", "K_TABLE", "PERSIST", "I_UN"]
    assert [p.name for p in scores_rows.params if p.is_constexpr] == ["D", "RB", "BLOCK_N", "BT", "TPP", "INTERPRET",
                                                                      "PREC", "IMPORTANCE", "FAST", "EVEN", "WRAP",
                                                                      "STATS_IN", "PB", "I_NPG", "ASM_ROUND",
                                                                      "TRANS", "FOLD_L", "K_TABLE", "KEY_GATHER"]


def test_rows_kernel_needs_unpacked_heads_and_a_power_of_two_head_dim():
    from sparsebench.kernels.last_q_scores import last_q_importance_triton, last_q_scores_triton

    q, k = _qk(1, 4, 1, 16, 100, 64, torch.float32)
    with pytest.raises(ValueError, match="rows=True needs pack_heads=False"):
        last_q_scores_triton(q, k, 0.125, rows=True, pack_heads=True)
    q, k = _qk(1, 4, 1, 16, 100, 48, torch.float32)
    with pytest.raises(ValueError, match="head dim 48"):
        last_q_importance_triton(q, k, 0.125, rows=True)


def test_rows_kernel_default_choice(monkeypatch):
    """By default the scores pass takes the row-block kernels for more than 32 queries (MInference's 64 and
    FlexPrefill's 128: faster on an H200), the importance pass and shorter query sets the per-tile ones; `_ROWS`
    overrides; packing or an odd head dim never takes them."""
    from sparsebench.kernels.last_q_scores import triton as lq

    monkeypatch.setattr(lq, "_ROWS", None)
    assert lq._use_rows(None, 128, False, 128, False)
    assert lq._use_rows(None, 128, False, 64, False)
    assert not lq._use_rows(None, 128, False, 32, False)
    assert not lq._use_rows(None, 128, False, 128, True)
    assert not lq._use_rows(None, 128, True, 128, False)
    assert not lq._use_rows(None, 96, False, 128, False)
    monkeypatch.setattr(lq, "_ROWS", True)
    assert lq._use_rows(None, 128, False, 64, True)
    monkeypatch.setattr(lq, "_ROWS", False)
    assert not lq._use_rows(None, 128, False, 128, False)


def test_auto_takes_the_fused_kernels_only_where_they_fit():
    """`scores_kernel=auto`: the fused kernels on CUDA for shapes they take, the torch path otherwise (FlexPrefill's
    Sparse Frontier variant scores 512 last queries, past the kernels' 256); `triton` always; never on the CPU."""
    from types import SimpleNamespace

    from sparsebench.kernels.last_q_scores import fused_scores

    cuda, cpu = SimpleNamespace(is_cuda=True), SimpleNamespace(is_cuda=False)
    assert fused_scores("auto", cuda) and fused_scores("auto", cuda, 128, 128) and fused_scores("auto", cuda, 256, 64)
    assert not fused_scores("auto", cuda, 128, 512) and not fused_scores("auto", cuda, 72, 64)
    assert fused_scores("auto", cuda, 128) and not fused_scores("auto", cuda, 72)  # importance: head dim only
    assert fused_scores("triton", cpu) and fused_scores("triton", cuda, 128, 512)
    assert not fused_scores("auto", cpu, 128, 128) and not fused_scores("torch", cuda, 128, 128)
