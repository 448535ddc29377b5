"""End to end through `python -m sparsebench`: multirun cells, resume without rework, kill and resume, bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

SWEEP = ["-m", "method=dense,streaming", "task=niah", "model=tiny_llama", "seq_len=512,1024", "task.depths=[0,100]"]


def _run(args, root, timeout=600, env=None):
    e = {**os.environ, "SPARSEBENCH_CACHE": str(root / "cache"), "HYDRA_FULL_ERROR": "0", **(env or {})}
    return subprocess.run([sys.executable, "-m", "sparsebench", *args, f"paths.root_dir={root}", "progress=false"],
                          capture_output=True, text=True, timeout=timeout, env=e, cwd=root)


def _cells(root, exp="default"):
    return {p.parent.name: p for p in (root / "results" / "raw" / exp).glob("*/rows.jsonl")}


def test_multirun_resume_and_kill(tmp_path):
    first = _run(SWEEP, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    cells = _cells(tmp_path)
    assert len(cells) == 4
    for path in cells.values():
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert rows and all(r["status"] == "ok" for r in rows)
        assert {"accuracy", "density", "input_tokens", "attention_flops", "prefill_ms"} <= {r["metric"] for r in rows}
        assert len((path.parent / "samples.jsonl").read_text().splitlines()) == 2
    assert (tmp_path / "results" / "tables" / "default.parquet").exists()
    assert (tmp_path / "results" / "figures" / "default_niah_heatmap.png").exists()
    assert "Summary" in first.stdout

    # again: nothing is recomputed
    stamps = {k: p.stat().st_mtime_ns for k, p in cells.items()}
    again = _run(SWEEP, tmp_path)
    assert again.returncode == 0
    assert again.stdout.count("already finished, skipped") == 4
    assert {k: p.stat().st_mtime_ns for k, p in _cells(tmp_path).items()} == stamps

    # a new sweep killed mid-way, then resumed: nothing lost, nothing duplicated
    sweep = [a.replace("512,1024", "640,768") for a in SWEEP]
    env = {**os.environ, "SPARSEBENCH_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "sparsebench", *sweep, f"paths.root_dir={tmp_path}",
                             "progress=false"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while len(_cells(tmp_path)) < 5 and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = _cells(tmp_path)
    assert 5 <= len(done) < 8, "the kill should land mid-sweep"
    kept = {k: p.stat().st_mtime_ns for k, p in done.items()}
    resumed = _run(sweep, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = _cells(tmp_path)
    assert len(final) == 8
    changed = [k for k, t in kept.items() if final[k].stat().st_mtime_ns != t]
    assert not changed, (changed, resumed.stdout[-3000:])
    assert resumed.stdout.count("already finished, skipped") == len(kept) - 4
    leftovers = [p for p in (tmp_path / "results" / "raw").rglob("*.tmp")]
    assert not leftovers


BAD = [
    (["method.treshold=0.5"], "treshold"),
    (["method=streaming", "method.n_lcoal=3"], "n_lcoal"),
    (["method=xatn"], "Available options in 'method'"),
    (["method.name=xatn"], "unknown method 'xatn'; valid methods: dense,"),
    (["task.name=rulr"], "unknown task 'rulr'; valid tasks:"),
    (["seq_len=40000"], "seq_len=40000 is beyond model 'gemma3_270m'"),
    (["task.essay_path=/no/such/essays"], "/no/such/essays"),
    (["seq_len=abc"], "seq_len"),
    (["model=hf"], "model.hf_id is not set"),
    (["model=hf", "model.hf_id=org/name"], "Missing mandatory value: model.max_context"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[b[1][:24] for b in BAD])
def test_bad_input_fails_before_model_load(tmp_path, args, message):
    t0 = time.time()
    res = _run(args, tmp_path, timeout=120)
    assert res.returncode != 0
    assert message in res.stderr + res.stdout
    assert not (tmp_path / "cache").exists(), "no model may be loaded or converted"
    assert time.time() - t0 < 60


def test_failed_cell_is_recorded_and_sweep_goes_on(tmp_path):
    res = _run(["-m", "model=tiny_llama", "seq_len=512,9000", "task.depths=[50]"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(line) for p in _cells(tmp_path).values() for line in p.read_text().splitlines()]
    status = {(r["seq_len"], r["status"]) for r in rows}
    assert (512, "ok") in status and (9000, "error") in status
    assert "beyond model 'tiny_llama'" in next(r["message"] for r in rows if r["status"] == "error")
    assert "Failed cells" in res.stdout


def test_help_is_fast_and_lists_choices(tmp_path):
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", "sparsebench", "--help"], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert res.returncode == 0
    from sparsebench.methods import METHODS
    from sparsebench.tasks import TASKS

    methods = next(line for line in res.stdout.splitlines() if line.startswith("method: "))
    tasks = next(line for line in res.stdout.splitlines() if line.startswith("task: "))
    assert set(METHODS.names()) <= set(methods[len("method: "):].split(", "))
    assert set(TASKS.names()) <= set(tasks[len("task: "):].split(", "))
    assert time.time() - t0 < 15


def test_help_lists_only_user_facing_groups(tmp_path):
    """--help leaves out the internal `schema/*` groups (the structured-config schemas in Hydra's ConfigStore), keeps
    the user-facing ones and hydra/launcher, and imports neither torch nor transformers."""
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "sparsebench", "--help"], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    section = res.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    groups = dict(line.split(": ", 1) for line in section.splitlines() if ": " in line)
    assert not [g for g in groups if g == "schema" or g.startswith("schema/")], groups
    assert "schema" not in section
    assert {"method", "task", "model", "experiment", "logger", "paths", "debug", "hydra/launcher"} <= set(groups)
    assert {"dense", "streaming", "xattn"} <= set(groups["method"].split(", "))
    assert {"niah", "lm_eval"} <= set(groups["task"].split(", "))
    modules = {line.rsplit("|", 1)[-1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")}
    assert not {m for m in modules if m.split(".")[0] in ("torch", "transformers")}


def test_wandb_logger_offline(tmp_path):
    pytest.importorskip("wandb")
    res = _run(["model=tiny_llama", "seq_len=512", "task.depths=[50]", "logger=wandb", "logger.mode=offline"],
               tmp_path, env={"WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"})
    assert res.returncode == 0, res.stderr[-3000:]
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0


def test_cfg_hydra_resolve(tmp_path):
    """`--cfg hydra --resolve` resolves the hydra node on its own (no paths, no experiment_name): it must not fail,
    and a composed run's output dirs still follow paths.raw_dir and experiment_name."""
    res = subprocess.run([sys.executable, "-m", "sparsebench", "--cfg", "hydra", "--resolve"], check=False,
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "<paths.raw_dir>/hydra/" in res.stdout

    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from sparsebench import schema

    schema.store()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="sparsebench.conf", version_base="1.3"):
        cfg = hydra_compose(config_name="config", return_hydra_config=True,
                            overrides=[f"paths.root_dir={tmp_path}", "experiment_name=exp"])
    GlobalHydra.instance().clear()
    run_dir, sweep_dir = OmegaConf.select(cfg, "hydra.run.dir"), OmegaConf.select(cfg, "hydra.sweep.dir")
    assert run_dir.startswith(f"{tmp_path}/results/raw/hydra/20"), run_dir
    assert sweep_dir.startswith(f"{tmp_path}/results/raw/hydra/exp_20"), sweep_dir
