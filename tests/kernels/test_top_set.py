"""kernels/top_set: the k best entries of long rows, the radix-select kernel against the sort reference (CPU: the
interpreter in one subprocess; GPU: compiled), on ties, signed zeros, negative values, forced entries and k up to the
row length; and MInference's selection through it equal to its selection through `top_ranked`."""
from __future__ import annotations

import sys

import pytest
import torch

from sparsebench.kernels.top_set import top_set_naive
from sparsebench.testing import assert_verdict, report_verdicts, switched


def _rows(kind: str, R: int, N: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "ties":  # few distinct values: the index order decides at the cut
        return torch.randint(0, 5, (R, N), generator=g).float() / 4
    if kind == "signed":  # negative values, and signed zeros that tie with each other
        x = torch.randn(R, N, generator=g)
        x[:, ::7], x[:, 1::7] = -0.0, 0.0
        return x
    if kind == "flat":
        return torch.zeros(R, N)
    return torch.softmax(torch.randn(R, N, generator=g) * 3, -1)


def _p(kind, R, N, k, forced=0, chunk=4096):
    return pytest.param((kind, R, N, k, forced, chunk), id=f"{kind}-{R}x{N}-k{k}-f{forced}-ch{chunk}")


CASES = [_p("soft", 3, 100, 10), _p("ties", 2, 2000, 300, 30), _p("soft", 2, 777, 777, 5), _p("soft", 1, 50, 5, 10),
         _p("signed", 2, 3000, 64), _p("flat", 2, 513, 1), _p("ties", 4, 1030, 1029, 0), _p("soft", 1, 1, 1),
         # rows in several chunks: the picks summed over chunks, the ties and the counts carried across them
         _p("ties", 2, 2000, 300, 30, 256), _p("soft", 2, 777, 777, 5, 64), _p("ties", 4, 1030, 1029, 0, 128),
         _p("signed", 2, 3000, 64, 0, 512), _p("flat", 2, 513, 1, 0, 16), _p("ties", 3, 5000, 2500, 7, 128)]


def _check(case, device="cpu"):
    from sparsebench.kernels.top_set import top_set_triton

    kind, R, N, k, forced, chunk = case
    x = _rows(kind, R, N).to(device)
    got, want = top_set_triton(x, k, forced, chunk=chunk), top_set_naive(x, k, forced)
    assert got.dtype == torch.int64 and got.shape == (R, k)
    assert torch.equal(got, want), f"sets differ in {(got != want).any(-1).sum().item()} rows"


def _check_pair(case):
    """Two matrices of one row length (other k, forced, row counts) in one set of launches: each as alone."""
    from sparsebench.kernels.top_set import top_set_pair_triton

    kind, R, N, k, forced, chunk = case
    x, x2 = _rows(kind, R, N), _rows("soft", R + 1, N, seed=1)
    k2, f2 = max(1, N // 3), min(N, 3)
    got, got2 = top_set_pair_triton(x, k, forced, x2, k2, f2, chunk=chunk)
    assert torch.equal(got, top_set_naive(x, k, forced)) and torch.equal(got2, top_set_naive(x2, k2, f2))


PAIR_CASES = [pytest.param(c.values[0], id=f"pair-{c.id}") for c in CASES]


@pytest.mark.parametrize("case", PAIR_CASES)
def test_pair_interpret_matches_reference(case, request, interpret_verdicts):
    assert_verdict(interpret_verdicts, request)


def _check_minference(case):
    """MInference's vertical-slash selection with `_TOP_SET` (the kernel picks the columns and diagonals) equals the
    one through `top_ranked` (there the list builder sorts the columns; here it takes them as sorted, `v_sorted`)."""
    from sparsebench.attention import AttnContext
    from sparsebench.methods import minference as mi

    T, S, last_q, v, s = case
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 4, T, 32, generator=g)
    k = torch.randn(1, 2, S, 32, generator=g)
    ctx = AttnContext(layer_idx=0, num_heads=4, num_kv_heads=2, head_dim=32, scale=32 ** -0.5)
    m = mi.MInference(pattern="vertical_slash", last_q=last_q, vertical_size=v, slash_size=s, scores_kernel="torch")
    with switched(mi, _TOP_SET=False):
        want = m.select(q, k, ctx)
    with switched(mi, _TOP_SET=True):
        got = m.select(q, k, ctx)
    for name in ("kv_indices", "kv_counts", "extra_cols", "extra_counts"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name


MI_CASES = [pytest.param((512, 512, 64, 40, 60), id="mi-512"), pytest.param((300, 700, 16, 100, 33), id="mi-300-700")]


@pytest.mark.parametrize("case", CASES + MI_CASES)
def test_triton_interpret_matches_reference(case, request, interpret_verdicts):
    assert_verdict(interpret_verdicts, request)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", CASES + [_p("soft", 32, 65536, 1000, 30), _p("soft", 32, 131072, 6096, 100),
                                          _p("ties", 8, 40000, 5000, 0)])
def test_triton_gpu_matches_reference(case):
    _check(case, device="cuda")
    kind, R, N, k, forced, chunk = case
    if N > 1:  # and paired with a second matrix of the row length
        from sparsebench.kernels.top_set import top_set_pair_triton

        x, x2 = _rows(kind, R, N).cuda(), _rows("soft", 2, N, seed=1).cuda()
        got, got2 = top_set_pair_triton(x, k, forced, x2, N // 2, 1, chunk=chunk)
        assert torch.equal(got, top_set_naive(x, k, forced)) and torch.equal(got2, top_set_naive(x2, N // 2, 1))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match=r"k=0 must be an integer in \[1, 5\]"):
        top_set_naive(torch.zeros(2, 5), 0)
    with pytest.raises(ValueError, match="2-D fp32"):
        top_set_naive(torch.zeros(2, 5, dtype=torch.float64), 1)
    with pytest.raises(ValueError, match="forced=-1"):
        top_set_naive(torch.zeros(2, 5), 1, -1)


def test_hand_case():
    x = torch.tensor([[0.1, 0.5, 0.2, 0.2, 0.0], [0.3, 0.3, 0.3, 0.3, 0.9]])
    # row 0: 0.5, then the tie 0.2 / 0.2 goes lower index first; row 1 with the first two forced: 0, 1, then 0.9
    assert top_set_naive(x, 2).tolist() == [[1, 2], [0, 4]]
    assert top_set_naive(x, 3, forced=2).tolist() == [[0, 1, 2], [0, 1, 4]]


if __name__ == "__main__" and sys.argv[1:] == ["--interpret"]:
    report_verdicts(_check, CASES)
    report_verdicts(_check_pair, PAIR_CASES)
    report_verdicts(_check_minference, MI_CASES)
