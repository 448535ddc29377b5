"""MInference: fast estimators == naive (per-head, Python-ranked) estimators, keep-everything == dense, reported ==
executed density, hand-worked selection rules (forced columns/diagonals, picks, ties, block top-k, budget_scale,
per-head configs), head dim 256, estimation FLOPs, knob validation, the pattern search and its script."""
from __future__ import annotations

import copy
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from sparsebench.attention import AttnContext, AttnShape, Meter, install, method_layers
from sparsebench.executors import execute
from sparsebench.methods.minference import (MInference, _diagonal_sums, _scaled_logits, block_sparse_lists,
                                            block_sparse_lists_naive, choose_patterns, search_recall, vs_scores,
                                            vs_scores_naive)
from sparsebench.selection import Selection, causal_pairs

ROOT = Path(__file__).resolve().parents[2]


def qk(B, H, HKV, T, S, D, dtype=torch.float32, device="cpu", seed=42):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, D, generator=g).to(device, dtype)
    k = torch.randn(B, HKV, S, D, generator=g).to(device, dtype)
    v = torch.randn(B, HKV, S, D, generator=g).to(device, dtype)
    return q, k, v


def ctx_for(q, k, layer=0, scale=None):
    D = q.shape[-1]
    return AttnContext(layer, q.shape[1], k.shape[1], D, D ** -0.5 if scale is None else scale)


def mask_density(sel: Selection) -> float:
    m = sel.token_mask()
    return m.sum().item() * sel.heads_per_list / (m.shape[0] * sel.num_heads * causal_pairs(sel.q_len, sel.k_len))


def head_mask(sel: Selection, h: int) -> torch.Tensor:
    """[B, T, S] executed pairs of query head h."""
    return sel.token_mask()[:, h // sel.heads_per_list]


def write_config(path: Path, layers, wrap=True) -> str:
    body = {"inputs": {}, "payload": {"best_pattern": layers}} if wrap else layers
    path.write_text(json.dumps(body))
    return str(path)


def rule(T, S, cols=(), offsets=(), sink=0, window=None):
    """[T, S] pairs from token rules: listed columns, listed diagonals, a sink + window; causal."""
    pos = torch.arange(T)[:, None] + S - T
    c = torch.arange(S)[None, :]
    m = torch.zeros(T, S, dtype=torch.bool)
    for x in cols:
        m |= c == x
    for o in offsets:
        m |= pos - c == o
    if window is not None:
        m |= (pos - c < window) | (c < sink)
    return m & (c <= pos)


# ------------------------------------------------------------------------------------------- fast == naive
MIXED = [{"0": ["vertical_and_slash", 40, 120, 0.9], "1": ["stream_llm", 4, 16, 0.8], "2": ["block_sparse", 1, 1, 0.7]}]
CASES = [  # B, H, HKV, T, S, D, knobs
    (1, 4, 2, 333, 333, 32, dict(vertical_size=40, slash_size=60)),  # slash 60 < 100 forced: ties among +inf
    (2, 4, 1, 201, 333, 16, dict(vertical_size=45, slash_size=130, last_q=32)),  # chunked prefill, T < S
    (1, 4, 2, 333, 333, 32, dict(pattern="block_sparse", top_k=3, block_size=32)),
    (1, 2, 2, 150, 251, 16, dict(pattern="block_sparse", top_k=2)),
    (1, 4, 2, 257, 257, 16, dict(pattern="config")),  # per-head types in one layer
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}-H{}-HKV{}-T{}-S{}-D{}".format(*c[:6]))
def test_fast_estimator_equals_naive(case, tmp_path):
    B, H, HKV, T, S, D, knobs = case
    if knobs.get("pattern") == "config":
        knobs = dict(knobs, pattern_file=write_config(tmp_path / "p.json", MIXED), vertical_size=50, slash_size=70)
    q, k, _ = qk(B, H, HKV, T, S, D)
    m = MInference(**knobs)
    fast, naive = m.select(q, k, ctx_for(q, k)), m.select_reference(q, k, ctx_for(q, k))
    fast.validate()
    assert torch.equal(fast.to_block_mask(), naive.to_block_mask())
    assert torch.equal(fast.token_mask(), naive.token_mask())
    assert fast.density() == naive.density()
    if fast.extra_cols is not None:  # the same extra columns in the same (ascending) order
        assert torch.equal(fast.extra_counts, naive.extra_counts)
        live = torch.arange(fast.extra_cols.shape[-1]) < fast.extra_counts[..., None]
        assert torch.equal(fast.extra_cols[live], naive.extra_cols[live])


def test_scores_match_naive_scores():
    q, k, _ = qk(2, 6, 2, 140, 190, 24)
    for a, b in zip(vs_scores(q, k, 64, 0.3), vs_scores_naive(q, k, 64, 0.3)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    # every estimating row's probability mass lands on exactly one diagonal and is counted once per column
    vert, slash = vs_scores(q, k, 64, 0.3)
    assert torch.allclose(vert.sum(-1), torch.full((2, 6), 64.0)) and torch.allclose(slash.sum(-1), vert.sum(-1))
    a, b = block_sparse_lists(q, k, 32, 3), block_sparse_lists_naive(q, k, 32, 3)
    assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])


