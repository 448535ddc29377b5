"""Profile where the time of one block-sparse attention call goes: the GPU kernel, or the host that launches it.

For each case (T, H, HKV, D, executed density) it builds the same random kv_head selection as
`scripts/bench_kernels.py` and, for FlexAttention (`flex_execute`) and the project's Triton kernel, reports

    bench_ms    do_bench median of the plain call (what bench_kernels.py reports)
    graph_ms    do_bench median of a CUDA-graph replay of the same call (host launch cost removed)
    host_ms     host time per call when calls are queued back to back without synchronising
    kernel_ms   device time per call of the GPU kernels, from torch.profiler (sum over the call's kernels)
    programs    Triton only: programs in the launch grid (one wave fits about 132 on an H200 at 1 CTA/SM)

and the same for Triton variants that change only the launch shape: `triton_nopack` (the kv_head lists expanded to
query_head lists, so each query head gets its own programs and GQA packing is off), `triton_cfg=<BM>x<BN>w<W>s<S>`
(other tile candidates), `triton_notma` (pointer loads instead of host-side TMA descriptors, which the launcher
encodes at every call), `triton_notrim` (the last listed block's key sub-tiles wholly after the tile's last query
kept in the loop's trip count, as before trimming became the default), `triton_jit` (the wrapper without its launch
plans: every call through triton's argument binding and specialisation, as before the plans) and `triton_launch_only`
(the bare `_launch` with preallocated outputs: the wrapper's cost is the difference). `--host-breakdown` prints a
cProfile of the host path of one triton and one flex call. With a kernel time well below bench_ms, the call is
host-bound; with kernel_ms close to bench_ms, the kernel itself is the limit, and the variants show whether
parallelism or tiling moves it.

    python scripts/profile_kernels.py --out-dir results        # GPU; the cases of the missed D=256 target
    python scripts/profile_kernels.py --cases 16K:4:1:256:0.02,16K:32:8:128:0.02
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_kernels import bench_ms, cuda_graph, random_selection  # noqa: E402  (one selection recipe for both scripts)

from sparsebench.executors import flex_execute, to_flex_block_mask  # noqa: E402

DEFAULT_CASES = "16K:4:1:256:0.02,16K:4:1:256:0.05,32K:4:1:256:0.02,16K:32:8:128:0.02"


def parse_cases(text: str):
    out = []
    for c in filter(None, (x.strip() for x in text.split(","))):
        t, h, hkv, d, dens = c.split(":")
        t = t.upper()
        out.append((int(t[:-1]) * 1024 if t.endswith("K") else int(t), int(h), int(hkv), int(d), float(dens)))
    return out


def _median_ms(fn):
    return bench_ms(fn, torch.device("cuda"), warmup=50, rep=200)


def _host_ms(fn, n=200):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    host = (time.perf_counter() - t0) * 1e3 / n
    torch.cuda.synchronize()
    return host


def _kernel_ms(fn, n=50):
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
    total, names = 0.0, {}
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            us = ev.device_time if hasattr(ev, "device_time") else ev.cuda_time
            total += us
            names[ev.name] = names.get(ev.name, 0.0) + us
    top = sorted(names.items(), key=lambda kv: -kv[1])[:3]
    return total / n / 1e3, "; ".join(f"{k[:60]}={v / n:.1f}us" for k, v in top)


def triton_fns(q, k, v, sel):
    from sparsebench.kernels.block_sparse_attn import triton as bt

    H = q.shape[1]
    idx, cnt = sel.kv_indices.to(torch.int32).contiguous(), sel.kv_counts.to(torch.int32).contiguous()
    rep = H // idx.shape[1]
    idx_h = idx.repeat_interleave(rep, dim=1).contiguous()
    cnt_h = cnt.repeat_interleave(rep, dim=1).contiguous()
    B, _, T, D = q.shape
    out = torch.empty_like(q)
    lse = torch.empty(B, H, T, dtype=torch.float32, device=q.device)
    scale = D ** -0.5
    fns = {"triton": lambda: bt.block_sparse_attn_triton(q, k, v, idx, cnt, sel.block_q, sel.block_k)}
    fns["triton_nopack"] = lambda: bt.block_sparse_attn_triton(q, k, v, idx_h, cnt_h, sel.block_q, sel.block_k)

    def no_tma():
        bt._TMA = False
        try:
            return bt.block_sparse_attn_triton(q, k, v, idx, cnt, sel.block_q, sel.block_k)
        finally:
            bt._TMA = True
    fns["triton_notma"] = no_tma

    def no_trim():
        saved, bt._TRIM_LAST = bt._TRIM_LAST, False
        try:
            return bt.block_sparse_attn_triton(q, k, v, idx, cnt, sel.block_q, sel.block_k)
        finally:
            bt._TRIM_LAST = saved
    fns["triton_notrim"] = no_trim

    class _NoPlans(dict):
        def __setitem__(self, key, value):
            pass

    def jit_path():
        plans, bt._PLANS = bt._PLANS, _NoPlans()
        try:
            return bt.block_sparse_attn_triton(q, k, v, idx, cnt, sel.block_q, sel.block_k)
        finally:
            bt._PLANS = plans
    fns["triton_jit"] = jit_path
    cfg0 = bt._fit(bt._CANDIDATES[max(D, 64)][0], D, sel.block_q, sel.block_k, bt._pack(H, k.shape[1], idx.shape[1]))
    fns["triton_launch_only"] = lambda: bt._launch(q, k, v, out, lse, idx, cnt, None, None, sel.block_q, sel.block_k,
                                                   scale, 0, None, cfg=cfg0, interpret=False)
    for cand in bt._CANDIDATES[max(D, 64)][1:]:
        cfg = bt._fit(cand, D, sel.block_q, sel.block_k, bt._pack(H, k.shape[1], idx.shape[1]))
        name = "triton_cfg={}x{}w{}s{}".format(*cfg)

        def call(cfg=cfg):
            bt._launch(q, k, v, out, lse, idx, cnt, None, None, sel.block_q, sel.block_k, scale, 0, None, cfg=cfg,
                       interpret=False)
        fns.setdefault(name, call)
    grids = {}
    for name, hs in (("triton", idx.shape[1]), ("triton_nopack", H)):
        pack = bt._pack(H, k.shape[1], hs)
        meta = bt._meta(bt._fit(bt._CANDIDATES[max(D, 64)][0], D, sel.block_q, sel.block_k, pack), sel.block_q,
                        sel.block_k, pack)
        grids[name] = idx.shape[2] * meta["SUBQ"] * B * (H // pack)
    return fns, grids


def host_breakdown(fn, n=300, top=14) -> str:
    """cProfile of `n` queued calls: where the host time of one call goes, function by function."""
    import cProfile
    import io
    import pstats

    fn()
    torch.cuda.synchronize()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        fn()
    prof.disable()
    torch.cuda.synchronize()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    return buf.getvalue()


def host_steps(q, k, v, sel, n=2000) -> str:
    """Host time of each step of a planned triton call (`_fast_call`), timed alone over `n` repetitions."""
    from triton.backends.nvidia.driver import make_tensordesc_arg
    from triton.tools.tensor_descriptor import TensorDescriptor

    from sparsebench.kernels.block_sparse_attn import triton as bt

    idx, cnt = sel.kv_indices.to(torch.int32).contiguous(), sel.kv_counts.to(torch.int32).contiguous()
    bt.block_sparse_attn_triton(q, k, v, idx, cnt, sel.block_q, sel.block_k)
    plan = next(p for key, p in bt._PLANS.items() if key[0] == q.shape and key[-3] is False and key[-1])
    runner, template, tma, shape, dtype, _, kernel = plan
    B, HKV, S, D = k.shape
    flat, strides, block = tma if tma else ((B * HKV * S, D), (D, 1), [64, D])
    kd = TensorDescriptor(k.view(flat), flat, strides, block)
    meta = (getattr(kernel.metadata, "tensordesc_meta", None) or [None])[0]
    a = list(template)
    o = torch.empty_like(q)
    a[:bt._N_TENSOR_ARGS] = (q, k, v, kd, kd, o, o, idx, cnt, idx, cnt)
    steps = {
        "full planned call": lambda: bt.block_sparse_attn_triton(q, k, v, idx, cnt, sel.block_q, sel.block_k),
        "torch.empty(out)": lambda: torch.empty(shape, dtype=dtype, device=q.device),
        "k.view(flat)": lambda: k.view(flat),
        "TensorDescriptor(...)": lambda: TensorDescriptor(k.view(flat), flat, strides, block),
        f"make_tensordesc_arg (meta {'set' if meta else 'None'})": lambda: make_tensordesc_arg(kd, meta),
        "data_ptr alignment x5": lambda: bt._aligned(q, k, v, idx, cnt),
        "runner(*args) (launch)": lambda: runner(*a),
    }
    lines = []
    for name, fn in steps.items():
        for _ in range(50):
            fn()
        lines.append(f"  {name:<32} {_host_ms(fn, n) * 1e3:8.2f} us")
    return "\n".join(lines)


def profile_case(T, H, HKV, D, dens, dtype=torch.bfloat16, block=128, breakdown=False):
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(1, H, T, D, device=dev, dtype=dtype, generator=gen)
    k = torch.randn(1, HKV, T, D, device=dev, dtype=dtype, generator=gen)
    v = torch.randn(1, HKV, T, D, device=dev, dtype=dtype, generator=gen)
    sel = random_selection(T, H, HKV, dens, block, dev, gen)
    bm = to_flex_block_mask(sel)
    fns = {"flex": lambda: flex_execute(q, k, v, sel, block_mask=bm)}
    tfns, grids = triton_fns(q, k, v, sel)
    fns.update(tfns)
    if breakdown:
        print(f"--- host steps of a planned triton call, T={T} H={H} HKV={HKV} D={D} density={dens}")
        print(host_steps(q, k, v, sel))
        for name in ("triton", "flex"):
            print(f"--- host time of {name}, T={T} H={H} HKV={HKV} D={D} density={dens} (cProfile, 300 calls)")
            print(host_breakdown(fns[name]))
    rows = []
    for name, fn in fns.items():
        row = {"kernel": name, "seq_len": T, "heads": H, "kv_heads": HKV, "head_dim": D, "target_density": dens,
               "density": round(sel.density(), 4), "programs": grids.get(name)}
        try:
            row["bench_ms"] = _median_ms(fn)
            row["host_ms"] = _host_ms(fn)
            row["kernel_ms"], row["kernels"] = _kernel_ms(fn)
            try:
                row["graph_ms"] = _median_ms(cuda_graph(fn))
            except Exception as e:  # noqa: BLE001  (a call that cannot be captured still has its other numbers)
                row["graph_ms"], row["note"] = float("nan"), f"no graph: {type(e).__name__}"
        except Exception as e:  # noqa: BLE001
            row["note"] = f"{type(e).__name__}: {str(e)[:120]}"
        rows.append(row)
        torch.cuda.synchronize()
    return rows


def _qk_and_dense_ms(L, H, HKV, D):
    """Random bf16 q, k (seed 0) at length L, and cuDNN dense causal attention's median time on them (with v)."""
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(1, H, L, D, device=dev, dtype=torch.bfloat16, generator=gen)
    k = torch.randn(1, HKV, L, D, device=dev, dtype=torch.bfloat16, generator=gen)
    v = torch.randn(1, HKV, L, D, device=dev, dtype=torch.bfloat16, generator=gen)

    def dense():
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
            torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    return q, k, _median_ms(dense)


