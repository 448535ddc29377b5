"""Tests of the lm-evaluation-harness bridge: result and sample conversion, checks, and `task=lm_eval` end to end on
the tiny random model with a sparse method active, on a local lm-eval task (tests/assets/lm_eval_tiny)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sparsebench.tasks import TASKS
from sparsebench.tasks.lm_eval_bridge import LMEval, metric_row, result_rows

ROOT = Path(__file__).resolve().parents[2]
TINY = "tests/assets/lm_eval_tiny"  # relative to the repository root, as the fixture's data_files are


def test_registry_and_knobs():
    assert TASKS.get("lm_eval") is LMEval
    with pytest.raises(ValueError, match=r"task.tasks=\[hellaswag\]"):
        LMEval()
    with pytest.raises(ValueError, match="num_fewshot"):
        LMEval(tasks=["x"], num_fewshot=-1)
    assert LMEval(tasks="hellaswag").tasks == ["hellaswag"]


def test_not_a_sample_task():
    with pytest.raises(TypeError, match="run"):
        LMEval(tasks=["x"]).samples(None, 512, 1, 0)


@pytest.mark.parametrize("name, filt, value, stderr, expected", [
    ("acc", "none", 0.25, 0.1, ("accuracy", 0.25, 0.1, "fraction")),
    ("acc_norm", "none", 0.5, None, ("accuracy_norm", 0.5, None, "fraction")),
    ("exact_match", "strict-match", 0.75, 0.05, ("exact_match/strict-match", 0.75, 0.05, "fraction")),
    ("bleu", "none", 31.0, 2.0, ("bleu", 0.31, 0.02, "fraction")),
    ("word_perplexity", "none", 17.5, None, ("word_perplexity", 17.5, None, "perplexity")),
    ("bits_per_byte", "none", 0.9, None, ("bits_per_byte", 0.9, None, "bits")),
    ("f1", "none", 0.6, 0.01, ("f1", 0.6, 0.01, "fraction")),
    ("mean_length", "none", 42.0, None, ("mean_length", 42.0, None, "score")),
])
def test_metric_row(name, filt, value, stderr, expected):
    got = metric_row(name, filt, value, stderr)
    assert got[0] == expected[0] and got[3] == expected[3]
    assert got[1] == pytest.approx(expected[1])
    assert (got[2] is None) == (expected[2] is None) and (got[2] is None or got[2] == pytest.approx(expected[2]))


def test_result_rows_from_lm_eval_output():
    out = {
        "results": {
            "grp": {"alias": "grp", "acc,none": 0.5, "acc_stderr,none": "N/A"},
            "t1": {"alias": " - t1", "sample_len": 4, "acc,none": 0.25, "acc_stderr,none": 0.25,
                   "exact_match,flex": 1.0, "exact_match_stderr,flex": 0.0, "samples,none": [1, 2]},
        },
        "n-samples": {"t1": {"original": 10, "effective": 4}},
    }
    rows = {(r["subtask"], r["metric"]): r for r in result_rows(out)}
    assert set(rows) == {("grp", "accuracy"), ("t1", "accuracy"), ("t1", "exact_match/flex")}
    assert rows[("grp", "accuracy")]["stderr"] is None and rows[("grp", "accuracy")]["n"] == 0
    r = rows[("t1", "accuracy")]
    assert (r["value"], r["stderr"], r["n"], r["unit"], r["phase"]) == (0.25, 0.25, 4, "fraction", "prefill")


def test_sample_records(byte_tok):
    gen = {"doc_id": 3, "arguments": [["Question: q?\nAnswer:", {"until": ["\n"], "max_gen_toks": 8}]],
           "filtered_resps": [" blue"], "filter": "none", "metrics": ["exact_match"], "exact_match": 1.0,
           "target": "blue", "doc_hash": "h"}
    long_ctx = "x" * 600
    ll = {"doc_id": 0, "arguments": [[long_ctx, " a"], [long_ctx, " bbbbbbbbbb"]],
          "filtered_resps": [[-1.0, False], [-2.0, True]], "filter": "none", "metrics": ["acc"], "acc": 0.0,
          "target": 1}
    recs = LMEval._records("t", [gen], byte_tok, 512) + LMEval._records("m", [ll], byte_tok, 512)
    g, m = recs
    assert g["sample_id"] == "lm_eval/t/3" and g["output"] == " blue" and g["scores"] == {"exact_match": 1.0}
    assert g["prompt_sha256"] == hashlib.sha256(b"Question: q?\nAnswer:").hexdigest()
    assert g["input_tokens"] == 1 + len("Question: q?\nAnswer:") and g["truncation"] == "none"
    assert m["truncation"] == "left" and m["scores"] == {"accuracy": 0.0} and json.loads(m["output"])[1] == [-2.0, True]


def test_check_names_unknown_tasks_and_missing_folders(tmp_path):
    pytest.importorskip("lm_eval")
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        LMEval(tasks=["sb_tiny_qa"], include_path=str(tmp_path / "no_such_dir")).check()
    task = LMEval(tasks=["sb_tiny_qa", "sb_tiny_qaa"], include_path=str(ROOT / TINY))
    with pytest.raises(KeyError, match="unknown lm-eval task 'sb_tiny_qaa'.*Did you mean 'sb_tiny_qa'"):
        task.check()


def test_cli_end_to_end_with_streaming(tmp_path):
    """`task=lm_eval` through `python -m sparsebench` on tiny_llama with streaming active: lm-eval's metrics, the
    meter's density and costs per task, per-sample records and per-layer summaries."""
    pytest.importorskip("lm_eval")
    env = {**os.environ, "SPARSEBENCH_CACHE": str(tmp_path / "cache"), "HYDRA_FULL_ERROR": "0"}
    args = ["task=lm_eval", "task.tasks=[sb_tiny_qa,sb_tiny_mc]", f"task.include_path={TINY}", "model=tiny_llama",
            "method=streaming", "method.n_init=16", "method.n_local=16", "method.block_size=16", "seq_len=512",
            "n_samples=3", f"paths.root_dir={tmp_path}", "progress=false"]
    res = subprocess.run([sys.executable, "-m", "sparsebench", *args], capture_output=True, text=True, timeout=600,
                         env=env, cwd=ROOT, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    (job,) = [p.parent for p in (tmp_path / "results" / "raw" / "default").glob("*/rows.jsonl")]
    rows = [json.loads(line) for line in (job / "rows.jsonl").read_text().splitlines()]
    assert rows and all(r["status"] == "ok" and r["task"] == "lm_eval" and r["method"] == "streaming" for r in rows)
    by = {(r["subtask"], r["metric"]): r for r in rows}
    assert {("sb_tiny_qa", "exact_match"), ("sb_tiny_mc", "accuracy"), ("sb_tiny_mc", "accuracy_norm")} <= set(by)
    for key in (("sb_tiny_qa", "exact_match"), ("sb_tiny_mc", "accuracy")):
        assert 0.0 <= by[key]["value"] <= 1.0 and by[key]["n"] == 3 and by[key]["stderr"] is not None
    for sub in ("sb_tiny_qa", "sb_tiny_mc"):
        assert 0.0 < by[(sub, "density")]["value"] < 1.0  # prompts longer than the 32-token window are sparse
        assert by[(sub, "attention_flops")]["value"] > 0 and by[(sub, "input_tokens")]["value"] > 32
    samples = [json.loads(line) for line in (job / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6 and {s["subtask"] for s in samples} == {"sb_tiny_qa", "sb_tiny_mc"}
    qa = next(s for s in samples if s["sample_id"] == "lm_eval/sb_tiny_qa/0")
    assert qa["prompt_sha256"] == hashlib.sha256(b"Question: What colour is a clear daytime sky?\nAnswer:").hexdigest()
    assert qa["target"] == "blue" and set(qa["scores"]) == {"exact_match"} and qa["run_id"] == job.name
    assert all(s["truncation"] == "none" and s["task"] == "lm_eval" for s in samples)
    layers = [json.loads(line) for line in (job / "layers.jsonl").read_text().splitlines()]
    assert {(x["sample_id"], x["layer"]) for x in layers} == {(f"lm_eval/{t}", i) for t in ("sb_tiny_qa", "sb_tiny_mc")
                                                              for i in (0, 1)}
    assert all(x["kind"] == "method" and x["calls"] >= 3 for x in layers)


def test_target_density_calibration_task():
    """lm-eval has no prompts of its own to calibrate on: target_density uses NIAH's; a run-hook task naming none
    fails before any model loads."""
    from omegaconf import OmegaConf
    from sparsebench.tasks.niah import NIAH

    from sparsebench.run import _calibration_task

    cfg = OmegaConf.create({"method": {"target_density": 0.3}, "task": {"name": "hook"}})
    assert isinstance(_calibration_task(cfg, LMEval(tasks=["x"])), NIAH)
    niah = NIAH()
    assert _calibration_task(cfg, niah) is niah

    class Hook:
        name = "hook"

        def run(self, model, tokenizer, cfg, meter=None):
            return [], []

    with pytest.raises(ValueError, match=r"method.target_density=0.3: task 'hook' .* budget knob directly"):
        _calibration_task(cfg, Hook())


def test_cli_target_density_with_xattn(tmp_path):
    """`task=lm_eval method=xattn method.target_density=0.3`: the threshold is bisected on NIAH prompts at seq_len,
    stored, and recorded in a `calibration_density` row next to lm-eval's metrics and the executed density."""
    pytest.importorskip("lm_eval")
    env = {**os.environ, "SPARSEBENCH_CACHE": str(tmp_path / "cache"), "HYDRA_FULL_ERROR": "0"}
    args = ["task=lm_eval", "task.tasks=[sb_tiny_mc]", f"task.include_path={TINY}", "model=tiny_llama",
            "method=xattn", "method.target_density=0.3", "method.block_size=16", "method.stride=4", "seq_len=512",
            "n_samples=2", f"paths.root_dir={tmp_path}", "progress=false"]
    res = subprocess.run([sys.executable, "-m", "sparsebench", *args], capture_output=True, text=True, timeout=600,
                         env=env, cwd=ROOT, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    (job,) = [p.parent for p in (tmp_path / "results" / "raw" / "default").glob("*/rows.jsonl")]
    rows = [json.loads(line) for line in (job / "rows.jsonl").read_text().splitlines()]
    assert rows and all(r["status"] == "ok" and r["method"] == "xattn" and r["target_density"] == 0.3 for r in rows)
    by = {(r["subtask"], r["metric"]): r for r in rows}
    # the executed density is measured on lm-eval's (short) prompts: sparse, but not at the target
    assert ("sb_tiny_mc", "accuracy") in by and 0.0 < by[("sb_tiny_mc", "density")]["value"] < 1.0
    calib = by[("calibration", "calibration_density")]
    assert abs(calib["value"] - 0.3) < 0.05 and calib["unit"] == "fraction" and calib["n"] == 2
    assert calib["message"].startswith("threshold=") and "on niah prompts at seq_len=512" in calib["message"]
    stored = list((tmp_path / "cache" / "calib" / "tiny_llama" / "xattn").glob("target_density-*.json"))
    assert len(stored) == 1