@pytest.mark.parametrize("case", CASES[:4], ids=lambda c: "B{}-H{}-HKV{}-T{}-S{}-D{}".format(*c[:6]))
def test_fast_estimator_equals_naive_bf16(case):
    B, H, HKV, T, S, D, knobs = case
    q, k, _ = qk(B, H, HKV, T, S, D, dtype=torch.bfloat16)
    m = MInference(**knobs)
    fast, naive = m.select(q, k, ctx_for(q, k)), m.select_reference(q, k, ctx_for(q, k))
    assert torch.equal(fast.token_mask(), naive.token_mask())


@pytest.mark.parametrize("L,S", [(1, 7), (2, 5), (5, 5), (5, 9), (64, 300)])
def test_diagonal_sums_match_brute_force(L, S):
    # rows at positions S - L + i, zero right of the position (as causal softmax rows are)
    g = torch.Generator().manual_seed(L * 1000 + S)
    p = torch.rand(3, L, S, generator=g)
    pos = torch.arange(S - L, S)[:, None]
    p = p.masked_fill(torch.arange(S)[None, :] > pos, 0.0)
    want = torch.zeros(3, S)
    for i in range(L):
        for c in range(int(pos[i]) + 1):
            want[:, S - 1 - (int(pos[i]) - c)] += p[:, i, c]  # column r holds offset S - 1 - r
    torch.testing.assert_close(_diagonal_sums(p), want, rtol=1e-6, atol=1e-6)
    # a view into a larger buffer (non-zero storage offset) reads only its own rows
    big = torch.full((5, L, S), 7.0)
    big[1:4] = p
    torch.testing.assert_close(_diagonal_sums(big[1:4]), want, rtol=1e-6, atol=1e-6)


def test_scaled_logits_round_once_in_the_input_dtype():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(2, 16, 64, generator=g), torch.randn(2, 300, 64, generator=g)
    exact = torch.matmul(a.double(), b.double().transpose(-1, -2)) * 0.125
    torch.testing.assert_close(_scaled_logits(a, b, 0.125).double(), exact, rtol=1e-5, atol=1e-5)
    out = _scaled_logits(a.bfloat16(), b.bfloat16(), 0.3)
    assert out.dtype == torch.bfloat16
    # bf16 products are exact in fp32: the result is the fp32 value rounded once (up to accumulation order)
    once = (torch.matmul(a.bfloat16().float(), b.bfloat16().float().transpose(-1, -2)) * 0.3).bfloat16()
    assert (out == once).float().mean() > 0.999
    torch.testing.assert_close(out.float(), once.float(), rtol=2 ** -7, atol=1e-6)


# ------------------------------------------------------------------------------------------- keep everything
@pytest.mark.parametrize("knobs", [dict(vertical_size=4096, slash_size=4096), dict(pattern="block_sparse", top_k=64),
                                   dict(pattern="a_shape", n_init=0, n_local=4096)], ids=["vs", "block", "ashape"])
