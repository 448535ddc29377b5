"""Kernel benchmark: dense attention baselines against the block-sparse executors, one run, same inputs and lists.

For each length T, head configuration (H, HKV, D) and target density, on B=1 bf16 causal prefill with 128x128
blocks, it times

    sdpa_cudnn            SDPA, cuDNN backend, dense causal (the baseline every speedup divides)
    sdpa_cudnn_expanded   the same with K/V expanded to H heads before timing (GQA configs only)
    sdpa_flash            SDPA, flash backend (FlashAttention-2 code), dense causal
    flex_dense            compiled FlexAttention over the causal block mask (full and partial blocks separated)
    flex_sparse           compiled FlexAttention over the selection (`sparsebench.executors.to_flex_block_mask`:
                          full/partial split, compute_q_blocks=False)
    triton_sparse         the project's kernel `block_sparse_attn_triton` over the same lists

and the index build each sparse executor does from a `Selection` (`index_ms`: `to_flex_block_mask` for flex; the
int32/contiguous preparation `block_sparse_attn_triton` does, which is all the triton executor adds).

Selections: granularity kv_head; per KV head, the diagonal block of every query block plus a uniformly random set of
strictly-below-diagonal blocks whose size hits the target executed density (`Selection.density()`: executed pairs
/ causal pairs, a diagonal block counting only its causal part). Targets at or below the diagonal-only floor of a
length are skipped. The dense SDPA baseline with `enable_gqa=True` is tried first; where a backend refuses it, K/V
are expanded before timing and the row's `note` says so. The speedup baseline is the faster of the two cuDNN forms.
(On torch 2.11 + cuDNN 9.19, H200, both cuDNN and flash take `enable_gqa=True` natively: the profiler shows the one
attention kernel and no K/V copy, and the time equals the pre-expanded call within 1%.)

Timing: `triton.testing.do_bench` (median), after a warm-up call of every kernel (compile, autotune, caches); on a
CPU (`--smoke` without a GPU) a perf_counter median. TFLOP/s count 4*D FLOPs per executed (query, key) pair and
query head (causal pairs T(T+1)/2 at density 1).

Outputs, under --out-dir (default results): tables/bench_kernels.csv and .parquet (tidy rows: kernel, seq_len,
heads, kv_heads, head_dim, block, target_density, density, metric, value, status, note, baseline, device, torch,
triton, timestamp; metrics ms, tflops, speedup_vs_cudnn, speedup_x_density, index_ms, rel_err, and graph_ms: the
sparse kernels' call replayed from a CUDA graph, i.e. without host launch cost), and
figures/bench_kernels.png (speedup over cuDNN dense vs executed density, one panel per (head config, T)).

    python scripts/bench_kernels.py                       # the full grid (GPU; about 4-6 minutes on an H200)
    python scripts/bench_kernels.py --quick               # 8K and 32K, densities 1 / 0.1, both head configs
    python scripts/bench_kernels.py --smoke --out-dir /tmp/b   # T=512 plumbing check; runs on a CPU
"""
from __future__ import annotations

import argparse
import datetime as _dt
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from sparsebench.executors import flex_execute, to_flex_block_mask
from sparsebench.selection import Selection, causal_pairs

DENSE = ("sdpa_cudnn", "sdpa_cudnn_expanded", "sdpa_flash", "flex_dense")
SPARSE = ("flex_sparse", "triton_sparse")
KERNELS = DENSE + SPARSE
GPU_ONLY = ("sdpa_cudnn", "sdpa_cudnn_expanded", "sdpa_flash", "triton_sparse")
COLUMNS = ["kernel", "seq_len", "heads", "kv_heads", "head_dim", "block", "target_density", "density", "metric",
           "value", "status", "note", "baseline", "device", "torch", "triton", "timestamp"]
