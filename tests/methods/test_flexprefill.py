"""FlexPrefill: the vectorised selection against a literal per-head reference written from the spec's pseudocode,
hand-worked cases of each rule (pattern switch, forced blocks, hard-coded budget conversion, global query-aware
cover, short-input fallback), dense equivalence, density bookkeeping, head dim 256, FLOPs and knob checks.
Both variants: `official` (bytedance/FlexPrefill) and `sparse_frontier` (The Sparse Frontier's simplification)."""
import copy
import math
from typing import ClassVar

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from sparsebench.attention import AttnContext, AttnShape, Meter, install, method_layers
from sparsebench.executors import execute
from sparsebench.methods import flexprefill as fp
from sparsebench.methods.flexprefill import (FlexPrefill, block_budget, block_mean, diagonal_sums, global_cover_mask,
                                             last_query_scores, official_block_mask, scan_chunk_len, scan_rows,
                                             sparse_frontier_indices, stable_rank, sum_pool)
from sparsebench.selection import causal_pairs

SEED = 42


def _ctx(q, k):
    return AttnContext(0, q.shape[1], k.shape[1], q.shape[-1], q.shape[-1] ** -0.5)


def _qk(T, H=4, HKV=2, D=32, sink_heads=(1, 3), seed=SEED, device="cpu", dtype=torch.float32):
    """Random q/k plus a sink key 0 that the `sink_heads` attend to strongly: those heads' column mass sits in key
    block 0 while their pooled probe stays spread, so they come out vertical-slash; the rest are near-uniform."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, H, T, D, generator=g)
    k = torch.randn(1, HKV, T, D, generator=g)
    u = torch.randn(D, generator=g)
    u = u / u.norm()
    k[:, :, 0] += 12 * u
    for h in sink_heads:
        q[:, h] += 3 * u
    return q.to(device, dtype), k.to(device, dtype)


def _blocks_of(mask):
    """{(b, h): set of (r, c)} from a `[B, H, nb, nb]` bool mask."""
    return {(b, h): {tuple(x) for x in mask[b, h].nonzero().tolist()}
            for b in range(mask.shape[0]) for h in range(mask.shape[1])}


def _diag_sums_literal(p):
    """[n, N] rows at the last n positions -> [N] with entry N - 1 - o = sum along offset o."""
    n, N = p.shape
    out = torch.zeros(N)
    for o in range(N):
        out[N - 1 - o] = torch.diagonal(p, offset=N - n - o).sum()
    return out


def _last_probs_literal(qh, kh, n, scale):
    N = kh.shape[0]
    z = (qh[-n:] * scale) @ kh.T
    for i in range(n):
        z[i, N - n + i + 1:] = float("-inf")
    return torch.softmax(z, dim=-1, dtype=torch.float32)


def _top(scores, k):
    """First k indices of a stable descending order (ties: lower index first)."""
    return sorted(range(len(scores)), key=lambda c: (-scores[c], c))[:k]


def _reference_official(q, k, gamma, tau, min_budget, max_budget, bs, scale):
    """Per (batch, head), straight from the pseudocode of spec section 3(a)."""
    B, H, N, _ = q.shape
    G = H // k.shape[1]
    nb = math.ceil(N / bs)
    minb = 1 if min_budget is None else math.ceil(min_budget / bs)
    maxb = nb if max_budget is None else min(math.ceil(max_budget / bs), nb)
    blocks, decisions = {}, {}
    for b in range(B):
        for h in range(H):
            qh, kh = q[b, h], k[b, h // G]
            p = _last_probs_literal(qh, kh, bs, scale)
            vert = p.mean(0)
            slash = _diag_sums_literal(p) / bs

            def budget(x):
                cum = torch.cumsum(torch.sort(x, descending=True).values, 0)
                n = (int((cum <= gamma).sum()) + 1) // 128 + 1
                return min(max(n, minb), maxb)

            nv, ns = budget(vert), budget(slash)
            vb = torch.stack([vert[c * bs:(c + 1) * bs].sum() for c in range(nb)])
            sb = [float(slash[c * bs:(c + 1) * bs].sum()) for c in range(nb)]
            kbar = torch.stack([kh[c * bs:(c + 1) * bs].mean(0) for c in range(nb)])
            a = torch.softmax((qh[-bs:] * scale).mean(0) @ kbar.T, dim=-1)
            m = (a + vb) / 2
            js = math.sqrt(0.5 * float((a * torch.log(a / m)).sum()) + 0.5 * float((vb * torch.log(vb / m)).sum()))
            qa = js < tau
            if qa:
                nv = ns = minb
            vbl = [float(x) for x in vb]
            vbl[0] = sb[-1] = float("inf")
            cols = _top(vbl, nv)
            offs = [nb - 1 - c for c in _top(sb, ns)]
            sel = {(r, c) for r in range(nb) for c in cols if c <= r}
            sel |= {(r, r - o) for o in offs for r in range(o, nb)}
            if qa:
                qbar = torch.stack([qh[c * bs:(c + 1) * bs].mean(0) for c in range(nb)]) * scale
                att = qbar @ kbar.T
                att = att.masked_fill(torch.ones(nb, nb, dtype=torch.bool).triu(1), float("-inf"))
                flat = torch.softmax(att, dim=-1, dtype=torch.float32).flatten()
                order = _top(flat.tolist(), nb * nb)
                cum = torch.cumsum(flat[order], 0)
                sel |= {divmod(i, nb) for i, c in zip(order, cum.tolist()) if c <= gamma * nb}
                sel = {(r, c) for r, c in sel if c <= r}
            blocks[(b, h)], decisions[(b, h)] = sel, qa
    return blocks, decisions


def _reference_sparse_frontier(q, k, gamma, n, min_budget, scale):
    B, H, N, _ = q.shape
    G = H // k.shape[1]
    out = {}
    for b in range(B):
        for h in range(H):
            p = _last_probs_literal(q[b, h], k[b, h // G], n, scale)
            vert = p.mean(0)
            slash = _diag_sums_literal(p) / n

            def cover(x):
                cum = torch.cumsum(torch.sort(x, descending=True).values, 0)
                return min(max(min_budget, int((cum <= gamma).sum()) + 1), N)

            nv, ns = cover(vert), cover(slash)
            vl, sl = vert.tolist(), slash.tolist()
            vl[:4] = [float("inf")] * 4
            sl[-64:] = [float("inf")] * min(64, N)
            out[(b, h)] = (set(_top(vl, nv)), {N - 1 - x for x in _top(sl, ns)})
    return out


# ------------------------------------------------------------------------------------------------ 1. fast == literal
@pytest.mark.parametrize("T,H,HKV,bs,gamma,tau,min_budget,max_budget", [
    (203, 4, 2, 16, 0.9, 0.1, None, None),
    (331, 4, 1, 32, 0.7, 0.2, 70, 200),
    (299, 2, 2, 16, 0.95, 0.1, 40, 90),
])
def test_official_matches_literal_reference(T, H, HKV, bs, gamma, tau, min_budget, max_budget):
    q, k = _qk(T, H=H, HKV=HKV, sink_heads=(1,))
    scale = q.shape[-1] ** -0.5
    m = FlexPrefill(gamma=gamma, tau=tau, min_budget=min_budget, max_budget=max_budget, block_size=bs,
                    executor="reference")
    sel = m.select(q, k, _ctx(q, k))
    sel.validate()
    ref, dec = _reference_official(q, k, gamma, tau, min_budget, max_budget, bs, scale)
    got = _blocks_of(sel.to_block_mask())
    assert got == ref
    assert {key: bool(m.last_decision[key]) for key in dec} == dec
    assert set(dec.values()) == {True, False}  # both rules exercised
    nb = sel.num_q_blocks
    for blocks in got.values():  # key block 0 and the diagonal, always
        assert all((r, 0) in blocks and (r, r) in blocks for r in range(nb))


def test_sparse_frontier_matches_literal_reference():
    T, n, min_budget, gamma = 301, 64, 20, 0.65
    q, k = _qk(T)
    scale = q.shape[-1] ** -0.5
    v_idx, s_off = sparse_frontier_indices(q, k, gamma=gamma, min_budget=min_budget, n=n, scale=scale)
    ref = _reference_sparse_frontier(q, k, gamma, n, min_budget, scale)
    for (b, h), (cols, offs) in ref.items():
        got_c = {x for x in v_idx[b, h].tolist() if x >= 0}
        got_o = {x for x in s_off[b, h].tolist() if x >= 0}
        assert (got_c, got_o) == (cols, offs)
        assert {0, 1, 2, 3} <= got_c and set(range(64)) <= got_o  # forced sinks and local diagonals
    # the executed selection computes every chosen column and diagonal (causal part), per head
    m = FlexPrefill(gamma=gamma, min_budget=min_budget, variant="sparse_frontier", approximation_size=n)
    sel = m.select(q, k, _ctx(q, k))
    sel.validate()
    tm = sel.token_mask()[0]
    pos = torch.arange(T)
    for (b, h), (cols, offs) in ref.items():
        for c in cols:
            assert tm[h, c:, c].all()
        for o in offs:
            assert tm[h, pos[o:], pos[o:] - o].all()
    assert 0 < sel.density() < 1


# ------------------------------------------------------------------------------------------------ 2. dense equivalence
def _dense(q, k, v, scale):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)


@pytest.mark.parametrize("knobs,T", [
    (dict(min_budget=4096, block_size=64), 333),  # short input for this min_budget: dense fallback
    (dict(gamma=1.0, tau=0.0, min_budget=None, block_size=128), 301),  # sparse path covering everything
    (dict(variant="sparse_frontier", min_budget=400, approximation_size=64), 333),  # min_budget >= T columns
])
def test_keep_everything_equals_dense(knobs, T):
    q, k = _qk(T)
    v = torch.randn(k.shape, generator=torch.Generator().manual_seed(SEED + 1))
    m = FlexPrefill(executor="reference", **knobs)
    sel = m.select(q, k, _ctx(q, k))
    assert sel.density() == 1.0
    out = execute("reference", q, k, v, sel, scale=q.shape[-1] ** -0.5)
    assert torch.allclose(out, _dense(q, k, v, q.shape[-1] ** -0.5), atol=2e-5)


def test_keep_everything_through_tiny_model(compose):
    """gamma=1, tau=0, 128-blocks at T=301: the routed tiny Llama reproduces the stock logits."""
    from sparsebench.models import load

    cfg = compose(["model=tiny_llama", "model.device=cpu"])
    model, _, _ = load(cfg.model, cfg.paths.cache_dir)
    stock = copy.deepcopy(model)
    stock.set_attn_implementation("eager")
    ids = torch.randint(3, 250, (1, 301), generator=torch.Generator().manual_seed(SEED))
    meter = Meter()
    install(model, FlexPrefill(gamma=1.0, tau=0.0, min_budget=None, executor="reference"),
            method_layers(model.config, "all"), "reference", meter)
    with torch.no_grad():
        ref, out = stock(ids).logits, model(ids).logits
    assert (out - ref).abs().max().item() < 1e-4 * max(1.0, ref.abs().max().item())
    assert [r.density for r in meter.records] == [1.0, 1.0]


# ------------------------------------------------------------------------------------------------ 3. density
@pytest.mark.parametrize("knobs", [dict(gamma=0.8, min_budget=None, block_size=16),
                                   dict(variant="sparse_frontier", gamma=0.3, min_budget=16, approximation_size=32)])
def test_reported_density_is_executed_density(knobs):
    q, k = _qk(237)
    sel = FlexPrefill(**knobs).select(q, k, _ctx(q, k))
    executed = sel.token_mask().sum().item() / (q.shape[1] * causal_pairs(237, 237))
    assert sel.density() == pytest.approx(executed, abs=1e-12)
    assert 0 < sel.density() < 1


def test_attention_function_records_executed_density(compose):
    from sparsebench.models import load

    class Recording(FlexPrefill):
        seen: ClassVar[list] = []

        def select(self, q, k, ctx):
            sel = super().select(q, k, ctx)
            self.seen.append(sel.token_mask().sum().item() / (q.shape[1] * causal_pairs(q.shape[2], k.shape[2])))
            return sel

    cfg = compose(["model=tiny_llama", "model.device=cpu"])
    model, _, _ = load(cfg.model, cfg.paths.cache_dir)
    meter = Meter()
    method = Recording(gamma=0.8, min_budget=16, block_size=16, executor="reference")
    install(model, method, method_layers(model.config, "all"), "reference", meter)
    ids = torch.randint(3, 250, (1, 151), generator=torch.Generator().manual_seed(SEED))
    with torch.no_grad():
        model(ids)
    assert len(meter.records) == 2 and all(r.kind == "method" for r in meter.records)
    assert [r.density for r in meter.records] == pytest.approx(method.seen, abs=1e-12)
    assert all(d < 1 for d in method.seen)


# ------------------------------------------------------------------------------------------------ 4. hand-worked rules
def test_pattern_switch_hand_worked():
    """Head 0 (q = 0): every row uniform, so the pooled probe matches the column mass -> query-aware. Head 1 puts all
    of its mass on a sink token whose block mean is diluted 16 times -> the probe disagrees -> vertical-slash.

    T = 333, B = 16: nb = 21, minb = 1, gamma = 0.31. Head 1: the column cover is 1 token and the diagonal cover 5
    tokens (16 diagonals of 1/16 each; the fifth crosses 0.31) -> 1 block each: key block 0 and the diagonal only.
    Head 0: vertical-slash part at minb = 1 (block 0, diagonal), plus the global cover of the pooled matrix, whose
    row r is uniform 1/(r+1): rows 0..5 sum to 6, then row 6's entries of 1/7 while the running sum stays
    <= 0.31 * 21 = 6.51 -> (6, 0), (6, 1), (6, 2)."""
    T, D, bs = 333, 16, 16
    k = 0.1 * torch.randn(1, 1, T, D, generator=torch.Generator().manual_seed(SEED))
    u = torch.zeros(D)
    u[0] = 1.0
    k[0, 0, 0] = 40 * u
    q = torch.zeros(1, 2, T, D)
    q[0, 1] = 4 * u
    m = FlexPrefill(gamma=0.31, tau=0.1, min_budget=None, block_size=bs)
    sel = m.select(q, k, _ctx(q, k))
    assert m.last_decision.tolist() == [[True, False]]
    nb = 21
    forced = {(r, 0) for r in range(nb)} | {(r, r) for r in range(nb)}
    got = _blocks_of(sel.to_block_mask())
    assert got[(0, 1)] == forced
    qa = {(r, c) for r in range(6) for c in range(r + 1)} | {(6, 0), (6, 1), (6, 2)}
    assert got[(0, 0)] == forced | qa


def test_forced_blocks_at_tiny_budget():
    """gamma tiny, tau 0 (no query-aware head): every head keeps exactly key block 0 and the diagonal."""
    q, k = _qk(277, sink_heads=())
    sel = FlexPrefill(gamma=0.01, tau=0.0, min_budget=None, block_size=16).select(q, k, _ctx(q, k))
    nb = sel.num_q_blocks
    forced = {(r, 0) for r in range(nb)} | {(r, r) for r in range(nb)}
    assert all(b == forced for b in _blocks_of(sel.to_block_mask()).values())


def test_budget_conversion_is_hard_coded_128():
    x = torch.full((2, 256), 1 / 256)  # running sums k/256 are exact: 128 entries stay <= 0.5, cover = 129
    assert block_budget(x, 0.5, 1, 10).tolist() == [2, 2]  # 129 // 128 + 1, whatever the block size
    assert block_budget(x, 0.5, 3, 10).tolist() == [3, 3]  # raised to minb
    assert block_budget(x, 0.5, 1, 1).tolist() == [1, 1]  # cut to maxb
    assert block_budget(x, 0.5, 4, 2).tolist() == [2, 2]  # minb > maxb: maxb wins (official order)
    assert block_budget(x, 1.0, 1, 10).tolist() == [3, 3]  # 257 // 128 + 1


def test_global_cover_is_global_and_drops_the_crossing_entry():
    attn = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.5, 0.3, 0.2]])
    # target 0.7 * 3 = 2.1: 1.0, 0.9 (1.9), then 0.5 would cross -> dropped; row 2 keeps nothing (not per row)
    assert global_cover_mask(attn, 0.7 * 3).nonzero().tolist() == [[0, 0], [1, 0]]
    tied = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    assert global_cover_mask(tied, 1.0).nonzero().tolist() == [[0, 0], [0, 1]]  # ties: row-major first
    exact = torch.tensor([[1.0, 0.0], [0.5, 0.5]])  # a running sum equal to the target is kept (<=)
    assert global_cover_mask(exact, 1.5).nonzero().tolist() == [[0, 0], [1, 0]]


@pytest.mark.parametrize("target_frac", [0.3, 0.9, 1.0])
def test_global_cover_on_the_causal_support_equals_the_full_sort(target_frac):
    """Sorting and scanning only the causal entries gives the full rule's answer there (and False above the
    diagonal), with ties, exact zeros inside the causal part and a target the total may not reach."""
    nb = 9
    g = torch.Generator().manual_seed(SEED)
    logits = torch.randint(-3, 3, (2, 3, nb, nb), generator=g).float()  # many ties
    logits[0, 0, 5, :3] = -200.0  # underflows to exact zeros inside the causal part
    causal = torch.ones(nb, nb, dtype=torch.bool).tril()
    attn = torch.softmax(logits.masked_fill(~causal, float("-inf")), dim=-1)
    tri = torch.tril_indices(nb, nb)
    target = target_frac * nb
    full = global_cover_mask(attn, target)
    got = global_cover_mask(attn, target, support=tri[0] * nb + tri[1])
    assert torch.equal(got, full & causal) and not (got & ~causal).any()
    if target_frac < 1:
        assert 0 < got.sum() < 6 * causal.sum()  # a partial cover: the rule was exercised


@pytest.mark.parametrize("shape", [(2, 3, 1000), (1, 5), (4, 1), (2, 0, 7), (3, 0)])
def test_scan_rows_on_cpu_is_plain_cumsum(shape):
    """The default and chunk=0 are torch.cumsum bit for bit on CPU (the sequential sums the exact tests rely on)."""
    x = torch.rand(shape, generator=torch.Generator().manual_seed(SEED)) ** 3
    ref = torch.cumsum(x, dim=-1)
    assert torch.equal(scan_rows(x), ref) and torch.equal(scan_rows(x, chunk=0), ref)


@pytest.mark.parametrize("shape,chunk", [((2, 3, 1000), 64), ((2, 3, 1024), 64), ((64, 4096), 256), ((1, 5), 2),
                                         ((4, 1), 8), ((2, 0, 7), 2), ((3, 0), 4), ((2, 33), 1), ((5, 97), 200)])
def test_scan_rows_two_level_equals_cumsum(shape, chunk):
    """The two-level scan forced on CPU: exact on integer-valued entries (every partial sum representable, so the
    order of the additions cannot matter), equal to the float64 running sum within fp32 rounding otherwise, and
    non-contiguous inputs and padded row ends are handled."""
    g = torch.Generator().manual_seed(SEED)
    ints = torch.randint(0, 1000, shape, generator=g).float()
    assert torch.equal(scan_rows(ints, chunk=chunk), torch.cumsum(ints, dim=-1))
    x = torch.rand(shape, generator=g) ** 3
    got = scan_rows(x, chunk=chunk)
    assert got.shape == x.shape and got.dtype == x.dtype
    ref = torch.cumsum(x.double(), dim=-1)
    assert torch.allclose(got.double(), ref, rtol=1e-6, atol=1e-6)
    assert torch.allclose(scan_rows(x.double(), chunk=chunk), ref, rtol=1e-13, atol=1e-13)
    if len(shape) == 3:
        xt = x.transpose(0, 1)
        assert torch.allclose(scan_rows(xt, chunk=chunk).double(), torch.cumsum(xt.double(), dim=-1), rtol=1e-6,
                              atol=1e-6)
    mask = torch.rand(shape, generator=g) < 0.5  # bool rows (int64 sums): exact
    assert torch.equal(scan_rows(mask, chunk=chunk), torch.cumsum(mask, dim=-1))


def test_scan_chunk_len_is_a_power_of_two_near_sqrt():
    for N in (1, 100, 4096, 32768, 32896, 131072, 524800, 2**22):
        c = scan_chunk_len(N)
        assert c >= fp.SCAN_CHUNK_MIN and c & (c - 1) == 0
        if N >= fp.SCAN_ROW_LOOP_MIN:
            assert math.sqrt(N) <= c < 2 * math.sqrt(N) + 1


@pytest.mark.parametrize("T,H,HKV,bs,gamma", [(203, 4, 2, 16, 0.9), (331, 4, 1, 32, 0.7), (1203, 4, 2, 64, 0.95)])
def test_official_selection_with_two_level_scan(monkeypatch, T, H, HKV, bs, gamma):
    """Every running sum of the selection (cover counts, global cover) through the two-level scan with short chunks,
    as CUDA runs it: on these inputs no sum lies within rounding of its threshold, so the selection is the same."""
    q, k = _qk(T, H=H, HKV=HKV, sink_heads=(1,))
    kw = dict(gamma=gamma, tau=0.1, minb=1, maxb=2**31 - 1, block_size=bs, scale=q.shape[-1] ** -0.5)
    ref_mask, ref_qa = official_block_mask(q, k, **kw)
    calls = []
    plain = fp.scan_rows

    def chunked(x, chunk=None):
        calls.append(x.shape)
        return plain(x, chunk=16)

    monkeypatch.setattr(fp, "scan_rows", chunked)
    mask, qa = official_block_mask(q, k, **kw)
    assert len(calls) == 2  # cover counts and global cover
    assert torch.equal(qa, ref_qa) and torch.equal(mask, ref_mask)


def test_stable_rank_breaks_ties_by_index():
    assert stable_rank(torch.tensor([1.0, 2.0, 2.0, 1.0, float("inf")])).tolist() == [3, 1, 2, 4, 0]


def test_diagonal_sums_small():
    p = torch.arange(1.0, 13.0).view(2, 6)  # rows at positions 4 and 5 of 6 keys
    # offset 0: p[0,4] + p[1,5] = 5 + 12; offset 1: 4 + 11; ... offset 5: p[1,0] = 7
    assert diagonal_sums(p).tolist() == [7.0, 1 + 8, 2 + 9, 3 + 10, 4 + 11, 5 + 12]


@pytest.mark.parametrize("n,S", [(1, 7), (3, 3), (16, 203), (5, 64), (128, 301)])
def test_diagonal_sums_equal_literal_diagonals(n, S):
    """Integer-valued entries make every sum exact whatever the order of the additions, so the strided view and the
    padded head must give the literal diagonals bit for bit; leading dims are independent."""
    g = torch.Generator().manual_seed(SEED)
    p = torch.randint(0, 1000, (2, 3, n, S), generator=g).float()
    got = diagonal_sums(p)
    for b in range(2):
        for h in range(3):
            assert torch.equal(got[b, h], _diag_sums_literal(p[b, h]))
    assert torch.equal(diagonal_sums(p[:, 1:]), got[:, 1:])  # a non-contiguous input


@pytest.mark.parametrize("n,S", [(16, 203), (128, 301), (200, 150)])
def test_diagonal_sums_into_a_strided_out(n, S):
    p = torch.rand(2, 3, n, S, generator=torch.Generator().manual_seed(SEED))
    buf = torch.full((2, 2, 5, S), -1.0)
    out = buf[1, :, 1:4]  # a non-contiguous view
    assert diagonal_sums(p, out=out) is out
    assert torch.equal(out, diagonal_sums(p)) and (buf[0] == -1).all() and (buf[1, :, [0, 4]] == -1).all()


@pytest.mark.parametrize("max_elems", [fp.MAX_SCORE_ELEMS, 3 * 16 * 333, 16 * 333])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_last_query_scores_equal_the_plain_formula(max_elems, dtype):
    """Summed into `scores` and divided once, the scores are bit for bit the per-head column means and diagonal
    sums / n of the fp32 softmax, whatever the head slicing (one slice, per KV head, per query head)."""
    T, n = 333, 16
    q, k = _qk(T, H=6, HKV=2, dtype=dtype)
    scale = q.shape[-1] ** -0.5
    scores, q_last = last_query_scores(q, k, n, scale, max_elems)
    assert scores.shape == (2, 1, 6, T) and scores.dtype == torch.float32
    for h in range(6):
        z = torch.matmul(q_last[:, h], k[:, h // 3].transpose(-1, -2))
        z[..., T - n:].masked_fill_(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        p = torch.softmax(z, dim=-1, dtype=torch.float32)
        assert torch.equal(scores[0, :, h], p.mean(-2))
        assert torch.equal(scores[1, :, h], diagonal_sums(p) / n)


def _block_mean_padded_fp32(x, size):
    """The former formula: an fp32 copy of the whole input, zero-padded to whole runs, summed, divided."""
    N, D = x.shape[-2], x.shape[-1]
    nb = -(-N // size)
    padded = torch.nn.functional.pad(x.float(), (0, 0, 0, nb * size - N))
    sums = padded.view(*x.shape[:-2], nb, size, D).sum(-2)
    counts = torch.full((nb, 1), float(size))
    counts[-1] = N - (nb - 1) * size
    return sums / counts


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("N,size", [(203, 16), (128, 128), (333, 128), (1, 16), (4099, 64), (96, 32)])
def test_block_mean_equals_padded_fp32_formula(N, size, dtype):
    g = torch.Generator().manual_seed(SEED)
    x = (torch.randn(2, 3, N, 40, generator=g) * torch.rand(2, 3, N, 1, generator=g) * 8).to(dtype)
    got = block_mean(x, size)
    assert got.dtype == torch.float32 and got.shape == (2, 3, -(-N // size), 40)
    assert torch.equal(got, _block_mean_padded_fp32(x, size))
    assert torch.equal(block_mean(x[:, 1:], size), got[:, 1:])  # a non-contiguous input


@pytest.mark.parametrize("N,size", [(203, 16), (256, 128), (301, 128), (5, 16)])
def test_sum_pool_equals_padded_formula(N, size):
    x = torch.rand(2, 3, N, generator=torch.Generator().manual_seed(SEED)) ** 4
    nb = -(-N // size)
    ref = torch.nn.functional.pad(x, (0, nb * size - N)).view(2, 3, nb, size).sum(-1)
    assert torch.equal(sum_pool(x, size), ref)


@pytest.mark.parametrize("bs,min_budget,T_dense", [(16, None, 32), (16, 100, 112), (32, 64, 64), (64, 1024, 1024)])
def test_short_inputs_are_dense(bs, min_budget, T_dense):
    m = FlexPrefill(min_budget=min_budget, block_size=bs)
    assert m.runs_dense(T_dense, T_dense) and not m.runs_dense(T_dense + 1, T_dense + 1)
    assert m.estimation_flops(AttnShape(1, T_dense, T_dense, 4, 2, 32)) == 0
    if T_dense <= 112:
        for T, dense in ((T_dense, True), (T_dense + 1, False)):
            q, k = _qk(T)
            sel = m.select(q, k, _ctx(q, k))
            assert (m.last_decision is None) == dense
            assert (sel.density() == 1.0) if dense else sel.granularity == "query_head"


def test_chunked_prefill_and_short_sparse_frontier_run_dense():
    q, k = _qk(300)
    m = FlexPrefill(min_budget=None, block_size=16)
    sel = m.select(q[:, :, -100:], k, _ctx(q, k))
    assert sel.density() == 1.0 and m.last_decision is None
    sf = FlexPrefill(variant="sparse_frontier", min_budget=16)  # approximation_size 512 > T
    assert sf.select(q, k, _ctx(q, k)).density() == 1.0 and sf.runs_dense(511, 511) and not sf.runs_dense(512, 512)


# ------------------------------------------------------------------------------------------------ 5. head dim 256
@pytest.mark.parametrize("variant", ["official", "sparse_frontier"])
def test_head_dim_256(variant):
    T = 161
    q, k = _qk(T, H=4, HKV=1, D=256, sink_heads=(2,))
    v = torch.randn(k.shape, generator=torch.Generator().manual_seed(SEED + 1))
    knobs = dict(min_budget=None, block_size=16) if variant == "official" else dict(
        variant=variant, gamma=0.3, min_budget=8, approximation_size=32)
    m = FlexPrefill(executor="reference", **knobs)
    sel = m.select(q, k, _ctx(q, k))
    sel.validate()
    assert 0 < sel.density() < 1
    out = execute("reference", q, k, v, sel, scale=256 ** -0.5)
    assert out.shape == q.shape and torch.isfinite(out).all()
    if variant == "official":
        ref, _ = _reference_official(q, k, 0.95, 0.1, None, None, 16, 256 ** -0.5)
        assert _blocks_of(sel.to_block_mask()) == ref


# ------------------------------------------------------------------------------------------------ 6. FLOPs
@pytest.mark.parametrize("knobs,T", [(dict(gamma=0.9, min_budget=None, block_size=16), 203),
                                     (dict(variant="sparse_frontier", gamma=0.5, min_budget=8,
                                           approximation_size=48), 203)])
def test_estimation_flops_match_flop_counter(knobs, T):
    q, k = _qk(T, H=4, HKV=2, D=32)
    m = FlexPrefill(**knobs)
    with FlopCounterMode(display=False) as fc:
        m.select(q, k, _ctx(q, k))
    assert m.estimation_flops(AttnShape(1, T, T, 4, 2, 32)) == fc.get_total_flops()


# ------------------------------------------------------------------------------------------------ 7. knobs
@pytest.mark.parametrize("knobs,match", [
    (dict(gamma=0.0), "gamma=0.0"), (dict(gamma=1.5), "gamma=1.5"), (dict(tau=-0.1), "tau=-0.1"),
    (dict(tau=2.0), "tau=2.0"), (dict(min_budget=0), "min_budget=0"), (dict(max_budget=-5), "max_budget=-5"),
    (dict(block_size=48), "block_size=48"), (dict(variant="sf"), "variant='sf'"),
    (dict(approximation_size=0, variant="sparse_frontier"), "approximation_size=0"),
    (dict(approximation_size=256), "approximation_size=256"),
    (dict(variant="sparse_frontier", max_budget=4096), "max_budget=4096"),
    (dict(executor="cuda"), "executor='cuda'"),
])
def test_bad_knobs_raise(knobs, match):
    with pytest.raises(ValueError, match=match):
        FlexPrefill(**knobs)


def test_config_composes_with_official_defaults(compose):
    cfg = compose(["method=flexprefill"])
    assert (cfg.method.gamma, cfg.method.tau, cfg.method.min_budget, cfg.method.max_budget, cfg.method.block_size,
            cfg.method.variant) == (0.95, 0.1, 1024, None, 128, "official")
    assert FlexPrefill.budget_knob == "gamma" and FlexPrefill.budget_increases_density


# ------------------------------------------------------------------------------------------------ GPU
def test_branch_caps_only_up_to_shared_max_d():
    """The whole graph's register caps (scores pass, block scores) apply up to `_SHARED_MAX_D` only: at head dim 256
    one scores program fills a multiprocessor's shared memory and the caps would only spill."""
    assert fp._SHARED_MAX_D == 128 and fp._BRANCH_BLOCK_SCORES is not None
    for D in (64, 128):
        assert fp._block_scores_launch(D) == fp._BRANCH_BLOCK_SCORES
    assert fp._block_scores_launch(256) == (None, None)