def test_keep_everything_is_dense(knobs):
    B, H, HKV, T, S, D = 1, 4, 2, 211, 211, 32
    q, k, v = qk(B, H, HKV, T, S, D)
    sel = MInference(**knobs).select(q, k, ctx_for(q, k))
    assert sel.density() == 1.0
    out = execute("reference", q, k, v, sel)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                                                           is_causal=True)
    assert (out - ref).abs().max().item() < 1e-5


def _routed(compose, method, T):
    from sparsebench.models import load

    cfg = compose(["model=tiny_llama", "model.device=cpu"])
    model, _, _ = load(cfg.model, cfg.paths.cache_dir)
    stock = copy.deepcopy(model)
    stock.set_attn_implementation("eager")
    routed = copy.deepcopy(model)
    meter = Meter()
    install(routed, method, method_layers(routed.config, "all"), "reference", meter)
    ids = torch.randint(3, 250, (1, T), generator=torch.Generator().manual_seed(42))
    with torch.no_grad():
        return stock(ids).logits.float(), routed(ids).logits.float(), meter


def test_keep_everything_reproduces_model_logits(compose):
    ref, out, meter = _routed(compose, MInference(vertical_size=4096, slash_size=4096, executor="reference"), 151)
    assert (out - ref).abs().max().item() < 1e-4 * max(1.0, ref.abs().max().item())
    assert [r.density for r in meter.records] == [1.0, 1.0]


class _Capture(MInference):
    def select(self, q, k, ctx):
        sel = super().select(q, k, ctx)
        self.seen.append(sel)
        return sel


def test_recorded_density_is_executed_density(compose):
    m = _Capture(vertical_size=3, slash_size=5, min_vertical=0, min_slash=0, forced_columns=1, forced_diagonals=2,
                 block_size=16, executor="reference")
    m.seen = []
    ref, out, meter = _routed(compose, m, 177)
    assert len(meter.records) == len(m.seen) == 2
    for rec, sel in zip(meter.records, m.seen):
        assert 0 < rec.density < 1
        assert rec.density == sel.density() == pytest.approx(mask_density(sel), abs=1e-12)
        assert rec.attention_flops == 4 * 16 * sel.executed_pairs()
    assert (out - ref).abs().max().item() > 1e-4


@pytest.mark.parametrize("knobs", [dict(vertical_size=40, slash_size=60), dict(pattern="block_sparse", top_k=2),
                                   dict(pattern="a_shape", n_init=5, n_local=30)], ids=["vs", "block", "ashape"])
def test_density_equals_mask_density(knobs):
    q, k, _ = qk(2, 4, 2, 199, 260, 16)
    sel = MInference(**knobs).select(q, k, ctx_for(q, k))
    assert sel.density() == pytest.approx(mask_density(sel), abs=1e-12)


# ------------------------------------------------------------------------------------------- hand-worked rules
def test_forced_columns_and_diagonals_only():
    """Sizes equal to the forced counts keep exactly the forced columns and diagonals, whatever the scores; with
    block_size=1 the executed set is those token columns and diagonals exactly."""
    T = S = 97
    q, k, _ = qk(1, 2, 1, T, S, 16)
    sel = MInference(vertical_size=3, slash_size=5, forced_columns=3, forced_diagonals=5, min_vertical=0,
                     min_slash=0, block_size=1).select(q, k, ctx_for(q, k))
    for h in range(2):
        assert torch.equal(head_mask(sel, h)[0], rule(T, S, cols=range(3), offsets=range(5)))


def test_default_forced_sets_and_minimums():
    """Defaults force the first 30 columns and the nearest 100 diagonals; sizes below the minimums (30, 50) are
    raised to them; with slash 50 < 100 forced, the tie rule keeps the nearest 50 diagonals."""
    T = S = 257
    q, k, _ = qk(1, 2, 2, T, S, 16)
    sel = MInference(vertical_size=30, slash_size=100, block_size=1).select(q, k, ctx_for(q, k))
    assert torch.equal(head_mask(sel, 0)[0], rule(T, S, cols=range(30), offsets=range(100)))
    sel = MInference(vertical_size=10, slash_size=7, block_size=1).select(q, k, ctx_for(q, k))
    assert torch.equal(head_mask(sel, 1)[0], rule(T, S, cols=range(30), offsets=range(50)))
    # default block size: the forced set is inside the executed set
    sel = MInference(vertical_size=40, slash_size=120).select(q, k, ctx_for(q, k))
    forced = rule(T, S, cols=range(30), offsets=range(100))
    assert (head_mask(sel, 0)[0] | ~forced).all()


