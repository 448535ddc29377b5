"""XAttention (`xattn`): selection rules on hand-worked cases, Triton vs reference estimator (exact block sets),
keep-everything == dense, reported == executed density, head dim 256, estimation FLOPs, threshold profiling and its
calibration script, knob validation.

The Triton cases on CPU run under TRITON_INTERPRET=1 in one subprocess (this file as a script), since the variable
must be set before triton is first imported; each test reads its verdict.
"""
from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparsebench.attention import AttnContext, AttnShape, Meter, install, method_layers
from sparsebench.executors import execute
from sparsebench.methods.xattn import (XAttention, block_mask_to_selection, find_blocks, profile_thresholds,
                                       thresholds_from_scores)
from sparsebench.selection import causal_pairs
from sparsebench.testing import assert_verdict, report_verdicts

ROOT = Path(__file__).resolve().parents[2]


def _qkv(B, H, HKV, T, S, D, dtype=torch.float32, seed=42):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, T, D, generator=g).to(dtype), torch.randn(B, HKV, S, D, generator=g).to(dtype),
            torch.randn(B, HKV, S, D, generator=g).to(dtype))


def _ctx(H, HKV, D, layer=0):
    return AttnContext(layer, H, HKV, D, 1 / math.sqrt(D))


def _row(scores):
    return torch.tensor(scores, dtype=torch.float32).view(1, 1, 1, -1)


# ---------------------------------------------------------------------------------------------- hand-worked
def test_crossing_block_is_kept():
    """Query block 3 of 4 (T = S = 4 blocks of 1): forced = {0, 3} (mass 1 + 2), then block 1 (5), block 2 (3);
    total 11. tau = 0.5 -> required 5.5: before(1) = 3 < 5.5 keeps block 1, which crosses it (3 -> 8);
    before(2) = 8 drops block 2. tau = 0.73 -> required 8.03 keeps block 2 as well."""
    s = _row([1.0, 5.0, 3.0, 2.0])
    keep = find_blocks(s, 0.5, 4, 4, 1, qb_start=3)[0, 0, 0].tolist()
    assert keep == [True, True, False, True]
    keep = find_blocks(s, 0.73, 4, 4, 1, qb_start=3)[0, 0, 0].tolist()
    assert keep == [True, True, True, True]
    # exactly at the boundary the rule is strict: before(2) = 8 is not < 8
    keep = find_blocks(s, 8 / 11 - 1e-12, 4, 4, 1, qb_start=3)[0, 0, 0].tolist()
    assert keep == [True, True, False, True]


@pytest.mark.parametrize("tau", [0.0, 1e-9])
def test_forced_sink_and_diagonal_with_tiny_tau(tau):
    s = _row([0.001, 9.0, 9.0, 9.0, 0.001, 0.0])
    keep = find_blocks(s, tau, 6, 6, 1, qb_start=4)[0, 0, 0].tolist()
    assert keep == [True, False, False, False, True, False]


@pytest.mark.parametrize("tau", [1.0, 1.5])
def test_tau_at_least_one_keeps_every_causal_block(tau):
    s = _row([0.5, 0.0, 3.0, 0.0, 1.0, 7.0])  # a zero-score causal block and a non-causal block with mass
    keep = find_blocks(s, tau, 6, 6, 1, qb_start=4)[0, 0, 0].tolist()
    assert keep == [True, True, True, True, True, False]


def test_ties_go_to_the_lower_block_index():
    s = _row([1.0, 3.0, 3.0, 3.0, 1.0])  # total 11; tau 0.4 -> required 4.4: forced 2, then block 1 (before 2)
    keep = find_blocks(s, 0.4, 5, 5, 1, qb_start=4)[0, 0, 0].tolist()
    assert keep == [True, True, False, False, True]


def test_offset_diagonal_forces_the_blocks_of_the_query_positions():
    """T = 4, S = 10, blocks of 4: query block 0 holds positions 6..9 -> key blocks 1 and 2 forced (plus 0)."""
    s = torch.zeros(1, 1, 1, 3)
    keep = find_blocks(s, 0.0, 4, 10, 4)[0, 0, 0].tolist()
    assert keep == [True, True, True]
    s = torch.tensor([0.0, 5.0, 1.0]).view(1, 1, 1, 3)  # T = 2, S = 10: positions 8, 9 -> block 2 only
    assert find_blocks(s, 0.0, 2, 10, 4)[0, 0, 0].tolist() == [True, False, True]