@pytest.mark.gpu
def test_gpu_matches_cpu_fp32():
    q, k = _qk(1203, H=4, HKV=2, D=64, sink_heads=(1,))
    kw = dict(gamma=0.9, tau=0.1, minb=2, maxb=2**31 - 1, block_size=64, scale=0.125)
    m_cpu, d_cpu = official_block_mask(q, k, **kw)
    m_gpu, d_gpu = official_block_mask(q.cuda(), k.cuda(), **kw)
    assert torch.equal(d_cpu, d_gpu.cpu())
    # GPU reductions run in another order: a threshold may flip for one budget, nothing more
    assert (m_cpu != m_gpu.cpu()).float().mean().item() < 0.02


@pytest.mark.gpu
@pytest.mark.parametrize("N", [1 << 16, 32896])
def test_gpu_scan_rows_two_level(N):
    """The CUDA branch (few long rows, two-level scan; 32896 = a padded last chunk) against the CPU running sum."""
    x = torch.rand(6, N, generator=torch.Generator().manual_seed(SEED))
    got = scan_rows(x.cuda())
    assert torch.allclose(got.cpu().double(), torch.cumsum(x.double(), dim=-1), rtol=1e-5, atol=1e-3)
    assert torch.equal(scan_rows(x.cuda(), chunk=0), torch.cumsum(x.cuda(), dim=-1))
    ints = torch.randint(0, 100, (6, N), generator=torch.Generator().manual_seed(SEED)).float()
    assert torch.equal(scan_rows(ints.cuda()).cpu(), torch.cumsum(ints, dim=-1))