def antidiag_candidates(seq_lens, strides=(8, 16), H=32, HKV=8, D=128) -> list[dict]:
    """XAttention's scoring kernel at each tile candidate, as a share of cuDNN dense causal attention on the same
    inputs (what the estimation target is stated in)."""
    from sparsebench.kernels.antidiag_score import triton as ad

    rows = []
    for L in seq_lens:
        q, k, dense_ms = _qk_and_dense_ms(L, H, HKV, D)
        # around the default (128, 256, 8, 3), flattened, whole tiles unmasked: its neighbours (stages, a 128-wide
        # head-dim slice as a 5th entry), and the default tiles without the flattening and/or the unmasked split
        base = (128, 256, 8, 3)
        runs = [(True, True, True, c) for c in (base, (128, 256, 8, 4), (128, 256, 8, 2, 128))]
        runs += [(True, True, False, base), (True, False, True, base), (True, False, False, base)]
        saved = ad._TMA, ad._FLATTEN, ad._SPLIT
        for st in strides:
            for tma, fl, sp, cand in runs:
                bm, bn, w, s = cand[:4]
                bd = cand[4] if len(cand) > 4 else None
                ad._TMA, ad._FLATTEN, ad._SPLIT = tma, fl, sp
                what = f"stride={st} tma={tma} flat={fl} split={sp} {cand}"
                try:
                    ms = _median_ms(lambda: ad.antidiag_block_scores_triton(q, k, st, 128, D ** -0.5, block_m=bm,
                                                                            block_n=bn, num_warps=w, num_stages=s,
                                                                            block_d=bd))
                except Exception as e:  # noqa: BLE001
                    print(f"antidiag L={L} {what}: {type(e).__name__}: {str(e)[:80]}")
                    continue
                finally:
                    ad._TMA, ad._FLATTEN, ad._SPLIT = saved
                tag = "" if tma else "_notma"
                tag += f"_bd{bd}" if bd else ""
                tag += "_flat" if fl else ""
                tag += "" if sp else "_nosplit"
                rows.append({"kernel": f"antidiag_s{st}_{bm}x{bn}w{w}s{s}{tag}", "seq_len": L, "heads": H,
                             "kv_heads": HKV, "head_dim": D, "bench_ms": ms, "dense_ms": dense_ms,
                             "share_of_dense": ms / dense_ms})
                print(f"antidiag L={L} {what}: {ms:.3f} ms = {ms / dense_ms:.4f} x dense ({dense_ms:.3f} ms)")
    return rows