def test_per_head_thresholds():
    s = _row([1.0, 5.0, 3.0, 2.0]).expand(1, 3, 1, 4)
    keep = find_blocks(s, torch.tensor([0.0, 0.5, 1.0]), 4, 4, 1, qb_start=3)[0, :, 0].tolist()
    assert keep == [[True, False, False, True], [True, True, False, True], [True, True, True, True]]


def test_block_mask_to_selection_lists_kept_blocks_ascending_then_the_rest():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(2, 3, 7, 9, generator=g) < 0.4
    mask[0, 0, 0] = False
    mask[0, 0, 1] = True
    sel = block_mask_to_selection(mask, block_size=4, q_len=28, k_len=36, num_heads=3, num_kv_heads=1)
    assert sel.kv_indices.dtype == sel.kv_counts.dtype == torch.int32
    assert torch.equal(sel.kv_counts, mask.sum(-1, dtype=torch.int32))
    # the stable partition: what a stable argsort of "not kept" gives
    assert torch.equal(sel.kv_indices, torch.argsort((~mask).to(torch.int8), dim=-1, stable=True).to(torch.int32))
    assert torch.equal(sel.to_block_mask(), mask)


# ---------------------------------------------------------------------------------------------- method
@pytest.mark.parametrize("tau", [1.0, 1.5])
def test_keep_everything_equals_dense(tau):
    q, k, v = _qkv(1, 4, 2, 333, 333, 32)
    m = XAttention(stride=4, threshold=tau, block_size=64, use_triton="false")
    sel = m.select(q, k, _ctx(4, 2, 32))
    sel.validate()
    assert sel.density() == 1.0
    out = execute("reference", q, k, v, sel, 1 / math.sqrt(32))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("T,S,st,bs,tau", [(999, 999, 8, 128, 0.9), (301, 301, 4, 32, 0.6), (200, 517, 16, 64, 0.8),
                                           (1000, 1000, 8, 64, 0.0)])
