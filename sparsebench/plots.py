"""Paper-style figures drawn from the result tables only (never from logs or W&B).

Styles: one column 3.25 in, two columns 6.75 in; sequential colour maps with monotone lightness and numbers
written in the cells, so figures read in grayscale too.
"""
from __future__ import annotations

import contextlib
from pathlib import Path


@contextlib.contextmanager
def paper_style():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rc = {"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
          "legend.fontsize": 7, "figure.dpi": 200, "savefig.bbox": "tight", "font.family": "DejaVu Sans"}
    with plt.rc_context(rc):
        yield plt


def _save(plt, fig, path: str | Path, title: str = "") -> Path:
    if title:
        fig.suptitle(title, y=1.04)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def niah_grid(samples):
    """Mean accuracy per (method, seq_len, depth) from a samples table: the numbers the heatmap shows."""
    import json


    df = samples.copy()
    scores = df["scores"].map(lambda s: json.loads(s) if isinstance(s, str) else s)
    df["accuracy"] = scores.map(lambda s: s.get("accuracy"))
    if "method_params" in df.columns:
        df["method"] = variant_labels(df["method"], df["method_params"])
    return df.groupby(["method", "seq_len", "depth"], as_index=False)["accuracy"].mean()


def variant_labels(methods, params):
    """Method names, with the knobs that tell a method's variants apart where one table holds several."""
    import json

    keys = [(m, p if isinstance(p, str) else json.dumps(p or {}, sort_keys=True)) for m, p in zip(methods, params)]
    unique = {k: json.loads(k[1]) for k in dict.fromkeys(keys)}
    control = ("name", "layers", "executor")  # rows carry the whole method config; variants differ in knobs
    unique = {k: {n: v for n, v in p.items() if n not in control} for k, p in unique.items()}
    label = {}
    for (m, raw), p in unique.items():
        others = [q for (n, r), q in unique.items() if n == m and r != raw]
        diff = sorted(k for k in p if any(q.get(k) != p[k] for q in others))
        label[(m, raw)] = m + (" (" + ", ".join(f"{k}={p[k]}" for k in diff) + ")" if diff else "")
    return [label[k] for k in keys]


def niah_heatmap(grid, path: str | Path, title: str = "") -> Path:
    """Depth (rows) x length (columns) accuracy, one panel per method."""
    import numpy as np

    methods = list(dict.fromkeys(grid["method"]))
    lengths = sorted(grid["seq_len"].unique())
    depths = sorted(grid["depth"].unique())
    with paper_style() as plt:
        width = min(6.75, 0.55 + 1.6 * len(methods) + 0.25 * len(lengths) * len(methods))
        fig, axes = plt.subplots(1, len(methods), figsize=(width, 0.35 * len(depths) + 1.0), squeeze=False,
                                 sharey=True)
        for ax, m in zip(axes[0], methods):
            sub = grid[grid["method"] == m].pivot(index="depth", columns="seq_len", values="accuracy")
            sub = sub.reindex(index=depths, columns=lengths)
            im = ax.imshow(sub.values, cmap="viridis", vmin=0, vmax=1, aspect="auto")
            for (i, j), val in np.ndenumerate(sub.values):
                if not np.isnan(val):
                    ax.text(j, i, f"{val:.2f}", ha="center", va="center", fontsize=6,
                            color="black" if val > 0.5 else "white")
            ax.set_xticks(range(len(lengths)), [f"{L // 1024}K" if L % 1024 == 0 else str(L) for L in lengths])
            ax.set_yticks(range(len(depths)), [f"{d:g}%" for d in depths])
            ax.set_title(m)
        fig.supxlabel("context length (tokens)", y=-0.02, fontsize=8)
        axes[0][0].set_ylabel("needle depth")
        fig.colorbar(im, ax=axes[0].tolist(), shrink=0.9, label="accuracy")
        return _save(plt, fig, path, title)


MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]
LINESTYLES = ["-", "--", ":", "-."]


def accuracy_density_points(rows, metric: str = "accuracy"):
    """(method variant, seq_len, density, accuracy, stderr) per job, from a rows table: the suite's `average`
    subtask where there is one, else the single subtask."""
    import pandas as pd

    ok = rows[rows["status"] == "ok"].copy()
    ok["variant"] = variant_labels(ok["method"], ok["method_params"])
    pts = []
    for rid, g in ok.groupby("run_id"):
        q = g[g["metric"] == metric]
        if q.empty:
            continue
        q = q[q["subtask"] == "average"] if (q["subtask"] == "average").any() else q
        dens = g[g["metric"] == "density"]["value"]
        if len(q) != 1 or dens.empty:
            continue
        r = q.iloc[0]
        pts.append(dict(variant=r["variant"], seq_len=int(r["seq_len"]), density=float(dens.mean()),
                        accuracy=float(r["value"]), stderr=r["stderr"]))
    return pd.DataFrame(pts)