def lastq_candidates(seq_lens, last_qs=(64, 128), H=32, HKV=8, D=128) -> list[dict]:
    """The last-query vertical/slash scorer (`kernels/last_q_scores`, MInference's and FlexPrefill's estimation
    core): the per-tile kernels unpacked (`bn<BN>w<W>_nopack`) and the row-block kernels (`rows_bn<BN>w<W>t<TPP>`:
    TPP key tiles a program), next to the torch path
    `methods.minference.vs_scores`; and
    PBS's key importance (`imp128_*`, 128 queries, n_keys = L - 256) both ways. Each as a share of cuDNN dense
    causal attention on the same inputs."""
    from sparsebench.kernels.last_q_scores import last_q_importance_triton, last_q_scores_triton
    from sparsebench.methods.minference import vs_scores

    rows_cands = ([(f"rows_bn64w{w}t{t}", (64, w, True, t)) for w in (8, 4) for t in (8, 16, 4)]
                  + [("rows_bn128w8t8", (128, 8, True, 8))])
    # the row-block kernels at 128-key tiles with 4 warps, the default before session 5 at 128 queries
    rows_cands += [("rows_bn128w4t16", (128, 4, True, 16))]
    tile_cands = [(f"bn{bn}w4_nopack", (bn, 4, False, None)) for bn in (64, 128)]
    rows = []

    def record(kernel, L, fn, dense_ms, label):
        try:
            ms = _median_ms(fn)
        except Exception as e:  # noqa: BLE001
            print(f"{label}: {type(e).__name__}: {str(e)[:80]}")
            return
        rows.append({"kernel": kernel, "seq_len": L, "heads": H, "kv_heads": HKV, "head_dim": D,
                     "bench_ms": ms, "dense_ms": dense_ms, "share_of_dense": ms / dense_ms})
        print(f"{label}: {ms:.3f} ms = {ms / dense_ms:.4f} x dense ({dense_ms:.3f} ms)")

    for L in seq_lens:
        q, k, dense_ms = _qk_and_dense_ms(L, H, HKV, D)
        for lq in last_qs:
            ql = q[:, :, L - lq:]
            record(f"lastq{lq}_torch", L, lambda: vs_scores(q, k, lq, D ** -0.5), dense_ms,  # noqa: B023
                   f"lastq L={L} last_q={lq} torch")
            for name, (bn, w, use_rows, tpp) in tile_cands + rows_cands:
                fn = (lambda bn=bn, w=w, use_rows=use_rows, tpp=tpp: last_q_scores_triton(
                    ql, k, D ** -0.5, block_n=bn, num_warps=w, pack_heads=False, rows=bool(use_rows),  # noqa: B023
                    tiles_per_program=tpp))
                record(f"lastq{lq}_{name}", L, fn, dense_ms, f"lastq L={L} last_q={lq} {name}")
        ql, n_keys = q[:, :, L - 128:], L - 256
        for name, (bn, w, use_rows, tpp) in [("bn128w4_nopack", (128, 4, False, None))] + rows_cands[:3]:
            fn = (lambda bn=bn, w=w, use_rows=use_rows, tpp=tpp: last_q_importance_triton(
                ql, k, D ** -0.5, n_keys, block_n=bn, num_warps=w, pack_heads=False, rows=use_rows,  # noqa: B023
                tiles_per_program=tpp))
            record(f"imp128_{name}", L, fn, dense_ms, f"importance L={L} {name}")
    return rows


