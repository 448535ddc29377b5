"""scripts/pool_seeds.py: per-sample scores pooled over seeds, the suite average per length, and its figure."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from pool_seeds import pool  # noqa: E402


def _samples():
    rows = []
    # subtask a: seed 0 -> 1, 1; seed 1 -> 0, 1 (pooled 0.75); subtask b: all 0 at 4096, all 1 at 8192
    for seed, scores in ((0, (1, 1)), (1, (0, 1))):
        for i, sc in enumerate(scores):
            for L in (4096, 8192):
                rows.append(dict(method="dense", model="m", task="ruler", subtask="a", seq_len=L, seed=seed,
                                 sample_id=f"a{seed}{i}{L}", scores=json.dumps({"accuracy": float(sc)})))
                rows.append(dict(method="dense", model="m", task="ruler", subtask="b", seq_len=L, seed=seed,
                                 sample_id=f"b{seed}{i}{L}", scores=json.dumps({"accuracy": float(L == 8192)})))
    return pd.DataFrame(rows)


def test_pool_means_counts_and_average():
    df = pool(_samples())
    a = df[(df.subtask == "a") & (df.seq_len == 4096)].iloc[0]
    assert a.value == pytest.approx(0.75) and a.n == 4 and a.seeds == 2 and a.lo < 0.75 < a.hi
    avg = df[df.subtask == "average"].set_index("seq_len")["value"]
    assert avg[4096] == pytest.approx((0.75 + 0.0) / 2) and avg[8192] == pytest.approx((0.75 + 1.0) / 2)


def test_script_writes_table_and_figure(tmp_path):
    tables = tmp_path / "results" / "tables"
    tables.mkdir(parents=True)
    _samples().to_parquet(tables / "x_samples.parquet")
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "pool_seeds.py"), "--experiment", "x",
                          "--root-dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tables / "x_pooled.csv").exists()
    png = tmp_path / "results" / "figures" / "x_by_length.png"
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
