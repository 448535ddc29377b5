"""PBS-Attn (`pbs`): the fast estimator equals the literal one, the selection rules hold on hand-built inputs, and
executing the Selection (extra key columns, no permutation) computes exactly the official permuted kernel's pairs."""
import copy
import inspect
import os
import re

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from sparsebench.attention import AttnContext, AttnShape, Meter, install, method_layers
from sparsebench.executors import execute
from sparsebench.methods.pbs import (PBS, _block_mean, _pooled_permuted_keys, pbs_estimate, pbs_estimate_naive,
                                     pbs_selection, threshold_blocks)
from sparsebench.selection import causal_pairs


def _qkv(B, H, HKV, T, D, dtype=torch.float32, device="cpu", peak=2.0):
    g = torch.Generator(device).manual_seed(42)
    q = torch.randn(B, H, T, D, generator=g, device=device) * peak
    k = torch.randn(B, HKV, T, D, generator=g, device=device)
    v = torch.randn(B, HKV, T, D, generator=g, device=device)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _ctx(q, k):
    return AttnContext(0, q.shape[1], k.shape[1], q.shape[3], q.shape[3] ** -0.5)


def _select(method, q, k):
    return method.select(q, k, _ctx(q, k))


def _permuted_oracle(q, k, v, perm, mask, block_size, scale):
    """The official execution, literally: gather K/V by the permutation, keep (i, j) where the permuted block of j
    is in query block i's mask and orig(j) <= i, masked softmax in fp64. Also the pair set in original key order."""
    B, H, T, D = q.shape
    S, G = k.shape[2], H // k.shape[1]
    idx = perm[..., None].expand(B, H, S, D)
    kp = k.double().repeat_interleave(G, 1).gather(2, idx)
    vp = v.double().repeat_interleave(G, 1).gather(2, idx)
    i, j = torch.arange(T), torch.arange(S)
    allowed = mask[:, :, i // block_size][..., j // block_size] & (perm[:, :, None, :] <= i[:, None] + S - T)
    s = (q.double() @ kp.transpose(-1, -2) * scale).masked_fill(~allowed, float("-inf"))
    out = torch.softmax(s, -1) @ vp
    pairs = torch.zeros_like(allowed).scatter_(-1, perm[:, :, None, :].expand(B, H, T, S), allowed)
    return out, pairs


def _density_of(mask, T, S):
    return mask.sum().item() / (mask.shape[0] * mask.shape[1] * causal_pairs(T, S))


CONFIGS = [  # (B, H, HKV, T, D, knobs)
    (2, 4, 2, 777, 32, {"block_size": 32, "segment_size": 64}),
    (1, 6, 2, 1001, 16, {"block_size": 16, "segment_size": 48, "threshold": 0.5, "last_q": 40}),
    (1, 4, 1, 455, 32, {"block_size": 32, "segment_size": 96, "threshold": 0.6, "force_first_block": False,
                        "last_q": 1000}),
    (1, 2, 2, 701, 16, {"block_size": 128, "segment_size": 256, "threshold": 1.0}),
]


# ------------------------------------------------------------------------------------------------ 1. fast == naive
@pytest.mark.parametrize("B,H,HKV,T,D,knobs", CONFIGS)
def test_fast_estimator_equals_naive(B, H, HKV, T, D, knobs):
    q, k, _ = _qkv(B, H, HKV, T, D)
    scale = D ** -0.5
    ref_perm, ref_mask = pbs_estimate_naive(q, k, scale, **knobs)
    for chunk in (1, 1 << 40):  # one KV head per chunk, and everything at once
        perm, mask = pbs_estimate(q, k, scale, **knobs, chunk_bytes=chunk)
        assert torch.equal(perm, ref_perm) and torch.equal(mask, ref_mask)
    sel = _select(PBS(**knobs), q, k)
    sel.validate()
    ref_sel = pbs_selection(ref_perm, ref_mask, q_len=T, k_len=T, num_kv_heads=HKV, block_size=knobs["block_size"],
                            segment_size=knobs["segment_size"])
    assert torch.equal(sel.token_mask(), ref_sel.token_mask())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("N,BS", [(777, 32), (256, 128), (301, 128), (100, 48), (5, 16)])
def test_block_mean_equals_padding_the_whole_input(N, BS, dtype):
    """Only a partial last block is padded now; the means are the former whole-input padding's, bit for bit."""
    x = (torch.randn(2, 3, N, 24, generator=torch.Generator().manual_seed(42)) * 4).to(dtype)
    nb = -(-N // BS)
    ref = torch.nn.functional.pad(x, (0, 0, 0, nb * BS - N)).view(2, 3, nb, BS, 24).mean(-2)
    got = _block_mean(x, BS)
    assert got.dtype == dtype and torch.equal(got, ref)
    assert torch.equal(_block_mean(x[:, 1:], BS), ref[:, 1:])  # a non-contiguous input


def _gathered_block_means(k, order, block_size):
    """The straightforward pooling: every query head's keys in permuted order (K repeated), then block means."""
    B, hc, S, D = k.shape
    HC, nseg, seg = order.shape[1:]
    Sc = nseg * seg
    perm = torch.cat([(order + torch.arange(0, Sc, seg)[:, None]).view(B, HC, Sc),
                      torch.arange(Sc, S).expand(B, HC, S - Sc)], -1)
    kp = k.repeat_interleave(HC // hc, 1).gather(2, perm[..., None].expand(B, HC, S, D))
    return _block_mean(kp, block_size)


def _random_order(B, HC, nseg, seg, g):
    return torch.stack([torch.randperm(seg, generator=g) for _ in range(B * HC * nseg)]).view(B, HC, nseg, seg)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,hc,G,S,D,BS,seg", [
    (1, 2, 3, 96, 8, 16, 48),  # no remainder
    (2, 1, 4, 777, 32, 32, 64),  # a remainder with a partial last block
    (2, 3, 1, 300, 256, 128, 256),  # one segment, head dim 256
    (1, 2, 2, 640, 128, 128, 512),  # a whole-block remainder
])
def test_pooled_permuted_keys_equal_block_means_of_gathered_keys(B, hc, G, S, D, BS, seg, dtype):
    """The membership matmul gives the block means of the gathered permuted keys: exact for bf16 keys, within the
    last bits for fp32 keys (another summation order); the unpermuted remainder bit for bit."""
    g = torch.Generator().manual_seed(42)
    k = (torch.randn(B, hc, S, D, generator=g) * 3).to(dtype)
    order = _random_order(B, hc * G, S // seg, seg, g)
    ref = _gathered_block_means(k, order, BS)
    got = _pooled_permuted_keys(k, order, BS)
    assert got.dtype == dtype and got.shape == ref.shape
    if dtype == torch.bfloat16:
        assert torch.equal(got, ref)
    else:
        # relative to the block's mean magnitude (a mean near 0 has no relative precision of its own)
        scale = k.abs().mean()
        assert ((got - ref).abs() <= 1e-6 * scale).all()
    nkc = S // seg * seg // BS
    assert torch.equal(got[:, :, nkc:], ref[:, :, nkc:])
    # a slice of the KV heads (a chunk of the estimator) gives the same means
    both = torch.cat([k, k], 1)[:, hc:]
    assert torch.equal(_pooled_permuted_keys(both, order, BS), got)


# ------------------------------------------------------------------------------------------------ 2. keep everything
def test_threshold_one_is_dense_attention():
    q, k, v = _qkv(1, 4, 2, 600, 32)
    sel = _select(PBS(block_size=32, segment_size=64, threshold=1.0), q, k)
    # every earlier segment is whole, so it is listed as key blocks: no extra columns remain
    assert sel.extra_cols is None and sel.density() == 1.0
    out = execute("reference", q, k, v, sel, 32 ** -0.5)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert (out - ref).abs().max().item() < 1e-5


def _routed(compose, method, T=200):
    cfg = compose(["model=tiny_llama", "model.device=cpu"])
    from sparsebench.models import load

    model, _, _ = load(cfg.model, cfg.paths.cache_dir)
    stock = copy.deepcopy(model)
    stock.set_attn_implementation("eager")
    ids = torch.randint(3, 250, (1, T), generator=torch.Generator().manual_seed(42))
    meter = Meter()
    install(model, method, method_layers(model.config, "all"), "reference", meter)
    with torch.no_grad():
        return stock(ids).logits.float(), model(ids).logits.float(), meter


class _Spy(PBS):
    """Keeps every Selection it returns, to compare with what the attention function recorded."""

    def select(self, q, k, ctx):
        sel = super().select(q, k, ctx)
        self.seen = getattr(self, "seen", []) + [sel]
        return sel


def test_tiny_model_keep_everything_equals_stock_and_sparse_records_executed_density(compose):
    ref, out, meter = _routed(compose, PBS(block_size=16, segment_size=32, threshold=1.0, executor="reference"))
    assert (out - ref).abs().max().item() < 1e-4 * max(1.0, ref.abs().max().item())
    assert [r.density for r in meter.records] == [1.0, 1.0]

    spy = _Spy(block_size=16, segment_size=32, threshold=0.3, executor="reference")
    ref, out, meter = _routed(compose, spy)
    assert (out - ref).abs().max().item() > 1e-4
    assert len(spy.seen) == len(meter.records) == 2
    for sel, rec in zip(spy.seen, meter.records):
        assert sel.extra_cols is not None
        assert rec.density == sel.density() == pytest.approx(_density_of(sel.token_mask(), 200, 200), abs=1e-12)
        assert rec.density < 1.0


# ------------------------------------------------------------------------------------------------ 3. density
@pytest.mark.parametrize("B,H,HKV,T,D,knobs", CONFIGS[:3])
def test_reported_density_is_executed_density(B, H, HKV, T, D, knobs):
    q, k, _ = _qkv(B, H, HKV, T, D)
    sel = _select(PBS(**knobs), q, k)
    assert sel.density() == pytest.approx(_density_of(sel.token_mask(), T, T), abs=1e-12)
    assert 0 < sel.density() < 1


# ------------------------------------------------------------------------------------------------ 4. hand-worked
def _rows(x):
    return torch.tensor(x, dtype=torch.float32)


def test_threshold_rule_by_hand():
    allowed = torch.ones(4, dtype=torch.bool)

    def pick(p, tau):
        return threshold_blocks(_rows(p), allowed, tau).nonzero().flatten().tolist()

    assert pick([0.5, 0.25, 0.125, 0.125], 0.75) == [0, 1]  # reached exactly: no extra block
    assert pick([0.5, 0.25, 0.125, 0.125], 0.8) == [0, 1, 2]  # the crossing block is kept
    assert pick([0.125, 0.5, 0.25, 0.125], 0.8) == [0, 1, 2]  # by mass, not position; of the tied 0.125s, block 0
    assert pick([0.25, 0.25, 0.25, 0.25], 0.5) == [0, 1]  # ties go to the lower block index
    assert pick([0.5, 0.3, 0.0, 0.0], 0.9) == []  # never reaches tau: keeps nothing
    nan_row = _rows([float("nan")] * 4)  # a row without allowed blocks (first segment)
    assert not threshold_blocks(nan_row, torch.zeros(4, dtype=torch.bool), 0.5).any()
    part = torch.tensor([True, True, False, True])
    assert torch.equal(threshold_blocks(_rows([0.1, 0.1, 0.0, 0.8]), part, 1.0), part)  # 1 keeps every allowed


def test_permutation_sorts_each_complete_segment_by_last_query_attention():
    T, D, Sg, BS, L = 5 * 16 + 9, 4, 32, 16, 8  # 2 complete segments + a 25-token remainder
    g = torch.Generator().manual_seed(42)
    a = torch.randperm(T, generator=g).float() / T  # distinct key strengths along e0
    k = torch.zeros(1, 1, T, D)
    k[0, 0, :, 0] = a
    k[0, 0, :, 1] = torch.randn(T, generator=g)
    q = torch.zeros(1, 1, T, D)
    q[0, 0, :, 1] = 5.0  # early queries prefer a different direction: only the last L rows may matter
    q[0, 0, T - L:, :] = 0.0
    q[0, 0, T - L:, 0] = 3.0
    perm, _ = pbs_estimate(q, k, 0.5, block_size=BS, segment_size=Sg, last_q=L)
    for s in range(T // Sg):
        seg = torch.arange(s * Sg, (s + 1) * Sg)
        assert perm[0, 0, s * Sg:(s + 1) * Sg].tolist() == seg[torch.argsort(-a[seg])].tolist()
    assert perm[0, 0, (T // Sg) * Sg:].tolist() == list(range((T // Sg) * Sg, T))  # remainder unpermuted


def test_own_segment_and_token0_block_always_kept():
    """Token 0 is made the least important key of segment 0, so it lands in the LAST permuted block of segment 0:
    the forced sink block is that block, not block 0. A tiny threshold keeps one scored block per row."""
    B, H, T, D, BS, Sg = 1, 2, 300, 16, 16, 48
    q, k, _ = _qkv(B, H, 1, T, D)
    q[:, :, -128:] = q[:, :, -128:].abs()  # the last_q=128 rows that rank the keys
    k[:, :, 0] = -10.0
    nbps = Sg // BS
    for force in (True, False):
        m = PBS(block_size=BS, segment_size=Sg, threshold=1e-6, force_first_block=force)
        perm, _ = m.estimate(q, k, D ** -0.5)
        sink_pos = (perm[0, :, :Sg] == 0).nonzero()[:, 1]
        assert (sink_pos // BS == nbps - 1).all()
        sel = _select(m, q, k)
        tm = sel.token_mask()
        i = torch.arange(T)
        own = ((i[:, None] // Sg) == (torch.arange(T)[None, :] // Sg)) & (torch.arange(T)[None, :] <= i[:, None])
        assert (tm | ~own).all()  # every causal key of the own segment
        for h in range(H):
            sink_tokens = perm[0, h, (nbps - 1) * BS:nbps * BS]
            later = i >= Sg
            if force:
                assert tm[0, h][later][:, sink_tokens].all()  # the whole permuted block holding token 0
            n_extra = sel.extra_counts[0, h, Sg // BS:] // BS
            # one scored block per row (threshold ~ 0), plus the sink block when it is not that block
            assert (n_extra >= 1).all() and (n_extra <= (2 if force else 1)).all()
        if force:
            assert (sel.extra_counts[0, :, Sg // BS:] // BS == 2).any()


def test_crossing_block_kept_and_selection_minimal():
    """Recompute the block probabilities independently; each row keeps a minimal set reaching tau, and its least
    probable kept block is the crossing one (dropping it falls short)."""
    B, H, T, D, BS, Sg, tau = 1, 2, 513, 16, 16, 32, 0.7
    q, k, _ = _qkv(B, H, 1, T, D, peak=4.0)
    q[..., 0] += 3.0
    k[..., 0] += torch.linspace(-2, 2, T)
    scale = D ** -0.5
    perm, mask = pbs_estimate(q, k, scale, block_size=BS, segment_size=Sg, threshold=tau, force_first_block=False)
    NQ = -(-T // BS)
    kp = k.repeat_interleave(H, 1).gather(2, perm[..., None].expand(B, H, T, D))
    pad = NQ * BS - T
    qbar = torch.nn.functional.pad(q, (0, 0, 0, pad)).view(B, H, NQ, BS, D).sum(-2) / BS
    kbar = torch.nn.functional.pad(kp, (0, 0, 0, pad)).view(B, H, NQ, BS, D).sum(-2) / BS
    r, c = torch.arange(NQ)[:, None], torch.arange(NQ)[None, :]
    allowed = (r // 2 != c // 2) & (c <= r)
    p = torch.softmax((qbar @ kbar.transpose(-1, -2) * scale).masked_fill(~allowed, float("-inf")), -1)
    kept = mask & allowed
    n_rows = 0
    for h in range(H):
        for row in range(2, NQ):
            sel = kept[0, h, row]
            mass = p[0, h, row][sel]
            assert mass.sum() >= tau - 1e-5 and mass.sum() - mass.min() < tau + 1e-5
            rest = p[0, h, row][~sel & allowed[row]]
            assert rest.numel() == 0 or rest.max() <= mass.min() + 1e-6
            n_rows += int(sel.sum() > 1)
    assert n_rows > 10  # the rule was exercised on rows needing several blocks


@pytest.mark.parametrize("T", [100, 256])
def test_up_to_one_segment_is_dense(T):
    q, k, _ = _qkv(1, 4, 2, T, 32)
    m = PBS()
    sel = _select(m, q, k)
    assert sel.extra_cols is None and sel.density() == 1.0
    assert m.estimation_flops(AttnShape(1, T, T, 4, 2, 32)) == 0
    # one token past a segment: the sparse path (a single scored block of the two earlier ones is kept)
    sel257 = _select(PBS(threshold=0.1, force_first_block=False), *_qkv(1, 4, 2, 257, 32)[:2])
    assert (sel257.extra_counts[..., -1] == 128).all() and sel257.density() < 1.0


def test_chunked_prefill_runs_dense():
    q, k, _ = _qkv(1, 4, 2, 700, 32)
    sel = _select(PBS(block_size=32, segment_size=64), q[:, :, -300:], k)
    assert sel.q_len == 300 and sel.k_len == 700 and sel.density() == 1.0 and sel.extra_cols is None


@pytest.mark.parametrize("B,H,HKV,T,D,knobs", CONFIGS[:3])
def test_execution_equals_literal_permuted_oracle(B, H, HKV, T, D, knobs):
    q, k, v = _qkv(B, H, HKV, T, D)
    m = PBS(**knobs, executor="reference")
    scale = D ** -0.5
    perm, mask = m.estimate(q, k, scale)
    sel = _select(m, q, k)
    ref, pairs = _permuted_oracle(q, k, v, perm, mask, knobs["block_size"], scale)
    tm = sel.token_mask()
    assert torch.equal(tm, pairs)
    # both layouts occur: partly selected earlier segments as columns, whole ones as blocks
    nbps = knobs["segment_size"] // knobs["block_size"]
    listed_earlier = sel.kv_indices.long() // nbps < (torch.arange(sel.num_q_blocks) // nbps)[:, None]
    assert sel.extra_cols is not None and (listed_earlier & sel.valid()).any()
    out = m.attend(q, k, v, sel, scale)
    assert (out.double() - ref).abs().max().item() < 2e-5
    # and dense masked attention restricted to the Selection's own pair set
    G = H // HKV
    s = (q.double() @ k.double().repeat_interleave(G, 1).transpose(-1, -2) * scale).masked_fill(~tm, float("-inf"))
    dense = torch.softmax(s, -1) @ v.double().repeat_interleave(G, 1)
    assert (out.double() - dense).abs().max().item() < 2e-5


# ------------------------------------------------------------------------------------------------ 5. head dim 256
def test_head_dim_256():
    q, k, v = _qkv(1, 4, 1, 300, 256)
    scale = 256 ** -0.5
    m = PBS(executor="reference")
    perm, mask = m.estimate(q, k, scale)
    ref_perm, ref_mask = pbs_estimate_naive(q, k, scale)
    assert torch.equal(perm, ref_perm) and torch.equal(mask, ref_mask)
    sel = _select(m, q, k)
    ref, pairs = _permuted_oracle(q, k, v, perm, mask, 128, scale)
    assert torch.equal(sel.token_mask(), pairs)
    assert (m.attend(q, k, v, sel, scale).double() - ref).abs().max().item() < 2e-5


# ------------------------------------------------------------------------------------------------ 6. FLOPs
@pytest.mark.parametrize("B,H,HKV,T,D,knobs", CONFIGS[:3])
def test_estimation_flops_match_flop_counter(B, H, HKV, T, D, knobs):
    """The counted matmuls; the fast estimator also takes the permuted keys' block means as a 0/1 matmul (one
    membership row per permuted block: 2 * D per key and block of its segment), a mean that is not counted."""
    q, k, _ = _qkv(B, H, HKV, T, D)
    nbps = knobs["segment_size"] // knobs["block_size"]
    pooling = 2 * B * H * (T // knobs["segment_size"] * knobs["segment_size"]) * nbps * D
    for fn, extra in ((pbs_estimate_naive, 0), (pbs_estimate, pooling)):
        with FlopCounterMode(display=False) as fc:
            fn(q, k, D ** -0.5, **knobs)
        assert PBS(**knobs).estimation_flops(AttnShape(B, T, T, H, HKV, D)) + extra == fc.get_total_flops()


# ------------------------------------------------------------------------------------------------ 7. knobs
@pytest.mark.parametrize("knobs,needle", [
    ({"block_size": 0}, "block_size=0"),
    ({"segment_size": 200}, "segment_size=200"),
    ({"segment_size": 64}, "segment_size=64"),
    ({"threshold": 0.0}, "threshold=0.0"),
    ({"threshold": 1.5}, "threshold=1.5"),
    ({"force_first_block": "yes"}, "force_first_block='yes'"),
    ({"last_q": 0}, "last_q=0"),
    ({"executor": "flex"}, "executor='flex'"),
    ({"executor": "cudnn"}, "executor='cudnn'"),
    ({"scores_kernel": "cuda"}, "scores_kernel='cuda'"),
])
def test_bad_knobs_raise(knobs, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        PBS(**knobs)


def test_config_defaults_match_the_class(compose):
    cfg = compose(["method=pbs"])
    sig = inspect.signature(PBS.__init__).parameters
    for knob in ("block_size", "segment_size", "threshold", "force_first_block", "last_q", "scores_kernel"):
        assert cfg.method[knob] == sig[knob].default
    assert PBS.budget_knob in sig and PBS.budget_increases_density


def test_triton_scores_kernel_needs_cuda_or_the_interpreter(monkeypatch):
    """The fused importance runs on CUDA (its interpreter cases live in tests/kernels/test_last_q_scores.py); on a
    CPU tensor without TRITON_INTERPRET it fails with a clear message instead of a Triton error."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, k, _ = _qkv(1, 4, 2, 600, 32)
    with pytest.raises(ValueError, match="scores_kernel='triton' needs a CUDA device"):
        _select(PBS(block_size=32, segment_size=64, scores_kernel="triton"), q, k)
    with pytest.raises(ValueError, match="scores_kernel='fused'"):
        pbs_estimate(q, k, 32 ** -0.5, 32, 64, scores_kernel="fused")
    # dense paths never estimate, so they run anywhere
    assert _select(PBS(scores_kernel="triton"), q[:, :, :200], k[:, :, :200]).density() == 1.0
    # auto (the default) takes the exact torch path off CUDA
    assert PBS().scores_kernel == "auto"
    a = _select(PBS(block_size=32, segment_size=64), q, k)
    t = _select(PBS(block_size=32, segment_size=64, scores_kernel="torch"), q, k)
    assert torch.equal(a.kv_indices, t.kv_indices) and torch.equal(a.kv_counts, t.kv_counts)


# ------------------------------------------------------------------------------------------------ GPU
@pytest.mark.gpu
@pytest.mark.parametrize("H,HKV,T,D", [(8, 2, 5001, 128), (4, 1, 3333, 256)])
def test_gpu_bf16_fast_matches_naive_and_triton_executes(H, HKV, T, D):
    """Exact on CPU (above); on CUDA a reduction over another number of heads may be split differently, which can
    swap two keys of near-equal importance, so agreement is asked of all but a sliver of the entries."""
    q, k, v = _qkv(1, H, HKV, T, D, dtype=torch.bfloat16, device="cuda")
    scale = D ** -0.5
    ref_perm, ref_mask = pbs_estimate_naive(q, k, scale)
    perm, mask = pbs_estimate(q, k, scale, chunk_bytes=1)
    perm_agree, mask_agree = (perm == ref_perm).float().mean().item(), (mask == ref_mask).float().mean().item()
    assert perm_agree > 0.999 and mask_agree > 0.999, (perm_agree, mask_agree)
    sel = _select(PBS(), q, k)
    out_t = execute("triton", q, k, v, sel, scale).float()
    out_r = execute("reference", q, k, v, sel, scale).float()
    assert (out_t - out_r).abs().max().item() < 2e-2


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_pooled_permuted_keys_equal_block_means_of_gathered_keys(dtype):
    """As on CPU, with TF32 allowed for fp32 matmuls (the pooling must not round fp32 keys to TF32)."""
    B, hc, G, S, D, BS, seg = 1, 2, 4, 4096 + 200, 128, 128, 256
    g = torch.Generator().manual_seed(42)
    k = (torch.randn(B, hc, S, D, generator=g) * 3).to(dtype).cuda()
    order = _random_order(B, hc * G, S // seg, seg, g).cuda()
    ref = _gathered_block_means(k.cpu(), order.cpu(), BS)
    prec = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        got = _pooled_permuted_keys(k, order, BS).cpu()
    finally:
        torch.set_float32_matmul_precision(prec)
    if dtype == torch.bfloat16:
        assert torch.equal(got, ref)
    else:
        assert ((got - ref).abs() <= 1e-6 * k.abs().mean().item()).all()


@pytest.mark.gpu
@pytest.mark.parametrize("H,HKV,T,D,limit_gib", [(4, 1, 32768, 256, 4), (32, 8, 131072, 128, 60)])
def test_gpu_long_lengths_fit(H, HKV, T, D, limit_gib):
    """The whole select (estimator, Selection, its density) at gemma3_270m's shape at 32K and Llama-3.1-8B's at
    128K. Random inputs give flat block scores, a hard case for the width of the padded column lists."""
    q, k, _ = _qkv(1, H, HKV, T, D, dtype=torch.bfloat16, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    sel = _select(PBS(), q, k)
    density = sel.density()
    peak_gib = (torch.cuda.max_memory_allocated() - base) / 2**30
    assert 0 < density <= 1
    assert peak_gib < limit_gib, (peak_gib, density, None if sel.extra_cols is None else sel.extra_cols.shape)


@pytest.mark.gpu
@pytest.mark.parametrize("H,HKV,T,D", [(32, 8, 32768, 128), (8, 2, 5001, 128), (4, 1, 3333, 256)])
def test_gpu_bf16_triton_importance_selects_like_torch(H, HKV, T, D):
    """scores_kernel="triton" on CUDA in bf16: the same logit roundings as the torch path, another summation order,
    so two keys of near-equal importance may swap (and with them a permuted block's mean); nearly every permuted
    position and block decision agrees."""
    q, k, _ = _qkv(1, H, HKV, T, D, dtype=torch.bfloat16, device="cuda")
    scale = D ** -0.5
    ref_perm, ref_mask = pbs_estimate(q, k, scale)
    perm, mask = pbs_estimate(q, k, scale, scores_kernel="triton")
    perm_agree, mask_agree = (perm == ref_perm).float().mean().item(), (mask == ref_mask).float().mean().item()
    assert perm_agree > 0.99 and mask_agree > 0.999, (perm_agree, mask_agree)
    a, b = _select(PBS(scores_kernel="triton"), q, k), _select(PBS(), q, k)
    assert abs(a.density() - b.density()) < 1e-3 * b.density()


def test_sort_kernels_give_the_same_selection_interpret():
    """PBS with its sorts through kernels/row_rank (`_SORT_KERNEL`, under the Triton interpreter) selects what the
    torch sorts select (checked in a subprocess: TRITON_INTERPRET must be set before triton is imported)."""
    import subprocess
    import sys

    code = (
        "import torch\n"
        "import sparsebench.methods.pbs as pbs\n"
        "g = torch.Generator().manual_seed(5)\n"
        "q = torch.randn(1, 4, 1100, 32, generator=g); k = torch.randn(1, 2, 1100, 32, generator=g)\n"
        "q[..., 700:760, :] += 2 * k[..., 100:160, :].repeat_interleave(2, 1)\n"
        "pbs._SORT_KERNEL = False\n"
        "ref = pbs.pbs_estimate(q, k, 32 ** -0.5, block_size=64, segment_size=128, threshold=0.9)\n"
        "pbs._SORT_KERNEL = True\n"
        "assert pbs._sort_kernel(q, 128, 18)\n"
        "got = pbs.pbs_estimate(q, k, 32 ** -0.5, block_size=64, segment_size=128, threshold=0.9)\n"
        "assert torch.equal(ref[0], got[0]) and torch.equal(ref[1], got[1])\n"
        "assert 0 < ref[1].float().mean().item() < 1\n"
        "print('ok')\n")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_sort_kernels_gpu_match_torch_sorts(monkeypatch):
    """On the GPU at 16K (Llama-like heads, bf16): the same permutation, and block masks that differ at most where a
    running sum sits within rounding of the threshold (none expected on these inputs, a 1e-4 share allowed)."""
    import sparsebench.methods.pbs as pbs

    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, 32, 16384, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(1, 8, 16384, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    monkeypatch.setattr(pbs, "_SORT_KERNEL", False)
    ref = pbs.pbs_estimate(q, k, 128 ** -0.5)
    monkeypatch.setattr(pbs, "_SORT_KERNEL", True)
    assert pbs._sort_kernel(q, 256, 128)
    got = pbs.pbs_estimate(q, k, 128 ** -0.5)
    assert torch.equal(ref[0], got[0])
    assert (ref[1] != got[1]).float().mean().item() <= 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_pool_mm16_gpu_matches_fp32_pooling(monkeypatch):
    """`_POOL_MM16` (16-bit GEMM, fp32 output) pools the permuted keys as the fp32 GEMM does: the same bf16 means
    up to the fp32 sums' order (a last-bit flip allowed on a 1e-3 share)."""
    import sparsebench.methods.pbs as pbs

    g = torch.Generator(device="cuda").manual_seed(1)
    k = torch.randn(1, 8, 8192, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    order = torch.argsort(torch.rand(1, 32, 32, 256, device="cuda", generator=g), dim=-1)
    monkeypatch.setattr(pbs, "_POOL_MM16", False)
    ref = pbs._pooled_permuted_keys(k, order, 128)
    monkeypatch.setattr(pbs, "_POOL_MM16", True)
    got = pbs._pooled_permuted_keys(k, order, 128)
    assert got.dtype == ref.dtype and got.shape == ref.shape
    assert (got != ref).float().mean().item() <= 1e-3
    torch.testing.assert_close(got.float(), ref.float(), rtol=1e-2, atol=1e-3)