def select_candidates(seq_lens, H=32, HKV=8, D=128, block=128, threshold=0.9) -> list[dict]:
    """XAttention's fused selection kernel (`kernels/antidiag_score/select.py`) over all NQ query-block rows of
    `[1, H, NQ, NK]` block scores at block 128, with its sort algorithm (`select_sort`) and with the sort-free
    bisection (`select_bisect`, `nonneg=True`), as a share of cuDNN dense causal attention (H query heads, HKV KV
    heads, head dim D). Realistic non-negative rows: a softmax over random logits on each row's causal blocks, 0
    beyond. Asserts that both algorithms give the same lists and counts."""
    from sparsebench.kernels.antidiag_score.select import select_blocks_triton

    rows = []
    for L in seq_lens:
        _, _, dense_ms = _qk_and_dense_ms(L, H, HKV, D)
        nq = nk = -(-L // block)
        gen = torch.Generator(device="cuda").manual_seed(0)
        logits = torch.randn(1, H, nq, nk, device="cuda", generator=gen) * 3
        causal = torch.arange(nk, device="cuda")[None, :] <= torch.arange(nq, device="cuda")[:, None]
        scores = torch.softmax(logits.masked_fill_(~causal, float("-inf")), -1)
        del logits
        outs = {}
        for name, nonneg in (("select_sort", False), ("select_bisect", True)):
            def fn(scores=scores, L=L, nonneg=nonneg):
                return select_blocks_triton(scores, threshold, L, L, block, nonneg=nonneg)
            outs[name] = fn()
            ms = _median_ms(fn)
            kept = outs[name][1].sum().item() / (H * causal.sum().item())
            rows.append({"kernel": name, "seq_len": L, "heads": H, "kv_heads": HKV, "head_dim": D, "nq": nq, "nk": nk,
                         "threshold": threshold, "kept_of_causal": kept, "bench_ms": ms, "dense_ms": dense_ms,
                         "share_of_dense": ms / dense_ms})
            print(f"select L={L} {name}: {ms:.3f} ms = {ms / dense_ms:.4f} x dense ({dense_ms:.3f} ms), "
                  f"{kept:.3f} of the causal blocks kept")
        (si, sc), (bi, bc) = outs["select_sort"], outs["select_bisect"]
        assert torch.equal(sc, bc) and torch.equal(si, bi), f"L={L}: the sort and bisection selections differ"
    return rows


def vs_exec_candidates(shapes) -> list[dict]:
    """Execution of MInference's vertical-slash selection (its default knobs, estimated on random bf16 q/k) by the
    triton kernel, with and without its extra columns, against the same kernel over the dense causal lists in two
    forms: shared by all heads (`causal_shared`: a KV group's query heads stacked into one program, each K/V tile
    loaded once for the group) and the same lists given per query head (`causal_per_head`: one program per query
    head, as every `query_head` selection runs), and against dense sdpa (cuDNN where it takes the shape). Shapes
    `T:H:HKV:D`. The per-head causal row isolates what `query_head` granularity costs at equal work."""
    from sparsebench.attention import AttnContext
    from sparsebench.kernels.block_sparse_attn.triton import block_sparse_attn_triton
    from sparsebench.methods import METHODS
    from sparsebench.selection import Selection

    rows = []
    for shape in shapes:
        T, H, HKV, D = (int(x) for x in shape.split(":"))
        dev = torch.device("cuda")
        gen = torch.Generator(device=dev).manual_seed(0)
        q, k, v = (torch.randn(1, n, T, D, device=dev, dtype=torch.bfloat16, generator=gen) for n in (H, HKV, HKV))
        scale = D ** -0.5
        sel = METHODS.get("minference")(pattern="vertical_slash").select(
            q, k, AttnContext(layer_idx=0, num_heads=H, num_kv_heads=HKV, head_dim=D, scale=scale))
        shared = Selection.causal(batch=1, q_len=T, k_len=T, num_heads=H, num_kv_heads=HKV, block_q=sel.block_q,
                                  block_k=sel.block_k, device=dev)
        per_head = Selection(shared.kv_indices.expand(1, H, -1, -1).contiguous(),
                             shared.kv_counts.expand(1, H, -1).contiguous(), shared.block_q, shared.block_k, T, T, H,
                             HKV, "query_head")

        def run(s, extra=True):
            return block_sparse_attn_triton(q, k, v, s.kv_indices, s.kv_counts, s.block_q, s.block_k, scale=scale,
                                            sink=s.sink, window=s.window,
                                            extra_cols=s.extra_cols if extra else None,
                                            extra_counts=s.extra_counts if extra else None)

        def sdpa():
            try:
                with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
                    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True,
                                                                            scale=scale)
            except RuntimeError:
                return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True,
                                                                        scale=scale)
        dense_ms = _median_ms(sdpa)
        extra_share = (sel.extra_counts.float().mean().item() / T) if sel.extra_counts is not None else 0.0
        for name, fn in (("vs", lambda: run(sel)), ("vs_blocks_only", lambda: run(sel, extra=False)),
                         ("causal_shared", lambda: run(shared)), ("causal_per_head", lambda: run(per_head))):
            ms = _median_ms(fn)
            rows.append({"kernel": name, "seq_len": T, "heads": H, "kv_heads": HKV, "head_dim": D,
                         "vs_density": sel.density(), "vs_extra_cols_share": extra_share, "bench_ms": ms,
                         "dense_ms": dense_ms, "share_of_dense": ms / dense_ms})
            print(f"vs-exec T={T} H={H} HKV={HKV} D={D} {name}: {ms:.3f} ms = {ms / dense_ms:.3f} x sdpa dense "
                  f"({dense_ms:.3f} ms); vs density {sel.density():.3f}")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=DEFAULT_CASES, help="T:H:HKV:D:density,... (default: %(default)s); an empty "
                    "string runs only the sweeps asked for")
    ap.add_argument("--out-dir", default=None, help="write tables/profile_kernels.csv under this folder")
    ap.add_argument("--host-breakdown", action="store_true",
                    help="also print a cProfile of the host time of triton and flex calls (first case)")
    ap.add_argument("--antidiag", default=None, metavar="L,L",
                    help="also time XAttention's scoring kernel's tile candidates around its default (TMA; "
                         "flattened loop too) at these lengths (strides 8, 16)")
    ap.add_argument("--lastq", default=None, metavar="L,L",
                    help="also time the last-query vertical/slash scorer's tile options at these lengths")
    ap.add_argument("--select", default=None, metavar="L,L",
                    help="also time XAttention's selection kernel, sort vs bisection, at these lengths (block 128)")
    ap.add_argument("--vs-exec", default=None, metavar="T:H:HKV:D,...",
                    help="also time the execution of MInference's vertical-slash selection against causal lists "
                         "shared by a KV group and given per query head, at these shapes")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("profile_kernels.py needs a CUDA GPU", file=sys.stderr)
        return 2
    import pandas as pd

    rows = []
    for i, case in enumerate(parse_cases(args.cases)):
        rows += profile_case(*case, breakdown=args.host_breakdown and i == 0)
    # the kernel sweeps: their own tables beside profile_kernels.csv
    for lengths, sweep, table in ((args.antidiag, antidiag_candidates, "profile_antidiag"),
                                  (args.lastq, lastq_candidates, "profile_lastq"),
                                  (args.select, select_candidates, "profile_select"),
                                  (args.vs_exec, vs_exec_candidates, "profile_vs_exec")):
        if not lengths:
            continue
        sweep_rows = sweep([x if sweep is vs_exec_candidates else int(x) for x in lengths.split(",")])
        if args.out_dir and sweep_rows:
            p = Path(args.out_dir) / "tables" / f"{table}.csv"
            p.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(sweep_rows).assign(device=torch.cuda.get_device_name()).to_csv(p, index=False)
    if not rows:
        return 0
    df = pd.DataFrame(rows)
    flex = df[df.kernel == "flex"].set_index(["seq_len", "heads", "head_dim", "target_density"])["bench_ms"]
    df["flex_over"] = [flex.get((r.seq_len, r.heads, r.head_dim, r.target_density), float("nan")) / r.bench_ms
                       for r in df.itertuples()]
    df["device"] = torch.cuda.get_device_name()
    with pd.option_context("display.width", 250, "display.max_columns", 20, "display.max_colwidth", 80):
        print(df.drop(columns=["device"]).to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    if args.out_dir:
        p = Path(args.out_dir) / "tables" / "profile_kernels.csv"
        p.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(p, index=False)
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
