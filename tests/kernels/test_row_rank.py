"""kernels/row_rank: the stable descending order and the cumulative-mass prefix, Triton against the torch reference
(CPU: the interpreter in one subprocess; GPU: compiled), on ties, signed zeros, NaN rows, padding and widths up to
the kernel's maximum."""
from __future__ import annotations

import sys

import pytest
import torch

from sparsebench.kernels.row_rank import desc_order_naive, mass_prefix_naive
from sparsebench.testing import assert_verdict, report_verdicts


def _rows(kind: str, shape, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "ties":  # few distinct values: the index order decides
        return torch.randint(0, 4, shape, generator=g).float() / 4
    if kind == "zeros":  # signed zeros tie with each other
        x = torch.rand(shape, generator=g)
        x[..., ::3], x[..., 1::4] = -0.0, 0.0
        return x
    if kind == "nan":  # softmax rows, some wholly NaN (a query block with no allowed key block), never reaching
        x = torch.softmax(torch.randn(shape, generator=g) * 3, -1)
        x[..., ::2, :] = float("nan")
        return x
    return torch.softmax(torch.randn(shape, generator=g) * 3, -1)


def _p(kind, shape, threshold=0.9):
    return pytest.param((kind, shape, threshold), id=f"{kind}-{'x'.join(map(str, shape))}-t{threshold}")


CASES = [
    _p("soft", (2, 3, 256)), _p("soft", (3, 100), 0.5), _p("ties", (4, 40), 0.6), _p("zeros", (2, 2, 33)),
    _p("nan", (2, 4, 77)), _p("soft", (4, 1)), _p("soft", (1, 4096), 0.95), _p("ties", (33, 16), 0.5),
]


def _check(case, device="cpu"):
    from sparsebench.kernels.row_rank import desc_order_triton, mass_prefix_triton

    kind, shape, threshold = case
    x = _rows(kind, shape).to(device)
    if kind != "nan":
        got, want = desc_order_triton(x), desc_order_naive(x)
        assert got.dtype == torch.int64 and torch.equal(got, want), "order differs"
    got, want = mass_prefix_triton(x, threshold), mass_prefix_naive(x, threshold)
    assert got.dtype == torch.bool and got.shape == x.shape
    assert torch.equal(got, want), f"mass prefix differs in {(got != want).any(-1).sum().item()} rows"


@pytest.mark.parametrize("case", CASES)
def test_triton_interpret_matches_reference(case, request, interpret_verdicts):
    assert_verdict(interpret_verdicts, request)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", CASES + [_p("soft", (1, 5, 512), 0.999), _p("soft", (2, 5, 300), 0.7),
                                          _p("soft", (32, 512, 512)), _p("soft", (32, 256, 256))])
def test_triton_gpu_matches_reference(case):
    _check(case, device="cuda")


def test_bad_rows_raise():
    from sparsebench.kernels.row_rank import desc_order_triton

    with pytest.raises(ValueError, match="fp32 rows of 1..4096"):
        desc_order_triton(torch.zeros(2, 5000))
    with pytest.raises(ValueError, match="fp32 rows"):
        desc_order_triton(torch.zeros(2, 5, dtype=torch.float64))


def test_mass_prefix_hand_case():
    p = torch.tensor([[0.1, 0.5, 0.2, 0.2, 0.0], [0.25, 0.25, 0.25, 0.25, 0.0], [0.1, 0.1, 0.1, 0.1, 0.1]])
    got = mass_prefix_naive(p, 0.7)
    # row 0: 0.5 then the tie 0.2/0.2 goes lower index first: 0.5 + 0.2 reaches 0.7 at index 2 (crossing kept)
    # row 1: ties in index order, 0.75 reached at the third; row 2: the row sums to 0.5 < 0.7: nothing
    assert got.tolist() == [[False, True, True, False, False], [True, True, True, False, False], [False] * 5]


if __name__ == "__main__" and sys.argv[1:] == ["--interpret"]:
    report_verdicts(_check, CASES)
