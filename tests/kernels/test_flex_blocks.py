"""kernels/flex_blocks: FlexPrefill's block lists from its block scores, budgets and query-aware cover. The reference
on hand-worked cases; the Triton kernels against it bit for bit (CPU: the interpreter in one subprocess; GPU:
compiled) on ties, budgets from 0 to past nb, ragged block counts and mixed query-aware heads; and FlexPrefill's
selection with the kernels equal to its selection without."""
from __future__ import annotations

import sys

import pytest
import torch

from sparsebench.kernels.flex_blocks import flex_blocks_naive
from sparsebench.kernels.flex_blocks.naive import flex_blocks_mask
from sparsebench.testing import assert_verdict, flex_cases, flexprefill_off_and_on, report_verdicts


def _inputs(B, H, nb, ties: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if ties:  # few distinct scores: the index order decides the ranks
        pooled = torch.randint(0, 3, (2, B, H, nb), generator=g).float()
    else:
        pooled = torch.rand(2, B, H, nb, generator=g)
    budget = torch.randint(0, nb + 2, (2, B, H), generator=g)
    qa_blocks = torch.rand(B, H, nb, nb, generator=g) < 0.2
    qa_blocks &= torch.ones(nb, nb, dtype=torch.bool).tril()  # the cover's support: causal blocks
    query_aware = torch.rand(B, H, generator=g) < 0.5
    return pooled, budget, qa_blocks, query_aware


def test_reference_hand_case():
    # nb = 3, one head: columns [0.1, 0.9, 0.5] with block 0 forced -> ranks 0, 1, 2; budget 1 keeps column 0 only.
    # Slashes [0.7, 0.2, 0.0] with the main diagonal (entry 2) forced -> ranks 1, 2, 0; budget 2 keeps entries 2
    # (offset 0) and 0 (offset 2).
    pooled = torch.tensor([[[[0.1, 0.9, 0.5]]], [[[0.7, 0.2, 0.0]]]])
    budget = torch.tensor([[[1]], [[2]]])
    qa = torch.zeros(1, 1, 3, 3, dtype=torch.bool)
    qa[0, 0, 2, 1] = True
    off = flex_blocks_mask(pooled, budget, qa, torch.tensor([[False]]))[0, 0]
    # row 0: column 0; row 1: column 0, main diagonal (1, 1); row 2: column 0 (also offset 2), (2, 2)
    assert off.int().tolist() == [[1, 0, 0], [1, 1, 0], [1, 0, 1]]
    on = flex_blocks_mask(pooled, budget, qa, torch.tensor([[True]]))[0, 0]
    assert on.int().tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]  # the query-aware cover adds (2, 1)
    idx, cnt = flex_blocks_naive(pooled, budget, qa, torch.tensor([[True]]))
    assert cnt[0, 0].tolist() == [1, 2, 3] and idx[0, 0, 0].tolist() == [0, 1, 2] and idx[0, 0, 1].tolist() == [0, 1, 2]
    assert pooled[0, 0, 0, 0].item() == pytest.approx(0.1)  # the caller's scores untouched (no overwrite)


def test_bad_shapes_name_the_value():
    pooled, budget, qa, aw = _inputs(1, 2, 4, ties=False)
    with pytest.raises(ValueError, match=r"budget must be \[2, B, H\]"):
        flex_blocks_naive(pooled, budget[:, :, :1], qa, aw)
    with pytest.raises(ValueError, match="qa_blocks must be bool"):
        flex_blocks_naive(pooled, budget, qa.float(), aw)


def test_from_counts_bad_input_names_the_value():
    from sparsebench.kernels.flex_blocks import flex_blocks_from_counts_triton

    pooled, budget, qa, aw = _inputs(1, 2, 4, ties=False)
    with pytest.raises(ValueError, match="counts must be integers; got torch.float32"):
        flex_blocks_from_counts_triton(pooled, budget.float(), 1, 4, 128, qa, aw)
    with pytest.raises(ValueError, match="per_block=0 must be a positive integer"):
        flex_blocks_from_counts_triton(pooled, budget, 1, 4, 0, qa, aw)
    with pytest.raises(ValueError, match=r"budget must be \[2, B, H\]"):
        flex_blocks_from_counts_triton(pooled, budget[:, :, :1], 1, 4, 128, qa, aw)


