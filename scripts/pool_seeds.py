"""Pool an experiment's per-sample scores over seeds: one score per (method, model, task, subtask, length).

A sweep over `seed` gives separate jobs (and rows) per seed; their samples are distinct draws of the same task, so
the pooled mean over all samples is the estimate with the most samples behind it. For each group this prints and
writes the mean of a score, its sample count, the standard error and, for 0/1 scores, the 95% Wilson interval; and
per (method, model, task, length) the suite average over subtasks (RULER's summary number), as subtask `average`.

    python scripts/pool_seeds.py --experiment ruler_gpu            # reads results/tables/ruler_gpu_samples.parquet
Writes results/tables/<experiment>_pooled.csv and, over several lengths, results/figures/<experiment>_by_length.png
(one thin line per subtask, the average in bold).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

KEYS = ["method", "model", "task", "subtask", "seq_len"]


def pool(samples, metric: str = "accuracy"):
    import pandas as pd

    from sparsebench.stats import wilson_interval

    s = samples.copy()
    s["score"] = [(json.loads(sc) if isinstance(sc, str) else sc or {}).get(metric) for sc in s["scores"]]
    s = s.dropna(subset=["score"])
    rows = []
    for key, g in s.groupby(KEYS, sort=True):
        x = g["score"].astype(float)
        n = len(x)
        row = dict(zip(KEYS, key), metric=metric, value=x.mean(), n=n, seeds=g["seed"].nunique(),
                   stderr=x.std(ddof=1) / math.sqrt(n) if n > 1 else float("nan"))
        if set(x.unique()) <= {0.0, 1.0}:
            row["lo"], row["hi"] = wilson_interval(x.sum(), n)
        rows.append(row)
    out = pd.DataFrame(rows)
    avg = (out.groupby(["method", "model", "task", "seq_len"], as_index=False)
           .agg(value=("value", "mean"), n=("n", "sum"), subtasks=("subtask", "nunique")))
    avg["subtask"], avg["metric"] = "average", metric
    return pd.concat([out, avg], ignore_index=True)


def main(argv=None) -> int:
    import pandas as pd

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", required=True)
    ap.add_argument("--root-dir", default=".", help="the folder holding results/")
    ap.add_argument("--metric", default="accuracy")
    ap.add_argument("--no-figure", action="store_true", help="skip <experiment>_by_length.png")
    args = ap.parse_args(argv)
    tables = Path(args.root_dir) / "results" / "tables"
    src = tables / f"{args.experiment}_samples.parquet"
    if not src.exists():
        ap.error(f"no samples table {src}: run scripts/collect.py --experiment {args.experiment} first")
    df = pool(pd.read_parquet(src), args.metric)
    wide = df.pivot_table(index=["method", "subtask"], columns="seq_len", values="value")
    ns = df[df.subtask != "average"].groupby("seq_len")["n"].agg(["min", "max"])
    print(f"{args.metric} pooled over seeds (rows: subtask; columns: length):\n{wide.round(3).to_string()}")
    print(f"\nsamples per subtask and length: {ns.to_dict('index')}")
    out = tables / f"{args.experiment}_pooled.csv"
    df.to_csv(out, index=False)
    print(f"wrote {out}")
    if not args.no_figure and df["seq_len"].nunique() > 1:
        from sparsebench.plots import accuracy_vs_length

        fig = accuracy_vs_length(df, Path(args.root_dir) / "results" / "figures" / f"{args.experiment}_by_length.png",
                                 args.metric)
        print(f"wrote {fig}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