def test_vertical_pick_follows_column_mass():
    """A key column the last queries attend to is the one vertical picked beyond the 30 forced columns."""
    T = S = 200
    q, k, _ = qk(1, 1, 1, T, S, 32)
    q, k = q * 0.1, k * 0.1
    q[..., T - 64:, 0] += 3.0
    k[..., 77, 0] += 5.0
    sel = MInference(vertical_size=31, slash_size=50, block_size=1).select(q, k, ctx_for(q, k, scale=1.0))
    assert torch.equal(head_mask(sel, 0)[0], rule(T, S, cols=[*range(30), 77], offsets=range(50)))


def test_slash_pick_follows_diagonal_mass_head_dim_256():
    """q_t . k_s is large only on s = t - 150 (one-hot codes, D=256): offset 150 is the one slash picked beyond the
    100 forced diagonals."""
    T = S = 300
    D = 256
    pos = torch.arange(T)
    q = torch.zeros(1, 1, T, D)
    k = torch.zeros(1, 1, S, D)
    q[0, 0, pos, (pos - 150) % D] = 20.0
    k[0, 0, pos, pos % D] = 1.0
    sel = MInference(vertical_size=30, slash_size=101, block_size=1).select(q, k, ctx_for(q, k, scale=1.0))
    assert torch.equal(head_mask(sel, 0)[0], rule(T, S, cols=range(30), offsets=[*range(100), 150]))


def test_block_top_k_rows_and_ties():
    """Pooled scores w[b] per key block: each row keeps its top_k causal blocks (diagonal not forced); equal scores
    go to the lower block index."""
    T = S = 300  # 5 blocks of 64; the last has 44 keys, so its pooled key is 44/64 of a full block's
    q = torch.zeros(1, 2, T, 8)
    q[..., 0] = 1.0
    k = torch.zeros(1, 2, S, 8)
    for h, w in enumerate(([1.0, 0.0, 5.0, -1.0, 3.0], [2.0, 2.0, 2.0, 2.0, 9.0])):
        for b, x in enumerate(w):
            k[0, h, b * 64:(b + 1) * 64, 0] = x
    sel = MInference(pattern="block_sparse", top_k=2).select(q, k, ctx_for(q, k))
    rows = lambda h: [sorted(sel.kv_indices[0, h, r, :sel.kv_counts[0, h, r]].tolist()) for r in range(5)]  # noqa
    assert rows(0) == [[0], [0, 1], [0, 2], [0, 2], [2, 4]]
    assert rows(1) == [[0], [0, 1], [0, 1], [0, 1], [0, 4]]


def test_a_shape_is_the_token_window():
    T = S = 300
    q, k, _ = qk(1, 4, 2, T, S, 16)
    sel = MInference(pattern="a_shape", n_init=7, n_local=40).select(q, k, ctx_for(q, k))
    assert (sel.sink, sel.window) == (7, 40)
    assert torch.equal(head_mask(sel, 3)[0], rule(T, S, sink=7, window=40))


def test_budget_scale_multiplies_every_budget():
    q, k, _ = qk(1, 4, 2, 260, 260, 16)
    c = ctx_for(q, k)
    same = lambda a, b: torch.equal(a.select(q, k, c).token_mask(), b.select(q, k, c).token_mask())  # noqa: E731
    assert same(MInference(vertical_size=101, slash_size=201, budget_scale=0.5),
                MInference(vertical_size=50, slash_size=100))
    assert same(MInference(pattern="a_shape", n_init=9, n_local=61, budget_scale=0.5),
                MInference(pattern="a_shape", n_init=4, n_local=30))
    assert same(MInference(pattern="block_sparse", top_k=4, budget_scale=0.5),
                MInference(pattern="block_sparse", top_k=2))
    dens = [MInference(vertical_size=40, slash_size=60, budget_scale=s).select(q, k, c).density()
            for s in (1.0, 2.0, 4.0)]
    assert dens[0] < dens[1] < dens[2]
    # the resolver's interval ends where every causal pair is kept
    for knobs in (dict(vertical_size=40, slash_size=60), dict(pattern="block_sparse", top_k=1),
                  dict(pattern="a_shape", n_init=2, n_local=7)):
        lo, hi, integer = MInference.budget_range(knobs, 260)
        assert (lo, integer) == (0.0, False)
        assert MInference(**knobs, budget_scale=hi).select(q, k, c).density() == 1.0


