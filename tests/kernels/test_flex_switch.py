"""kernels/flex_switch: FlexPrefill's pattern switch. The reference on hand-worked cases (its NaN rule); the Triton
kernel against it (CPU: the interpreter in one subprocess; GPU: compiled) in fp32 and bf16, head dims 64 and 256,
ragged block counts and grouped heads, distances to rounding and every decision not within rounding of tau; and
FlexPrefill's selection with the kernel equal to its selection without."""
from __future__ import annotations

import sys

import pytest
import torch

from sparsebench.kernels.flex_switch import flex_switch_naive, js_distance
from sparsebench.testing import assert_verdict, flexprefill_off_and_on, report_verdicts


def test_reference_hand_cases():
    p = torch.tensor([0.5, 0.5])
    assert js_distance(p, p).item() == 0.0
    # a zero probability gives NaN (no zero guard, as the official code): NaN < tau is False
    assert torch.isnan(js_distance(torch.tensor([1.0, 0.0]), p))
    # one head, two key blocks: identical key-block means give a uniform a; against a uniform vertical the distance
    # is 0 (query-aware at any tau > 0), against [0.9, 0.1] it is sqrt(JS) > 0.1
    q_last = torch.ones(1, 1, 4, 2)
    k_mean = torch.ones(1, 1, 2, 2)
    qa, d = flex_switch_naive(q_last, k_mean, torch.tensor([[[0.5, 0.5]]]), 0.1)
    assert qa.tolist() == [[True]] and d.item() == 0.0
    qa, d = flex_switch_naive(q_last, k_mean, torch.tensor([[[0.9, 0.1]]]), 0.1)
    assert qa.tolist() == [[False]] and d.item() > 0.1


def test_bad_shapes_name_the_value():
    with pytest.raises(ValueError, match="shapes do not agree"):
        flex_switch_naive(torch.zeros(1, 3, 4, 8), torch.zeros(1, 2, 5, 8), torch.zeros(1, 3, 5), 0.1)


def _inputs(B, H, HKV, n, nb, D, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    q_last = (torch.randn(B, H, n, D, generator=g) * D ** -0.5).to(dtype)
    k_mean = (torch.randn(B, HKV, nb, D, generator=g) * 0.5).to(dtype)
    vertical = torch.softmax(torch.randn(B, H, nb, generator=g) * 2, -1)
    vertical[..., ::11] = 0.0  # some zero blocks: NaN distances, which must stay undecided (False) in both
    vertical[:, ::2] = torch.softmax(torch.randn(B, (H + 1) // 2, nb, generator=g), -1)  # half the heads: no zeros
    return q_last, k_mean, vertical


CASES = [pytest.param(c, id="B{}-H{}-HKV{}-n{}-nb{}-D{}-{}-s{}".format(*c)) for c in (
    (1, 4, 2, 16, 37, 64, "float32", 0), (2, 2, 1, 128, 100, 256, "bfloat16", 1), (1, 6, 3, 32, 5, 64, "bfloat16", 2),
    (1, 2, 2, 128, 300, 128, "float32", 3))]


def _check(case, device="cpu"):
    from sparsebench.kernels.flex_switch import flex_switch_triton

    B, H, HKV, n, nb, D, dt, seed = case
    args = [t.to(device) for t in _inputs(B, H, HKV, n, nb, D, getattr(torch, dt), seed)]
    qa_ref, d_ref = flex_switch_naive(*[t.cpu() for t in args], tau=0.1)
    for tau in (0.1, float(d_ref.nan_to_num(0.0).median())):  # tau at the median distance: both decisions occur
        qa_ref = d_ref < tau
        qa, d = flex_switch_triton(*args, tau=tau)
        qa, d = qa.cpu(), d.cpu()
        assert qa.dtype == torch.bool and d.dtype == torch.float32
        assert torch.equal(torch.isnan(d), torch.isnan(d_ref))
        assert torch.allclose(d.nan_to_num(0.0), d_ref.nan_to_num(0.0), atol=2e-4, rtol=1e-3)
        clear = (d_ref - tau).abs() > 1e-3
        assert torch.equal(qa[clear], qa_ref[clear]) and not qa[torch.isnan(d_ref)].any()


def _check_flex(case):
    """FlexPrefill's official selection with `_SWITCH_KERNEL` equals its selection through torch, the per-head
    decisions included (both kinds occur)."""
    *shape, tau = case
    off, on = flexprefill_off_and_on("_SWITCH_KERNEL", tuple(shape), tau=tau)
    assert torch.equal(on, off) and off.any() and not off.all()


# (T, H, HKV, D, seed, tau), tau between the heads' distances (0.047-0.049 and 0.060-0.062 with these inputs): both
# decisions occur
FLEX_CASES = [pytest.param(c, id="flex-T{}-H{}-HKV{}-D{}-s{}-tau{}".format(*c)) for c in ((640, 4, 2, 32, 0, 0.048),
                                                                                          (700, 2, 1, 256, 1, 0.061))]


@pytest.mark.parametrize("case", CASES + FLEX_CASES)
def test_triton_interpret_matches_reference(case, request, interpret_verdicts):
    assert_verdict(interpret_verdicts, request)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", CASES + [pytest.param((1, 32, 8, 128, 512, 128, "bfloat16", 4), id="llama-64K"),
                                          pytest.param((1, 4, 1, 128, 128, 256, "bfloat16", 5), id="gemma-16K")])
def test_triton_gpu_matches_reference(case):
    _check(case, device="cuda")


if __name__ == "__main__" and sys.argv[1:] == ["--interpret"]:
    report_verdicts(_check, CASES)
    report_verdicts(_check_flex, FLEX_CASES)
