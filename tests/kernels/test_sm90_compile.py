"""Every Triton kernel compiled for Hopper (sm_90) on the CPU, through the real launch wrappers where they run here.

The interpreter tests check the kernels' arithmetic but not that they build for a GPU: a kernel can pass them and
still fail to compile (a constexpr seen as a runtime value, a tile past the shared-memory limit, a construct the
GPU backend rejects). triton ships the CUDA backend and `ptxas`, so the compile step needs no GPU. Launches are
intercepted: `JITFunction.run` compiles for sm_90 with the launch's own arguments instead of running. The TMA
variants, which the wrappers only choose on a CUDA device, are built from the wrappers' argument lists by hand.
"""
from __future__ import annotations

import os

import pytest
import torch

triton = pytest.importorskip("triton")

# H100 / H200: 227 KB of shared memory per block
SM90_SMEM = 232448


def _compile(fn, args, kwargs):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, spec, opts = binder(*args, **kwargs, debug=False, instrumentation_mode="")
    options, sig, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, opts)
    return triton.compile(ASTSource(fn, sig, constexprs, attrs), target=target, options=options.__dict__)


@pytest.fixture
def compiled(monkeypatch):
    """Launches inside the test compile for sm_90 instead of running; the compiled kernels are collected."""
    from triton.runtime.jit import JITFunction

    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the compile check needs the compiled mode")
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler.compiler import make_backend

        make_backend(GPUTarget("cuda", 90, 32))
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"triton's CUDA backend is not available: {e}")
    out = []

    def run(self, *args, grid, warmup, **kwargs):
        out.append((self.fn.__name__, _compile(self, args, kwargs)))

    monkeypatch.setattr(JITFunction, "run", run)
    return out


def _check(kernels, at_least=1):
    assert len(kernels) >= at_least
    for name, k in kernels:
        assert k.metadata.shared <= SM90_SMEM, f"{name}: {k.metadata.shared} B of shared memory"
        assert k.asm.get("ptx"), name


