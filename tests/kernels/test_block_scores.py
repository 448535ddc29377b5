"""kernels/block_scores: FlexPrefill's query-aware block scores. The reference on a hand-worked case and bad shapes;
the Triton kernel against it (CPU: the interpreter in one subprocess; GPU: compiled) in fp32, bf16 and fp16, head dims
32-256, ragged block counts and grouped heads (values on a binary grid: every logit exact, the softmax within
rounding); and FlexPrefill's selection with the kernel (`_QA_SCORES_KERNEL`) equal to its selection without."""
from __future__ import annotations

import math
import sys

import pytest
import torch

from sparsebench.kernels.block_scores import block_scores_naive
from sparsebench.testing import assert_verdict, flex_cases, flexprefill_off_and_on, report_verdicts


def test_reference_hand_case():
    # one head, two blocks: row 0 sees block 0 only; row 1 the softmax of its two logits (1*1 + 0 = 1 and 2*1 = 2)
    q_mean = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])
    k_mean = torch.tensor([[[[1.0, 5.0], [1.0, 1.0]]]])
    attn = block_scores_naive(q_mean, k_mean)
    assert attn[0, 0, 0].tolist() == [1.0, 0.0]
    want = torch.softmax(torch.tensor([6.0, 2.0]), 0)
    assert torch.allclose(attn[0, 0, 1], want) and attn.dtype == torch.float32


def test_bad_shapes_name_the_value():
    with pytest.raises(ValueError, match="shapes do not agree"):
        block_scores_naive(torch.zeros(1, 3, 4, 8), torch.zeros(1, 2, 4, 8))
    with pytest.raises(ValueError, match="share a dtype"):
        block_scores_naive(torch.zeros(1, 2, 4, 8), torch.zeros(1, 1, 4, 8, dtype=torch.bfloat16))


def test_bad_bn_names_the_value():
    from sparsebench.kernels.block_scores import block_scores_triton

    for bad in (8, 48, True, 32.0):
        with pytest.raises(ValueError, match=f"bn={bad!r} must be a power of two"):
            block_scores_triton(torch.zeros(1, 2, 4, 16), torch.zeros(1, 2, 4, 16), bn=bad)


def _inputs(B, H, HKV, nb, D, dtype, seed, grid=True):
    g = torch.Generator().manual_seed(seed)
    if grid:  # multiples of 1/8 below 1: every product and sum exact in fp32, the logits the reference's exactly
        q = torch.randint(-8, 8, (B, H, nb, D), generator=g).float() / (8 * math.sqrt(D))
        q = torch.round(q * 64) / 64
        k = torch.randint(-8, 8, (B, HKV, nb, D), generator=g).float() / 8
    else:
        q, k = torch.randn(B, H, nb, D, generator=g) * D ** -0.5, torch.randn(B, HKV, nb, D, generator=g)
    return q.to(dtype), k.to(dtype)


# (B, H, HKV, nb, D, dtype, seed): ragged block counts (several row blocks and column steps), grouped heads; the
# fourth case with `bn=16` key blocks a step (FlexPrefill's whole graph takes 32, `_BRANCH_BLOCK_SCORES`)
CASES = [pytest.param(c, id="B{}-H{}-HKV{}-nb{}-D{}-{}-s{}".format(*c) + (f"-bn{c[7]}" if len(c) > 7 else ""))
         for c in ((1, 4, 2, 37, 64, "bfloat16", 0), (2, 2, 1, 100, 32, "float32", 1),
                   (1, 2, 2, 16, 256, "float16", 2), (1, 4, 2, 37, 64, "bfloat16", 3, 16))]


def _check(case, device="cpu", grid=True):
    from sparsebench.kernels.block_scores import block_scores_triton

    B, H, HKV, nb, D, dt, seed, *bn = case
    q, k = (t.to(device) for t in _inputs(B, H, HKV, nb, D, getattr(torch, dt), seed, grid))
    # with bn, the register cap of FlexPrefill's graph too (ignored off CUDA)
    got = block_scores_triton(q, k, bn=bn[0], maxnreg=64).cpu() if bn else block_scores_triton(q, k).cpu()
    want = block_scores_naive(q.cpu(), k.cpu())
    assert got.dtype == torch.float32 and got.shape == want.shape
    above = torch.ones(nb, nb, dtype=torch.bool).triu(1)
    assert (got[..., above] == 0).all()
    if grid:
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-7)
    else:  # random 16-bit means: a logit may round to the neighbouring value (module doc); nearly all entries agree
        close = torch.isclose(got, want, rtol=1e-5, atol=1e-7)
        assert close.float().mean().item() > 0.99
        assert torch.allclose(got.sum(-1), torch.ones(()), atol=1e-5)


def _check_flex(shape):
    """FlexPrefill's official selection with `_QA_SCORES_KERNEL` equals its selection through torch."""
    flexprefill_off_and_on("_QA_SCORES_KERNEL", shape)


FLEX_CASES = flex_cases()


def _check_early(shape):
    """FlexPrefill's rule with every head's query-aware block scores and global cover worked out before the pattern
    switch (`early`: the `_QA_SIDE` path of its whole graph, whose branch joins where the cover is read) lists the
    same blocks and decides the same patterns as the rule that covers the query-aware heads after the switch; at a
    tau that leaves both kinds of heads, and at one that makes every head query-aware."""
    import sparsebench.methods.flexprefill as fp

    T, H, HKV, D, seed = shape
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(1, H, T, D, generator=g), torch.randn(1, HKV, T, D, generator=g)
    reads = fp.official_reads(q, k, block_size=32, scale=D ** -0.5, scores_kernel="torch")
    kinds = set()
    for tau in (0.3, 0.0):
        rule = {"gamma": 0.9, "tau": tau, "minb": 2, "maxb": T // 32, "block_size": 32}
        want = fp._lists_from_reads(reads, rule, True)
        early = fp._early_cover(reads[3], reads[2], rule["gamma"])
        joined = []
        got = fp._lists_from_reads(tuple(reads) + ((early, lambda: joined.append(True)),), rule, True)
        assert joined == [True]
        for a, b in zip(got, want):
            assert torch.equal(a, b)
        kinds |= set(want[2].view(-1).tolist())
    assert kinds == {True, False}  # both kinds of heads were decided


EARLY_CASES = [pytest.param(c.values[0], id="early-" + c.id) for c in FLEX_CASES]


@pytest.mark.parametrize("case", CASES + FLEX_CASES + EARLY_CASES)
def test_triton_interpret_matches_reference(case, request, interpret_verdicts):
    assert_verdict(interpret_verdicts, request)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("grid", [True, False], ids=["grid", "random"])
@pytest.mark.parametrize("case", CASES + [pytest.param((1, 32, 8, 256, 128, "bfloat16", 4), id="llama-32K"),
                                          pytest.param((1, 32, 8, 256, 128, "bfloat16", 4, 32), id="llama-32K-bn32"),
                                          pytest.param((1, 32, 8, 1024, 128, "bfloat16", 5), id="llama-128K"),
                                          pytest.param((1, 4, 1, 128, 256, "bfloat16", 6), id="gemma-16K")])
def test_triton_gpu_matches_reference(case, grid):
    _check(case, device="cuda", grid=grid)


if __name__ == "__main__" and sys.argv[1:] == ["--interpret"]:
    report_verdicts(_check, CASES)
    report_verdicts(_check_flex, FLEX_CASES)
    report_verdicts(_check_early, EARLY_CASES)
