"""Vertical-slash index building against hand-worked cases and a direct definition; execution against dense
masked attention; the Triton kernel against the reference on a GPU.

The direct definition (the promise of `kernels/vertical_slash/naive.py`): pair (t, s) is kept iff s <= pos(t) and
(s is a vertical column, or s // bs lies in [(p_lo - o) // bs, (p_hi - o) // bs] for a slash offset o, where
p_lo / p_hi are the first / last positions of t's query block).
"""
from __future__ import annotations

import sys

import pytest
import torch
from sparsebench.kernels.vertical_slash import vertical_slash_attn_naive, vertical_slash_to_blocks

from sparsebench.executors import execute
from sparsebench.selection import Selection, causal_pairs
from sparsebench.testing import assert_verdict, report_verdicts, switched


def build(v_idx, s_idx, T, S, bs=64, H=None, HKV=None):
    v_idx, s_idx = torch.as_tensor(v_idx), torch.as_tensor(s_idx)
    idx, cnt, cols, ccnt = vertical_slash_to_blocks(v_idx, s_idx, T, S, bs)
    H = H or v_idx.shape[1]
    sel = Selection(idx, cnt, bs, bs, T, S, H, HKV or H, "query_head", extra_cols=cols, extra_counts=ccnt)
    sel.validate()
    return sel


def rows(sel, b=0, h=0):
    """Per query block: (set of listed key blocks, list of extra columns in stored order)."""
    out = []
    for qb in range(sel.num_q_blocks):
        blocks = sel.kv_indices[b, h, qb, : sel.kv_counts[b, h, qb]].tolist()
        assert len(blocks) == len(set(blocks)), "a block is listed twice"
        out.append((set(blocks), sel.extra_cols[b, h, qb, : sel.extra_counts[b, h, qb]].tolist()))
    return out