STYLE = {  # grayscale-readable: marker, line style, gray level
    "flex_sparse": ("o", "-", "0.0"), "triton_sparse": ("s", "--", "0.35"),
    "sdpa_flash": ("^", "none", "0.45"), "flex_dense": ("v", "none", "0.2"),
    "sdpa_cudnn_expanded": ("D", "none", "0.6"),
}


def _lengths(text: str) -> list[int]:
    out = []
    for t in text.split(","):
        t = t.strip().upper()
        out.append(int(t[:-1]) * 1024 if t.endswith("K") else int(t))
    return out


def _configs(text: str) -> list[tuple[int, int, int]]:
    out = []
    for c in text.split(","):
        h, hkv, d = (int(x) for x in c.strip().split(":"))
        out.append((h, hkv, d))
    return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-lens", type=_lengths, default=_lengths("8K,16K,32K,64K,128K"),
                    help="comma-separated lengths (8192 or 8K)")
    ap.add_argument("--densities", type=lambda s: [float(x) for x in s.split(",")],
                    default=[1.0, 0.5, 0.25, 0.1, 0.05, 0.02], help="target executed densities")
    ap.add_argument("--configs", type=_configs, default=_configs("32:8:128,4:1:256"), help="H:HKV:D,...")
    ap.add_argument("--kernels", type=lambda s: s.split(","), default=list(KERNELS), help=",".join(KERNELS))
    ap.add_argument("--block", type=int, default=128, help="query and key block size")
    ap.add_argument("--quick", action="store_true", help="8K and 32K, densities 1 and 0.1")
    ap.add_argument("--smoke", action="store_true", help="T=512, H:HKV:D=4:2:64; runs on a CPU (no cuDNN/triton)")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    ap.add_argument("--warmup", type=float, default=100.0, help="do_bench warm-up, ms")
    ap.add_argument("--rep", type=float, default=300.0, help="do_bench measuring time, ms")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default="results")
    ap.add_argument("--no-figure", action="store_true")
    ap.add_argument("--no-graphs", action="store_true",
                    help="skip graph_ms (each sparse kernel also timed as a CUDA-graph replay: no host launch cost)")
    args = ap.parse_args(argv)
    if args.quick:
        args.seq_lens, args.densities = [8192, 32768], [1.0, 0.1]
    if args.smoke:
        args.seq_lens, args.densities, args.configs = [512], [1.0, 0.5], [(4, 2, 64)]
        args.warmup, args.rep = 5.0, 20.0
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    unknown = set(args.kernels) - set(KERNELS)
    if unknown:
        ap.error(f"unknown kernels {sorted(unknown)}; choose from {KERNELS}")
    if args.device.type != "cuda":
        args.kernels = [k for k in args.kernels if k not in GPU_ONLY]
    return args


# ---------------------------------------------------------------------------------------------- selections
def random_selection(T: int, H: int, HKV: int, density: float, block: int, device, gen) -> Selection:
    """kv_head lists: every diagonal block plus, per KV head, the number of random strictly-below-diagonal blocks
    that brings the executed density closest to `density`."""
    nq = -(-T // block)
    diag_sel = diagonal_selection(T, H, HKV, block, device)
    floor = diag_sel.density()
    qb = torch.arange(nq, device=device)
    below = qb[None, :] < qb[:, None]  # [NQ, NK]: key block strictly below the diagonal block (full blocks)
    n_below = int(below.sum())
    want = round((density - floor) * causal_pairs(T, T) / block**2)
    n = max(0, min(n_below, want))
    bm = torch.zeros(HKV, nq, nq, dtype=torch.bool, device=device)
    if n:
        scores = torch.rand(HKV, nq, nq, generator=gen, device=device).masked_fill(~below, -1.0)
        top = torch.topk(scores.flatten(1), n, dim=-1).indices
        bm.view(HKV, -1).scatter_(-1, top, True)
    bm[:, qb, qb] = True
    return Selection.from_block_mask(bm[None], block_q=block, block_k=block, q_len=T, k_len=T, num_heads=H,
                                     num_kv_heads=HKV, granularity="kv_head")


def diagonal_selection(T, H, HKV, block, device) -> Selection:
    nq = -(-T // block)
    idx = torch.arange(nq, device=device, dtype=torch.int32).view(1, 1, nq, 1).expand(1, HKV, nq, 1).contiguous()
    cnt = torch.ones(1, HKV, nq, dtype=torch.int32, device=device)
    return Selection(idx, cnt, block, block, T, T, H, HKV, "kv_head")


# ---------------------------------------------------------------------------------------------- timing
def bench_ms(fn, device, warmup: float, rep: float) -> float:
    """Median milliseconds of `fn()`, after one untimed call."""
    fn()
    if device.type == "cuda":
        from triton.testing import do_bench

        torch.cuda.synchronize()
        return float(do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))
    times = []
    t_end = time.perf_counter() + rep / 1e3
    while len(times) < 3 or (time.perf_counter() < t_end and len(times) < 50):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _sdpa(backend, q, k, v, gqa: bool):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    be = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION, "cpu": None}[backend]

    def run():
        if be is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        with sdpa_kernel(be):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)

    return run


