"""XAttention's antidiagonal block scores: the reference against a brute-force reading of the definition, against
the official PyTorch formulation (strided slices concatenated, chunk padding), a hand-worked case, and the Triton
kernel against the reference (CPU: Triton interpreter in one subprocess; GPU: compiled, bf16).

TRITON_INTERPRET=1 must be set before triton is first imported, so the interpreter cases run in a subprocess (this
file as a script) and each test reads its verdict, as in test_block_sparse_attn.py.
"""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from sparsebench.kernels.antidiag_score import antidiag_block_scores_naive, exact_block_scores_naive
from sparsebench.testing import assert_verdict, report_verdicts


def brute_scores(q, k, stride, block_size, scale):
    """The module docstring's definition, loop by loop, in float64."""
    B, H, T, _ = q.shape
    HKV, S = k.shape[1], k.shape[2]
    G = H // HKV
    TR, SR = -(-T // stride), -(-S // stride)
    logit = torch.full((B, H, TR, SR), float("-inf"), dtype=torch.float64)
    kk = k.double().repeat_interleave(G, 1)
    for i in range(TR):
        for j in range(SR):
            if j * stride > i * stride + stride - 1 + S - T:
                continue
            tot = torch.zeros(B, H, dtype=torch.float64)
            for u in range(stride):
                tq, tk = i * stride + stride - 1 - u, j * stride + u
                if tq < T and tk < S:
                    tot += (q[:, :, tq].double() * kk[:, :, tk]).sum(-1)
            logit[:, :, i, j] = tot * scale
    p = torch.softmax(logit, -1)
    out = torch.zeros(B, H, -(-T // block_size), -(-S // block_size), dtype=torch.float64)
    for i in range(TR):
        for j in range(SR):
            out[:, :, i * stride // block_size, j * stride // block_size] += p[:, :, i, j]
    return out


def official_style_scores(q, k, stride, block_size, scale, chunk):
    """The official PyTorch estimator's formulation for T == S (its Triton path's semantics): pad to a chunk
    multiple, concatenate strided slices, mask the tile upper triangle and wholly padded tiles, zero wholly padded
    rows, block-sum."""
    B, H, N, _ = q.shape
    kk = k.repeat_interleave(H // k.shape[1], 1)
    Np = -(-N // chunk) * chunk
    qp, kp = F.pad(q.double(), (0, 0, 0, Np - N)), F.pad(kk.double(), (0, 0, 0, Np - N))
    kr = torch.cat([kp[:, :, u::stride] for u in range(stride)], dim=-1)
    qr = torch.cat([qp[:, :, stride - 1 - u::stride] for u in range(stride)], dim=-1)
    n, padded = Np // stride, (Np - N) // stride
    logit = qr @ kr.transpose(-1, -2) * scale
    logit = logit.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    if padded:
        logit[..., n - padded:] = float("-inf")
    p = torch.softmax(logit, -1)
    if padded:
        p[:, :, n - padded:] = 0
    R = block_size // stride
    a = p.view(B, H, Np // block_size, R, Np // block_size, R).sum(-1).sum(-2)
    nb = -(-N // block_size)
    return a[:, :, :nb, :nb]


def _qk(B, H, HKV, T, S, D, dtype=torch.float32, seed=42):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, D, generator=g).to(dtype)
    k = torch.randn(B, HKV, S, D, generator=g).to(dtype)
    return q, k


@pytest.mark.parametrize("B,H,HKV,T,S,D,st,bs", [
    (1, 2, 1, 45, 45, 8, 4, 8),
    (2, 4, 2, 37, 37, 4, 2, 4),
    (1, 2, 2, 29, 47, 8, 4, 16),   # chunked prefill, S - T not a multiple of the stride
    (1, 3, 1, 21, 64, 8, 8, 16),   # S - T a multiple of the stride
    (1, 2, 1, 7, 7, 4, 8, 8),      # shorter than one stride
])
def test_reference_matches_brute_force(B, H, HKV, T, S, D, st, bs):
    q, k = _qk(B, H, HKV, T, S, D)
    scale = 0.7 / (math.sqrt(D) * st)
    ref = brute_scores(q, k, st, bs, scale)
    out = antidiag_block_scores_naive(q, k, st, bs, scale)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("T,st,bs,chunk", [(1001, 8, 128, 512), (777, 16, 128, 256), (300, 4, 64, 128),
                                           (1024, 8, 128, 512)])
def test_reference_matches_official_formulation(T, st, bs, chunk):
    q, k = _qk(1, 4, 2, T, T, 32)
    scale = 1 / (math.sqrt(32) * st)
    ref = official_style_scores(q, k, st, bs, scale, chunk)
    out = antidiag_block_scores_naive(q, k, st, bs, scale)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_hand_worked_antidiagonal():
    """D = 1, stride 2, blocks of 2: q = [1, 2, 3, 4], k = [1, 0, 0, 2], scale 1/2.
    Row 0 (q0, q1), tile 0: q1 k0 + q0 k1 = 2 -> alone in its row: mass 1.
    Row 1 (q2, q3): tile 0: q3 k0 + q2 k1 = 4 -> 2; tile 1: q3 k2 + q2 k3 = 6 -> 3; softmax [2, 3].
    (The slash variant would pair q2 k2 + q3 k3 = 8 instead.)"""
    q = torch.tensor([1.0, 2, 3, 4]).view(1, 1, 4, 1)
    k = torch.tensor([1.0, 0, 0, 2]).view(1, 1, 4, 1)
    e = math.e
    want = torch.tensor([[1.0, 0.0], [1 / (1 + e), e / (1 + e)]])
    torch.testing.assert_close(antidiag_block_scores_naive(q, k, 2, 2, 0.5)[0, 0], want)


def test_reference_takes_low_precision_inputs_as_their_fp32_values():
    q, k = _qk(1, 4, 2, 300, 333, 16, dtype=torch.bfloat16)
    a = antidiag_block_scores_naive(q, k, 4, 32, 0.1)
    b = antidiag_block_scores_naive(q.float(), k.float(), 4, 32, 0.1)
    assert a.dtype == torch.float32 and torch.equal(a, b)


def test_row_ranges_and_memory_chunks_agree():
    q, k = _qk(1, 4, 1, 1000, 1000, 16)
    full = antidiag_block_scores_naive(q, k, 8, 64, 0.05)
    parts = torch.cat([antidiag_block_scores_naive(q, k, 8, 64, 0.05, r, r + 192, max_scores=1)
                       for r in range(0, 1000, 192)], dim=2)
    torch.testing.assert_close(parts, full, rtol=1e-6, atol=1e-6)
    sums = full.sum(-1)[0, 0]
    assert torch.allclose(sums[:-1], torch.full_like(sums[:-1], 8.0)) and sums[-1].item() == pytest.approx(5.0)


def test_exact_block_scores_match_dense_softmax():
    q, k = _qk(1, 4, 2, 150, 190, 16)
    out = exact_block_scores_naive(q, k, 32, 0.25, 32, 128, max_scores=1)
    s = (q.double() @ k.double().repeat_interleave(2, 1).transpose(-1, -2)) * 0.25
    pos = torch.arange(150)[:, None] + 40
    p = torch.softmax(s.masked_fill(torch.arange(190)[None, :] > pos, float("-inf")), -1)[:, :, 32:128]
    want = F.pad(p, (0, 2)).view(1, 4, 3, 32, 6, 32).sum(dim=(3, 5))
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)


def test_bad_arguments_raise():
    q, k = _qk(1, 2, 1, 100, 100, 8)
    with pytest.raises(ValueError, match="stride=3"):
        antidiag_block_scores_naive(q, k, 3, 32, 1.0)
    with pytest.raises(ValueError, match="row range"):
        antidiag_block_scores_naive(q, k, 4, 32, 1.0, row_start=16)
    with pytest.raises(ValueError, match="S >= T"):
        antidiag_block_scores_naive(q, k[:, :, :50], 4, 32, 1.0)


def test_import_is_lazy():
    code = ("import sys, sparsebench.kernels.antidiag_score as m; assert 'triton' not in sys.modules; "
            "m.antidiag_block_scores_triton; assert 'triton' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------- Triton
def _p(B, H, HKV, T, S, D, st, bs, rows=None, dtype="float32", block_d=None):
    tag = f"-r{rows[0]}_{rows[1]}" if rows else ""
    tag += f"-bd{block_d}" if block_d else ""
    return pytest.param((B, H, HKV, T, S, D, st, bs, rows, dtype, block_d),
                        id=f"B{B}-H{H}-HKV{HKV}-T{T}-S{S}-D{D}-st{st}-bs{bs}{tag}-{dtype}")


CPU_CASES = [
    _p(1, 4, 2, 300, 300, 16, 8, 32),
    _p(1, 2, 1, 301, 301, 32, 4, 128),
    _p(2, 4, 4, 177, 250, 64, 16, 128),
    _p(1, 4, 1, 333, 333, 256, 8, 64, rows=(64, 192)),
    _p(1, 2, 2, 130, 403, 16, 8, 128),
    _p(1, 4, 2, 200, 200, 32, 8, 128, dtype="float16"),
    _p(1, 2, 1, 5, 5, 16, 8, 128),
    _p(1, 2, 1, 100, 100, 16, 16, 16),
    _p(1, 2, 1, 300, 300, 16, 2, 256),
    _p(1, 2, 1, 90, 90, 48, 4, 32),
    _p(1, 2, 1, 200, 200, 128, 8, 64, block_d=128),
    _p(1, 2, 2, 150, 170, 64, 4, 32, block_d=16),
    # programs whose first rows already see whole key tiles: up to 3 unmasked tiles before the masked ones (_SPLIT)
    _p(1, 2, 1, 1000, 1000, 16, 2, 32),
    _p(1, 2, 1, 600, 1100, 16, 2, 32),
]


def _check_case(case, device="cpu", tol=2e-5):
    from sparsebench.kernels.antidiag_score import antidiag_block_scores_triton

    B, H, HKV, T, S, D, st, bs, rows, dtype, block_d = case
    q, k = _qk(B, H, HKV, T, S, D, getattr(torch, dtype))
    q, k = q.to(device), k.to(device)
    r0, r1 = rows or (0, None)
    scale = 1.0 / (math.sqrt(D) * st)
    ref = antidiag_block_scores_naive(q, k, st, bs, scale, r0, r1)
    out = antidiag_block_scores_triton(q, k, st, bs, scale, r0, r1, block_d=block_d)
    assert out.shape == ref.shape and out.dtype == torch.float32
    err = (out - ref).abs().max().item()
    assert err < tol * (bs // st), f"max error {err:.3e}"


@pytest.mark.parametrize("case", CPU_CASES)
def test_triton_interpret_matches_reference(case, request, interpret_verdicts):
    assert_verdict(interpret_verdicts, request)


GPU_CASES = [
    _p(1, 8, 2, 4096, 4096, 128, 8, 128, dtype="bfloat16"),
    _p(1, 4, 1, 3001, 3001, 256, 8, 128, dtype="bfloat16"),
    _p(2, 8, 8, 2000, 2777, 64, 16, 128, dtype="bfloat16"),
    _p(1, 8, 2, 5000, 5000, 128, 4, 128, rows=(1024, 3072), dtype="bfloat16"),
    _p(1, 4, 4, 1000, 1000, 128, 8, 64, dtype="float16"),
    _p(1, 4, 2, 1000, 1000, 64, 8, 128, dtype="float32"),
    _p(1, 4, 1, 700, 700, 80, 8, 128, dtype="bfloat16"),
    _p(1, 8, 2, 4096, 4096, 128, 8, 128, dtype="bfloat16", block_d=128),
    _p(1, 8, 2, 2048, 2048, 128, 16, 128, dtype="bfloat16", block_d=128),
]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", GPU_CASES)
def test_triton_gpu_matches_reference(case):
    _check_case(case, device="cuda", tol=2e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("shape", [(32768, 4, 1, 256), (131072, 32, 8, 128)], ids=["32K-gemma3", "128K-llama"])
def test_triton_gpu_long_memory(shape):
    """Whole-length estimate in chunks of 32K queries: fits, and the rows of complete blocks sum to BS/st."""
    from sparsebench.kernels.antidiag_score import antidiag_block_scores_triton

    T, H, HKV, D = shape
    q = torch.randn(1, H, T, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, HKV, T, D, device="cuda", dtype=torch.bfloat16)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    for r0 in range(0, T, 32768):
        s = antidiag_block_scores_triton(q, k, 8, 128, 1 / (math.sqrt(D) * 8), r0, r0 + 32768)
        torch.testing.assert_close(s.sum(-1), torch.full_like(s.sum(-1), 16.0), rtol=1e-4, atol=1e-3)
    assert torch.cuda.max_memory_allocated() - base < 4 << 30


if __name__ == "__main__" and sys.argv[1:] == ["--interpret"]:
    report_verdicts(_check_case, CPU_CASES)


def test_bad_block_d_raises():
    from sparsebench.kernels.antidiag_score import antidiag_block_scores_triton

    q, k = _qk(1, 2, 1, 64, 64, 64, torch.float32)
    with pytest.raises(ValueError, match="block_d=48"):
        antidiag_block_scores_triton(q, k, 8, 64, 0.1, block_d=48)
    with pytest.raises(ValueError, match="scale=-0.1 must be > 0"):
        antidiag_block_scores_triton(q, k, 8, 64, -0.1)