def direct_lists(v, o, T, S, bs):
    """The promise as per-query-block lists (Python sets), for one head."""
    off = S - T
    V = sorted({x for x in v if 0 <= x < S})
    O = {x for x in o if x >= 0}
    out = []
    for qb in range(-(-T // bs)):
        p_lo, p_hi = qb * bs + off, min((qb + 1) * bs, T) - 1 + off
        blocks = {kb for x in O if p_hi - x >= 0 for kb in range(max(p_lo - x, 0) // bs, (p_hi - x) // bs + 1)}
        out.append((blocks, [s for s in V if s <= p_hi and s // bs not in blocks]))
    return out


def direct_mask(v_idx, s_idx, T, S, bs):
    """[B, HS, T, S] bool straight from the definition."""
    B, HS = v_idx.shape[:2]
    off = S - T
    cols = torch.arange(S)
    mask = torch.zeros(B, HS, T, S, dtype=torch.bool)
    for b in range(B):
        for h in range(HS):
            V = torch.zeros(S, dtype=torch.bool)
            good = v_idx[b, h][(v_idx[b, h] >= 0) & (v_idx[b, h] < S)]
            V[good] = True
            for t in range(T):
                qb, pos = t // bs, t + off
                p_lo, p_hi = qb * bs + off, min((qb + 1) * bs, T) - 1 + off
                hit = torch.zeros(S, dtype=torch.bool)
                for x in s_idx[b, h].tolist():
                    if x >= 0 and p_hi - x >= 0:
                        lo, hi = max(p_lo - x, 0) // bs, (p_hi - x) // bs
                        hit |= (cols // bs >= lo) & (cols // bs <= hi)
                mask[b, h, t] = (V | hit) & (cols <= pos)
    return mask


# ---------------------------------------------------------------------------------------------- hand-worked
def test_slash_zero_is_the_diagonal_blocks():
    sel = build([[[]]], [[[0]]], 256, 256)
    assert sel.kv_counts.tolist() == [[[1, 1, 1, 1]]]
    assert [r[0] for r in rows(sel)] == [{0}, {1}, {2}, {3}]
    assert sel.extra_counts.sum() == 0
    # the diagonal blocks' causal part: 4 blocks of 64*65/2 pairs
    assert sel.executed_pairs() == 4 * 64 * 65 // 2


def test_slash_zero_straddles_when_positions_are_offset():
    # T=100, S=130: query block 0 holds positions 30..93 (key blocks 0, 1), block 1 positions 94..129 (1, 2)
    sel = build([[[]]], [[[0]]], 100, 130)
    assert [r[0] for r in rows(sel)] == [{0, 1}, {1, 2}]
    assert sel.kv_indices.shape[-1] == 2  # MAXK = min(2 * NS, NK)


def test_slash_offsets_off_the_grid_take_two_blocks():
    # o = 1: rows of block qb reach keys qb*64 - 1 .. qb*64 + 62, i.e. key blocks qb - 1 and qb
    sel = build([[[]]], [[[1]]], 256, 256)
    assert [r[0] for r in rows(sel)] == [{0}, {0, 1}, {1, 2}, {2, 3}]
    # o = 64: exactly the block below the diagonal; query block 0 is not reached
    sel = build([[[]]], [[[64]]], 256, 256)
    assert [r[0] for r in rows(sel)] == [set(), {0}, {1}, {2}]
    # o = 200: block 0 gets nothing (positions < 200), block 3 (192..255) reaches keys -8..55 -> block 0 only
    sel = build([[[]]], [[[200]]], 256, 256)
    assert [r[0] for r in rows(sel)] == [set(), set(), set(), {0}]


def test_vertical_at_column_zero_is_in_every_query_block():
    sel = build([[[0]]], [[[]]], 256, 256)
    assert sel.kv_counts.sum() == 0
    assert [r[1] for r in rows(sel)] == [[0], [0], [0], [0]]
    assert sel.executed_pairs() == 256  # every row computes key 0 and nothing else
    # with the diagonal slash, block 0 covers column 0 for query block 0: no extra column there
    sel = build([[[0]]], [[[0]]], 256, 256)
    assert [r[1] for r in rows(sel)] == [[], [0], [0], [0]]


def test_vertical_inside_a_slash_block_is_not_an_extra_column():
    # o = 64 lists block qb - 1; column 70 (block 1) is covered in query block 2 only, and is past block 0's reach
    sel = build([[[70, 0]]], [[[64]]], 256, 256)
    assert rows(sel) == [(set(), [0]), ({0}, [70]), ({1}, [0]), ({2}, [0, 70])]


def test_columns_past_the_block_reach_are_dropped_and_inside_ones_kept():
    # column 100 is past query block 0 (positions 0..63) but inside block 1's rows (64..127): kept there, masked per row
    sel = build([[[100, 5]]], [[[0]]], 128, 128)
    assert rows(sel) == [({0}, []), ({1}, [5])]  # 5 sits in block 0, 100 in block 1: both covered where listed
    sel = build([[[100, 5]]], [[[64]]], 128, 128)
    assert rows(sel) == [(set(), [5]), ({0}, [100])]
    mask = sel.token_mask()[0, 0]
    assert not mask[99, 100] and mask[100, 100] and mask[127, 100]


def test_duplicates_and_out_of_range_inputs_are_ignored():
    a = build([[[3, 3, -1, 500, 3, 300]]], [[[0, 0, -5, 10_000, 64, 64]]], 256, 256)
    b = build([[[3, 300]]], [[[0, 64]]], 256, 256)
    assert rows(a) == rows(b) and a.density() == b.density()
    assert torch.equal(a.token_mask(), b.token_mask())


def test_empty_inputs():
    sel = build(torch.zeros(1, 2, 0, dtype=torch.long), torch.zeros(1, 2, 0, dtype=torch.long), 100, 100)
    assert sel.kv_counts.sum() == 0 and sel.extra_counts.sum() == 0 and sel.density() == 0.0


def test_static_bounds_need_no_data():
    v = torch.randint(0, 1000, (2, 3, 17))
    s = torch.randint(0, 1000, (2, 3, 5))
    idx, cnt, cols, ccnt = vertical_slash_to_blocks(v, s, 1000, 1000)
    assert idx.shape == (2, 3, 16, 10) and cols.shape == (2, 3, 16, 17)
    assert {t.dtype for t in (idx, cnt, cols, ccnt)} == {torch.int32}
    idx, *_ = vertical_slash_to_blocks(v, torch.randint(0, 1000, (2, 3, 50)), 1000, 1000)
    assert idx.shape[-1] == 16  # capped at NK


# ---------------------------------------------------------------------------------------------- random cases
RANDOM = [  # B, HS, T, S, bs, NV, NS, seed
    (1, 2, 256, 256, 64, 10, 4, 0),
    (2, 3, 300, 300, 64, 20, 6, 1),
    (1, 2, 200, 333, 64, 15, 8, 2),
    (1, 2, 130, 130, 32, 40, 3, 3),
    (1, 1, 64, 64, 64, 5, 2, 4),
    (1, 2, 31, 300, 16, 25, 12, 5),
    (1, 2, 321, 400, 64, 0, 20, 6),
    (1, 2, 257, 257, 64, 30, 0, 7),
]


def random_inputs(B, HS, T, S, NV, NS, seed):
    g = torch.Generator().manual_seed(seed)
    v = torch.randint(-3, S + 3, (B, HS, NV), generator=g)  # a few out of range, a few duplicates
    # mostly near diagonals (the MInference shape), some far, a few negatives
    s = torch.where(torch.rand(B, HS, NS, generator=g) < 0.5, torch.randint(0, 80, (B, HS, NS), generator=g),
                    torch.randint(-2, S + 10, (B, HS, NS), generator=g))
    return v, s


@pytest.mark.parametrize("case", RANDOM, ids=lambda c: "B{}-HS{}-T{}-S{}-bs{}-NV{}-NS{}-seed{}".format(*c))
def test_random_lists_and_mask_match_the_definition(case):
    B, HS, T, S, bs, NV, NS, seed = case
    v, s = random_inputs(B, HS, T, S, NV, NS, seed)
    sel = build(v, s, T, S, bs)
    for b in range(B):
        for h in range(HS):
            got = rows(sel, b, h)
            want = direct_lists(v[b, h].tolist(), s[b, h].tolist(), T, S, bs)
            assert got == want, f"(b={b}, h={h})"
    mask = direct_mask(v, s, T, S, bs)
    assert torch.equal(sel.token_mask(), mask)
    assert sel.pair_counts().sum().item() == mask.sum().item()
    assert sel.density() == pytest.approx(mask.sum().item() / (B * HS * causal_pairs(T, S)))


@pytest.mark.parametrize("case", RANDOM, ids=lambda c: "B{}-HS{}-T{}-S{}-bs{}-NV{}-NS{}-seed{}".format(*c))
def test_slots_past_the_counts_are_zero_and_row_chunks_agree(case, monkeypatch):
    import sparsebench.kernels.vertical_slash.naive as vs_naive

    B, HS, T, S, bs, NV, NS, seed = case
    v, s = random_inputs(B, HS, T, S, NV, NS, seed)
    idx, cnt, cols, ccnt = whole = vertical_slash_to_blocks(v, s, T, S, bs)
    for lists, counts in ((idx, cnt), (cols, ccnt)):
        dead = torch.arange(lists.shape[-1]) >= counts[..., None]
        assert not lists[dead].any()
    monkeypatch.setattr(vs_naive, "_MAX_ELEMS", 1)  # one (batch, head) row per chunk
    for a, b in zip(vertical_slash_to_blocks(v, s, T, S, bs), whole):
        assert torch.equal(a, b)


@pytest.mark.parametrize("case", RANDOM[:4] + RANDOM[5:6],
                         ids=lambda c: f"B{c[0]}-HS{c[1]}-T{c[2]}-S{c[3]}-seed{c[7]}")
def test_reference_execution_equals_dense_masked_attention(case):
    B, HS, T, S, bs, NV, NS, seed = case
    H, HKV, D = HS, 1, 16
    v_idx, s_idx = random_inputs(B, HS, T, S, NV, NS, seed)
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, D, generator=g, dtype=torch.float64)
    k = torch.randn(B, HKV, S, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, HKV, S, D, generator=g, dtype=torch.float64)
    sel = build(v_idx, s_idx, T, S, bs, H=H, HKV=HKV)
    out = execute("reference", q, k, v, sel)
    mask = direct_mask(v_idx, s_idx, T, S, bs)
    scores = (q @ k.transpose(-1, -2)) / D ** 0.5
    p = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1).nan_to_num(0.0)  # empty rows give 0
    ref = p @ v
    assert (out - ref).abs().max().item() < 1e-6
    assert torch.equal(vertical_slash_attn_naive(q, k, v, v_idx, s_idx, bs), out)


# ------------------------------------------------------------------ extra-column compaction in Triton (interpreter)
# (B, HS, T, S, bs, NV, NS, seed): ragged and whole last query blocks, S > T, NV = 1, long and short column lists
EXTRA_CASES = [pytest.param(c, id="B{}-HS{}-T{}-S{}-bs{}-NV{}-NS{}-seed{}".format(*c)) for c in [
    (1, 2, 300, 300, 64, 40, 5, 0), (2, 3, 257, 400, 64, 300, 20, 1), (1, 1, 128, 128, 32, 1, 1, 2),
    (1, 4, 90, 93, 16, 1100, 7, 3), (2, 1, 1, 65, 64, 10, 3, 4), (1, 2, 500, 630, 64, 64, 0, 5)]]


def _check_extra_triton(case):
    B, HS, T, S, bs, NV, NS, seed = case
    v, s = random_inputs(B, HS, T, S, NV, NS, seed)
    want = vertical_slash_to_blocks(v, s, T, S, bs)
    got = vertical_slash_to_blocks(v, s, T, S, bs, extra="triton")
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


@pytest.mark.parametrize("case", EXTRA_CASES)
def test_triton_extra_columns_equal_torch(case, request, interpret_verdicts):
    """The Triton compaction of the extra columns and the Triton block lists give the torch build's output bit for
    bit (interpreter)."""
    assert_verdict(interpret_verdicts, request)


def sorted_inputs(B, HS, T, S, NV, NS, seed):
    """`random_inputs` with the columns as `kernels/top_set` returns them: per row NV distinct live positions,
    ascending (NV <= S)."""
    _, s = random_inputs(B, HS, T, S, NV, NS, seed)
    g = torch.Generator().manual_seed(seed + 100)
    v = torch.stack([torch.randperm(S, generator=g)[:NV].sort().values for _ in range(B * HS)]).view(B, HS, NV)
    return v, s


# the cases of EXTRA_CASES whose NV fits in S
SORTED_CASES = [pytest.param(*c.values, id=f"sorted-{c.id}") for c in EXTRA_CASES if c.values[0][5] <= c.values[0][3]]


def _check_v_sorted(case, extra="triton"):
    B, HS, T, S, bs, NV, NS, seed = case
    v, s = sorted_inputs(B, HS, T, S, NV, NS, seed)
    want = vertical_slash_to_blocks(v, s, T, S, bs)
    got = vertical_slash_to_blocks(v, s, T, S, bs, extra=extra, v_sorted=True)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


@pytest.mark.parametrize("case", SORTED_CASES)
def test_v_sorted_torch_equals_unsorted_path(case):
    """`v_sorted=True` (no sort or liveness checks; top_set's columns) gives the general path's output bit for bit
    on such columns (torch build)."""
    _check_v_sorted(case, extra="torch")


@pytest.mark.parametrize("case", SORTED_CASES)
def test_v_sorted_triton_equals_unsorted_path(case, request, interpret_verdicts):
    """The same with the Triton compaction, which then derives each column's causal key and key block itself
    (interpreter)."""
    assert_verdict(interpret_verdicts, request)


def _extra_with(switch: str, value: bool):
    """`_check_extra_triton` with a module switch of vertical_slash/triton.py set to `value`."""
    def check(case):
        from sparsebench.kernels.vertical_slash import triton as vs_triton

        with switched(vs_triton, **{switch: value}):
            _check_extra_triton(case)
    return check


# `extra="triton"` with the block lists by torch (`_LIST_KERNEL` off; the Triton list kernel is the default since
# session 7, so EXTRA_CASES test it), and with the slash maps and their sorted slots by torch (`_MAP_KERNEL` off; the
# Triton map kernel is the default since session 8): the same four outputs bit for bit
LIST_CASES = [pytest.param(*c.values, id=f"torchlists-{c.id}") for c in EXTRA_CASES]
TORCH_MAP_CASES = [pytest.param(*c.values, id=f"torchmaps-{c.id}") for c in EXTRA_CASES]
_check_torch_lists = _extra_with("_LIST_KERNEL", False)
_check_torch_maps = _extra_with("_MAP_KERNEL", False)


@pytest.mark.parametrize("case", TORCH_MAP_CASES)
def test_triton_extra_with_torch_maps_equal_torch(case, request, interpret_verdicts):
    """The torch slash maps beside the Triton lists and extra-column compaction give the torch build's output bit for
    bit (the map kernel, the default, is what EXTRA_CASES test)."""
    assert_verdict(interpret_verdicts, request)


@pytest.mark.parametrize("case", LIST_CASES)
def test_triton_extra_with_torch_lists_equal_torch(case, request, interpret_verdicts):
    """The torch lists beside the Triton extra-column compaction give the torch build's output bit for bit."""
    assert_verdict(interpret_verdicts, request)


def test_bad_extra_mode_raises():
    with pytest.raises(ValueError, match="extra='cuda'"):
        vertical_slash_to_blocks(torch.zeros(1, 1, 1), torch.zeros(1, 1, 1), 8, 8, 4, extra="cuda")


if __name__ == "__main__" and sys.argv[1:] == ["--interpret"]:
    report_verdicts(_check_extra_triton, EXTRA_CASES)  # interpreter worker for `interpret_verdicts`
    report_verdicts(_check_torch_lists, LIST_CASES)
    report_verdicts(_check_torch_maps, TORCH_MAP_CASES)
    report_verdicts(_check_v_sorted, SORTED_CASES)


# ---------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("map_kernel", [False, True], ids=["torch_maps", "map_kernel"])
def test_gpu_build_equals_cpu_and_does_not_sync(map_kernel, monkeypatch):
    from sparsebench.kernels.vertical_slash import triton as vs_triton

    monkeypatch.setattr(vs_triton, "_MAP_KERNEL", map_kernel)
    v, s = random_inputs(1, 8, 2000, 2100, 300, 40, 11)
    want = vertical_slash_to_blocks(v, s, 2000, 2100)
    vc, sc = v.cuda(), s.cuda()
    for extra in ("torch", "triton"):
        vertical_slash_to_blocks(vc, sc, 2000, 2100, extra=extra)  # warm the allocator and kernels
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            got = vertical_slash_to_blocks(vc, sc, 2000, 2100, extra=extra)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        for a, b in zip(got, want):  # same entries in the same order
            assert torch.equal(a.cpu(), b), extra


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("T,S,H,HKV,D,NV,NS", [(1000, 1000, 8, 2, 128, 200, 30), (777, 900, 4, 1, 64, 64, 100),
                                               (2048, 2048, 4, 1, 256, 500, 40)])
def test_triton_equals_naive(T, S, H, HKV, D, NV, NS):
    from sparsebench.kernels.vertical_slash import vertical_slash_attn_triton

    torch.manual_seed(0)
    q = torch.randn(1, H, T, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, HKV, S, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(1, HKV, S, D, device="cuda", dtype=torch.bfloat16)
    v_idx, s_idx = random_inputs(1, H, T, S, NV, NS, 3)
    v_idx, s_idx = v_idx.cuda(), s_idx.cuda()
    ref, ref_lse = vertical_slash_attn_naive(q, k, v, v_idx, s_idx, return_lse=True)
    out, lse = vertical_slash_attn_triton(q, k, v, v_idx, s_idx, return_lse=True)
    err = ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
    assert err < 2e-2, err
    fin = torch.isfinite(ref_lse)
    assert torch.equal(fin, torch.isfinite(lse))
    assert (lse[fin] - ref_lse[fin]).abs().max().item() < 2e-2