def test_reported_density_is_executed_density(T, S, st, bs, tau):
    q, k, _ = _qkv(1, 4, 2, T, S, 16)
    sel = XAttention(stride=st, threshold=tau, block_size=bs, use_triton="false").select(q, k, _ctx(4, 2, 16))
    sel.validate()
    pairs = sel.token_mask().sum().item()
    assert sel.density() == pytest.approx(pairs / (4 * causal_pairs(T, S)), abs=1e-12)
    assert 0 < sel.density() <= 1
    # every listed block is causal and the forced blocks are always listed
    bm = sel.to_block_mask()
    nq = -(-T // bs)
    last = torch.clamp((torch.arange(nq) + 1) * bs, max=T) - 1 + S - T
    assert bm[..., 0].all() and bm[:, :, torch.arange(nq), last // bs].all()
    assert not (bm & (torch.arange(bm.shape[-1])[None, :] * bs > last[:, None])).any()


def test_selection_does_not_depend_on_chunk_size():
    q, k, _ = _qkv(2, 4, 1, 1100, 1100, 16)
    a = XAttention(block_size=64, use_triton="false").select(q, k, _ctx(4, 1, 16))
    b = XAttention(block_size=64, chunk_size=128, use_triton="false").select(q, k, _ctx(4, 1, 16))
    assert torch.equal(a.kv_counts, b.kv_counts) and torch.equal(a.kv_indices, b.kv_indices)


@pytest.mark.parametrize("stride,T", [(8, 131072), (16, 131072), (8, 200000), (8, 1000), (16, 65536)])
def test_triton_chunks_are_equal_whole_blocks_within_the_scratch_bound(stride, T):
    from sparsebench.methods.xattn import _TRITON_CHUNK_BYTES

    m = XAttention(stride=stride)
    chunk = m._chunk(1, 32, T, T, True)
    nk, n = -(-T // 128), -(-T // chunk)
    assert chunk % 128 == 0 and 4 * 32 * (nk + 1) * (chunk // stride) <= _TRITON_CHUNK_BYTES
    assert T - (n - 1) * chunk > chunk - 128 * n  # the last launch is as long as the others, to a block per launch
    assert n == -(-T // max(128, _TRITON_CHUNK_BYTES // (4 * 32 * (nk + 1)) * stride // 128 * 128))  # fewest launches


def test_thresholds_grow_density():
    q, k, _ = _qkv(1, 2, 1, 1024, 1024, 32)
    dens = [XAttention(threshold=t, block_size=64).select(q, k, _ctx(2, 1, 32)).density()
            for t in (0.0, 0.3, 0.6, 0.9, 1.0)]
    assert dens == sorted(dens) and dens[0] < dens[-1] == 1.0


def test_head_dim_256():
    q, k, v = _qkv(1, 4, 1, 257, 257, 256)
    m = XAttention(threshold=0.5, block_size=64, use_triton="false")
    sel = m.select(q, k, _ctx(4, 1, 256))
    sel.validate()
    out = execute("reference", q, k, v, sel, 1 / 16)
    assert out.shape == q.shape and torch.isfinite(out).all() and 0 < sel.density() < 1


def _naive_work(T, S, st, bs, H, D):
    """The reference's matmul FLOPs with one query block per chunk (rectangles up to each chunk's causal limit)."""
    R, TR, SR, c = bs // st, -(-T // st), -(-S // st), -(-(S - T) // st)
    return sum(2 * H * (min(i0 + R, TR) - i0) * min(SR, min(i0 + R, TR) + c) * st * D for i0 in range(0, TR, R))


@pytest.mark.parametrize("T,S,st,bs", [(3001, 3001, 8, 64), (1000, 1777, 4, 64), (2049, 2049, 16, 128)])
def test_estimation_flops(T, S, st, bs):
    from torch.utils.flop_counter import FlopCounterMode

    from sparsebench.kernels.antidiag_score import antidiag_block_scores_naive

    H, HKV, D = 2, 1, 16
    m = XAttention(stride=st, block_size=bs)
    est = m.estimation_flops(AttnShape(1, T, S, H, HKV, D))
    # closed form == the tile-level causal pairs counted one by one
    i = torch.arange(-(-T // st))[:, None]
    j = torch.arange(-(-S // st))[None, :]
    assert est == 2 * H * st * D * int((j <= i + -(-(S - T) // st)).sum())
    q, k, _ = _qkv(1, H, HKV, T, S, D)
    with FlopCounterMode(display=False) as fc:
        antidiag_block_scores_naive(q, k, st, bs, 0.1, max_scores=1)
    measured = fc.get_total_flops()
    assert measured == _naive_work(T, S, st, bs, H, D)
    # the reference's only extra work is the upper triangle of each one-block rectangle
    assert est <= measured <= 1.06 * est


def test_bad_knobs_raise():
    for kw, text in [({"stride": 3}, "stride=3"), ({"stride": 0}, "stride=0"), ({"block_size": 0}, "block_size=0"),
                     ({"threshold": -0.1}, "threshold=-0.1"), ({"threshold": float("nan")}, "threshold=nan"),
                     ({"norm": 0.0}, "norm=0.0"), ({"chunk_size": 100}, "chunk_size=100"),
                     ({"use_triton": "yes"}, "use_triton='yes'"), ({"executor": "cudnn"}, "executor='cudnn'"),
                     ({"thresholds_file": 3}, "thresholds_file=3")]:
        with pytest.raises(ValueError, match=text.replace("(", r"\(").replace("[", r"\[")):
            XAttention(**kw)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        XAttention(thresholds_file="/nonexistent/nope.json")


def test_route_through_tiny_model(compose):
    """Through tiny_llama: keep-everything == stock logits; recorded density == the selection's density."""
    from sparsebench.models import load

    cfg = compose(["model=tiny_llama", "model.device=cpu", "method=xattn"])
    model, _, _ = load(cfg.model, cfg.paths.cache_dir)
    ids = torch.randint(3, 250, (1, 301), generator=torch.Generator().manual_seed(42))
    stock = copy.deepcopy(model)
    stock.set_attn_implementation("eager")
    seen = []

    class Recording(XAttention):
        def select(self, q, k, ctx):
            sel = super().select(q, k, ctx)
            seen.append(sel.density())
            return sel

    outs = {}
    for tau in (1.0, 0.3):
        meter = Meter()
        routed = copy.deepcopy(model)
        install(routed, Recording(stride=4, threshold=tau, block_size=32, executor="reference"),
                method_layers(routed.config, "all"), "reference", meter)
        with torch.no_grad():
            outs[tau] = routed(ids).logits.float()
        assert [r.density for r in meter.records] == seen[-len(meter.records):]
        assert all(r.estimation_flops > 0 for r in meter.records)
    with torch.no_grad():
        ref = stock(ids).logits.float()
    assert (outs[1.0] - ref).abs().max().item() < 1e-4 * max(1.0, ref.abs().max().item())
    assert seen[:2] == [1.0, 1.0] and all(d < 1 for d in seen[2:])


# ---------------------------------------------------------------------------------------------- thresholds
def test_threshold_rule_hand_worked():
    """One row, blocks' exact mass [5, 3, 1.5, 0.5] (total 10): 90% needs blocks 0, 1, 2 (5 + 3 < 9 <= 9.5).
    Their estimates [4, 1, 2] -> mini = 1; estimates >= 1: [4, 1, 2] of [4, 1, 2, 0.5] -> 7 / 7.5."""
    ex = torch.tensor([5.0, 3.0, 1.5, 0.5]).view(1, 1, 1, 4)
    est = torch.tensor([4.0, 1.0, 2.0, 0.5]).view(1, 1, 1, 4)
    assert thresholds_from_scores(ex, est)[0, 0].item() == pytest.approx(7 / 7.5)
    # two rows pool their mass: row 2 keeps all of its 2.5 -> (7 + 2.5) / (7.5 + 2.5)
    ex2 = torch.cat([ex, torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 1, 1, 4)], dim=2)
    est2 = torch.cat([est, torch.tensor([2.5, 0.0, 0.0, 0.0]).view(1, 1, 1, 4)], dim=2)
    assert thresholds_from_scores(ex2, est2)[0, 0].item() == pytest.approx(9.5 / 10)


def test_profile_thresholds_on_random_qk():
    q, k, _ = _qkv(2, 4, 2, 700, 700, 32)
    thr = profile_thresholds(q, k, stride=8, block_size=64)
    assert thr.shape == (2, 4) and ((thr > 0) & (thr <= 1)).all()
    # an estimate equal to the exact mass keeps at least the covering blocks: threshold >= coverage
    from sparsebench.kernels.antidiag_score import exact_block_scores_naive

    ex = exact_block_scores_naive(q, k, 64, 1 / math.sqrt(32))
    assert (thresholds_from_scores(ex, ex, 0.9) >= 0.9 - 1e-9).all()


def test_thresholds_file_drives_per_head_tau(tmp_path):
    from sparsebench import calibration

    path = calibration.save(tmp_path / "thr.json", {"thresholds": [None, [0.0, 1.0, 0.0, 1.0]], "stride": 8,
                                                     "block_size": 64})
    m = XAttention(block_size=64, thresholds_file=str(path))
    q, k, _ = _qkv(1, 4, 2, 640, 640, 16)
    sel = m.select(q, k, _ctx(4, 2, 16, layer=1))
    counts = sel.kv_counts[0, :, -1].tolist()
    assert counts[1] == counts[3] == 10 and counts[0] == counts[2] == 2
    with pytest.raises(ValueError, match="no thresholds for layer 0"):
        m.select(q, k, _ctx(4, 2, 16, layer=0))
    with pytest.raises(ValueError, match="2 query heads"):
        m.select(q[:, :2], k[:, :1], _ctx(2, 1, 16, layer=1))
    with pytest.raises(ValueError, match="stride=8"):
        XAttention(stride=16, block_size=64, thresholds_file=str(path))
    bad = calibration.save(tmp_path / "bad.json", {"thresholds": [[0.5, -1.0]]})
    with pytest.raises(ValueError, match=r"\[-1.0\]"):
        XAttention(thresholds_file=str(bad))


def test_calibration_script_on_tiny_llama(tmp_path):
    out = tmp_path / "thr.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "calibrate_xattn.py"), "model=tiny_llama",
                           "model.device=cpu", "seq_len=600", "--n-samples", "2", "--stride", "4", "--block-size",
                           "32", "--out", str(out)], check=False, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    body = json.loads(out.read_text())
    table = body["payload"]["thresholds"]
    assert len(table) == 2 and all(len(row) == 4 and all(0 < x <= 1 for x in row) for row in table)
    from sparsebench.calibration import CALIB_SEED_OFFSET

    assert min(body["inputs"]["calib_seeds"]) >= CALIB_SEED_OFFSET
    m = XAttention(stride=4, block_size=32, thresholds_file=str(out))
    assert m.tau(1, 4, torch.device("cpu")).tolist() == table[1]


# ---------------------------------------------------------------------------------------------- Triton
def _p(B, H, HKV, T, S, D, st, bs, tau, dtype="float32"):
    return pytest.param((B, H, HKV, T, S, D, st, bs, tau, dtype),
                        id=f"B{B}-H{H}-HKV{HKV}-T{T}-S{S}-D{D}-st{st}-bs{bs}-tau{tau}-{dtype}")


CPU_CASES = [
    _p(1, 4, 2, 333, 333, 16, 8, 32, 0.9),
    _p(1, 2, 1, 517, 517, 32, 4, 64, 0.6),
    _p(2, 2, 2, 190, 301, 16, 16, 64, 0.8),
    _p(1, 4, 1, 257, 257, 256, 8, 64, 0.9),
    _p(1, 2, 1, 400, 400, 16, 8, 128, 0.95),
]


def _selections(case, device="cpu"):
    B, H, HKV, T, S, D, st, bs, tau, dtype = case
    q, k, _ = _qkv(B, H, HKV, T, S, D, getattr(torch, dtype))
    q, k = q.to(device), k.to(device)
    ctx = _ctx(H, HKV, D)
    fast = XAttention(stride=st, threshold=tau, block_size=bs, use_triton="true").select(q, k, ctx)
    ref = XAttention(stride=st, threshold=tau, block_size=bs, use_triton="false").select(q, k, ctx)
    loose = [XAttention(stride=st, threshold=t, block_size=bs, use_triton="false").select(q, k, ctx).to_block_mask()
             for t in (tau * (1 - 1e-3), tau * (1 + 1e-3))]
    return fast, ref, loose


def _check_exact(case):
    fast, ref, _ = _selections(case)
    fast.validate()
    assert torch.equal(fast.kv_counts, ref.kv_counts), "block counts differ"
    assert torch.equal(fast.kv_indices, ref.kv_indices), "block lists differ"


@pytest.mark.parametrize("case", CPU_CASES)
def test_triton_selection_equals_reference_interpret(case, request, interpret_verdicts):
    assert_verdict(interpret_verdicts, request)


GPU_CASES = [
    _p(1, 8, 2, 4096, 4096, 128, 8, 128, 0.9, "bfloat16"),
    _p(1, 4, 1, 3001, 3001, 256, 8, 128, 0.9, "bfloat16"),
    _p(1, 8, 2, 5000, 5000, 128, 16, 128, 0.95, "bfloat16"),
    _p(1, 8, 8, 2000, 3333, 64, 4, 128, 0.8, "bfloat16"),
    _p(1, 8, 2, 4096, 4096, 128, 8, 128, 0.9, "float32"),
]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", GPU_CASES)
def test_triton_selection_equals_reference_gpu(case):
    """bf16 inputs: scores agree to fp32 rounding, so the sets must agree except for blocks whose keep decision
    sits within 0.1% of the threshold (bracketed by the reference at tau * (1 -+ 1e-3))."""
    fast, ref, (lo, hi) = _selections(case, device="cuda")
    fast.validate()
    fm, rm = fast.to_block_mask(), ref.to_block_mask()
    assert (lo <= fm).all() and (fm <= hi).all()
    assert (fm != rm).sum().item() <= max(2, rm.sum().item() // 10000)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("shape", [(32768, 4, 1, 256), (131072, 32, 8, 128)], ids=["32K-gemma3", "128K-llama"])
def test_long_select_memory_gpu(shape):
    """select at 32K (gemma3_270m heads) and 128K (Llama-3.1-8B heads) in bf16, Triton estimator: fits, no host
    sync beyond the first threshold copy; prints the estimation time for the record."""
    import time

    T, H, HKV, D = shape
    q = torch.randn(1, H, T, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, HKV, T, D, device="cuda", dtype=torch.bfloat16)
    m = XAttention()
    ctx = _ctx(H, HKV, D)
    m.select(q, k, ctx)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    sel = m.select(q, k, ctx)
    torch.cuda.synchronize()
    print(f"xattn select T={T} H={H}: {(time.perf_counter() - t0) * 1e3:.1f} ms, density {sel.density():.3f}, "
          f"peak +{(torch.cuda.max_memory_allocated() - base) / 2**30:.2f} GiB")
    assert torch.cuda.max_memory_allocated() - base < 8 << 30


# ---------------------------------------------------------------------------------------------- selection kernel
def test_select_kernel_switch(monkeypatch):
    """The fused selection kernel runs by default on CUDA, under the interpreter only with
    SPARSEBENCH_XATTN_SELECT_KERNEL=1, never on the plain CPU path, with use_triton=false or with the variable at 0;
    a bad value is an error."""
    from sparsebench.methods.xattn import SELECT_KERNEL_ENV

    q = torch.zeros(1, 2, 256, 16)
    m = XAttention(block_size=64)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv(SELECT_KERNEL_ENV, raising=False)
    assert not m._select_kernel_for(q, 256)
    monkeypatch.setenv(SELECT_KERNEL_ENV, "1")
    assert not m._select_kernel_for(q, 256)  # CPU without the interpreter
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert m._select_kernel_for(q, 256)
    monkeypatch.setenv(SELECT_KERNEL_ENV, "auto")
    assert not m._select_kernel_for(q, 256)  # the default: CUDA only, not the interpreter
    monkeypatch.setenv(SELECT_KERNEL_ENV, "1")
    assert not XAttention(block_size=64, use_triton="false")._select_kernel_for(q, 256)
    assert not m._select_kernel_for(q, 64 * 8193)  # past MAX_NK: the torch path
    monkeypatch.setenv(SELECT_KERNEL_ENV, "0")
    assert not m._select_kernel_for(q, 256)
    monkeypatch.setenv(SELECT_KERNEL_ENV, "yes")
    with pytest.raises(ValueError, match="SPARSEBENCH_XATTN_SELECT_KERNEL='yes'"):
        m._select_kernel_for(q, 256)


def _f(B, H, HKV, T, S, D, st, bs, tau, chunk=None):
    tag = "heads" if isinstance(tau, list) else tau
    return pytest.param((B, H, HKV, T, S, D, st, bs, tau, chunk),
                        id=f"fused-B{B}-H{H}-HKV{HKV}-T{T}-S{S}-st{st}-bs{bs}-tau{tag}-chunk{chunk}")


FUSED_CASES = [
    _f(1, 4, 2, 333, 333, 16, 8, 32, 0.9),
    _f(1, 2, 1, 517, 700, 32, 4, 64, 0.6, chunk=128),  # several chunks: each writes its rows of the lists
    _f(2, 2, 2, 190, 301, 16, 16, 64, [0.0, 1.0]),
    _f(1, 4, 1, 640, 640, 16, 8, 64, [0.5, 0.9, 0.95, 0.3], chunk=192),
]


def _fused_vs_torch(case, device="cpu"):
    """select with the fused kernel vs the torch find_blocks path on the same Triton scores."""
    import tempfile

    from sparsebench import calibration
    from sparsebench.methods.xattn import SELECT_KERNEL_ENV

    B, H, HKV, T, S, D, st, bs, tau, chunk = case
    q, k, _ = _qkv(B, H, HKV, T, S, D)
    q, k = q.to(device), k.to(device)
    ctx = _ctx(H, HKV, D)
    with tempfile.TemporaryDirectory() as tmp:
        kw = {"threshold": tau}
        if isinstance(tau, list):
            kw = {"thresholds_file": str(calibration.save(f"{tmp}/thr.json", {"thresholds": [tau]}))}
        m = XAttention(stride=st, block_size=bs, chunk_size=chunk, use_triton="true", **kw)
        sels = {}
        old = os.environ.get(SELECT_KERNEL_ENV)
        try:
            for flag in ("1", "0"):
                os.environ[SELECT_KERNEL_ENV] = flag
                assert m._select_kernel_for(q, S) == (flag == "1")
                sels[flag] = m.select(q, k, ctx)
        finally:
            if old is None:
                os.environ.pop(SELECT_KERNEL_ENV, None)
            else:
                os.environ[SELECT_KERNEL_ENV] = old
    fused, ref = sels["1"], sels["0"]
    fused.validate()
    assert torch.equal(fused.kv_counts, ref.kv_counts), "block counts differ"
    assert torch.equal(fused.kv_indices, ref.kv_indices), "block lists differ"


@pytest.mark.parametrize("case", FUSED_CASES)
def test_fused_selection_equals_torch_path_interpret(case, request, interpret_verdicts):
    assert_verdict(interpret_verdicts, request)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", FUSED_CASES + [_f(1, 8, 2, 8192, 8192, 128, 8, 128, 0.9),
                                               _f(1, 8, 2, 3000, 9000, 128, 16, 128, [0.9] * 4 + [0.5] * 4)])
def test_fused_selection_equals_torch_path_gpu(case):
    _fused_vs_torch(case, device="cuda")


if __name__ == "__main__" and sys.argv[1:] == ["--interpret"]:
    report_verdicts(_check_exact, CPU_CASES)
    report_verdicts(_fused_vs_torch, FUSED_CASES)