def test_config_heads_follow_the_file(tmp_path):
    """Per-head types from the file; a missing head and a missing layer run (vertical_size, slash_size); the
    official list-of-layers file format (no wrapper) reads the same; a layer of identical stream_llm heads runs
    the exact token window."""
    T = S = 300
    q, k, _ = qk(1, 4, 2, T, S, 16)
    c0, c1 = ctx_for(q, k, layer=0), ctx_for(q, k, layer=1)
    m = MInference(pattern="config", pattern_file=write_config(tmp_path / "a.json", MIXED, wrap=False),
                   vertical_size=50, slash_size=70)
    sel = m.select(q, k, c0)
    vs = MInference(vertical_size=40, slash_size=120).select(q, k, c0)
    bs = MInference(pattern="block_sparse").select(q, k, c0)
    default = MInference(vertical_size=50, slash_size=70).select(q, k, c0)
    assert torch.equal(head_mask(sel, 0), head_mask(vs, 0))
    assert torch.equal(head_mask(sel, 2), head_mask(bs, 2))
    assert torch.equal(head_mask(sel, 3), head_mask(default, 3))
    # the stream_llm head in a mixed layer: the token window and sinks, widened only to whole 64-blocks
    win = head_mask(sel, 1)[0]
    exact = rule(T, S, sink=4, window=16)
    assert (win | ~exact).all() and not (win & ~rule(T, S, sink=4, window=16 + 2 * 64)).any()
    assert torch.equal(m.select(q, k, c1).token_mask(), default.token_mask())
    stream = [{str(h): ["stream_llm", 6, 33] for h in range(4)}]
    sel = MInference(pattern="config", pattern_file=write_config(tmp_path / "b.json", stream)).select(q, k, c0)
    assert (sel.sink, sel.window) == (6, 33)


def test_head_dim_256_executes():
    q, k, v = qk(1, 4, 1, 150, 150, 256)
    for knobs in (dict(vertical_size=40, slash_size=60), dict(pattern="block_sparse", top_k=2)):
        sel = MInference(**knobs).select(q, k, ctx_for(q, k))
        out = execute("reference", q, k, v, sel)
        assert out.shape == q.shape and torch.isfinite(out).all()
        assert sel.density() == pytest.approx(mask_density(sel), abs=1e-12)


# ------------------------------------------------------------------------------------------- FLOPs
@pytest.mark.parametrize("knobs", [dict(), dict(pattern="block_sparse"), dict(pattern="a_shape"),
                                   dict(pattern="config")], ids=["vs", "block", "ashape", "config"])
def test_estimation_flops_match_flop_counter(knobs, tmp_path):
    if knobs.get("pattern") == "config":
        knobs = dict(knobs, pattern_file=write_config(tmp_path / "p.json", MIXED))
    B, H, HKV, T, S, D = 2, 4, 2, 150, 231, 32
    q, k, _ = qk(B, H, HKV, T, S, D)
    shape = AttnShape(B, T, S, H, HKV, D)
    m = MInference(**knobs)
    for run in (m.select_reference, m.select):
        with FlopCounterMode(display=False) as fc:
            run(q, k, ctx_for(q, k))
        assert m.estimation_flops(shape) == fc.get_total_flops()
    expected = {None: 2 * B * H * 64 * S * D, "block_sparse": 2 * B * H * 3 * 4 * D, "a_shape": 0,
                "config": 2 * B * H * 64 * S * D + 2 * B * H * 3 * 4 * D}
    assert m.estimation_flops(shape) == expected[knobs.get("pattern")]


