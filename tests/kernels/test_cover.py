"""kernels/cover: FlexPrefill's cover counts and global cover by bisection, against the sort-and-scan reference (CPU:
the interpreter in one subprocess; GPU: compiled), on softmax rows, ties on a binary grid (where every sum is
exact), rows within the target, and FlexPrefill's block selection through it equal to its selection through torch."""
from __future__ import annotations

import sys

import pytest
import torch

from sparsebench.kernels.cover import cover_count_naive, cover_mask_naive
from sparsebench.testing import assert_verdict, report_verdicts, switched


def _rows(kind: str, R: int, N: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "grid":  # values on a binary grid: every running sum exact, many ties at the cut
        return torch.randint(0, 5, (R, N), generator=g).float() / 64
    if kind == "band":  # one narrow band on a binary grid: every entry shares the first three digits, sums exact
        return 1 + torch.randint(0, 100, (R, N), generator=g).float() / 1024
    return torch.softmax(torch.randn(R, N, generator=g) * 3, -1)


def _tril_rows(R: int, nb: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    above = torch.ones(nb, nb, dtype=torch.bool).triu(1)
    return torch.softmax(torch.randn(R, nb, nb, generator=g).masked_fill(above, float("-inf")), -1).view(R, -1)


COUNT_CASES = [pytest.param(c, id="count-{}-{}x{}-t{}-b{}".format(*c)) for c in (
    ("soft", 3, 100, 0.95, 64), ("soft", 2, 1000, 0.5, 256), ("soft", 2, 37, 1.5, 16), ("grid", 3, 300, 0.5, 64),
    ("grid", 2, 64, 0.25, 16), ("grid", 2, 200, 100.0, 64))]
MASK_CASES = [pytest.param(c, id="mask-{}-{}x{}-t{}-b{}".format(*c)) for c in (
    ("soft", 2, 12, 0.95, 32), ("soft", 3, 20, 0.5, 64), ("grid", 2, 12, 3.0, 32), ("grid", 2, 16, 1000.0, 64))]


def _check_count(case, device="cpu"):
    from sparsebench.kernels.cover import cover_count_triton

    kind, R, N, target, block = case
    x = _rows(kind, R, N).to(device)
    got = cover_count_triton(x, target, chunk=2 * block, block=block)  # several chunks a row
    want = cover_count_naive(x.cpu(), target)
    assert got.dtype == torch.int64
    if device == "cuda" and kind == "soft" and N > 10000:
        # long softmax rows on the GPU: the running sums' rounding may move a count by one entry (see below)
        assert (got.cpu() - want).abs().max().item() <= 1
    else:
        assert torch.equal(got.cpu(), want)


def _check_mask(case, device="cpu"):
    from sparsebench.kernels.cover import cover_mask_triton

    kind, R, nb, gamma, block = case
    x = (_tril_rows(R, nb) if kind == "soft" else _rows("grid", R, nb * nb)).to(device)
    target = gamma * nb if kind == "soft" else gamma
    got = cover_mask_triton(x, target, nb, chunk=2 * block, block=block)
    assert got.dtype == torch.bool and torch.equal(got.cpu(), cover_mask_naive(x.cpu(), target, nb))


def _check_pair(case):
    """Counts of one matrix and the mask of another (other row lengths) in one set of launches: each equal to the
    reference."""
    from sparsebench.kernels.cover import cover_pair_triton

    (kind, R, N, target), (kind2, R2, nb, target2), block = case
    x = _rows(kind, R, N, seed=1)
    x2 = _tril_rows(R2, nb, seed=2) if kind2 == "soft" else _rows(kind2, R2, nb * nb, seed=2)
    cnt, mask = cover_pair_triton(x, target, x2, target2, nb, chunk=2 * block, block=block)
    assert torch.equal(cnt, cover_count_naive(x, target))
    assert torch.equal(mask, cover_mask_naive(x2, target2, nb))


def _check_skip(case):
    """Rows flagged in `skip` are left out (count 0, mask row all False); every other row as the reference."""
    from sparsebench.kernels.cover import cover_pair_triton

    (kind, R, N, target), (kind2, R2, nb, target2), block, flags = case
    x = _rows(kind, R, N, seed=1)
    x2 = _tril_rows(R2, nb, seed=2) if kind2 == "soft" else _rows(kind2, R2, nb * nb, seed=2)
    skip = torch.tensor(flags, dtype=torch.bool)
    cnt, mask = cover_pair_triton(x, target, x2, target2, nb, chunk=2 * block, block=block, skip=skip)
    sc, sm = skip[:R], skip[R:]
    assert torch.equal(cnt[~sc], cover_count_naive(x, target)[~sc]) and (cnt[sc] == 0).all()
    assert torch.equal(mask[~sm], cover_mask_naive(x2, target2, nb)[~sm]) and not mask[sm].any()
    # the single-matrix calls take `skip` too (their own rows only)
    from sparsebench.kernels.cover import cover_count_triton, cover_mask_triton

    assert torch.equal(cover_count_triton(x, target, chunk=2 * block, block=block, skip=sc), cnt)
    assert torch.equal(cover_mask_triton(x2, target2, nb, chunk=2 * block, block=block, skip=sm), mask)


SKIP_CASES = [pytest.param((("soft", 3, 300, 0.95), ("soft", 3, 12, 0.95 * 12), 32, (1, 0, 1, 0, 1, 0)),
                           id="skip-soft"),
              pytest.param((("grid", 2, 40, 0.5), ("grid", 2, 16, 3.0), 16, (0, 1, 1, 0)), id="skip-grid")]


def _check_upper(case):
    """`SKIP_UPPER`: mask rows whose blocks lie wholly above the diagonal skip them (blocks and compaction blocks
    shorter than the matrix rows, so that some do); the same mask, alone and paired with counts."""
    import sparsebench.kernels.cover.triton as CT

    kind, R, nb, gamma, block = case
    x = _tril_rows(R, nb) if kind == "soft" else _rows("grid", R, nb * nb)
    target = gamma * nb if kind == "soft" else gamma
    want = cover_mask_naive(x, target, nb)
    with switched(CT, SKIP_UPPER=True):
        got = CT.cover_mask_triton(x, target, nb, chunk=8 * block, block=block)
        cnt, mask = CT.cover_pair_triton(_rows("soft", 2, 300, seed=3), 0.9, x, target, nb, chunk=8 * block,
                                         block=block)
    assert torch.equal(got, want) and torch.equal(mask, want)
    assert torch.equal(cnt, cover_count_naive(_rows("soft", 2, 300, seed=3), 0.9))


UPPER_CASES = [pytest.param(c, id="upper-{}-{}x{}-t{}-b{}".format(*c)) for c in (
    ("soft", 2, 32, 0.95, 4), ("grid", 1, 32, 3.0, 4))]


def _check_empty_exit(case):
    """`EMPTY_EXIT`: the candidates' digit launches and the ties' launch return at once in chunks past a row's
    candidates (rows of several chunks whose candidates fill the first ones): the same counts and mask."""
    import sparsebench.kernels.cover.triton as CT

    with switched(CT, EMPTY_EXIT=True):
        _check_pair(case)


def _check_unroll(case):
    """`HIST_UNROLL`: the digit launches walk two blocks a step without the skip tests (the chunks here are two
    blocks long): the same counts and mask, rows left out or not."""
    import sparsebench.kernels.cover.triton as CT

    with switched(CT, HIST_UNROLL=4):
        if len(case) == 4:
            _check_skip(case)
        else:
            _check_pair(case)


PAIR_CASES = [pytest.param((("soft", 3, 300, 0.95), ("soft", 2, 12, 0.95 * 12), 32), id="pair-soft-longer-counts"),
              pytest.param((("grid", 2, 40, 0.5), ("grid", 3, 16, 3.0), 16), id="pair-grid-longer-masks")]


def _check_flex(case):
    """FlexPrefill's official block selection with `_COVER_KERNEL` equals its selection through torch's sorts."""
    import sparsebench.methods.flexprefill as fp

    T, H, HKV, D, seed = case
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(1, H, T, D, generator=g), torch.randn(1, HKV, T, D, generator=g)
    q[:, 0] *= 4  # a peaked head, vertical-slash beside the flat ones' query-aware pattern
    kw = dict(gamma=0.9, tau=0.1, minb=2, maxb=10**9, block_size=32, scale=D ** -0.5)
    with switched(fp, _COVER_KERNEL=False):
        want = fp.official_block_mask(q, k, **kw)
    # with and without leaving out the rows the rule does not use (a mix of query-aware and vertical-slash heads)
    for skip in (True, False):
        with switched(fp, _COVER_KERNEL=True, _COVER_SKIP=skip):
            got = fp.official_block_mask(q, k, **kw)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert 0 < want[1].sum() < want[1].numel()


FLEX_CASES = [pytest.param(c, id="flex-T{}-H{}-HKV{}-D{}-s{}".format(*c)) for c in ((640, 4, 2, 32, 0),
                                                                                      (700, 2, 1, 64, 1))]
# rows in one narrow band: every entry is a candidate, over several 32-entry chunks, and the later digits decide
EXIT_CASES = [pytest.param((("band", 2, 300, 150.0), ("band", 2, 32, 277.0), 16), id="exit-band-spans-chunks"),
              pytest.param((("soft", 2, 300, 0.95), ("soft", 2, 24, 0.95 * 24), 16), id="exit-soft")]


UNROLL_CASES = [pytest.param(c.values[0], id=f"unroll-{c.id}") for c in PAIR_CASES + SKIP_CASES + EXIT_CASES]


def _resident_rows(kind: str, R: int, n: int, cols: int, seed: int) -> torch.Tensor:
    """R rows for the resident cases: `n` entries (counts; cols 0) or an (n / cols) x cols matrix each (masks), of
    `_rows`' kinds, "tril" (softmax rows of a causal matrix), or "zero" (all zero: the row within any target >= 0)."""
    if kind == "tril":
        return _tril_rows(R, cols, seed=seed)
    if kind == "zero":
        return torch.zeros(R, n)
    return _rows(kind, R, n, seed=seed)


def _check_resident(case):
    """`RESIDENT`: one launch, one program a row, the row in registers (lines of several entries a thread here: the
    small tiles take one warp). Counts and mask equal to the reference where the sums are exact (grid and band rows,
    all-zero rows, rows within the target, target 0) and to the launches it replaces everywhere (softmax rows too),
    alone and paired, rows left out or not. A count matrix `(kind, R, N, target)`, a mask matrix `(kind, R2, N2,
    cols, target2)`; options: `skip` flags, `max` for `RESIDENT_MAX` (longer rows take the launches: the same
    results)."""
    import sparsebench.kernels.cover.triton as CT

    (kind, R, N, target), (kind2, R2, N2, cols, target2), opts = case
    x = _resident_rows(kind, R, N, 0, seed=3)
    x2 = _resident_rows(kind2, R2, N2, cols, seed=4)
    skip = None if opts.get("skip") is None else torch.tensor(opts["skip"], dtype=torch.bool)
    limit = opts.get("max", CT.RESIDENT_MAX)
    with switched(CT, RESIDENT=False):
        old = CT.cover_pair_triton(x, target, x2, target2, cols, chunk=32, block=16, skip=skip)
    with switched(CT, RESIDENT=True, RESIDENT_MAX=limit):
        assert CT._resident_fits(x, x2, cols) == (max(N, CT._support_len(N2, cols)) <= limit)
        got = (CT.cover_count_triton(x, target), CT.cover_mask_triton(x2, target2, cols))
        pair = CT.cover_pair_triton(x, target, x2, target2, cols, skip=skip)
    with switched(CT, RESIDENT=False, RESIDENT_MAX=limit):  # the per-call switch (FlexPrefill's counts)
        assert torch.equal(CT.cover_count_triton(x, target, resident=True), got[0])
        assert CT._resident_fits(x, None, 1, True) == (N <= limit) and not CT._resident_fits(x, None, 1)
        # (FlexPrefill's global cover)
        assert torch.equal(CT.cover_mask_triton(x2, target2, cols, resident=True), got[1])
        assert CT._resident_fits(None, x2, cols, True) == (CT._support_len(N2, cols) <= limit)
    assert got[0].dtype == torch.int64 and got[1].dtype == torch.bool and got[1].shape == x2.shape
    if kind != "soft" and kind2 != "tril":
        assert torch.equal(got[0], cover_count_naive(x, target))
        assert torch.equal(got[1], cover_mask_naive(x2, target2, cols))
    sc = torch.zeros(R, dtype=torch.bool) if skip is None else skip[:R]
    sm = torch.zeros(R2, dtype=torch.bool) if skip is None else skip[R:]
    assert torch.equal(pair[0], old[0]) and torch.equal(pair[1], old[1])
    assert torch.equal(pair[0][~sc], got[0][~sc]) and (pair[0][sc] == 0).all()
    assert torch.equal(pair[1][~sm], got[1][~sm]) and not pair[1][sm].any()
    # every entry above the diagonal False (the kernel writes the whole row into torch.empty)
    upper = (torch.arange(N2) % cols) > (torch.arange(N2) // cols)
    assert not got[1][:, upper].any() and not pair[1][:, upper].any()


RESIDENT_CASES = [pytest.param(c, id=i) for i, c in [
    # binary grid, many ties at the cut; odd cols (support 28 / 91 / 528: main tile and tail), a ragged count row
    ("resident-grid-7", (("grid", 3, 37, 0.5), ("grid", 2, 49, 7, 0.75), {})),
    ("resident-grid-13", (("grid", 2, 300, 2.0), ("grid", 3, 169, 13, 1.5), {})),
    # one narrow band: ties over many lines, rows left out
    ("resident-band-skip", (("band", 2, 256, 150.0), ("band", 2, 32 * 32, 32, 300.0), {"skip": (1, 0, 0, 1)})),
    # rectangular masks: more matrix rows than cols (20 x 7) and fewer (5 x 13); count rows shorter than the support
    ("resident-rect-20x7", (("grid", 2, 64, 0.25), ("grid", 2, 140, 7, 1.0), {})),
    ("resident-rect-5x13", (("grid", 2, 16, 0.25), ("grid", 2, 65, 13, 0.5), {})),
    # rows within the target (count: the whole row + 1; mask: the whole triangle), target 0, all-zero rows
    ("resident-within", (("grid", 2, 100, 1000.0), ("grid", 2, 49, 7, 1000.0), {})),
    ("resident-target0", (("grid", 2, 50, 0.0), ("grid", 2, 169, 13, 0.0), {})),
    ("resident-zero", (("zero", 2, 50, 0.5), ("zero", 2, 49, 7, 0.0), {})),
    # softmax rows against the launches (their sums group otherwise; these agree)
    ("resident-soft-skip", (("soft", 3, 500, 0.95), ("tril", 2, 16 * 16, 16, 0.95 * 16), {"skip": (0, 1, 0, 0, 1)})),
    # count rows longer than RESIDENT_MAX: every call takes the launches
    ("resident-fallback", (("grid", 2, 300, 0.5), ("grid", 2, 49, 7, 0.75), {"max": 64})),
]]


@pytest.mark.parametrize("case", COUNT_CASES + MASK_CASES + PAIR_CASES + FLEX_CASES + UPPER_CASES + EXIT_CASES
                         + SKIP_CASES + UNROLL_CASES + RESIDENT_CASES)
def test_triton_interpret_matches_reference(case, request, interpret_verdicts):
    assert_verdict(interpret_verdicts, request)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", COUNT_CASES + [pytest.param(("soft", 8, 65536, 0.95, 256), id="count-8x64K"),
                                                pytest.param(("grid", 8, 40000, 0.5, 256), id="count-grid-8x40K")])
def test_triton_gpu_count_matches_reference(case):
    _check_count(case, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", MASK_CASES + [pytest.param(("soft", 32, 256, 0.95, 256), id="mask-32x256")])
def test_triton_gpu_mask_matches_reference(case):
    _check_mask(case, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("unroll", [1, 4])
def test_triton_gpu_default_chunks_match_reference(unroll):
    """FlexPrefill's shapes at the kernels' default chunk and block: cover counts over 64 rows of 64K softmax scores,
    the global cover over 32 causal 512 x 512 block-score matrices; a block or four a digit step (`HIST_UNROLL`)."""
    import sparsebench.kernels.cover.triton as CT
    from sparsebench.testing import switched

    with switched(CT, HIST_UNROLL=unroll):
        _gpu_default_chunks()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_triton_gpu_resident_matches_reference():
    """The resident path (`RESIDENT` on) at FlexPrefill's 32K shapes, as it calls it: counts of 64 rows of 32K
    softmax scores and the global cover of 32 causal 256 x 256 block-score matrices in one launch; exact on grid rows,
    rows left out as flagged."""
    import sparsebench.kernels.cover.triton as CT
    from sparsebench.kernels.cover import cover_pair_triton

    x, a = _rows("soft", 64, 32768).cuda(), _tril_rows(32, 256).cuda()
    g, g2 = _rows("grid", 8, 32768, seed=1).cuda(), _rows("grid", 4, 256 * 256, seed=2).cuda()
    skip = (torch.arange(96, device="cuda") % 3 == 0)
    with switched(CT, RESIDENT=True):
        cnt, mask = cover_pair_triton(x, 0.95, a, 0.95 * 256, 256)
        gc, gm = cover_pair_triton(g, 500.0, g2, 300.0, 256)
        sc_cnt, sc_mask = cover_pair_triton(x, 0.95, a, 0.95 * 256, 256, skip=skip)
    want = cover_count_naive(x.cpu(), 0.95)
    # the running sums' rounding (module doc of triton.py): a count may move by one entry
    assert (cnt.cpu() - want).abs().max().item() <= 1 and (cnt.cpu() == want).float().mean().item() >= 0.9
    assert torch.equal(mask.cpu(), cover_mask_naive(a.cpu(), 0.95 * 256, 256))
    assert torch.equal(gc.cpu(), cover_count_naive(g.cpu(), 500.0))
    assert torch.equal(gm.cpu(), cover_mask_naive(g2.cpu(), 300.0, 256))
    sc, sm = skip[:64].cpu(), skip[64:].cpu()
    assert torch.equal(sc_cnt.cpu()[~sc], cnt.cpu()[~sc]) and (sc_cnt.cpu()[sc] == 0).all()
    assert torch.equal(sc_mask.cpu()[~sm], mask.cpu()[~sm]) and not sc_mask.cpu()[sm].any()


def _gpu_default_chunks():
    from sparsebench.kernels.cover import cover_count_triton, cover_mask_triton

    x = _rows("soft", 64, 65536).cuda()
    got, want = cover_count_triton(x, 0.95).cpu(), cover_count_naive(x.cpu(), 0.95)
    # the running sums' rounding (module doc of triton.py): a count may move by one entry (session 8, H200: 1 of 64
    # rows, 5764 against the reference's 5763)
    assert (got - want).abs().max().item() <= 1 and (got == want).float().mean().item() >= 0.9
    a = _tril_rows(32, 512).cuda()
    want_mask = cover_mask_naive(a.cpu(), 0.95 * 512, 512)
    assert torch.equal(cover_mask_triton(a, 0.95 * 512, 512).cpu(), want_mask)
    # both in one set of launches, as FlexPrefill calls them: the same results as apart at the pair's chunk (the
    # longer rows' default; another chunk groups the sums otherwise, see the rounding above)
    import sparsebench.kernels.cover.triton as CT
    from sparsebench.kernels.cover import cover_pair_triton

    got = cover_count_triton(x, 0.95, chunk=CT._default_chunk(x, a)).cpu()
    cnt, mask = cover_pair_triton(x, 0.95, a, 0.95 * 512, 512)
    assert torch.equal(cnt.cpu(), got) and torch.equal(mask.cpu(), want_mask)
    # every other row left out, as FlexPrefill leaves out the cuts its rule does not use: the others unchanged
    skip = (torch.arange(96, device="cuda") % 2).bool()
    cnt, mask = cover_pair_triton(x, 0.95, a, 0.95 * 512, 512, skip=skip)
    sc, sm = skip[:64].cpu(), skip[64:].cpu()
    assert torch.equal(cnt.cpu()[~sc], got[~sc]) and (cnt.cpu()[sc] == 0).all()
    assert torch.equal(mask.cpu()[~sm], want_mask[~sm]) and not mask.cpu()[sm].any()


def test_reference_hand_case():
    x = torch.tensor([[0.5, 0.25, 0.25, 0.0], [0.1, 0.2, 0.3, 0.4]])
    # row 0 at 0.75: 0.5, then one of the tied 0.25s fits; row 1 at 0.75: 0.4, 0.3 (0.7), not 0.2
    assert cover_count_naive(x, 0.75).tolist() == [3, 3]
    m = cover_mask_naive(torch.tensor([[0.5, 0.0, 0.25, 0.25]]), 0.75, 2)  # [[0.5, -], [0.25, 0.25]]
    assert m.tolist() == [[True, False, True, False]]  # the first tie in index order
    with pytest.raises(ValueError, match="cols=3 must divide"):
        cover_mask_naive(torch.zeros(1, 4), 1.0, 3)


if __name__ == "__main__" and sys.argv[1:] == ["--interpret"]:
    report_verdicts(_check_count, COUNT_CASES)
    report_verdicts(_check_mask, MASK_CASES)
    report_verdicts(_check_pair, PAIR_CASES)
    report_verdicts(_check_flex, FLEX_CASES)
    report_verdicts(_check_upper, UPPER_CASES)
    report_verdicts(_check_empty_exit, EXIT_CASES)
    report_verdicts(_check_skip, SKIP_CASES)
    report_verdicts(_check_unroll, UNROLL_CASES)
    report_verdicts(_check_resident, RESIDENT_CASES)