def dense_fn(name, q, k, v, H, HKV):
    """(callable, note) for a dense kernel; GQA through enable_gqa where the backend takes it, else expanded K/V."""
    backend = {"sdpa_cudnn": "cudnn", "sdpa_cudnn_expanded": "cudnn", "sdpa_flash": "flash", "sdpa_cpu": "cpu"}[name]
    if name == "sdpa_cudnn_expanded" or H == HKV:
        if H == HKV:
            return _sdpa(backend, q, k, v, False), ""
        ke, ve = (x.repeat_interleave(H // HKV, dim=1) for x in (k, v))
        return _sdpa(backend, q, ke, ve, False), "K/V expanded to H heads before timing"
    fn = _sdpa(backend, q, k, v, True)
    try:
        fn()
        return fn, "enable_gqa=True"
    except RuntimeError as e:  # the backend refuses GQA: expand once, outside the timed region
        ke, ve = (x.repeat_interleave(H // HKV, dim=1) for x in (k, v))
        return _sdpa(backend, q, ke, ve, False), f"enable_gqa refused ({str(e).splitlines()[0][:80]}); K/V expanded"


def _rel_err(out, ref) -> float:
    return ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


# ---------------------------------------------------------------------------------------------- the grid
class Recorder:
    def __init__(self, prov):
        self.rows, self.prov = [], prov

    def add(self, kernel, cell, metric, value, status="ok", note="", target=1.0, density=1.0):
        self.rows.append({"kernel": kernel, **cell, "target_density": target, "density": density, "metric": metric,
                          "value": float(value), "status": status, "note": note, **self.prov})


def _time_kernel(rec, kernel, cell, fn, args, target, density, note="", err_ref=None):
    """Time `fn`, record ms (and the relative error against `err_ref`, if given); return ms or None."""
    try:
        out = fn()
        err = _rel_err(out, err_ref) if err_ref is not None else None
        del out
        ms = bench_ms(fn, args.device, args.warmup, args.rep)
    except torch.OutOfMemoryError as e:
        rec.add(kernel, cell, "ms", math.nan, "oom", str(e).splitlines()[0][:200], target, density)
        _free(args.device)
        return None
    except Exception as e:  # noqa: BLE001  (a failed kernel is a recorded cell, the grid goes on)
        rec.add(kernel, cell, "ms", math.nan, "error", f"{type(e).__name__}: {str(e).splitlines()[0][:200]}",
                target, density)
        _free(args.device)
        return None
    rec.add(kernel, cell, "ms", ms, note=note, target=target, density=density)
    if err is not None:
        rec.add(kernel, cell, "rel_err", err, note=note, target=target, density=density)
    return ms


def cuda_graph(fn):
    """A replay callable of `fn` captured in a CUDA graph (after one call on a side stream, as capture requires)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay


def _free(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()


def sparse_fns(kern, q, k, v, sel: Selection):
    """(index build, kernel call) of a sparse executor over `sel`: what the executor does from a `Selection`."""
    if kern == "flex_sparse":
        bm = to_flex_block_mask(sel)
        return (lambda: to_flex_block_mask(sel)), (lambda: flex_execute(q, k, v, sel, block_mask=bm))
    from sparsebench.kernels.block_sparse_attn import block_sparse_attn_triton

    def build():  # the preparation block_sparse_attn_triton does; the triton executor passes the lists as they are
        return sel.kv_indices.to(torch.int32).contiguous(), sel.kv_counts.to(torch.int32).contiguous()

    return build, lambda: block_sparse_attn_triton(q, k, v, sel.kv_indices, sel.kv_counts, sel.block_q, sel.block_k)


def run_dense(rec, args, cell, q, k, v, bar):
    """Time the dense kernels; return ({kernel: ms}, the first dense output, the reference for rel_err)."""
    T, H, HKV, D, block = (cell[n] for n in ("seq_len", "heads", "kv_heads", "head_dim", "block"))
    times, ref = {}, None
    dense = [n for n in ("sdpa_cudnn", "sdpa_cudnn_expanded", "sdpa_flash") if n in args.kernels]
    if args.device.type != "cuda":
        dense = ["sdpa_cpu"]
    if H == HKV and "sdpa_cudnn_expanded" in dense:
        dense.remove("sdpa_cudnn_expanded")  # nothing to expand
        bar.update(1)
    for kern in dense:
        bar.set_postfix_str(f"T={T} {H}/{HKV}/{D} {kern}")
        try:
            fn, note = dense_fn(kern, q, k, v, H, HKV)
            first = ref is None
            if first:
                ref = fn()
        except Exception as e:  # noqa: BLE001  (a failed kernel is a recorded cell)
            rec.add(kern, cell, "ms", math.nan, "oom" if isinstance(e, torch.OutOfMemoryError) else "error",
                    f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
            _free(args.device)
            bar.update(1)
            continue
        times[kern] = _time_kernel(rec, kern, cell, fn, args, 1.0, 1.0, note, err_ref=None if first else ref)
        bar.update(1)
    if "flex_dense" in args.kernels:
        bar.set_postfix_str(f"T={T} {H}/{HKV}/{D} flex_dense")
        causal = Selection.causal(batch=1, q_len=T, k_len=T, num_heads=H, num_kv_heads=HKV, block_q=block,
                                  block_k=block, device=args.device)
        bm = to_flex_block_mask(causal)
        times["flex_dense"] = _time_kernel(rec, "flex_dense", cell,
                                           lambda: flex_execute(q, k, v, causal, block_mask=bm), args, 1.0, 1.0,
                                           err_ref=ref)
        bar.update(1)
    return times, ref


def run_sparse(rec, args, cell, q, k, v, d, gen, dense_ref, bar):
    """Time the sparse kernels (and their index builds) over one random selection of target density `d`."""
    T, H, HKV, D, block = (cell[n] for n in ("seq_len", "heads", "kv_heads", "head_dim", "block"))
    sel = random_selection(T, H, HKV, d, block, args.device, gen)
    dens = sel.density()
    sparse_ref = None
    for kern in [n for n in SPARSE if n in args.kernels]:
        bar.set_postfix_str(f"T={T} {H}/{HKV}/{D} d={d:g} {kern}")
        try:
            build, fn = sparse_fns(kern, q, k, v, sel)
        except Exception as e:  # noqa: BLE001
            rec.add(kern, cell, "ms", math.nan, "error", f"{type(e).__name__}: {str(e)[:200]}", d, dens)
            bar.update(1)
            continue
        # the second sparse kernel is checked against the first on the same lists; the first, at density 1,
        # against the dense reference
        err_ref = sparse_ref if sparse_ref is not None else (dense_ref if dens == 1.0 else None)
        ms = _time_kernel(rec, kern, cell, fn, args, d, dens, err_ref=err_ref)
        if ms is not None:
            if sparse_ref is None:
                sparse_ref = fn()
            try:
                rec.add(kern, cell, "index_ms", bench_ms(build, args.device, args.warmup / 4, args.rep / 4),
                        target=d, density=dens)
            except Exception as e:  # noqa: BLE001
                rec.add(kern, cell, "index_ms", math.nan, "error", str(e)[:200], target=d, density=dens)
            if args.device.type == "cuda" and not args.no_graphs:
                try:  # the same call without host launch cost: where a kernel is host-bound, this is its GPU time
                    rec.add(kern, cell, "graph_ms", bench_ms(cuda_graph(fn), args.device, args.warmup, args.rep),
                            target=d, density=dens)
                except Exception as e:  # noqa: BLE001
                    rec.add(kern, cell, "graph_ms", math.nan, "error", f"{type(e).__name__}: {str(e)[:200]}",
                            target=d, density=dens)
        bar.update(1)


def run_cell(rec, args, T, H, HKV, D, bar):
    """All kernels and densities for one (T, head config)."""
    dev, block = args.device, args.block
    cell = {"seq_len": T, "heads": H, "kv_heads": HKV, "head_dim": D, "block": block}
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    floor = diagonal_selection(T, H, HKV, block, dev).density()
    for d in args.densities:
        if d <= floor:
            for kern in SPARSE:
                if kern in args.kernels:
                    rec.add(kern, cell, "ms", math.nan, "skipped", f"target at or below the diagonal-only floor "
                            f"{floor:.4f}", target=d, density=math.nan)
                    bar.update(1)
    try:
        q = torch.randn(1, H, T, D, device=dev, dtype=torch.bfloat16, generator=gen)
        k = torch.randn(1, HKV, T, D, device=dev, dtype=torch.bfloat16, generator=gen)
        v = torch.randn(1, HKV, T, D, device=dev, dtype=torch.bfloat16, generator=gen)
    except torch.OutOfMemoryError as e:
        for kern in args.kernels:
            rec.add(kern, cell, "ms", math.nan, "oom", str(e).splitlines()[0][:200])
        return
    times, ref = run_dense(rec, args, cell, q, k, v, bar)
    for d in [d for d in args.densities if d > floor]:
        run_sparse(rec, args, cell, q, k, v, d, gen, ref, bar)
        _free(dev)

    # derived metrics; the baseline is the faster cuDNN form (with enable_gqa, or with K/V expanded)
    base_name = "sdpa_cudnn" if dev.type == "cuda" else "sdpa_cpu"
    base = min((t for n, t in times.items() if t and n.startswith(base_name)), default=None)
    flops_dense = 4 * D * H * causal_pairs(T, T)
    for row in [r for r in rec.rows if r["metric"] == "ms" and r["status"] == "ok"
                and all(r[n] == cell[n] for n in cell)]:
        ms, dens = row["value"], row["density"]
        kw = {"target": row["target_density"], "density": dens, "note": row["note"]}
        rec.add(row["kernel"], cell, "tflops", flops_dense * dens / (ms * 1e-3) / 1e12, **kw)
        if base:
            rec.add(row["kernel"], cell, "speedup_vs_cudnn", base / ms, **kw)
            rec.add(row["kernel"], cell, "speedup_x_density", base / ms * dens, **kw)


# ---------------------------------------------------------------------------------------------- outputs
def provenance(device) -> dict:
    try:
        import triton

        tv = triton.__version__
    except ImportError:
        tv = ""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"baseline": "sdpa_cudnn" if device.type == "cuda" else "sdpa_cpu", "device": name,
            "torch": torch.__version__, "triton": tv,
            "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def write_tables(df, out_dir: Path) -> list[Path]:
    tables = out_dir / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    paths = [tables / "bench_kernels.csv"]
    df.to_csv(paths[0], index=False)
    try:
        df.to_parquet(tables / "bench_kernels.parquet", index=False)
        paths.append(tables / "bench_kernels.parquet")
    except ImportError as e:  # no pyarrow: the CSV is the table of record
        print(f"parquet not written: {e}", file=sys.stderr)
    return paths


def draw_figure(df, path: Path) -> Path | None:
    """Speedup over cuDNN dense vs executed density; rows = head configs, columns = lengths; ideal 1/d dotted."""
    import numpy as np
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

    from sparsebench.plots import paper_style

    sp = df[(df.metric == "speedup_vs_cudnn") & (df.status == "ok")]
    if sp.empty:
        return None
    cfgs = sorted({(h, hk, d) for h, hk, d in zip(sp.heads, sp.kv_heads, sp.head_dim)}, reverse=True)
    lens = sorted(sp.seq_len.unique())
    with paper_style() as plt:
        fig, axes = plt.subplots(len(cfgs), len(lens), figsize=(min(6.75, 1.45 * len(lens) + 0.4),
                                 1.6 * len(cfgs) + 0.6), squeeze=False, sharex=True, sharey=True)
        dmin = max(min(sp.density.min(), 1.0) / 1.5, 1e-3)
        for i, (h, hk, dd) in enumerate(cfgs):
            for j, T in enumerate(lens):
                ax = axes[i][j]
                sub = sp[(sp.heads == h) & (sp.kv_heads == hk) & (sp.head_dim == dd) & (sp.seq_len == T)]
                xs = np.geomspace(dmin, 1.0, 50)
                ax.plot(xs, 1 / xs, ":", color="0.55", lw=0.8, label="ideal 1/density")
                ax.axhline(1.0, color="0.7", lw=0.8, label=f"{sp.baseline.iloc[0]} (baseline)")
                for kern, (mk, ls, col) in STYLE.items():
                    s = sub[sub.kernel == kern].sort_values("density")
                    if s.empty:
                        continue
                    ax.plot(s.density, s.value, marker=mk, linestyle=ls, color=col, ms=3.5, lw=1.0,
                            mfc="white" if kern in ("triton_sparse", "sdpa_flash") else col, label=kern)
                ax.set_xscale("log")
                ax.set_yscale("log")
                ax.xaxis.set_major_locator(FixedLocator([x for x in (0.01, 0.03, 0.1, 0.3, 1.0) if x >= dmin]))
                ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                for axis in (ax.xaxis, ax.yaxis):
                    axis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
                    axis.set_minor_formatter(NullFormatter())
                ax.grid(True, which="major", lw=0.3, color="0.85")
                if i == 0:
                    ax.set_title(f"T = {T // 1024}K" if T % 1024 == 0 else f"T = {T}")
                if i == len(cfgs) - 1:
                    ax.set_xlabel("executed density")
                if j == 0:
                    ax.set_ylabel(f"H/HKV/D {h}/{hk}/{dd}\nspeedup")
        uniq = {}  # label -> handle, over all panels (a kernel may be absent from some)
        for ax in axes.flat:
            for hd, lb in zip(*ax.get_legend_handles_labels()):
                uniq.setdefault(lb, hd)
        fig.suptitle(f"speedup over {sp.baseline.iloc[0]} dense (bf16, B=1, causal, "
                     f"{int(sp.block.iloc[0])}x{int(sp.block.iloc[0])} blocks)", fontsize=8)
        fig.tight_layout()
        # below the panels; savefig's tight bounding box takes it in
        fig.legend(list(uniq.values()), list(uniq.keys()), loc="upper center", ncol=3 if len(lens) <= 3 else 7,
                   bbox_to_anchor=(0.5, 0.0), frameon=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
        plt.close(fig)
    return path


def summary(df) -> str:
    """Ratio tables: sparse kernels per density; dense throughput at density 1."""
    import pandas as pd

    ok = df[df.status == "ok"]
    key = ["seq_len", "heads", "kv_heads", "head_dim"]
    ms = ok[ok.metric == "ms"]
    sp = ok[ok.metric == "speedup_vs_cudnn"]
    lines = []
    sparse = ms[ms.kernel.isin(SPARSE)].pivot_table(index=key + ["target_density"], columns="kernel",
                                                     values="value", aggfunc="first")
    if not sparse.empty:
        dens = ms[ms.kernel.isin(SPARSE)].groupby(key + ["target_density"])["density"].first()
        t = pd.DataFrame({"density": dens})
        spx = sp[sp.kernel.isin(SPARSE)].pivot_table(index=key + ["target_density"], columns="kernel",
                                                      values="value", aggfunc="first")
        for kern in SPARSE:
            if kern in sparse:
                t[f"{kern}_ms"] = sparse[kern]
            if kern in spx:
                t[f"{kern}_speedup"] = spx[kern]
                t[f"{kern}_speedup_x_d"] = spx[kern] * t["density"]
        if {"flex_sparse", "triton_sparse"} <= set(sparse.columns):
            t["triton_over_flex"] = sparse["flex_sparse"] / sparse["triton_sparse"]
            gr = ok[(ok.metric == "graph_ms") & ok.kernel.isin(SPARSE)].pivot_table(
                index=key + ["target_density"], columns="kernel", values="value", aggfunc="first")
            if {"flex_sparse", "triton_sparse"} <= set(gr.columns):
                t["graph_triton_over_flex"] = gr["flex_sparse"] / gr["triton_sparse"]
        head = ("sparse kernels (speedup = baseline dense ms / kernel ms; x_d = speedup x executed density, "
                "1 = ideal; triton_over_flex = flex ms / triton ms; graph_: the same as CUDA-graph replays):")
        lines += [head, t.sort_index().to_string(float_format="{:.3g}".format)]
    thr = sp[(sp.density == 1.0)].pivot_table(index=key, columns="kernel", values="value", aggfunc="first")
    if not thr.empty:
        lines += ["", "density-1.0 throughput relative to the baseline (baseline ms / kernel ms):",
                  thr.to_string(float_format="{:.3f}".format)]
    return "\n".join(lines)


def main(argv=None) -> int:
    import pandas as pd
    from tqdm import tqdm

    args = parse_args(argv)
    dev = args.device
    rec = Recorder(provenance(dev))
    n_dense = sum(k in args.kernels for k in DENSE) if dev.type == "cuda" else 1 + ("flex_dense" in args.kernels)
    n_sparse = sum(k in args.kernels for k in SPARSE)
    total = len(args.seq_lens) * len(args.configs) * (n_dense + n_sparse * len(args.densities))
    with tqdm(total=total, desc="bench_kernels", file=sys.stderr, dynamic_ncols=True) as bar:
        for T in args.seq_lens:
            for H, HKV, D in args.configs:
                run_cell(rec, args, T, H, HKV, D, bar)
    df = pd.DataFrame(rec.rows, columns=COLUMNS)
    out = Path(args.out_dir)
    for p in write_tables(df, out):
        print(f"wrote {p}")
    if not args.no_figure:
        fig = draw_figure(df, out / "figures" / "bench_kernels.png")
        if fig:
            print(f"wrote {fig}")
    notes = df[(df.metric == "ms") & (df.note != "")][["kernel", "seq_len", "heads", "kv_heads", "head_dim",
                                                       "status", "note"]].drop_duplicates(["kernel", "status", "note"])
    print(f"\ndevice {rec.prov['device']}, torch {rec.prov['torch']}, triton {rec.prov['triton']}, "
          f"baseline {rec.prov['baseline']}")
    if not notes.empty:
        print(notes.to_string(index=False))
    print(summary(df))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
