"""Paired comparison with dense, Wilson intervals, McNemar, and the accuracy-density figure."""
import json

import pandas as pd
import pytest

from sparsebench.plots import accuracy_density_points, accuracy_vs_density
from sparsebench.stats import mcnemar_exact, paired_vs_dense, wilson_interval


def _samples(method, params, outcomes):
    return [dict(method=method, method_params=json.dumps(params), task="niah", model="m", seq_len=1024, seed=0,
                 subtask="niah_essay", sample_id=f"s{i}", prompt_sha256=f"h{i}", scores={"accuracy": float(x)})
            for i, x in enumerate(outcomes)]


def test_wilson_and_mcnemar_hand_values():
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.7225, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0
    # b = 0, c = 5: p = 2 * (1/32)
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 0) == 1.0


def test_paired_vs_dense_matches_hand_computation():
    dense = _samples("dense", {}, [1, 1, 1, 0, 1, 1])
    a = _samples("streaming", {"n_local": 16}, [1, 0, 0, 0, 1, 1])
    b = _samples("streaming", {"n_local": 64}, [1, 1, 1, 1, 1, 1])
    out = paired_vs_dense(pd.DataFrame(dense + a + b)).set_index("method")
    small, large = out.loc["streaming (n_local=16)"], out.loc["streaming (n_local=64)"]
    assert small["n"] == 6 and small["accuracy"] == pytest.approx(0.5)
    assert small["accuracy_dense"] == pytest.approx(5 / 6) and small["diff"] == pytest.approx(-2 / 6)
    assert small["wins"] == 0 and small["losses"] == 2 and small["mcnemar_p"] == pytest.approx(0.5)
    d = pd.Series([0, -1, -1, 0, 0, 0])
    assert small["diff_stderr"] == pytest.approx(d.std(ddof=1) / 6 ** 0.5)
    assert large["wins"] == 1 and large["losses"] == 0 and large["diff"] == pytest.approx(1 / 6)
    assert (small["accuracy_lo"], small["accuracy_hi"]) == pytest.approx(wilson_interval(3, 6))
    assert large["accuracy_hi"] == pytest.approx(1.0) and large["accuracy_lo"] == pytest.approx(wilson_interval(6, 6)[0])


def test_unpaired_prompts_are_left_out():
    dense = _samples("dense", {}, [1, 1])
    other = _samples("streaming", {}, [0, 0, 0])  # s2 has no dense twin
    out = paired_vs_dense(pd.DataFrame(dense + other))
    assert out["n"].item() == 2 and out["diff"].item() == -1.0


def _rows(method, params, seq_len, acc, dens, rid):
    base = dict(run_id=rid, method=method, method_params=json.dumps(params), seq_len=seq_len, status="ok",
                subtask="niah_essay", stderr=0.05)
    return [dict(base, metric="accuracy", value=acc), dict(base, metric="density", value=dens)]


def test_accuracy_vs_density_figure(tmp_path):
    rows = pd.DataFrame(_rows("dense", {}, 1024, 1.0, 1.0, "a") + _rows("streaming", {}, 1024, 0.6, 0.3, "b")
                        + _rows("dense", {}, 2048, 0.9, 1.0, "c") + _rows("streaming", {}, 2048, 0.4, 0.15, "d"))
    pts = accuracy_density_points(rows)
    assert len(pts) == 4
    assert pts.set_index(["variant", "seq_len"]).loc[("streaming", 2048), "density"] == 0.15
    path = accuracy_vs_density(rows, tmp_path / "f.png")
    assert path.stat().st_size > 10_000


def test_timing_summary_median_ignores_a_compile_outlier():
    from sparsebench.stats import timing_summary

    rows = _samples("xattn", {"stride": 8}, [1, 1, 1, 1, 1])
    for r, est in zip(rows, [2.0, 280.0, 2.2, 2.4, 2.1]):
        r.update(estimation_ms=est, attention_ms=10.0)
    out = timing_summary(pd.DataFrame(rows))
    assert len(out) == 1
    row = out.iloc[0]
    assert row["n"] == 5 and row["estimation_ms_median"] == pytest.approx(2.2)
    assert row["estimation_ms_mean"] == pytest.approx(288.7 / 5) and row["estimation_ms_max"] == 280.0
    assert row["attention_ms_median"] == 10.0 and "prefill_ms_median" not in out.columns
    assert timing_summary(pd.DataFrame([{"method": "dense"}])).empty
