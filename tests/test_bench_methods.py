"""scripts/bench_methods.py --smoke: the matched-density diagnostics and cost plumbing on a CPU."""
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_bench_methods():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_methods_script", ROOT / "scripts" / "bench_methods.py")
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.pop(0)
    return mod


def test_bench_methods_smoke(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_methods.py"), "--smoke", "--targets", "0.3",
                          "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    df = pd.read_csv(tmp_path / "tables" / "bench_methods.csv")
    rec = df[df.part == "recall"].pivot_table(index="method", columns="metric", values="value")
    assert set(rec.index) == {"streaming", "minference", "xattn", "flexprefill", "pbs"}
    assert ((rec["density"] > 0) & (rec["density"] <= 1)).all()
    assert ((rec["attention_recall"] > 0) & (rec["attention_recall"] <= 1 + 1e-6)).all()
    # a method that keeps fewer pairs loses softmax mass: recall below 1 wherever density is below 1
    assert (rec.loc[rec["density"] < 0.99, "attention_recall"] < 1).all()
    cost = df[(df.part == "cost") & (df.metric == "estimation_share")]
    assert set(cost.method) == {"streaming", "minference_vs", "xattn_s8", "xattn_s16", "flexprefill", "pbs"}
    assert (cost.value > 0).all() and (cost.status == "ok").all()


def test_bench_methods_profile_smoke(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_methods.py"), "--smoke", "--parts", "profile",
                          "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    df = pd.read_csv(tmp_path / "tables" / "bench_methods_profile.csv")
    wall = df[df.metric == "wall_ms_profiled"].set_index("method")["value"]
    assert set(wall.index) == {"streaming", "minference_vs", "xattn_s8", "xattn_s16", "flexprefill", "pbs"}
    assert (wall > 0).all()
    assert "=== profile L=1024 xattn_s8" in res.stdout and "aten::" in res.stdout  # the per-op table is printed


def test_variant_patches_apply_and_restore():
    """A variant's module switches hold inside its context and are restored after it, even on an error."""
    import importlib

    bm = _load_bench_methods()
    for label, patches in bm.VARIANT_PATCH.items():
        mods = [(importlib.import_module(m), a, v) for m, a, v in patches]
        before = [getattr(mod, a) for mod, a, _ in mods]
        with pytest.raises(RuntimeError):
            with bm._variant_env(label):
                assert [getattr(mod, a) for mod, a, _ in mods] == [v for _, _, v in mods]
                raise RuntimeError("inside")
        assert [getattr(mod, a) for mod, a, _ in mods] == before
        assert label in {v[0] for v in bm.GPU_COST_VARIANTS}


def test_bench_methods_cost_repeats_report_medians_and_spread(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_methods.py"), "--smoke", "--parts", "cost",
                          "--repeats", "3", "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    df = pd.read_csv(tmp_path / "tables" / "bench_methods_cost.csv")
    assert (df.repeats == 3).all()
    est = df[df.method == "xattn_s8"].set_index("metric")["value"]
    assert est["estimation_ms_min"] <= est["estimation_ms"] <= est["estimation_ms_max"]
    dense = df[df.method == "dense_sdpa"].set_index("metric")["value"]
    assert est["estimation_share"] == pytest.approx(est["estimation_ms"] / dense["attention_ms"])
    # the host's issue time per call, beside each estimate (on a CPU the whole call)
    assert 0 < est["host_issue_ms"]
    # the host's pace, recorded beside the timings (host-bound estimates scale with it)
    host = df[df.method == "host"]
    assert list(host.metric) == ["torch_op_host_us"] and (host.value > 0).all()
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_methods.py"), "--smoke", "--parts", "cost",
                          "--repeats", "0", "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "--repeats 0" in bad.stderr


def test_bench_methods_rows_picks_exact_labels(tmp_path):
    """`--rows` times exactly the named rows (a prefix of others too, unlike `--methods`) and refuses unknown ones."""
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_methods.py"), "--smoke", "--parts", "cost",
                          "--rows", "xattn_s8", "--out-dir", str(tmp_path)], capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    df = pd.read_csv(tmp_path / "tables" / "bench_methods_cost.csv")
    assert set(df.method) - {"dense_sdpa", "host"} == {"xattn_s8"}
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_methods.py"), "--smoke", "--parts", "cost",
                          "--rows", "xattn_s9", "--out-dir", str(tmp_path)], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode != 0 and "--rows ['xattn_s9']" in bad.stderr and "xattn_s8" in bad.stderr
