"""XAttention's fused selection kernel (`kernels/antidiag_score/select.py`) against the torch reference
(`methods.xattn.find_blocks` + the lists of `block_mask_to_selection`): masks, lists and counts must be identical.

Rows: realistic softmax block masses (also very peaked ones, whose tiny scores make float64 sums order-dependent),
the antidiagonal estimator's own scores, dyadic scores full of ties (every float64 sum exact, so any summation order
agrees), signed scores with -0.0 and -1.0 (the reference's key for non-causal blocks), zero rows; thresholds 0, 0.5,
0.9, 1 and above, per-head thresholds; chunks with qb_start > 0, S > T (offset diagonal, one or two forced diagonal
blocks), ragged last blocks, rows of 1 to 5000 key blocks.

Exactness: every case also compares the kernel's intermediates (a debug output): its sorted block order equals the
reference's argsort, and under the interpreter its float64 masses before each item equal the reference's CPU cumsum
bit for bit. Its row total is summed in another order (numpy's pairwise sum vs torch's), equal where all sums are
exact (dyadic rows) and within 1e-14 otherwise, so for non-dyadic rows the cases also check that no prefix mass
lies within 1e-10 (relative) of `tau * total` (`_margin`): there a different last bit of the total cannot flip a
decision, and an equality failure is a real bug.

The sort-free bisection algorithm (`nonneg=True`, scores >= 0) must give the same masks, lists and counts as the
reference and as the sort algorithm: on every case above whose scores are >= 0 and on rows built for it (ties at the
crossing, thresholds landing exactly on a prefix mass with dyadic scores, -0.0, several rows per program). Its row
sums use another order than the reference's cumsum, so the same margin rule applies to its non-dyadic rows.

The interpreter cases run in one subprocess (this file as a script, TRITON_INTERPRET=1 set before triton is
imported); each test reads its verdict. The GPU cases repeat them compiled.
"""
from __future__ import annotations

import itertools
import math
import subprocess
import sys

import pytest
import torch
from sparsebench.methods.xattn import block_mask_to_selection, find_blocks

from sparsebench.testing import assert_verdict, report_verdicts

MARGIN = 1e-10