def _peaky_bf16(T, H, HKV, D, dev):
    """Random q/k with logits of std 9: each query has a few dominant keys, as real heads do (flat random
    attention would make both variants nearly dense and blow the Sparse Frontier column lists up to ~T)."""
    g = torch.Generator(device=dev).manual_seed(SEED)
    q = 3 * torch.randn(1, H, T, D, device=dev, generator=g)
    k = 3 * torch.randn(1, HKV, T, D, device=dev, generator=g)
    return q.bfloat16(), k.bfloat16()


@pytest.mark.gpu
@pytest.mark.parametrize("T,H,HKV,D", [(32768, 4, 1, 256), (131072, 32, 8, 128)])
@pytest.mark.parametrize("variant", ["official", "sparse_frontier"])
def test_gpu_long_bf16_fits(T, H, HKV, D, variant):
    """gemma3_270m at 32K and Llama-3.1-8B at 128K shapes, bf16: valid selection, bounded estimation memory."""
    dev = torch.device("cuda")
    q, k = _peaky_bf16(T, H, HKV, D, dev)
    knobs = {} if variant == "official" else dict(variant=variant, gamma=0.65, min_budget=512)
    m = FlexPrefill(**knobs)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    sel = m.select(q, k, AttnContext(0, H, HKV, D, D ** -0.5))
    torch.cuda.synchronize()
    extra_gb = (torch.cuda.max_memory_allocated() - base) / 2**30
    assert 0 < sel.density() <= 1
    sel.validate()
    assert extra_gb < 12, f"selection took {extra_gb:.1f} GB beyond its inputs"
    if variant == "official":
        nb = -(-T // 128)
        r = torch.arange(nb, device=dev)
        bm = sel.to_block_mask()
        assert bm[..., r, 0].all() and bm[..., r, r].all()


def _replays_agree(m, ctx, shape, eager_sw: dict, graph_sw: dict, cache: dict):
    """Three calls on new q and k of one shape: the selection (lists and pattern decisions) with `graph_sw` equals
    the one with `eager_sw`, one graph captured in `cache` serves all three, and the lists change with the inputs
    (the replays read the new ones). Returns the last q, k and eager selection."""
    from sparsebench.testing import assert_same_lists, switched

    cache.clear()
    firsts = []
    for seed in (SEED, SEED + 1, SEED + 2):
        q, k = _gpu_qk(*shape, seed)
        with switched(fp, **eager_sw):
            eager, d_eager = m.select(q, k, ctx), m.last_decision
        with switched(fp, **graph_sw):
            got, d_got = m.select(q, k, ctx), m.last_decision
        assert_same_lists(got, eager)
        assert torch.equal(d_got, d_eager)
        firsts.append(got.kv_indices.clone())
    assert len(cache) == 1
    assert not torch.equal(firsts[0], firsts[1]) or not torch.equal(firsts[1], firsts[2])
    return q, k, eager


def _gpu_qk(H: int, HKV: int, T: int, D: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """bf16 q `[1, H, T, D]` and k `[1, HKV, T, D]` on the GPU, 3 x standard normal (peaked enough to select)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = 3 * torch.randn(1, H, T, D, device="cuda", generator=g)
    return q.bfloat16(), (3 * torch.randn(1, HKV, T, D, device="cuda", generator=g)).bfloat16()


@pytest.mark.gpu
@pytest.mark.parametrize("T,H,HKV,D,tau", [(8192, 8, 2, 128, 0.1), (5000, 4, 1, 256, 0.5)])
def test_gpu_graph_tail_equals_eager(T, H, HKV, D, tau):
    """The official rule with its tail replayed from a CUDA graph (`_GRAPH_TAIL`) lists the same blocks and decides
    the same patterns as eagerly, call after call on new inputs of one shape (the replay reads the new reads)."""
    m = FlexPrefill(tau=tau)
    ctx = AttnContext(0, H, HKV, D, D ** -0.5)
    _replays_agree(m, ctx, (H, HKV, T, D), {"_GRAPH_TAIL": False, "_WHOLE_GRAPH": False},
                   {"_GRAPH_TAIL": True, "_WHOLE_GRAPH": False}, fp._graph_tails)


@pytest.mark.gpu
@pytest.mark.parametrize("T,H,HKV,D", [(32768, 8, 2, 128), (20000, 4, 1, 256)])
def test_gpu_session10_switches_select_the_same(T, H, HKV, D):
    """The block means on a side stream (`_SIDE_MEANS`), kernels/cover's mask rows skipping their blocks above
    the diagonal (`SKIP_UPPER`) and its idle chunks returning at once (`EMPTY_EXIT`), each and together, list the
    same blocks and decide the same patterns as without."""
    import sparsebench.kernels.cover.triton as CT
    from sparsebench.testing import assert_same_lists, switched

    m = FlexPrefill()
    ctx = AttnContext(0, H, HKV, D, D ** -0.5)
    q, k = _gpu_qk(H, HKV, T, D, SEED)
    with switched(fp, _SIDE_MEANS=False, _WHOLE_GRAPH=False), switched(CT, SKIP_UPPER=False, EMPTY_EXIT=False):
        want, d_want = m.select(q, k, ctx), m.last_decision
    for side, upper, empty in ((True, False, False), (False, True, False), (False, False, True), (True, True, True)):
        with switched(fp, _SIDE_MEANS=side, _WHOLE_GRAPH=False), switched(CT, SKIP_UPPER=upper, EMPTY_EXIT=empty):
            got, d_got = m.select(q, k, ctx), m.last_decision
        assert_same_lists(got, want)
        assert torch.equal(d_got, d_want)


@pytest.mark.gpu
@pytest.mark.parametrize("T,H,HKV,D", [(8192, 8, 2, 128), (5000, 4, 1, 256)])
@pytest.mark.parametrize("sw", [{}, {"_WHOLE_SIDE": False}, {"_QA_SIDE": False},
                                {"_QA_SIDE": False, "_LATE_FORK": False, "_MAIN_PRIORITY": False,
                                 "_WHOLE_STATS_PERSIST": None},
                                {"_SIDE_PRIORITY": 0, "_WHOLE_SCORES_MAXNREG": None, "_BRANCH_BLOCK_SCORES": None,
                                 "_WHOLE_MEANS": None, "_BUDGET_IN_KEEP": False, "_RESIDENT_COUNTS": False,
                                 "_RESIDENT_COVER": False},
                                {"_RESIDENT_COVER": False},
                                {"_WHOLE_SIDE": False, "_QA_SIDE": False}],
                         ids=["defaults", "noside", "noqaside", "session12-graph", "session13-graph",
                              "session14-graph", "noside-noqaside"])
def test_gpu_whole_graph_equals_eager(T, H, HKV, D, sw):
    """The whole estimate replayed from one CUDA graph (`_WHOLE_GRAPH`), its means on a branch of their own
    (`_WHOLE_SIDE`) or not, with every head's query-aware cover beside them (`_QA_SIDE`) or not, with session 13's
    branch forked late, main chain at a high priority and stats pass as resident programs (`_LATE_FORK`,
    `_MAIN_PRIORITY`, `_WHOLE_STATS_PERSIST`) or not, with session 14's branch above the main chain's priority and
    the scores pass and block scores capped, the means at 2 warps, the budgets worked out by kernels/flex_blocks,
    the counts by kernels/cover's resident path (`_SIDE_PRIORITY`, `_WHOLE_SCORES_MAXNREG`, `_BRANCH_BLOCK_SCORES`,
    `_WHOLE_MEANS`, `_BUDGET_IN_KEEP`, `_RESIDENT_COUNTS`) or not, with session 15's global cover by kernels/cover's
    resident path (`_RESIDENT_COVER`) or not, lists the same
    blocks and decides the same patterns as the eager reads with the same means kernel (`_POOL_KERNEL`), call after
    call on new q and k of one layout (the table carries their addresses); a layout it cannot take (q not 16-byte
    aligned) runs the usual path and still agrees."""
    from sparsebench.testing import assert_same_lists, switched

    m = FlexPrefill()
    ctx = AttnContext(0, H, HKV, D, D ** -0.5)
    same = {"_POOL_KERNEL": True, "_SIDE_MEANS": False}
    q, k, eager = _replays_agree(m, ctx, (H, HKV, T, D), {**same, "_WHOLE_GRAPH": False},
                                 {**same, "_WHOLE_GRAPH": True, **sw}, fp._whole_graphs)
    q_odd = torch.empty(q.numel() + 1, dtype=q.dtype, device="cuda")[1:].view(q.shape).copy_(q)  # 2 bytes off
    with switched(fp, _POOL_KERNEL=True, _SIDE_MEANS=False, _WHOLE_GRAPH=True):
        assert not fp._whole_ok(q_odd, k, m.block_size, m.scores_kernel)
        assert_same_lists(m.select(q_odd, k, ctx), eager)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["official", "sparse_frontier"])
def test_gpu_triton_executor_matches_reference_bf16(variant):
    dev = torch.device("cuda")
    T, H, HKV, D = 4099, 8, 2, 128
    q, k = _peaky_bf16(T, H, HKV, D, dev)
    v = torch.randn(k.shape, device=dev, generator=torch.Generator(device=dev).manual_seed(SEED + 1)).bfloat16()
    knobs = dict(min_budget=None) if variant == "official" else dict(variant=variant, gamma=0.65, min_budget=512)
    sel = FlexPrefill(**knobs).select(q, k, AttnContext(0, H, HKV, D, D ** -0.5))
    out = execute("triton", q, k, v, sel, scale=D ** -0.5).float()
    ref = execute("reference", q, k, v, sel, scale=D ** -0.5).float()
    assert (out - ref).abs().max().item() < 2e-2


def test_scores_kernel_choice_is_checked():
    import os

    from sparsebench.methods.flexprefill import FlexPrefill

    with pytest.raises(ValueError, match="scores_kernel='fused' is not one of auto, torch, triton"):
        FlexPrefill(scores_kernel="fused")
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        g = torch.Generator().manual_seed(0)
        q, k = torch.randn(1, 2, 512, 16, generator=g), torch.randn(1, 1, 512, 16, generator=g)
        with pytest.raises(ValueError, match="needs a CUDA device"):
            FlexPrefill(scores_kernel="triton", min_budget=64, block_size=64).select(
                q, k, AttnContext(0, 2, 1, 16, 0.25))
