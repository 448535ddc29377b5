"""Executors: reference == SDPA on dense causal; flex == reference on random selections (GQA, granularities, odd T)."""
import pytest
import torch

from sparsebench.executors import execute, resolve
from sparsebench.selection import Selection


def rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def _qkv(B, H, HKV, T, S, D, dtype=torch.float32):
    g = torch.Generator().manual_seed(42)
    return (torch.randn(B, H, T, D, generator=g, dtype=dtype), torch.randn(B, HKV, S, D, generator=g, dtype=dtype),
            torch.randn(B, HKV, S, D, generator=g, dtype=dtype))


@pytest.mark.parametrize("B,H,HKV,T,S,D", [(1, 4, 1, 77, 77, 32), (2, 4, 2, 130, 200, 16), (1, 2, 2, 1, 33, 8)])
def test_reference_equals_sdpa_dense(B, H, HKV, T, S, D):
    q, k, v = _qkv(B, H, HKV, T, S, D)
    sel = Selection.causal(batch=B, q_len=T, k_len=S, num_heads=H, num_kv_heads=HKV, block_q=32, block_k=32)
    out = execute("reference", q, k, v, sel)
    mask = torch.ones(T, S, dtype=torch.bool).tril(S - T)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(H // HKV, 1),
                                                           v.repeat_interleave(H // HKV, 1), attn_mask=mask)
    assert rel_err(out, ref) < 1e-5


FLEX_CASES = [  # B, H, HKV, T, S, D, BQ, BK, granularity, p
    (1, 4, 1, 77, 77, 32, 32, 32, "query_head", 0.5),
    (1, 4, 2, 200, 300, 32, 64, 64, "kv_head", 0.4),
    (2, 8, 2, 150, 150, 16, 32, 64, "shared", 0.6),
    (1, 4, 4, 129, 129, 64, 128, 128, "query_head", 1.0),
]


@pytest.mark.parametrize("case", FLEX_CASES, ids=lambda c: "B{}-H{}-HKV{}-T{}-S{}-D{}-BQ{}-BK{}-{}-p{}".format(*c))
def test_flex_equals_reference(case):
    B, H, HKV, T, S, D, BQ, BK, gran, p = case
    torch.manual_seed(42)
    q, k, v = _qkv(B, H, HKV, T, S, D)
    HS = {"query_head": H, "kv_head": HKV, "shared": 1}[gran]
    bm = torch.rand(B, HS, -(-T // BQ), -(-S // BK)) < p
    bm[..., 0] = True  # every row keeps a key, so no row is empty
    sel = Selection.from_block_mask(bm, block_q=BQ, block_k=BK, q_len=T, k_len=S, num_heads=H, num_kv_heads=HKV,
                                    granularity=gran)
    ref = execute("reference", q, k, v, sel)
    out = execute("flex", q, k, v, sel)
    assert rel_err(out, ref) < 1e-4


def test_flex_window_and_one_block_differs_from_dense():
    q, k, v = _qkv(1, 4, 1, 256, 256, 32)
    sel = Selection.local(batch=1, q_len=256, k_len=256, num_heads=4, num_kv_heads=1, window=40, sink=8,
                          block_q=64, block_k=64)
    assert rel_err(execute("flex", q, k, v, sel), execute("reference", q, k, v, sel)) < 1e-4
    # compiled flex honours the index lists (eager flex would silently compute dense attention)
    bm = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    bm[..., 0] = True
    one = Selection.from_block_mask(bm, block_q=64, block_k=64, q_len=256, k_len=256, num_heads=4, num_kv_heads=1,
                                    granularity="shared")
    dense = Selection.causal(batch=1, q_len=256, k_len=256, num_heads=4, num_kv_heads=1, block_q=64, block_k=64)
    assert rel_err(execute("flex", q, k, v, one), execute("reference", q, k, v, one)) < 1e-4
    assert rel_err(execute("flex", q, k, v, one), execute("reference", q, k, v, dense)) > 0.1


def test_auto_resolution_and_bad_name():
    assert resolve("auto", None, torch.device("cpu")) == "flex"
    with pytest.raises(ValueError, match="reference"):
        resolve("cudnn", None, torch.device("cpu"))
