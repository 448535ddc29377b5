"""kernels/block_means: block means of queries or keys, rounded and scaled. The reference against a direct loop; the
Triton kernel against it (CPU: the interpreter in one subprocess; GPU: compiled): bit for bit on 16-bit inputs
whose fp32 sums are exact, to rounding on fp32 inputs, with ragged last blocks and head dims 64 and 256; and
FlexPrefill's selection with the kernel equal to its selection without."""
from __future__ import annotations

import sys

import pytest
import torch

from sparsebench.kernels.block_means import block_means_naive
from sparsebench.testing import assert_verdict, flex_cases, flexprefill_off_and_on, report_verdicts


def test_reference_is_the_mean_of_each_run():
    x = torch.arange(10 * 3, dtype=torch.float32).view(1, 10, 3)
    got = block_means_naive(x, 4, scale=0.5)
    want = torch.stack([x[0, 0:4].mean(0), x[0, 4:8].mean(0), x[0, 8:10].mean(0)]) * 0.5  # the last run: 2 rows
    assert torch.equal(got[0], want)
    with pytest.raises(ValueError, match="size >= 1"):
        block_means_naive(x, 0)


def _x(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    if dtype != "float32":
        # 16-bit values: sums of up to 128 of them fit fp32's 24 bits exactly, so every order gives the same sum
        x = (x * 16).round() / 16
    return x.to(getattr(torch, dtype))


CASES = [pytest.param(c, id="{}-N{}-D{}-bs{}-{}-scale{}".format(*c)) for c in (
    ((2, 3), 100, 64, 32, "bfloat16", 0.125), ((1, 2), 256, 256, 128, "bfloat16", None),
    ((1, 4), 77, 64, 16, "float16", 0.3), ((3,), 50, 64, 32, "float32", 0.7))]


def _check(case, device="cpu"):
    from sparsebench.kernels.block_means import block_means_triton

    lead, N, D, bs, dt, scale = case
    x = _x((*lead, N, D), dt, 0).to(device)
    want = block_means_naive(x.cpu(), bs, scale)
    # the defaults, and FlexPrefill's whole-graph launch (`_WHOLE_MEANS`: 2048 elements a step, 2 warps)
    for kw in ({}, {"tile": 2048, "warps": 2}):
        got = block_means_triton(x, bs, scale, **kw)
        assert got.dtype == want.dtype and got.shape == want.shape
        if dt == "float32":
            assert torch.allclose(got.cpu(), want, rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(got.cpu(), want)


def _check_table(case):
    """With an address table the kernel averages the tensor whose address the table holds when it runs (here one
    other than the tensor that gave the shape): the same values as `block_means_naive` of that tensor."""
    from sparsebench.kernels.block_means import block_means_triton

    lead, N, D, bs, dt, scale = case
    shape_like, x = _x((*lead, N, D), dt, 0), _x((*lead, N, D), dt, 1)
    table = torch.tensor([0, x.data_ptr()], dtype=torch.int64)
    got = block_means_triton(shape_like, bs, scale, table=table, slot=1)
    want = block_means_naive(x, bs, scale)
    if dt == "float32":
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-6)
    else:
        assert torch.equal(got, want)
    assert not torch.equal(want, block_means_naive(shape_like, bs, scale))


TABLE_CASES = [pytest.param(c.values[0], id=f"table-{c.id}") for c in CASES[:2]]


def test_bad_tile_or_warps_names_the_value():
    from sparsebench.kernels.block_means import block_means_triton

    for kw, bad in (({"tile": 3000}, "tile=3000"), ({"warps": 0}, "warps=0"), ({"warps": True}, "warps=True")):
        with pytest.raises(ValueError, match=f"{bad} must be a power of two"):
            block_means_triton(torch.zeros(1, 8, 16), 4, **kw)


def test_table_needs_a_view():
    from sparsebench.kernels.block_means import block_means_triton

    x = torch.zeros(2, 8, 3, 16).transpose(1, 2)  # [2, 3, 8, 16] whose [-1, 8, 16] reshape is a copy
    with pytest.raises(ValueError, match="must be viewable"):
        block_means_triton(x, 4, table=torch.zeros(1, dtype=torch.int64))


def _check_flex(shape):
    """FlexPrefill's official selection with `_POOL_KERNEL` equals its selection through torch (bf16 inputs)."""
    flexprefill_off_and_on("_POOL_KERNEL", shape, dtype="bfloat16", tau=0.5)


FLEX_CASES = flex_cases()


@pytest.mark.parametrize("case", CASES + FLEX_CASES + TABLE_CASES)
def test_triton_interpret_matches_reference(case, request, interpret_verdicts):
    assert_verdict(interpret_verdicts, request)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", CASES + [pytest.param(((1, 32), 65536, 128, 128, "bfloat16", 0.0884), id="q-64K")])
def test_triton_gpu_matches_reference(case):
    _check(case, device="cuda")


if __name__ == "__main__" and sys.argv[1:] == ["--interpret"]:
    report_verdicts(_check, CASES)
    report_verdicts(_check_flex, FLEX_CASES)
    report_verdicts(_check_table, TABLE_CASES)