@pytest.mark.parametrize("D,trim", [(128, True), (128, False), (256, True), (256, False)])
def test_block_sparse_attn_tma(D, trim, monkeypatch):
    """The forward kernel with K/V by TMA (the H200 default), at its default tiles, with and without trimming."""
    from sparsebench.kernels.block_sparse_attn import triton as bt
    from triton.tools.tensor_descriptor import TensorDescriptor

    monkeypatch.setattr(bt, "_TRIM_LAST", trim)
    H, HKV, T = (4, 1, 2048) if D == 256 else (8, 2, 2048)
    q = torch.empty(1, H, T, D, dtype=torch.bfloat16)
    k, v = torch.empty(1, HKV, T, D, dtype=torch.bfloat16), torch.empty(1, HKV, T, D, dtype=torch.bfloat16)
    idx, cnt = torch.zeros(1, HKV, T // 128, 4, dtype=torch.int32), torch.zeros(1, HKV, T // 128, dtype=torch.int32)
    pack = bt._pack(H, HKV, HKV)
    cfg = bt._fit(bt._CANDIDATES[D][0], D, 128, 128, pack)
    _, pos, const, options = bt._launch_args(q, k, v, torch.empty_like(q), None, idx, cnt, None, None, 128, 128,
                                             D ** -0.5, 0, None, cfg=cfg, interpret=False)
    block = [const["BLOCK_N"], D]
    pos = list(pos)
    pos[3] = TensorDescriptor.from_tensor(k.view(-1, D), block)
    pos[4] = TensorDescriptor.from_tensor(v.view(-1, D), block)
    const["USE_TMA"] = True
    _check([("bsa", _compile(bt._kernel(False), pos, {**const, **options}))])


def test_block_sparse_attn_pointer_loads_and_extra_columns(compiled, monkeypatch):
    """The wrapper's own launch on a non-TMA layout (CPU tensors), with extra columns and a window."""
    from sparsebench.kernels.block_sparse_attn import triton as bt

    q = torch.empty(1, 8, 1000, 128, dtype=torch.float16)
    k = torch.empty(1, 2, 1000, 128, dtype=torch.float16)
    idx, cnt = torch.zeros(1, 8, 8, 3, dtype=torch.int32), torch.ones(1, 8, 8, dtype=torch.int32)
    cols, ccnt = torch.zeros(1, 8, 8, 5, dtype=torch.int32), torch.ones(1, 8, 8, dtype=torch.int32)
    monkeypatch.setattr(bt, "_TUNED", {})  # nothing launched: keep the module's tuned configs untouched
    bt.block_sparse_attn_triton(q, k, k, idx, cnt, 128, 128, extra_cols=cols, extra_counts=ccnt, return_lse=True)
    bt.block_sparse_attn_triton(q, k, k, idx[:, :1], cnt[:, :1], 128, 128, window=256, sink=4)
    _check(compiled, 2)


@pytest.mark.parametrize("stride,flatten,block_d,split", [(8, True, None, True), (16, True, None, True),
                                                          (8, False, None, True), (8, True, None, False),
                                                          (16, False, 128, True)])
def test_antidiag_score_tma(stride, flatten, block_d, split, monkeypatch):
    """XAttention's scorer with Q/K by TMA at its per-stride default tiles (flattened loop, unmasked whole tiles),
    and without either, and with the wide head-dim slice."""
    from sparsebench.kernels.antidiag_score import triton as ad
    from triton.tools.tensor_descriptor import TensorDescriptor

    B, H, HKV, T, D = 1, 8, 2, 4096, 128
    bm, bn, w, s = ad._TMA_DEFAULTS[stride]
    bd = block_d or ad._head_slice(D)
    s = ad._fit_stages(bm, bn, bd, 2, s)  # as the wrapper does when the stages are left to it
    q = torch.empty(B, H, T, D, dtype=torch.bfloat16)
    k = torch.empty(B, HKV, T, D, dtype=torch.bfloat16)
    qd = TensorDescriptor.from_tensor(q.view(-1, stride * D), [bm, bd])
    kd = TensorDescriptor.from_tensor(k.view(-1, stride * D), [bn, bd])
    out, cs, mu = torch.empty(1, 1, 1, 1), torch.empty(1, 1, 1), torch.empty(1, 1, 1)
    R = 128 // stride
    args = (q, k, qd, kd, out, cs, mu, *q.stride()[:3], *k.stride()[:3], 1, 1, 1, 1, 1, 1, 1,
            T, T, H, H // HKV, 0, T // stride, T // stride, T // 128, T // 128, 0, 0.1)
    kw = dict(STRIDE=stride, D=D, BD=bd, R=R, BLOCK_M=bm, BLOCK_N=bn, MAX_TILES=0, INTERPRET=False, PREC="tf32",
              USE_TMA=True, FLATTEN=flatten, SPLIT=split, num_warps=w, num_stages=s)
    _check([("antidiag", _compile(ad._kernel(False), args, kw))])


def test_antidiag_score_pointer_loads(compiled):
    from sparsebench.kernels.antidiag_score import antidiag_block_scores_triton

    q = torch.empty(1, 4, 1000, 256, dtype=torch.bfloat16)
    k = torch.empty(1, 1, 1000, 256, dtype=torch.bfloat16)
    antidiag_block_scores_triton(q, k, 8, 128, 0.01)
    _check(compiled)


@pytest.mark.parametrize("L,D,pack", [(64, 128, True), (128, 128, True), (64, 256, True), (64, 128, False),
                                      (64, 128, "rows"), (128, 128, "rows"), (64, 256, "rows")])
def test_last_q_scores(L, D, pack, compiled):
    from sparsebench.kernels.last_q_scores import triton as lq

    q = torch.zeros(1, 8, L, D, dtype=torch.bfloat16)
    k = torch.zeros(1, 2, 4096, D, dtype=torch.bfloat16)
    kw = ({"rows": True} if pack == "rows"
          else {"pack_heads": pack, "rows": False})
    lq.last_q_scores_triton(q, k, D ** -0.5, **kw)
    _check(compiled, 2)


def test_last_q_stats_persist(compiled, monkeypatch):
    """The row-block stats pass as resident programs (`PERSIST`, FlexPrefill's 32K shapes, K's address from a table)
    within its register cap, without spills."""
    from sparsebench.kernels.last_q_scores import triton as lq

    monkeypatch.setattr(lq, "_STATS_PERSIST_PROGRAMS", 264)
    q = torch.zeros(1, 32, 128, 128, dtype=torch.bfloat16)
    k = torch.zeros(1, 8, 32768, 128, dtype=torch.bfloat16)
    lq.last_q_scores_stacked_triton(q, k, 1.0, 128, k_table=(torch.zeros(2, dtype=torch.int64), 1))
    assert compiled[0][0] == "_lastq_stats_rows"
    use = _ptxas_usage(compiled[0][1])
    assert use["spill_stores"] == use["spill_loads"] == 0 and use["registers"] <= lq._STATS_PERSIST_MAXNREG, use


@pytest.mark.parametrize("importance", [False, True])
def test_last_q_fused_row_stats(importance, compiled, monkeypatch):
    """The row-block scores kernel reducing pass 1's partials itself (`_FUSED_ROW_STATS` forced on; by default it
    depends on the shape)."""
    from sparsebench.kernels.last_q_scores import triton as lq

    monkeypatch.setattr(lq, "_FUSED_ROW_STATS", True)
    q = torch.zeros(1, 8, 64, 128, dtype=torch.bfloat16)
    k = torch.zeros(1, 2, 4096, 128, dtype=torch.bfloat16)
    if importance:
        lq.last_q_importance_triton(q, k, 128 ** -0.5, rows=True)
    else:
        lq.last_q_scores_triton(q, k, 128 ** -0.5, rows=True)
    _check(compiled, 2)


@pytest.mark.parametrize("rows", [False, True])
def test_last_q_importance(rows, compiled):
    from sparsebench.kernels.last_q_scores import triton as lq

    q = torch.zeros(1, 8, 128, 128, dtype=torch.bfloat16)
    k = torch.zeros(1, 2, 4096, 128, dtype=torch.bfloat16)
    lq.last_q_importance_triton(q, k, 128 ** -0.5, n_keys=4000, rows=rows)
    _check(compiled, 2)


@pytest.mark.parametrize("v_sorted", [False, True], ids=["columns", "sorted_columns"])
@pytest.mark.parametrize("map_kernel", [False, True], ids=["torch_maps", "map_kernel"])
@pytest.mark.parametrize("T,S", [(2000, 2100), (2048, 2048)])
def test_vertical_slash_extra_columns(T, S, map_kernel, v_sorted, compiled, monkeypatch):
    """The list, map and extra-column kernels (the map kernel only with `_MAP_KERNEL` on, the default; the
    compaction also in its `v_sorted` form, MInference's with top_set)."""
    from sparsebench.kernels.vertical_slash import triton as vs_triton
    from sparsebench.kernels.vertical_slash import vertical_slash_to_blocks

    monkeypatch.setattr(vs_triton, "_MAP_KERNEL", map_kernel)
    v = torch.randperm(S)[:4 * 300].view(1, 4, 300).sort(-1).values
    s = torch.randint(0, 200, (1, 4, 40))
    vertical_slash_to_blocks(v, s, T, S, 64, extra="triton", v_sorted=v_sorted)
    _check(compiled)


def test_flex_blocks(compiled):
    """kernels/flex_blocks at FlexPrefill's 128K shape (nb = 1024 key blocks, 32 heads): the rank and list kernels,
    without spills."""
    from sparsebench.kernels.flex_blocks import flex_blocks_triton

    nb = 1024
    flex_blocks_triton(torch.zeros(2, 1, 32, nb), torch.zeros(2, 1, 32, dtype=torch.long),
                       torch.zeros(1, 32, nb, nb, dtype=torch.bool), torch.zeros(1, 32, dtype=torch.bool))
    assert [n for n, _ in compiled] == ["_fb_keep", "_fb_lists"]
    _check(compiled, 2)
    for name, k in compiled:
        use = _ptxas_usage(k)
        assert use["spill_stores"] == use["spill_loads"] == 0, (name, use)


@pytest.mark.parametrize("D", [128, 256])
def test_flex_switch(D, compiled):
    """kernels/flex_switch at FlexPrefill's 64K shape (bf16, 128 last queries, 512 key blocks), without spills."""
    from sparsebench.kernels.flex_switch import flex_switch_triton

    flex_switch_triton(torch.zeros(1, 32, 128, D, dtype=torch.bfloat16), torch.zeros(1, 8, 512, D,
                                                                                    dtype=torch.bfloat16),
                       torch.zeros(1, 32, 512), 0.1)
    _check(compiled, 1)
    use = _ptxas_usage(compiled[0][1])
    assert use["spill_stores"] == use["spill_loads"] == 0, use


@pytest.mark.parametrize("nb,D", [(256, 128), (1024, 128), (128, 256)])
def test_block_scores(nb, D, compiled):
    """kernels/block_scores at FlexPrefill's 32K and 128K shapes (bf16, Llama-3.1-8B heads) and gemma3's head dim,
    without spills."""
    from sparsebench.kernels.block_scores import block_scores_triton

    block_scores_triton(torch.zeros(1, 32, nb, D, dtype=torch.bfloat16), torch.zeros(1, 8, nb, D, dtype=torch.bfloat16))
    _check(compiled, 1)
    use = _ptxas_usage(compiled[0][1])
    assert use["spill_stores"] == use["spill_loads"] == 0, use


@pytest.mark.parametrize("D", [128, 256])
def test_block_means(D, compiled):
    """kernels/block_means on bf16 queries (FlexPrefill's block 128, scaled), without spills."""
    from sparsebench.kernels.block_means import block_means_triton

    block_means_triton(torch.zeros(1, 32, 4096, D, dtype=torch.bfloat16), 128, 0.088)
    _check(compiled, 1)
    use = _ptxas_usage(compiled[0][1])
    assert use["spill_stores"] == use["spill_loads"] == 0, use


def _ptxas_usage(kernel) -> dict:
    """Registers per thread and spill bytes of a compiled kernel, from `ptxas -v` on its PTX for sm_90a (the
    compiled kernel's own counts come from the driver, which needs a GPU)."""
    import re
    import subprocess
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(kernel.asm["ptx"])
        log = subprocess.run([get_ptxas(90).path, "-v", "--gpu-name=sm_90a", src, "-o", os.path.join(d, "k.o")],
                             capture_output=True, text=True, check=True).stderr
    regs = re.search(r"Used (\d+) registers", log)
    stores = re.search(r"(\d+) bytes spill stores", log)
    loads = re.search(r"(\d+) bytes spill loads", log)
    assert regs and stores and loads, log
    return {"registers": int(regs[1]), "spill_stores": int(stores[1]), "spill_loads": int(loads[1])}


@pytest.mark.parametrize("NK", [64, 1024])
@pytest.mark.parametrize("nonneg", [False, True], ids=["sort", "bisect"])
def test_xattn_select(NK, nonneg, compiled):
    """Both selection algorithms; at NK=1024 (rows of 1024 blocks, 128K tokens at block 128, 4 warps) neither may
    spill (measured: sort 117 registers, bisection 72)."""
    from sparsebench.kernels.antidiag_score.select import select_blocks_triton

    scores = torch.rand(1, 4, NK, NK)
    select_blocks_triton(scores, 0.9, NK * 128, NK * 128, 128, nonneg=nonneg)
    _check(compiled)
    if NK == 1024:
        use = _ptxas_usage(compiled[0][1])
        assert use["spill_stores"] == use["spill_loads"] == 0, use
        assert use["registers"] <= 128, use  # 128 threads x 128 registers: 4 programs still fit an SM's 64K


@pytest.mark.parametrize("N", [256, 512, 1024, 4096])
def test_row_rank(N, compiled):
    """kernels/row_rank: both kernels at PBS's row widths (segments of 256 keys, 512-1024 key blocks) and the
    widest row."""
    from sparsebench.kernels.row_rank import desc_order_triton, mass_prefix_triton

    x = torch.zeros(64, N)
    desc_order_triton(x)
    mass_prefix_triton(x, 0.9)
    _check(compiled, 2)


def test_top_set(compiled):
    """kernels/top_set: the radix-select kernel at MInference's row length and widths, without spills."""
    from sparsebench.kernels.top_set import top_set_triton

    from sparsebench.kernels.top_set import top_set_pair_triton

    x = torch.zeros(32, 65536)
    top_set_triton(x, 1000, 30)
    top_set_triton(x, 6096, 100)
    top_set_pair_triton(x, 1000, 30, x, 6096, 100)
    _check(compiled, 2)


def test_cover(compiled):
    """kernels/cover: FlexPrefill's cover counts (rows of 64K) and global cover (512 x 512 block scores)."""
    from sparsebench.kernels.cover import cover_count_triton, cover_mask_triton

    cover_count_triton(torch.zeros(64, 65536), 0.95)
    cover_mask_triton(torch.zeros(32, 512 * 512), 0.95 * 512, 512)  # the same kernels FlexPrefill's paired call runs
    # three digit launches on the rows, the compaction, five on the candidates, each digit decided per row, and the
    # count; the same on the triangle, then the mask and its ties
    digits = ["_cover_hist", "_cover_decide"] * 3 + ["_cover_compact"] + ["_cover_hist", "_cover_decide"] * 5
    assert [n for n, _ in compiled] == digits + ["_cover_count"] + digits + ["_cover_mask", "_cover_ties"]
    _check(compiled, 37)
    for name, k in compiled:
        use = _ptxas_usage(k)
        assert use["spill_stores"] == use["spill_loads"] == 0, (name, use)


def test_cover_resident(compiled, monkeypatch):
    """kernels/cover's resident path (`RESIDENT` on) at FlexPrefill's 32K shapes, as its paired call runs it: counts
    of 64 rows of 32K scores and the global cover of 32 causal 256 x 256 block-score matrices (support 32896: a main
    tile of 32768 and a tail of 128) in one launch of 32 warps, within 64 registers a thread and without spills."""
    import sparsebench.kernels.cover.triton as CT

    monkeypatch.setattr(CT, "RESIDENT", True)
    CT.cover_pair_triton(torch.zeros(64, 32768), 0.95, torch.zeros(32, 256 * 256), 0.95 * 256, 256)
    assert [n for n, _ in compiled] == ["_cover_resident"]
    _check(compiled, 1)
    use = _ptxas_usage(compiled[0][1])
    assert use["spill_stores"] == use["spill_loads"] == 0, use
    # 1024 threads a program: at most 64 registers each (an SM's 64K)
    assert use["registers"] <= 64, use
