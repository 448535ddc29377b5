"""After a run or a sweep: merge the experiment's jobs into tables, draw its figure, print a readable summary."""
from __future__ import annotations

from pathlib import Path


def summarize(raw_dir, experiment: str, table_dir, figure_dir, figures: bool = True) -> dict[str, Path]:
    """Collect an experiment's jobs into tables, draw its figure, print the summary; returns the written paths."""
    import pandas as pd

    from sparsebench.results import collect

    try:
        written = collect(raw_dir, experiment, table_dir)
    except FileNotFoundError as e:
        print(f"sparsebench: nothing to collect ({e})")
        return {}
    rows = pd.read_parquet(written[f"{experiment}.parquet"])
    ok = rows[rows["status"] == "ok"]
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.max_rows", 200):
        if len(ok):
            metrics = [m for m in ("accuracy", "density", "input_tokens", "attention_flops", "prefill_ms")
                       if m in set(ok["metric"])]
            from sparsebench.plots import variant_labels

            ok = ok.assign(method=variant_labels(ok["method"], ok["method_params"]))
            index = ["model", "task", "method", "seq_len"]
            index += [c for c in ("subtask", "executor", "dtype", "seed") if ok[c].nunique() > 1]  # never averaged away
            table = ok[ok["metric"].isin(metrics)].pivot_table(index=index, columns="metric", values="value")[metrics]
            print("\nSummary (means over samples; accuracy and density as fractions):")
            print(table.to_string(float_format=lambda x: f"{x:.4g}"))
        failed = rows[rows["status"] != "ok"]
        if len(failed):
            print("\nFailed cells:")
            print(failed[["method", "task", "seq_len", "status", "message"]].to_string(index=False))
    samples_key = f"{experiment}_samples.parquet"
    samples = pd.read_parquet(written[samples_key]) if samples_key in written else None
    if figures and samples is not None:
        if "depth" in samples.columns and samples["depth"].notna().any():
            from sparsebench.plots import niah_grid, niah_heatmap

            grid = niah_grid(samples[samples["depth"].notna()])
            path = niah_heatmap(grid, f"{figure_dir}/{experiment}_niah_heatmap.png",
                                title=f"NIAH accuracy, {experiment}")
            print("\nNIAH accuracy by depth (the heatmap's numbers):")
            print(grid.pivot_table(index=["method", "depth"], columns="seq_len", values="accuracy").to_string(
                float_format=lambda x: f"{x:.2f}"))
            written["heatmap"] = path
    if samples is not None and len(ok) and ok["device"].astype(str).str.startswith("cuda").all():
        from sparsebench.stats import timing_summary

        timing = timing_summary(samples)
        if len(timing):
            from sparsebench.plots import variant_labels

            timing.insert(0, "variant", variant_labels(timing["method"], timing["method_params"]))
            cols = ["variant", "seq_len", "n"] + [c for c in timing.columns if c.endswith("_median")]
            print("\nGPU timings per sample, medians in ms (the _timing table also has means and maxima):")
            print(timing[cols].to_string(index=False, float_format=lambda x: f"{x:.3g}"))
            path = Path(table_dir) / f"{experiment}_timing.csv"
            timing.to_csv(path, index=False)
            written[f"{experiment}_timing.csv"] = path
    if figures and samples is not None:
        methods = set(samples["method"])
        if "dense" in methods and len(methods) > 1:
            from sparsebench.stats import paired_vs_dense

            paired = paired_vs_dense(samples)
            if len(paired):
                print("\nPaired with dense on the same prompts (diff = method - dense; 95% interval; McNemar p):")
                print(paired.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
                path = Path(table_dir) / f"{experiment}_paired.csv"
                paired.to_csv(path, index=False)
                written[f"{experiment}_paired.csv"] = path
        if rows["method"].nunique() > 1 and len(ok):
            from sparsebench.plots import accuracy_vs_density

            try:
                written["acc_density"] = accuracy_vs_density(rows, f"{figure_dir}/{experiment}_accuracy_density.png",
                                                             title=f"accuracy vs density, {experiment}")
            except ValueError as e:  # e.g. a task without an accuracy metric
                print(f"(no accuracy-density figure: {e})")
    print("\nWrote:")
    print(f"  job files   {raw_dir}/{experiment}/<run_id>/(rows|samples|layers).jsonl")
    for name, path in written.items():
        print(f"  {name:<11} {path}")
    return written
