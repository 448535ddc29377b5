"""Results: rows and samples round-trip through collect; run_id changes with every hashed input."""
import json
from dataclasses import asdict

import pandas as pd
import pytest

from sparsebench.results import (ROW_COLUMNS, SCHEMA_VERSION, JobFiles, Row, collect, load_table, mean_stderr,
                                 read_jsonl, to_wide)


def _row(metric, value, **kw):
    base = dict(run_id="abc", experiment="exp", method="dense", method_label="Dense", method_params="{}",
                target_density=None, model="tiny_llama", model_quant="none", n_params=10, task="niah",
                subtask="niah_essay", seq_len=512, seed=0, phase="prefill", executor="reference", dtype="float32",
                metric=metric, value=value, unit="fraction", n=3)
    base.update(kw)
    return Row(**base)


def test_rows_and_samples_round_trip(tmp_path):
    rows = [_row("accuracy", 2 / 3, stderr=0.33), _row("density", 1.0)]
    samples = [{"run_id": "abc", "sample_id": f"s{i}", "method": "dense", "seq_len": 512, "depth": d,
                "scores": {"accuracy": float(i > 0)}, "input_tokens": 470} for i, d in enumerate([0, 50, 100])]
    files = JobFiles(tmp_path / "raw" / "exp" / "abc")
    assert not files.finished()
    files.write(rows, samples, [{"layer": 0}], {"run_id": "abc"})
    assert files.finished()
    assert read_jsonl(files.rows) == [asdict(r) for r in rows]
    out = collect(tmp_path / "raw", "exp", tmp_path / "tables")
    df = load_table(out["exp.parquet"])
    assert list(df.columns) == ROW_COLUMNS
    assert df.loc[df.metric == "accuracy", "value"].item() == pytest.approx(2 / 3)
    assert (df.schema_version == SCHEMA_VERSION).all()
    csv = load_table(out["exp.csv"])
    assert csv.loc[csv.metric == "density", "value"].item() == 1.0
    s = pd.read_parquet(out["exp_samples.parquet"])
    assert [json.loads(x)["accuracy"] for x in s.scores] == [0.0, 1.0, 1.0]
    wide = to_wide(df)
    assert set(wide.columns) >= {"accuracy", "density"} and len(wide) == 1


def test_failed_rows_mean_not_finished(tmp_path):
    files = JobFiles(tmp_path / "j")
    files.write([_row("status", None, status="error", message="boom")], [], [], {})
    assert not files.finished()


def test_mean_stderr():
    assert mean_stderr([1.0, 0.0, 1.0, 0.0]) == pytest.approx((0.5, (1 / 3) ** 0.5 / 2))
    assert mean_stderr([1.0])[1] is None


def test_run_id_changes_with_every_hashed_input(compose):
    from sparsebench.run import prepare

    base = ["model=tiny_llama", "paths.root_dir=/tmp/sb_rid"]
    rid = prepare(compose(base)).run_id
    assert prepare(compose(base)).run_id == rid  # stable
    variants = [["method=streaming"], ["method.block_size=64"], ["method.executor=reference"],
                ["method.layers=all"], ["task.haystack=noise"], ["task.depths=[0,100]"], ["seq_len=1024"],
                ["seed=1"], ["n_samples=2"], ["model.dtype=bfloat16"], ["model.seed=3"], ["model=tiny_gemma3"],
                ["diagnostics=true"]]
    ids = {prepare(compose(base + v)).run_id for v in variants}
    assert rid not in ids and len(ids) == len(variants)
    # the method's impl_version is hashed too
    from sparsebench.methods.dense import Dense

    old = Dense.impl_version
    try:
        Dense.impl_version = old + 1
        assert prepare(compose(base)).run_id != rid
    finally:
        Dense.impl_version = old
    # provenance-only settings do not change it
    assert prepare(compose(base + ["progress=false", "figures=false"])).run_id == rid


@pytest.mark.parametrize("each_length", [False, True])
def test_warmup_each_length(compose, monkeypatch, each_length):
    """With `warmup`, one untimed prefill before the first prompt; with `warmup_each_length` too, one before the first
    prompt of every other token count, and never twice for a count (NIAH prompts at one seq_len differ by a few
    tokens)."""
    from sparsebench import run

    seen = []
    real_warmup = run._warmup
    monkeypatch.setattr(run, "_warmup", lambda model, ids: (seen.append(ids.shape[1]), real_warmup(model, ids)))
    cfg = compose(["model=tiny_llama", "task=niah", "seq_len=512", "task.depths=[0,50,100]", "n_samples=2",
                   f"warmup_each_length={each_length}", "progress=false", "figures=false"])
    _, samples, _ = run.execute(run.prepare(cfg))
    lengths = [r["input_tokens"] for r in samples]
    assert len(set(lengths)) >= 2 and seen[0] == lengths[0]
    if each_length:
        assert seen == list(dict.fromkeys(lengths))
    else:
        assert seen == [lengths[0]]