def accuracy_vs_density(rows, path: str | Path, metric: str = "accuracy", title: str = "") -> Path:
    """Accuracy against executed density, one panel per length, one marker and line style per method."""
    import numpy as np
    from matplotlib.ticker import FuncFormatter

    pts = accuracy_density_points(rows, metric)
    if pts.empty:
        raise ValueError(f"no ok rows with both {metric!r} and density to plot")
    lengths = sorted(pts["seq_len"].unique())
    variants = sorted(pts["variant"].unique())
    with paper_style() as plt:
        fig, axes = plt.subplots(1, len(lengths), figsize=(min(6.75, 0.5 + 2.1 * len(lengths)), 2.3),
                                 squeeze=False, sharey=True)
        for ax, L in zip(axes[0], lengths):
            for i, v in enumerate(variants):
                sub = pts[(pts["seq_len"] == L) & (pts["variant"] == v)].sort_values("density")
                if sub.empty:
                    continue
                err = np.nan_to_num(sub["stderr"].astype(float).to_numpy(), nan=0.0)
                ax.errorbar(sub["density"], sub["accuracy"], yerr=err, marker=MARKERS[i % len(MARKERS)],
                            linestyle=LINESTYLES[i % len(LINESTYLES)], color=str(0.15 + 0.55 * i / max(1,
                            len(variants) - 1)), markersize=4, capsize=2, label=v)
            ax.set_xscale("log")
            ax.set_xlim(right=1.05)
            plain = FuncFormatter(lambda x, _: f"{x:g}")
            ax.xaxis.set_major_formatter(plain)
            ax.xaxis.set_minor_formatter(plain)
            ax.tick_params(axis="x", which="minor", labelsize=5)
            ax.set_ylim(-0.03, 1.03)
            ax.set_xlabel("executed density")
            ax.set_title(f"T = {L // 1024}K" if L % 1024 == 0 else f"T = {L}")
            ax.grid(True, which="both", alpha=0.3)
        axes[0][0].set_ylabel(metric)
        handles, labels = axes[0][0].get_legend_handles_labels()
        for ax in axes[0][1:]:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
        fig.legend(handles, labels, loc="upper center", ncol=min(3, len(labels)), bbox_to_anchor=(0.5, -0.1),
                   frameon=False)
        return _save(plt, fig, path, title)


def accuracy_vs_length(pooled, path: str | Path, metric: str = "accuracy", title: str = "") -> Path:
    """A suite's scores against context length, one panel per method: one thin line per subtask (marker and gray
    level distinguish them) and the suite average in bold black. `pooled`: rows with method, subtask, seq_len, value
    (e.g. `scripts/pool_seeds.py` output, whose `average` rows are the bold line)."""
    methods = sorted(pooled["method"].unique())
    subtasks = sorted(s for s in pooled["subtask"].unique() if s != "average")
    with paper_style() as plt:
        fig, axes = plt.subplots(1, len(methods), figsize=(min(6.75, 0.8 + 3.0 * len(methods)), 2.6),
                                 squeeze=False, sharey=True)
        for ax, m in zip(axes[0], methods):
            sub = pooled[pooled["method"] == m]
            for i, st in enumerate(subtasks):
                d = sub[sub["subtask"] == st].sort_values("seq_len")
                if not d.empty:
                    ax.plot(d["seq_len"], d["value"], marker=MARKERS[i % len(MARKERS)], markersize=3,
                            linewidth=0.8, linestyle=LINESTYLES[i % len(LINESTYLES)],
                            color=str(0.2 + 0.6 * i / max(1, len(subtasks) - 1)), label=st)
            avg = sub[sub["subtask"] == "average"].sort_values("seq_len")
            if not avg.empty:
                ax.plot(avg["seq_len"], avg["value"], color="black", linewidth=2.2, marker="o", markersize=4,
                        label="average")
            ax.set_xscale("log", base=2)
            ticks = sorted(sub["seq_len"].unique())
            ax.set_xticks(ticks)
            ax.set_xticklabels([f"{t // 1024}K" if t % 1024 == 0 else str(t) for t in ticks])
            ax.minorticks_off()
            ax.set_ylim(-0.03, 1.03)
            ax.set_xlabel("context length (tokens)")
            ax.set_title(m)
            ax.grid(True, alpha=0.3)
        axes[0][0].set_ylabel(metric)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        return _save(plt, fig, path, title)
