"""Statistics on per-sample records: confidence intervals and the paired comparison of each method with dense.

Every method is compared with dense on the *same* prompts (matched by `sample_id` and `prompt_sha256` within a task,
model, length and seed), so the difference in accuracy is estimated from paired outcomes: its standard error comes
from the per-prompt differences, and McNemar's exact test (two-sided binomial on the discordant pairs) says whether
the method's wins and losses against dense could be chance.
"""
from __future__ import annotations

import json
import math

PAIR_KEYS = ["task", "model", "seq_len", "seed", "subtask", "sample_id", "prompt_sha256"]


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (stays inside [0, 1] at p = 0 or 1)."""
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b method-only and c dense-only successes."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def _scores(frame, metric: str):
    return frame["scores"].map(lambda s: (json.loads(s) if isinstance(s, str) else s).get(metric))


def paired_vs_dense(samples, metric: str = "accuracy", baseline: str = "dense"):
    """One row per (method variant, task, model, seq_len, seed): paired accuracy against `baseline`.

    Columns: `method`, the pair keys but the sample ones, `n` (paired prompts), `<metric>`, `<metric>_lo` /
    `<metric>_hi` (95% Wilson interval of the method's score, for 0/1 scores; NaN otherwise), `<metric>_dense`,
    `diff`, `diff_stderr`, `diff_lo`, `diff_hi` (95% normal interval on the paired differences), `wins`, `losses`
    (prompts only the method, or only dense, got fully right) and `mcnemar_p`.
    """
    import pandas as pd

    from sparsebench.plots import variant_labels

    df = samples.copy()
    df["value"] = _scores(df, metric)
    df = df[df["value"].notna()]
    params = df["method_params"] if "method_params" in df else [None] * len(df)
    df["variant"] = variant_labels(df["method"], params)
    base = df[df["method"] == baseline][PAIR_KEYS + ["value"]].rename(columns={"value": "base"})
    others = df[df["method"] != baseline]
    merged = others.merge(base, on=PAIR_KEYS, how="inner")
    out = []
    group_keys = ["variant", "task", "model", "seq_len", "seed"]
    for key, g in merged.groupby(group_keys, sort=True):
        d = g["value"] - g["base"]
        n = len(g)
        se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
        wins = int(((g["value"] == 1) & (g["base"] != 1)).sum())
        losses = int(((g["value"] != 1) & (g["base"] == 1)).sum())
        binary = bool(g["value"].isin([0.0, 1.0]).all())
        lo, hi = wilson_interval(float(g["value"].sum()), n) if binary else (math.nan, math.nan)
        out.append(dict(zip(["method", "task", "model", "seq_len", "seed"], key), n=n, **{
            metric: float(g["value"].mean()), f"{metric}_lo": lo, f"{metric}_hi": hi,
            f"{metric}_{baseline}": float(g["base"].mean()),
            "diff": float(d.mean()), "diff_stderr": se, "diff_lo": float(d.mean() - 1.96 * se),
            "diff_hi": float(d.mean() + 1.96 * se), "wins": wins, "losses": losses,
            "mcnemar_p": mcnemar_exact(wins, losses)}))
    return pd.DataFrame(out)


TIMING_METRICS = ("estimation_ms", "attention_ms", "prefill_ms", "decode_ms")


def timing_summary(samples):
    """Per (method variant, task, seq_len, seed): the median, mean, max and count of each per-sample timing.

    A sample that meets a shape the run has not compiled for (another token count's divisibility, another list width)
    pays a one-off Triton compilation inside its timing; the mean carries it, the median does not. Timings are
    wall-clock speed only where the run had the GPU to itself."""
    import pandas as pd

    cols = [c for c in TIMING_METRICS if c in samples.columns]
    if not cols or not len(samples):
        return pd.DataFrame()
    keys = ["method", "method_params", "task", "seq_len", "seed"]
    out = []
    for key, g in samples.groupby(keys, sort=True, dropna=False):
        row = dict(zip(keys, key))
        row["n"] = len(g)
        for c in cols:
            v = g[c].astype(float)
            row.update({f"{c}_median": v.median(), f"{c}_mean": v.mean(), f"{c}_max": v.max()})
        out.append(row)
    return pd.DataFrame(out)
