"""Selection: closed-form density equals the density of the executed token mask, in every configuration."""
import pytest
import torch

from sparsebench.selection import Selection, causal_pairs


def _mask_density(sel: Selection) -> float:
    m = sel.token_mask()  # [B, HS, T, S]
    return m.sum().item() * sel.heads_per_list / (m.shape[0] * sel.num_heads * causal_pairs(sel.q_len, sel.k_len))


CASES = [  # B, H, HKV, T, S, BQ, BK, granularity
    (1, 4, 1, 77, 77, 16, 16, "query_head"),
    (2, 4, 2, 100, 131, 32, 16, "kv_head"),
    (1, 8, 2, 63, 200, 16, 64, "shared"),
    (1, 2, 2, 1, 50, 16, 16, "query_head"),
]


@pytest.mark.parametrize("B,H,HKV,T,S,BQ,BK,gran", CASES, ids=lambda x: str(x))
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_block_density_matches_mask(B, H, HKV, T, S, BQ, BK, gran, p):
    torch.manual_seed(42)
    HS = {"query_head": H, "kv_head": HKV, "shared": 1}[gran]
    bm = torch.rand(B, HS, -(-T // BQ), -(-S // BK)) < p
    sel = Selection.from_block_mask(bm, block_q=BQ, block_k=BK, q_len=T, k_len=S, num_heads=H, num_kv_heads=HKV,
                                    granularity=gran)
    sel.validate()
    assert sel.density() == pytest.approx(_mask_density(sel), abs=1e-12)
    assert torch.equal(sel.to_block_mask(), bm)


@pytest.mark.parametrize("T,S,window,sink,BQ,BK", [(77, 77, 10, 0, 16, 16), (100, 130, 17, 5, 32, 16),
                                                   (64, 64, 1, 0, 16, 16), (50, 50, 500, 3, 16, 32),
                                                   (200, 200, 33, 40, 64, 64)])
def test_local_density_matches_mask(T, S, window, sink, BQ, BK):
    sel = Selection.local(batch=1, q_len=T, k_len=S, num_heads=2, num_kv_heads=1, window=window, sink=sink,
                          block_q=BQ, block_k=BK)
    assert sel.density() == pytest.approx(_mask_density(sel), abs=1e-12)
    # the block list covers every pair the token rule allows
    pos = torch.arange(T)[:, None] + S - T
    cols = torch.arange(S)[None, :]
    rule = (cols <= pos) & ((pos - cols < window) | (cols < sink))
    assert torch.equal(sel.token_mask()[0, 0], rule)


def test_extra_columns_density():
    torch.manual_seed(42)
    T = S = 90
    bm = torch.zeros(1, 1, 6, 6, dtype=torch.bool)
    bm[..., 0] = True
    extra = torch.tensor([[[[20, 33, 0, 0], [40, 50, 61, 0], [17, 0, 0, 0], [88, 70, 0, 0], [30, 0, 0, 0],
                            [89, 60, 45, 0]]]], dtype=torch.int32)
    counts = torch.tensor([[[2, 3, 1, 2, 1, 3]]], dtype=torch.int32)
    sel = Selection.from_block_mask(bm, block_q=16, block_k=16, q_len=T, k_len=S, num_heads=1, num_kv_heads=1,
                                    extra_cols=extra, extra_counts=counts)
    assert sel.density() == pytest.approx(_mask_density(sel), abs=1e-12)


def test_dense_density_is_one_and_errors_name_the_problem():
    sel = Selection.causal(batch=1, q_len=300, k_len=300, num_heads=4, num_kv_heads=2)
    assert sel.density() == 1.0
    with pytest.raises(ValueError, match="granularity"):
        Selection(sel.kv_indices, sel.kv_counts, 128, 128, 300, 300, 4, 2, granularity="per_token")
    with pytest.raises(ValueError, match="k_len"):
        Selection.causal(batch=1, q_len=300, k_len=200, num_heads=4, num_kv_heads=2)


@pytest.mark.parametrize("shape", [(3, 17), (2, 4, 64), (1, 0), (5, 1)])
def test_stable_partition_is_the_stable_descending_argsort(shape):
    """True entries ascending, then False ones ascending, and the True counts: what the sorts it replaced gave,
    all-True and all-False rows included."""
    from sparsebench.selection import stable_partition

    g = torch.Generator().manual_seed(sum(shape))
    flags = torch.rand(shape, generator=g) < 0.4
    if shape[-1] and flags.dim() == 2 and flags.shape[0] > 2:
        flags[0] = True
        flags[1] = False
    order, counts = stable_partition(flags)
    assert order.dtype == counts.dtype == torch.int32
    assert torch.equal(order.long(), torch.argsort(flags, dim=-1, descending=True, stable=True))
    assert torch.equal(counts, flags.sum(-1, dtype=torch.int32))