# ------------------------------------------------------------------------------------------- knobs
@pytest.mark.parametrize("knobs,needle", [
    (dict(pattern="diagonal"), "pattern='diagonal'"), (dict(last_q=0), "last_q=0"),
    (dict(vertical_size=-1), "vertical_size=-1"), (dict(slash_size=2.5), "slash_size=2.5"),
    (dict(n_local=0), "n_local=0"), (dict(top_k=0), "top_k=0"), (dict(block_size=0), "block_size=0"),
    (dict(forced_columns=-3), "forced_columns=-3"), (dict(min_slash=-1), "min_slash=-1"),
    (dict(budget_scale=0), "budget_scale=0"), (dict(budget_scale=float("nan")), "budget_scale=nan"),
    (dict(pattern="config"), "pattern_file=None"), (dict(pattern_file="x.json"), "pattern_file='x.json'"),
])
def test_bad_knobs_raise(knobs, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        MInference(**knobs)


def test_bad_pattern_files_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        MInference(pattern="config", pattern_file=str(tmp_path / "nope.json"))
    for body, needle in (([{"0": ["dilated", 1, 2]}], "dilated"), ([{"x": ["stream_llm", 1, 2]}], "'x'"),
                         ([{"0": ["stream_llm", -1, 2]}], "-1"), ({"best": 1}, "list")):
        with pytest.raises(ValueError, match=needle):
            MInference(pattern="config", pattern_file=write_config(tmp_path / "bad.json", body, wrap=False))
    m = MInference(pattern="config", pattern_file=write_config(tmp_path / "p.json", [{"7": ["stream_llm", 1, 2]}]))
    q, k, _ = qk(1, 4, 2, 70, 70, 8)
    with pytest.raises(ValueError, match=r"heads \[7\]"):
        m.select(q, k, ctx_for(q, k))


# ------------------------------------------------------------------------------------------- search
def _search_heads(T=512, D=128):
    """Head 0 local (a smooth, wide peak around offset 0); head 1 vertical (six key columns every query wants)."""
    w = torch.arange(D // 2) * math.pi / 512
    a = torch.exp(-(w * 40.0) ** 2 / 2)
    a = a / a.sum()
    t = torch.arange(T).float()[:, None]
    q_loc = torch.cat([a * torch.cos(w * t), a * torch.sin(w * t)], -1) * 12.0
    k_loc = torch.cat([torch.cos(w * t), torch.sin(w * t)], -1)
    g = torch.Generator().manual_seed(42)
    q_ver, k_ver = torch.randn(T, D, generator=g) * 0.1, torch.randn(T, D, generator=g) * 0.1
    q_ver[:, 0] += 4.0
    k_ver[[40, 100, 170, 240, 290, 310], 0] += 4.0
    return torch.stack([q_loc, q_ver])[None], torch.stack([k_loc, k_ver])[None]


def test_search_picks_a_shape_for_local_and_vertical_slash_for_vertical_heads():
    q, k = _search_heads()
    cands = [("stream_llm", 4, 64), ("vertical_and_slash", 16, 8), ("block_sparse", 16, 1)]
    knobs = dict(block_size=16, forced_columns=2, forced_diagonals=4, min_vertical=1, min_slash=1)
    r = search_recall(q, k, 1.0, cands, 320, **knobs)
    assert r.shape == (2, 3) and ((r > 0) & (r <= 1 + 1e-6)).all()
    raw = choose_patterns(r, cands, remap=False)
    assert raw["0"][:3] == ["stream_llm", 4, 64] and raw["1"][:3] == ["vertical_and_slash", 16, 8]
    assert r[0, 0] > r[0, 1] + 0.05 and r[1, 1] > r[1, 2] + 0.3
    remapped = choose_patterns(r, cands)
    assert remapped["0"][:3] == ["vertical_and_slash", 4, 64]
    assert choose_patterns(torch.tensor([[0.1, 0.2, 0.9]]), cands)["0"][:3] == ["vertical_and_slash", 1000, 6096]
    with pytest.raises(ValueError, match="score_from_row=600"):
        search_recall(q, k, 1.0, cands, 600, **knobs)


def test_search_script_on_tiny_llama(compose, tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import search_minference
    finally:
        sys.path.pop(0)
    out = search_minference.main(["model=tiny_llama", "model.device=cpu", "seq_len=384", f"paths.root_dir={tmp_path}",
                                  "--score-from-row", "200", "--out", str(tmp_path / "pattern.json")])
    body = json.loads(out.read_text())
    layers = body["payload"]["best_pattern"]
    assert len(layers) == 2 and all(sorted(layer) == ["0", "1", "2", "3"] for layer in layers)
    assert all(e[0] == "vertical_and_slash" and 0 < e[3] <= 1 + 1e-6 for layer in layers for e in layer.values())
    from sparsebench.calibration import CALIB_SEED_OFFSET

    assert body["inputs"]["calib_seeds"] == [CALIB_SEED_OFFSET]
    from sparsebench.run import prepare

    job = prepare(compose(["method=minference", "method.pattern=config", f"method.pattern_file={out}",
                           "model=tiny_llama", "model.device=cpu", "seq_len=384", f"paths.root_dir={tmp_path}"]))
    assert "pattern_file" in job.semantic["calib_files"]
    m = MInference(pattern="config", pattern_file=str(out), executor="reference")
    q, k, _ = qk(1, 4, 2, 130, 130, 16)
    assert m.select(q, k, ctx_for(q, k, layer=1)).density() == 1.0  # budgets >= T keep everything


# ------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES[:4], ids=lambda c: "B{}-H{}-HKV{}-T{}-S{}-D{}".format(*c[:6]))
def test_fast_equals_naive_bf16_gpu(case):
    B, H, HKV, T, S, D, knobs = case
    q, k, _ = qk(B, H, HKV, T, S, D, dtype=torch.bfloat16, device="cuda")
    m = MInference(**knobs)
    fast, naive = m.select(q, k, ctx_for(q, k)), m.select_reference(q, k, ctx_for(q, k))
    assert torch.equal(fast.token_mask(), naive.token_mask())


@pytest.mark.gpu
@pytest.mark.parametrize("knobs", [dict(vertical_size=300, slash_size=700), dict(pattern="block_sparse", top_k=20)],
                         ids=["vs", "block"])
def test_triton_executor_matches_reference_gpu(knobs):
    q, k, v = qk(1, 8, 2, 4099, 4099, 128, dtype=torch.bfloat16, device="cuda")
    m = MInference(**knobs)
    sel = m.select(q, k, ctx_for(q, k))
    out = execute("triton", q, k, v, sel)
    ref = execute("reference", q, k, v, sel)
    assert ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item() < 2e-2


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(4, 1, 32768, 256), (32, 8, 131072, 128)], ids=["gemma3_32k", "llama_128k"])
@pytest.mark.parametrize("pattern", ["vertical_slash", "block_sparse"])
def test_long_selection_fits_gpu(shape, pattern):
    H, HKV, T, D = shape
    q, k, _ = qk(1, H, HKV, T, T, D, dtype=torch.bfloat16, device="cuda")
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    sel = MInference(pattern=pattern).select(q, k, ctx_for(q, k))
    torch.cuda.synchronize()
    extra_gb = (torch.cuda.max_memory_allocated() - base) / 2**30
    assert extra_gb < 12, f"selection took {extra_gb:.1f} GB beyond its inputs"
    # Random Q/K put the top slashes at random offsets; at 32K the default 6096 slashes hit every one of the 512
    # block diagonals, so the 64-block execution form is (correctly) dense there. Only 128K must stay sparse.
    assert 0 < sel.density() <= 1
    if T >= 131072:
        assert sel.density() < 1


def test_search_script_feeds_prompts_as_the_run(monkeypatch, tmp_path):
    """Under a chat template, LongBench's raw datasets (lcc) are prefilled without it, the others with it: the
    calibration prompts are the ids the run feeds (`models.encode_sample`), which the task counted as input_tokens."""
    from sparsebench import models
    from sparsebench.calibration import CALIB_SEED_OFFSET
    from sparsebench.tasks.longbench import LongBench

    template = ("{{ bos_token }}<start_of_turn>user\n{{ messages[0]['content'] }}<end_of_turn>\n"
                "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
    real_load = models.load

    def templated_load(*args, **kw):
        model, tok, info = real_load(*args, **kw)
        tok = copy.deepcopy(tok)  # the loaded tokenizer is cached per process: leave it without a template
        tok.chat_template = template
        return model, tok, info

    monkeypatch.setattr(models, "load", templated_load)
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import search_minference
    finally:
        sys.path.pop(0)
    pattern = str(ROOT / "tests" / "assets" / "longbench_{config}.jsonl")
    out = search_minference.main(["model=tiny_llama", "model.device=cpu", "model.chat_template=auto", "seq_len=2048",
                                  "task=longbench", "task.hf_id=json", f"task.data_files='{pattern}'",
                                  "task.datasets=[lcc,hotpotqa]", f"paths.root_dir={tmp_path}", "--samples", "4",
                                  "--score-from-row", "64", "--out", str(tmp_path / "pattern.json")])
    fed = json.loads(out.read_text())["payload"]["input_tokens"]
    tok = templated_load(search_minference.compose(["model=tiny_llama"]).model, str(tmp_path / "cache"))[1]
    task = LongBench(datasets=["lcc", "hotpotqa"], hf_id="json", data_files=pattern)
    samples = list(task.samples(models.TemplatedTokenizer(tok, "auto"), 2048, 4, CALIB_SEED_OFFSET))[:4]
    assert {s.meta["raw_prompt"] for s in samples} == {True, False}
    assert fed == [s.input_tokens for s in samples]


def test_scores_kernel_choice_is_checked():
    with pytest.raises(ValueError, match="scores_kernel='cuda' is not one of auto, torch, triton"):
        MInference(scores_kernel="cuda")
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        q, k, _ = qk(1, 2, 1, 128, 128, 16)
        with pytest.raises(ValueError, match="needs a CUDA device"):
            MInference(scores_kernel="triton", vertical_size=8, slash_size=8).select(q, k, ctx_for(q, k))
    # auto (the default) is the torch path off CUDA
    assert MInference().scores_kernel == "auto"
    if not torch.cuda.is_available():
        q, k, _ = qk(1, 2, 1, 128, 128, 16)
        a = MInference(vertical_size=8, slash_size=8).select(q, k, ctx_for(q, k))
        t = MInference(scores_kernel="torch", vertical_size=8, slash_size=8).select(q, k, ctx_for(q, k))
        assert torch.equal(a.kv_indices, t.kv_indices) and torch.equal(a.kv_counts, t.kv_counts)


@pytest.mark.parametrize("kind", ["random", "ties", "signed_zeros", "tiny"])
def test_top_ranked_topk_path_is_the_stable_sort_order(kind):
    """The topk ranking (int64 keys) equals the stable descending sort (and the Python reference), ties and signed
    zeros included."""
    from sparsebench.methods.minference import top_ranked, top_ranked_naive

    g = torch.Generator().manual_seed(3)
    for N in (40, 257, 1000):
        if kind == "random":
            sc = torch.rand(2, 3, N, generator=g)
        elif kind == "ties":
            sc = torch.randint(0, 4, (2, 3, N), generator=g).float()
        elif kind == "signed_zeros":
            sc = torch.randn(2, 3, N, generator=g)
            sc[..., ::3], sc[..., 1::5] = -0.0, 0.0
        else:
            sc = torch.randint(-2, 3, (2, 3, N), generator=g).float() * 1e-30
        width = N // 5
        sizes = torch.tensor([width, width // 2, 0])
        for forced in (0, 3):
            got = top_ranked(sc, sizes, width, forced)
            ref = sc.clone()
            ref[..., :forced] = float("inf")
            order = torch.sort(ref, dim=-1, descending=True, stable=True).indices[..., :width]
            want = torch.where(torch.arange(width)[None, :] < sizes[:, None], order, -1)
            assert torch.equal(got, want)
            assert torch.equal(got, top_ranked_naive(sc, sizes.tolist(), width, forced))