def _scores(kind, B, H, NQc, qb0, T, S, bs, seed, dtype="float32"):
    g = torch.Generator().manual_seed(seed)
    NK = -(-S // bs)
    if kind in ("softmax", "peaked"):
        temp = 3.0 if kind == "softmax" else 14.0
        logits = torch.randn(B, H, NQc, NK * 8, generator=g, dtype=torch.float64) * temp
        x = torch.softmax(logits, -1).view(B, H, NQc, NK, 8).sum(-1).float() * 4
    elif kind == "estimator":
        from sparsebench.kernels.antidiag_score import antidiag_block_scores_naive

        q = torch.randn(B, H, T, 16, generator=g)
        k = torch.randn(B, 1, S, 16, generator=g) * 2
        st = 4
        x = antidiag_block_scores_naive(q, k, st, bs, 1.0 / (4 * st), qb0 * bs, min((qb0 + NQc) * bs, T))
    elif kind == "dyadic":  # multiples of 1/8 in [0, 1): ties everywhere, exact sums
        x = torch.randint(0, 8, (B, H, NQc, NK), generator=g).float() / 8
    elif kind == "signed":  # dyadic in [-2, 2): -1.0 ties the non-causal key, -0.0 ties 0.0
        x = torch.randint(-16, 16, (B, H, NQc, NK), generator=g).float() / 8
        x[torch.rand(x.shape, generator=g) < 0.1] = -0.0
    elif kind == "zeros":
        x = torch.zeros(B, H, NQc, NK)
    else:
        raise ValueError(kind)
    return x.to(getattr(torch, dtype))


def _tau(tau, H):
    return torch.tensor(tau, dtype=torch.float64) if isinstance(tau, list) else tau


def _ref_lists(mask):
    """block_mask_to_selection's order for any chunk: the stable partition, kept blocks first."""
    return torch.argsort((~mask).to(torch.int8), dim=-1, stable=True).to(torch.int32), mask.sum(-1, dtype=torch.int32)


def _ref_intermediates(scores, T, S, bs, qb0):
    """The reference's sorted order, float64 mass before each sorted item and row total (`find_blocks`'s steps)."""
    NK = scores.shape[-1]
    off = S - T
    qb = torch.arange(qb0, qb0 + scores.shape[2])[:, None]
    p_lo, p_hi = qb * bs + off, torch.clamp((qb + 1) * bs, max=T) - 1 + off
    kb = torch.arange(NK)[None, :]
    causal = kb * bs <= p_hi
    forced = (kb == 0) | ((kb >= p_lo // bs) & (kb <= p_hi // bs))
    s = torch.where(causal, scores, 0)
    key = torch.where(forced, math.inf, torch.where(causal, s, -1.0))
    order = torch.argsort(key, dim=-1, descending=True, stable=True)
    incl = torch.gather(s, -1, order).double().cumsum(-1)
    before = torch.cat([torch.zeros_like(incl[..., :1]), incl[..., :-1]], -1)
    return order, before, s.double().sum(-1)


def _margin(scores, tau, T, S, bs, qb0):
    """Smallest |mass before item - tau * total| / total over the rows with 0 < tau < 1 and a non-zero total,
    replaying the reference's order (inf if there is none)."""
    H = scores.shape[1]
    _, before, total = _ref_intermediates(scores, T, S, bs, qb0)
    total = total[..., None]
    t = torch.as_tensor(tau, dtype=torch.float64).view(-1, 1, 1).expand(H, 1, 1)
    rel = (before - total * t).abs() / total
    ok = (t > 0) & (t < 1) & (total > 0)
    return rel[ok.expand_as(rel)].min().item() if ok.any() else math.inf


def _p(name, B, H, NQc, qb0, T, S, bs, tau, kind, seed=0, dtype="float32", api="lists"):
    return pytest.param((B, H, NQc, qb0, T, S, bs, tau, kind, seed, dtype, api), id=name)


CASES = [
    # hand-made rows (blocks of 1, as in tests/methods/test_xattn.py): crossing block kept, strict boundary
    _p("cross-0.5", 1, 1, 1, 3, 4, 4, 1, 0.5, [1.0, 5.0, 3.0, 2.0]),
    _p("cross-0.73", 1, 1, 1, 3, 4, 4, 1, 0.73, [1.0, 5.0, 3.0, 2.0]),
    _p("cross-boundary", 1, 1, 1, 3, 4, 4, 1, 8 / 11 - 1e-12, [1.0, 5.0, 3.0, 2.0]),
    _p("exactly-at-required", 1, 1, 1, 3, 4, 4, 1, 0.5, [1.0, 2.0, 2.0, 3.0]),  # before(2) = 4 == 8 * 0.5: dropped
    _p("tiny-tau", 1, 1, 1, 4, 6, 6, 1, 1e-9, [0.001, 9.0, 9.0, 9.0, 0.001, 0.0]),
    _p("tau-1-zero-causal", 1, 1, 1, 4, 6, 6, 1, 1.0, [0.5, 0.0, 3.0, 0.0, 1.0, 7.0]),
    _p("tau-1.5", 1, 1, 1, 4, 6, 6, 1, 1.5, [0.5, 0.0, 3.0, 0.0, 1.0, 7.0]),
    _p("ties-lower-first", 1, 1, 1, 4, 5, 5, 1, 0.4, [1.0, 3.0, 3.0, 3.0, 1.0]),
    _p("offset-two-diag", 1, 1, 1, 0, 4, 10, 4, 0.0, [0.0, 0.0, 0.0]),
    _p("offset-one-diag", 1, 1, 1, 0, 2, 10, 4, 0.0, [0.0, 5.0, 1.0]),
    _p("per-head", 1, 3, 1, 3, 4, 4, 1, [0.0, 0.5, 1.0], [1.0, 5.0, 3.0, 2.0]),
    _p("zero-row-tau-0.5", 1, 1, 1, 5, 6, 6, 1, 0.5, [0.0] * 6),
    _p("signed-hand", 1, 1, 1, 3, 6, 9, 1, 0.6, [0.5, -1.0, -0.0, 5.0, 0.0, -2.5, 0.25, 1.0, -1.0]),
    _p("single-block", 1, 1, 1, 0, 50, 50, 64, 0.5, [0.7]),
    # random rows
    _p("softmax-0.9-ragged", 2, 3, 16, 0, 1000, 1000, 64, 0.9, "softmax", 1),
    _p("softmax-0.5-chunk", 1, 4, 7, 5, 2000, 2000, 128, 0.5, "softmax", 2),
    _p("softmax-0.9-offset", 1, 2, 9, 3, 1500, 2222, 100, 0.9, "softmax", 3),
    _p("softmax-per-head", 1, 4, 12, 20, 4000, 4000, 128, [0.0, 0.5, 0.9, 1.0], "softmax", 4),
    _p("softmax-per-head-1.2", 2, 2, 8, 0, 1024, 1024, 128, [1.2, 0.7], "softmax", 5),
    _p("softmax-0-chunk", 1, 2, 9, 7, 2048, 3000, 128, 0.0, "softmax", 6),
    _p("softmax-1.0", 1, 2, 9, 0, 1100, 1100, 128, 1.0, "softmax", 7),
    _p("peaked-0.9", 1, 4, 24, 8, 4000, 4000, 128, 0.9, "peaked", 8),
    _p("peaked-0.95-offset", 1, 2, 10, 2, 1500, 4444, 128, 0.95, "peaked", 9),
    _p("peaked-0.5-bf16", 1, 2, 6, 0, 768, 768, 128, 0.5, "peaked", 10, "bfloat16"),
    _p("estimator-0.9", 1, 2, 16, 0, 1000, 1000, 64, 0.9, "estimator", 11),
    _p("estimator-0.6-chunk", 1, 2, 5, 4, 700, 1111, 64, 0.6, "estimator", 12),
    _p("dyadic-0.5", 2, 2, 10, 0, 1200, 1200, 128, 0.5, "dyadic", 13),
    _p("dyadic-0.9-chunk", 1, 3, 6, 3, 1200, 1500, 64, 0.9, "dyadic", 14),
    _p("dyadic-per-head", 1, 3, 16, 0, 2048, 2048, 128, [0.0, 0.25, 0.75], "dyadic", 15),
    _p("signed-0.5", 1, 2, 12, 0, 768, 800, 64, 0.5, "signed", 16),
    _p("signed-0.9-fp16", 1, 2, 6, 2, 512, 512, 64, 0.9, "signed", 17, "float16"),
    _p("zeros-0.9", 1, 2, 3, 1, 400, 400, 128, 0.9, "zeros", 18),
    _p("mask-only", 1, 2, 9, 2, 1500, 1600, 128, 0.9, "softmax", 19, api="mask"),
    _p("out-views", 1, 2, 6, 4, 1400, 1400, 128, 0.8, "softmax", 20, api="out"),
    # a realistic width (128K tokens / 128) and one past 4096 lanes
    _p("nk1024-0.9", 1, 1, 2, 1000, 131072, 131072, 128, 0.9, "softmax", 21),
    _p("nk1024-peaked-offset", 1, 1, 1, 30, 4000, 131072, 128, 0.95, "peaked", 22),
    _p("nk5000-0.9", 1, 1, 1, 4990, 640000, 640000, 128, 0.9, "softmax", 23),
]


def _sort_probe_check(case):
    """The two sort paths of `_sort_rows` (the interpreter's bitonic network and `tl.sort`, which the compiled kernel
    uses) agree with torch.sort on [R, 2**LOG] tiles of unique keys, both directions, int64 and int32."""
    import triton.language as tl
    from sparsebench.kernels._jit import jit_with_helpers
    from sparsebench.kernels.antidiag_score import select

    R, LOG, dtype = case

    def probe(X, Y, R: tl.constexpr, LOG: tl.constexpr, DESC: tl.constexpr, NET: tl.constexpr):
        offs = tl.arange(0, R)[:, None] * (1 << LOG) + tl.arange(0, 1 << LOG)[None, :]
        tl.store(Y + offs, _sort_rows(tl.load(X + offs), LOG, DESC, NET))  # noqa: F821 (bound below)

    kern = jit_with_helpers((probe,), (select._sort_rows,))[0]
    g = torch.Generator().manual_seed(LOG)
    # unique keys of both signs, spread over the high bits of the type
    mult, lo = (2**41 + 3, -2**62) if dtype == "int64" else (1021, -2**29)
    x = torch.stack([torch.randperm(2**20, generator=g)[:1 << LOG] * mult + lo for _ in range(R)])
    x = x.to(getattr(torch, dtype))
    for desc in (False, True):
        want = torch.sort(x, dim=1, descending=desc).values
        for net in (True, False):
            y = torch.empty_like(x)
            kern[(1,)](x, y, R=R, LOG=LOG, DESC=desc, NET=net)
            assert torch.equal(y, want), f"descending={desc}, network={net}"


SORT_CASES = [pytest.param((4, 4, "int64"), id="sort-R4-LOG4-int64"),
              pytest.param((2, 5, "int32"), id="sort-R2-LOG5-int32")]


def _case_scores(case):
    B, H, NQc, qb0, T, S, bs, _, kind, seed, dtype, _ = case
    if isinstance(kind, list):
        return torch.tensor(kind, dtype=getattr(torch, dtype)).view(1, 1, 1, -1).expand(B, H, NQc, -1).contiguous()
    return _scores(kind, B, H, NQc, qb0, T, S, bs, seed, dtype)


def _reference(case):
    """A case's scores and threshold, the reference mask and its lists, once the case is checked fit for an exact
    comparison (shapes; rows far enough from a rounding tie)."""
    _, H, NQc, qb0, T, S, bs, tau, kind, _, _, _ = case
    scores = _case_scores(case)
    assert scores.shape[-1] == -(-S // bs) and qb0 + NQc <= -(-T // bs), "bad case"
    if kind in ("softmax", "peaked", "estimator"):
        margin = _margin(scores.float(), tau, T, S, bs, qb0)
        assert margin > MARGIN, f"case too close to a rounding tie for an exact comparison (margin {margin:.3g})"
    thr = _tau(tau, H)
    ref = find_blocks(scores, thr, T, S, bs, qb0)
    return scores, thr, ref, *_ref_lists(ref)


def _select(scores, thr, case, device, **kw):
    """`select_blocks_triton(..., return_mask=True)` for the case; with api "out", into the rows of a longer
    selection, checking that its other rows stay untouched."""
    from sparsebench.kernels.antidiag_score.select import select_blocks_triton

    B, H, NQc, qb0, T, S, bs, _, _, _, _, api = case
    if api != "out":
        return select_blocks_triton(scores, thr, T, S, bs, qb0, return_mask=True, **kw)
    idx_all = torch.full((B, H, NQc + 5, scores.shape[-1]), -7, dtype=torch.int32, device=device)
    cnt_all = torch.full((B, H, NQc + 5), -7, dtype=torch.int32, device=device)
    out = (idx_all[:, :, 2:2 + NQc], cnt_all[:, :, 2:2 + NQc])
    idx, cnt, mask = select_blocks_triton(scores, thr, T, S, bs, qb0, out=out, return_mask=True, **kw)
    assert idx.data_ptr() == out[0].data_ptr()
    rest = torch.cat([idx_all[:, :, :2], idx_all[:, :, 2 + NQc:]], 2)
    assert (rest == -7).all() and (cnt_all[:, :, :2] == -7).all() and (cnt_all[:, :, 2 + NQc:] == -7).all()
    return idx, cnt, mask


def _check(case, device="cpu"):
    from sparsebench.kernels.antidiag_score.select import _debug_masses, find_blocks_triton

    _, H, NQc, qb0, T, S, bs, _, kind, _, _, api = case
    scores, thr, ref, ref_idx, ref_cnt = _reference(case)
    if qb0 == 0 and NQc == -(-T // bs):  # a whole selection: the method's own list builder
        sel = block_mask_to_selection(ref, block_size=bs, q_len=T, k_len=S, num_heads=H, num_kv_heads=1)
        assert torch.equal(sel.kv_indices, ref_idx) and torch.equal(sel.kv_counts, ref_cnt)
    scores, thr = scores.to(device), thr.to(device) if isinstance(thr, torch.Tensor) else thr
    # the intermediates: the sorted order always equals the reference's; under the interpreter the masses before
    # each item are torch's CPU cumsum bit for bit, and the row total too where every sum is exact (dyadic rows)
    order, before, total = (t.cpu() for t in _debug_masses(scores, thr, T, S, bs, qb0))
    ref_order, ref_before, ref_total = _ref_intermediates(scores.cpu(), T, S, bs, qb0)
    assert torch.equal(order, ref_order.to(torch.int32)), "sorted order differs"
    if device == "cpu":
        assert torch.equal(before, ref_before), "prefix masses differ"
    if isinstance(kind, list) or kind in ("dyadic", "signed", "zeros"):
        assert torch.equal(total, ref_total), "row totals differ"
    else:
        torch.testing.assert_close(total, ref_total, rtol=1e-14, atol=0)
    if api == "mask":
        mask = find_blocks_triton(scores, thr, T, S, bs, qb0).cpu()
        assert torch.equal(mask, ref), f"{(mask != ref).sum().item()} blocks differ"
        return
    idx, cnt, mask = (t.cpu() for t in _select(scores, thr, case, device))
    assert idx.dtype == cnt.dtype == torch.int32
    assert torch.equal(mask, ref), f"{(mask != ref).sum().item()} blocks differ"
    assert torch.equal(cnt, ref_cnt), "counts differ"
    assert torch.equal(idx, ref_idx), "lists differ"


def _nonneg(case):
    kind = case.values[0][8]
    return all(v >= 0 for v in kind) if isinstance(kind, list) else kind != "signed"


def _boundary_taus(scores, T, S, bs, qb0):
    """Thresholds that land exactly on each distinct mass before an item of a one-row dyadic case whose row total is
    a power of two (so `tau * total` is exact), and halfway between neighbouring ones."""
    x = torch.tensor(scores).view(1, 1, 1, -1)
    _, before, total = _ref_intermediates(x, T, S, bs, qb0)
    assert total.item() == 8.0
    m = sorted(set(before.flatten().tolist()))
    on = [b / 8 for b in m]
    return on + [(a + b) / 16 for a, b in itertools.pairwise(m)]


_ROW8 = [0.5, 1.0, 0.25, 2.0, 0.25, 1.0, 0.5, 1.5, 0.5, 0.5]  # dyadic, sums to 8, ties of 0.25, 0.5 and 1.0
_TIES8 = [2.0, 1.0, 1.0, 1.0, 1.0, 2.0]  # forced 0 and 5 first (mass 4), then four tied blocks
_TAUS8 = _boundary_taus(_ROW8, 10, 10, 1, 9)

BISECT_CASES = [pytest.param(c.values[0], id="bisect-" + c.id) for c in CASES if _nonneg(c)] + [
    # every exact boundary of one row (one head each), and between them
    _p("bisect-boundary-heads", 1, len(_TAUS8), 1, 9, 10, 10, 1, _TAUS8, _ROW8),
    # the crossing inside a group of ties: required 5 keeps block 1 (before 4), drops block 2 (before 5)
    _p("bisect-ties-crossing", 1, 4, 1, 5, 6, 6, 1, [0.5, 0.625, 0.7, 0.75], _TIES8),
    _p("bisect-neg-zero", 1, 2, 1, 5, 6, 6, 1, [0.5, 0.0], [0.5, -0.0, 0.0, 2.0, -0.0, 1.0]),
    # dyadic rows with exact boundaries hit (checked below), 24 rows of 24 blocks in one program
    _p("bisect-dyadic-boundary-rows", 1, 3, 24, 0, 1536, 1536, 64, [0.5, 0.25, 0.75], "dyadic", 30),
    _p("bisect-dyadic-boundary-offset", 2, 2, 12, 3, 1000, 1700, 64, [0.5, 0.25], "dyadic", 31),
    _p("bisect-softmax-rows-nk13", 1, 2, 13, 0, 832, 832, 64, 0.7, "softmax", 32),
    _p("bisect-zeros-tau-1", 1, 2, 3, 1, 400, 400, 128, [1.0, 0.0], "zeros", 33),
    _p("bisect-mask-only-offset", 1, 2, 7, 1, 900, 1300, 128, [0.3, 0.95], "peaked", 34, api="mask"),
]


def _check_bisect(case, device="cpu"):
    """The bisection path: the reference's mask, lists and counts through the wrapper's lists, mask-only and `out`
    entry points; and the sort path's, run here too on the cases that CASES does not already hold (those compare the
    sort path with the same reference)."""
    from sparsebench.kernels.antidiag_score.select import find_blocks_triton, select_blocks_triton

    _, _, _, qb0, T, S, bs, _, _, _, _, api = case
    scores, thr, ref, ref_idx, ref_cnt = _reference(case)
    # the caller's promise, checked on the host here only (the kernel trusts it)
    assert (scores >= 0).all(), "the bisection path needs scores >= 0"
    scores, thr = scores.to(device), thr.to(device) if isinstance(thr, torch.Tensor) else thr
    vs_sort = not any(case == c.values[0] for c in CASES)
    if api == "mask":
        for nonneg in (False, True) if vs_sort else (True,):
            mask = find_blocks_triton(scores, thr, T, S, bs, qb0, nonneg=nonneg).cpu()
            assert torch.equal(mask, ref), f"nonneg={nonneg}: {(mask != ref).sum().item()} blocks differ"
        return
    idx, cnt, mask = (t.cpu() for t in _select(scores, thr, case, device, nonneg=True))
    assert idx.dtype == cnt.dtype == torch.int32
    assert torch.equal(mask, ref), f"{(mask != ref).sum().item()} blocks differ"
    assert torch.equal(cnt, ref_cnt), "counts differ"
    assert torch.equal(idx, ref_idx), "lists differ"
    if vs_sort:
        sort_idx, sort_cnt, sort_mask = (t.cpu() for t in select_blocks_triton(scores, thr, T, S, bs, qb0,
                                                                               return_mask=True))
        assert torch.equal(sort_mask, mask), "sort path: masks differ"
        assert torch.equal(sort_cnt, cnt) and torch.equal(sort_idx, idx), "sort path: lists differ"


# ---------------------------------------------------------------------------------------------- CPU
def test_bisect_cases_cover_exact_boundaries():
    """The boundary cases really put `tau * total` exactly on a mass before some item (margin 0), several times,
    and the tie case crosses inside its group of ties; every bisection case has scores >= 0."""
    by_id = {c.id: c.values[0] for c in BISECT_CASES}
    for cid in ("bisect-boundary-heads", "bisect-dyadic-boundary-rows", "bisect-dyadic-boundary-offset",
                "bisect-exactly-at-required", "bisect-ties-crossing"):
        case = by_id[cid]
        _, H, NQc, qb0, T, S, bs, tau = case[:8]
        scores = _case_scores(case)
        _, before, total = _ref_intermediates(scores, T, S, bs, qb0)
        t = torch.as_tensor(tau, dtype=torch.float64).view(-1, 1, 1).expand(H, 1, 1)
        hits = ((before == total[..., None] * t) & (t > 0) & (t < 1)).sum().item()
        assert hits >= (3 if NQc > 1 or H > 4 else 1), f"{cid}: {hits} exact boundaries"
    for c in BISECT_CASES:
        assert (_case_scores(c.values[0]) >= 0).all(), c.id


def test_cases_are_far_from_rounding_ties():
    """The margin guard itself: the hand-made boundary row has margin 0; the random rows clear MARGIN (checked
    again inside every case)."""
    s = torch.tensor([1.0, 2.0, 2.0, 3.0]).view(1, 1, 1, 4)
    assert _margin(s, 0.5, 4, 4, 1, 3) == 0.0
    assert _margin(s, 0.0, 4, 4, 1, 3) == math.inf


def test_import_is_lazy():
    code = ("import sys, sparsebench.kernels.antidiag_score, sparsebench.methods.xattn; "
            "assert 'triton' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_arguments_raise():
    from sparsebench.kernels.antidiag_score.select import MAX_NK, select_blocks_triton

    s = torch.rand(1, 2, 1, 4)
    with pytest.raises(ValueError, match="exceed MAX_NK"):
        select_blocks_triton(torch.zeros(1, 1, 1, MAX_NK + 1), 0.9, 128, (MAX_NK + 1) * 128, 128, 0)
    with pytest.raises(ValueError, match="per-head threshold has 3 values"):
        select_blocks_triton(s, torch.tensor([0.1, 0.2, 0.3]), 4, 4, 1, 3)
    with pytest.raises(ValueError, match="q_len <= k_len"):
        select_blocks_triton(s, 0.5, 8, 4, 1, 0)
    with pytest.raises(ValueError, match="fp32/fp16/bf16"):
        select_blocks_triton(s.double(), 0.5, 4, 4, 1, 3)
    with pytest.raises(ValueError, match="out must be"):
        select_blocks_triton(s, 0.5, 4, 4, 1, 3, out=(torch.empty(1, 2, 1, 4, dtype=torch.int64),
                                                       torch.empty(1, 2, 1, dtype=torch.int32)))


def test_launch_config():
    from sparsebench.kernels.antidiag_score.select import MAX_NK, launch_config

    assert launch_config(1024, 1024) == (10, 1, 4)  # 128K tokens at block 128: one row a program, 4 warps
    assert launch_config(64, 1024) == (6, 16, 4)  # short rows share a program
    assert launch_config(5, 3) == (4, 4, 1)
    assert launch_config(MAX_NK, 8) == (13, 1, 32)


@pytest.mark.parametrize("case", CASES)
def test_select_kernel_equals_reference_interpret(case, request, interpret_verdicts):
    assert_verdict(interpret_verdicts, request)


@pytest.mark.parametrize("case", SORT_CASES)
def test_sort_paths_agree_interpret(case, request, interpret_verdicts):
    assert_verdict(interpret_verdicts, request)


@pytest.mark.parametrize("case", BISECT_CASES)
def test_bisect_kernel_equals_reference_interpret(case, request, interpret_verdicts):
    assert_verdict(interpret_verdicts, request)


# ---------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", CASES)
def test_select_kernel_equals_reference_gpu(case):
    """Compiled: the reference runs on the CPU (torch's sequential cumsum); the kernel's float64 scan and total are
    GPU reduction trees, which cannot flip a decision in these cases (margin check)."""
    _check(case, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", BISECT_CASES)
def test_bisect_kernel_equals_reference_gpu(case):
    """The bisection path compiled: its float64 row sums are GPU reduction trees (margin check as above)."""
    _check_bisect(case, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("tau", [0.9, "heads"])
def test_select_kernel_128k_gpu(tau):
    """128K tokens, Llama-3.1-8B heads (B=1, H=32, NQ = NK = 1024), realistic estimator-like rows: the kernel (sort
    and bisection algorithms) equals the torch path on the GPU (lists and counts) and prints the times."""
    import time

    from sparsebench.kernels.antidiag_score.select import select_blocks_triton

    B, H, N, bs = 1, 32, 131072, 128
    NK = N // bs
    g = torch.Generator(device="cuda").manual_seed(0)
    logits = torch.randn(B, H, NK, NK * 16, device="cuda", generator=g) * 4
    scores = torch.softmax(logits, -1).view(B, H, NK, NK, 16).sum(-1) * 16
    del logits
    thr = torch.linspace(0.5, 0.95, H, device="cuda", dtype=torch.float64) if tau == "heads" else tau

    def torch_path():
        m = find_blocks(scores, thr, N, N, bs)
        sel = block_mask_to_selection(m, block_size=bs, q_len=N, k_len=N, num_heads=H, num_kv_heads=8)
        return sel.kv_indices, sel.kv_counts

    def kernel():
        return select_blocks_triton(scores, thr, N, N, bs)

    def bisect():
        return select_blocks_triton(scores, thr, N, N, bs, nonneg=True)

    times = {}
    for name, fn in (("torch", torch_path), ("kernel", kernel), ("bisect", bisect)):
        out = fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(10):
            fn()
        torch.cuda.synchronize()
        times[name] = (time.perf_counter() - t0) / 10 * 1e3
        times[name + "_out"] = out
    print(f"select 128K H=32: torch {times['torch']:.2f} ms, kernel {times['kernel']:.2f} ms, "
          f"bisect {times['bisect']:.2f} ms")
    ref_idx, ref_cnt = times["torch_out"]
    for name in ("kernel", "bisect"):
        idx, cnt = times[name + "_out"]
        assert torch.equal(cnt, ref_cnt), name
        assert torch.equal(idx, ref_idx), name


if __name__ == "__main__" and sys.argv[1:] == ["--interpret"]:
    report_verdicts(_check, CASES)
    report_verdicts(_sort_probe_check, SORT_CASES)
    report_verdicts(_check_bisect, BISECT_CASES)