CASES = [pytest.param(c, id="B{}-H{}-nb{}-ties{}-s{}".format(*c)) for c in (
    (1, 2, 5, True, 0), (2, 3, 37, True, 1), (1, 4, 64, False, 2), (1, 2, 100, True, 3), (1, 1, 1, False, 4),
    (2, 2, 130, False, 5))]


def _check(case, device="cpu"):
    """Bit for bit the reference, the lists written in two walks over each row or in one (`ONE_WALK`)."""
    import sparsebench.kernels.flex_blocks.triton as FB
    from sparsebench.testing import switched

    B, H, nb, ties, seed = case
    args = [t.to(device) for t in _inputs(B, H, nb, ties, seed)]
    want = flex_blocks_naive(*[t.cpu() for t in args])
    for one in (False, True):
        with switched(FB, ONE_WALK=one):
            got = FB.flex_blocks_triton(*args, block=32)  # several rank blocks a row from nb 37 on
        for a, b in zip(got, want):
            assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.cpu(), b)
    # the budgets from cover counts (FlexPrefill's rule: count // 4 + 1 clamped to [2, nb - 1] here, 2 on the
    # query-aware heads, whose counts are junk) and a cover left unmasked on the other heads
    pooled, _, cover, aware = args
    g = torch.Generator().manual_seed(seed + 100)
    counts = torch.randint(0, 4 * nb + 8, (2, B, H), generator=g)
    counts[:, aware.cpu()] = 10 ** 6  # would give maxb
    minb, maxb = 2, max(1, nb - 1)
    budget = (counts // 4 + 1).clamp(min=minb, max=maxb).masked_fill(aware.cpu(), minb)
    want = flex_blocks_naive(pooled.cpu(), budget, cover.cpu() & aware.cpu()[..., None, None], aware.cpu())
    cover = cover | ~torch.ones_like(cover).tril()  # junk above the diagonal too: never read
    got = FB.flex_blocks_from_counts_triton(pooled, counts.to(device), minb, maxb, 4, cover, aware, block=32)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.cpu(), b)


def _check_flex(shape):
    """FlexPrefill's official selection with `_BLOCKS_KERNEL` equals its selection through torch."""
    flexprefill_off_and_on("_BLOCKS_KERNEL", shape)


def _check_all(shape):
    """FlexPrefill's official selection with all four of its kernel switches on (cover, blocks, switch, pool) equals
    its selection with all four off (bf16 inputs, which the pooled means need to be exact)."""
    off, on = flexprefill_off_and_on(("_COVER_KERNEL", "_BLOCKS_KERNEL", "_SWITCH_KERNEL", "_POOL_KERNEL"), shape,
                                     dtype="bfloat16")
    assert torch.equal(on, off)


FLEX_CASES = flex_cases()
ALL_CASES = [pytest.param(*c.values, id=f"all-{c.id}") for c in flex_cases()]


@pytest.mark.parametrize("case", CASES + FLEX_CASES + ALL_CASES)
def test_triton_interpret_matches_reference(case, request, interpret_verdicts):
    assert_verdict(interpret_verdicts, request)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", CASES + [pytest.param((1, 32, 512, False, 6), id="B1-H32-nb512"),
                                          pytest.param((1, 32, 1024, True, 7), id="B1-H32-nb1024-ties")])
def test_triton_gpu_matches_reference(case):
    _check(case, device="cuda")


if __name__ == "__main__" and sys.argv[1:] == ["--interpret"]:
    report_verdicts(_check, CASES)
    report_verdicts(_check_flex, FLEX_CASES)
    report_verdicts(_check_all, ALL_CASES)
