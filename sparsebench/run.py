"""One job: validate, load the model, route its attention to the method, run the task, account, write results.

`run_job(cfg)` reads top to bottom: everything that can fail without the model is checked first (registry names,
method knobs, task data, seq_len against the model's context), then the cell is skipped if its `run_id` finished
before. A failure after that writes `status` rows (`oom`, `error`, `missing_data`) instead of results.
"""
from __future__ import annotations

import importlib.metadata
import json
import logging
import platform
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sparsebench.models import model_label
from sparsebench.results import JobFiles, Row, git_sha, mean_stderr, run_id

log = logging.getLogger(__name__)
CONTROL = ("name", "layers", "executor", "target_density")  # method config keys that are not knobs of the method class


@dataclass
class Job:
    cfg: DictConfig
    run_id: str
    files: JobFiles
    semantic: dict
    method_cls: Any
    task: Any
    calib_task: Any = None  # the task whose prompts calibrate method.target_density (None: `task` itself)


def _method_knobs(cfg: DictConfig) -> dict:
    return {k: v for k, v in OmegaConf.to_container(cfg.method, resolve=True).items() if k not in CONTROL}


def _task_knobs(cfg: DictConfig) -> dict:
    return {k: v for k, v in OmegaConf.to_container(cfg.task, resolve=True).items() if k != "name"}


def _model_file_id(mcfg: DictConfig) -> str | None:
    """The model's file identity, known without loading it (GGUF sha256, hub revision, random seed)."""
    if mcfg.source == "gguf_package":
        import importlib

        return importlib.import_module(mcfg.gguf_package).EXPECTED_SHA256
    if mcfg.source == "hub":
        return mcfg.revision
    return f"random:{mcfg.seed}"


def _calibration_task(cfg: DictConfig, task):
    """The task whose prompts calibrate `method.target_density`: the task itself, or, for a task that drives the model
    through its own `run()` hook and so has no prompts (lm-eval), the one its `calibration_task()` names."""
    if not callable(getattr(task, "run", None)):
        return task
    make = getattr(task, "calibration_task", None)
    if make is None:
        raise ValueError(f"method.target_density={cfg.method.target_density}: task {cfg.task.name!r} runs its own "
                         f"evaluation and names no calibration prompts; set the method's budget knob directly")
    return make()


def prepare(cfg: DictConfig) -> Job:
    """Every check that needs no model, and the job's identity. Raises with a message naming the problem."""
    from sparsebench.executors import check_executor
    from sparsebench.methods import METHODS
    from sparsebench.models import SOURCES, resolve_device, resolve_dtype
    from sparsebench.tasks import TASKS

    METHODS.check(cfg.method.name)
    TASKS.check(cfg.task.name)
    check_executor(cfg.method.executor)
    if cfg.model.source not in SOURCES:
        raise ValueError(f"model.source={cfg.model.source!r} is not one of {', '.join(SOURCES)}")
    if cfg.model.source == "hub" and not cfg.model.hf_id:
        raise ValueError(f"model {cfg.model.name!r} loads from the hub but model.hf_id is not set "
                         f"(e.g. model=hf model.hf_id=org/name model.max_context=32768)")
    if cfg.model.hf_id and cfg.model.source != "hub":
        raise ValueError(f"model.hf_id={cfg.model.hf_id!r} is set but model {cfg.model.name!r} loads from "
                         f"source={cfg.model.source!r}; use model=hf model.hf_id=... (or a hub preset)")
    if cfg.seq_len > cfg.model.max_context:
        raise ValueError(f"seq_len={cfg.seq_len} is beyond model {cfg.model.name!r}'s context of "
                         f"{cfg.model.max_context} tokens")
    if cfg.seq_len < 1 or cfg.n_samples < 1:
        raise ValueError(f"seq_len and n_samples must be positive; got seq_len={cfg.seq_len}, "
                         f"n_samples={cfg.n_samples}")
    method_cls = METHODS.get(cfg.method.name)
    method_cls(executor=cfg.method.executor, **_method_knobs(cfg))  # knob validation before any model
    td = cfg.method.get("target_density")
    if td is not None and (not 0 < td <= 1 or getattr(method_cls, "budget_knob", None) is None):
        knob = getattr(method_cls, "budget_knob", None)
        raise ValueError(f"method.target_density={td}: needs a value in (0, 1] and a method with a budget knob "
                         f"(method {cfg.method.name!r} has {'knob ' + repr(knob) if knob else 'none'})")
    task = TASKS.get(cfg.task.name)(**_task_knobs(cfg))
    task.check()
    calib_task = _calibration_task(cfg, task) if td is not None else task
    if calib_task is not task:
        calib_task.check()
    device = resolve_device(cfg.model.device)
    semantic = {
        "method": OmegaConf.to_container(cfg.method, resolve=True),
        "impl_version": method_cls.impl_version,
        "model": {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k != "device"},
        "model_file": _model_file_id(cfg.model),
        "task": OmegaConf.to_container(cfg.task, resolve=True),
        "task_version": getattr(task, "version", 1),
        "seq_len": cfg.seq_len, "seed": cfg.seed, "n_samples": cfg.n_samples,
        "dtype": resolve_dtype(cfg.model.dtype, device), "device_type": device.split(":")[0],
        "diagnostics": cfg.diagnostics, "diag_rows": cfg.diag_rows if cfg.diagnostics else None,
    }
    if cfg.model.chat_template != "none":
        # templated prompts depend on the rendering's version; untemplated runs keep their identity
        from sparsebench.models import CHAT_FORMAT_VERSION

        semantic["chat_format_version"] = CHAT_FORMAT_VERSION
    # calibration artifacts a method reads (knobs named *_file) change results: hash their content
    from sparsebench.calibration import file_sha256, load

    calib = {}
    for knob, value in _method_knobs(cfg).items():
        if knob.endswith("_file") and value:
            load(value)  # a missing artifact fails here, naming the file
            calib[knob] = file_sha256(value)
    semantic["calib_files"] = calib
    if calib_task is not task:
        semantic["calibration_task"] = {"name": calib_task.name, "version": getattr(calib_task, "version", 1)}
    rid = run_id(semantic)
    files = JobFiles(Path(cfg.paths.raw_dir) / cfg.experiment_name / rid)
    return Job(cfg, rid, files, semantic, method_cls, task, calib_task)


def _versions() -> str:
    out = {}
    for pkg in ("sparsebench", "torch", "transformers", "triton"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return json.dumps(out, sort_keys=True)


def _row_base(job: Job, info, executor: str, label: str) -> dict:
    cfg = job.cfg
    return dict(run_id=job.run_id, experiment=cfg.experiment_name, method=cfg.method.name, method_label=label,
                method_params=json.dumps(OmegaConf.to_container(cfg.method, resolve=True), sort_keys=True),
                target_density=cfg.method.get("target_density"), model=model_label(cfg.model),
                model_quant=cfg.model.quant,
                n_params=info.n_params if info else None, task=cfg.task.name, seq_len=cfg.seq_len, seed=cfg.seed,
                executor=executor, dtype=job.semantic["dtype"], model_file=str(job.semantic["model_file"]),
                git_sha=git_sha(), versions=_versions(),
                device=(info.device if info else "") + f" ({platform.node()})",
                timestamp=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def status_rows(job: Job, status: str, message: str, info=None) -> list[Row]:
    base = _row_base(job, info, job.cfg.method.executor, job.method_cls.label if job.method_cls else "")
    return [Row(**base, subtask=job.cfg.task.name, phase="prefill", metric="status", value=None, unit="", n=0,
                status=status, message=message[:2000])]


def _peak_mem_gb(device) -> float:
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux: the process's peak RSS


def _generate(model, tokenizer, input_ids, max_new_tokens: int):
    """Greedy decoding with the KV cache; the prefill is timed apart from decode."""
    import torch

    import inspect

    dev = input_ids.device
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    # transformers renamed past_key_values to cache (5.2x); accept both
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    eos = set()
    for e in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        eos |= set(e) if isinstance(e, (list, tuple)) else ({e} if e is not None else set())
    with torch.inference_mode():
        sync()
        t0 = time.perf_counter()
        out = model(input_ids=input_ids, use_cache=True, logits_to_keep=1)
        sync()
        t1 = time.perf_counter()
        tokens = []
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(max_new_tokens):
            tokens.append(int(nxt))
            if int(nxt) in eos or len(tokens) == max_new_tokens:
                break
            past = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
            out = model(input_ids=nxt, use_cache=True, logits_to_keep=1, **{cache_kw: past})
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        sync()
        t2 = time.perf_counter()
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    return text, (t1 - t0) * 1e3, (t2 - t1) * 1e3, len(tokens)


def _warmup(model, input_ids) -> None:
    """One untimed prefill of `input_ids` (its kernels compile here, not in a timed sample)."""
    import torch

    with torch.inference_mode():
        model(input_ids=input_ids, use_cache=True, logits_to_keep=1)


def _sample_factors(job: Job) -> dict:
    """The factors every per-sample record carries, so samples tables need no join with rows."""
    cfg = job.cfg
    return dict(run_id=job.run_id, experiment=cfg.experiment_name, method=cfg.method.name,
                method_params=json.dumps(_method_knobs(cfg), sort_keys=True), model=model_label(cfg.model),
                task=cfg.task.name, seq_len=cfg.seq_len, seed=cfg.seed)


def execute(job: Job) -> tuple[list[Row], list[dict], list[dict]]:
    """Load the model, route attention, run every sample; returns rows, sample records and layer records."""
    import torch
    from tqdm.auto import tqdm

    from sparsebench import flops
    from sparsebench.attention import Meter, install, method_layers
    from sparsebench.executors import resolve
    from sparsebench.models import encode_sample, load, task_tokenizer

    cfg = job.cfg
    model, tok, info = load(cfg.model, cfg.paths.cache_dir)
    layers = method_layers(model.config, cfg.method.layers)
    knobs = _method_knobs(cfg)
    calib = None
    if cfg.method.get("target_density") is not None:
        from sparsebench.budget import resolve as resolve_budget

        source = job.calib_task or job.task
        try:
            value, calib = resolve_budget(cfg, job.method_cls, {**knobs, "executor": cfg.method.executor}, model,
                                          tok, source, cfg.paths.calib_dir, layers)
        except ValueError as e:
            if source is job.task:
                raise
            raise ValueError(f"method.target_density={cfg.method.target_density} calibrates task "
                             f"{cfg.task.name!r} on {source.name} prompts at seq_len={cfg.seq_len}: {e}") from e
        knobs[job.method_cls.budget_knob] = value
    method = job.method_cls(executor=cfg.method.executor, **knobs)
    meter = Meter(diagnostics=cfg.diagnostics, diag_rows=cfg.diag_rows)
    install(model, method, layers, cfg.method.executor, meter)
    device = next(model.parameters()).device
    if callable(getattr(job.task, "run", None)):
        return _execute_hook(job, model, tok, info, device, method.label, meter, calib)
    used: set[str] = set()
    task_tok = task_tokenizer(tok, cfg.model.chat_template)
    samples = list(job.task.samples(task_tok, cfg.seq_len, cfg.n_samples, cfg.seed))
    sample_recs, layer_recs = [], []

    def encode(sample):
        # chat template unless the task marks a prompt that upstream feeds raw (LongBench's few-shot/code sets)
        return encode_sample(tok, sample, cfg.model.chat_template, return_tensors="pt").to(device)

    warmed: set[int] = set()
    if cfg.warmup and samples:
        # compiles flex/triton kernels for this length, so prefill_ms of the first sample measures no compilation
        first = encode(samples[0])
        _warmup(model, first)
        warmed.add(first.shape[1])
        meter.reset()
    desc = f"{cfg.method.name} {cfg.task.name} L={cfg.seq_len}"
    for s in tqdm(samples, desc=desc, disable=not cfg.progress, leave=False):
        ids = encode(s)
        if cfg.warmup and cfg.warmup_each_length and ids.shape[1] not in warmed:
            # Triton specialises kernels on shapes (divisibility of lengths, list widths): a new token count may
            # compile inside the timed prefill
            _warmup(model, ids)
            warmed.add(ids.shape[1])
        meter.reset()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        output, prefill_ms, decode_ms, n_new = _generate(model, tok, ids, s.max_new_tokens)
        scores = job.task.score(s, output)
        prefill = meter.records  # decode steps are not routed through the meter
        m_layers = [r for r in prefill if r.kind == "method"]
        T = ids.shape[1]
        attn = sum(r.attention_flops for r in prefill)
        est = sum(r.estimation_flops for r in prefill)
        rec = dict(**_sample_factors(job), sample_id=s.id, subtask=s.subtask, prompt_sha256=s.prompt_sha256,
                   input_tokens=T, truncation=s.meta.get("truncation", "none"), output=output, scores=scores,
                   density=(sum(r.density for r in m_layers) / len(m_layers)) if m_layers else 1.0,
                   estimation_flops=est, attention_flops=attn,
                   total_flops=flops.linear_flops(model, T) + flops.lm_head_flops(model, 1) + attn + est,
                   estimation_ms=sum(r.estimation_ms for r in m_layers),
                   attention_ms=sum(r.attention_ms for r in prefill), prefill_ms=prefill_ms, decode_ms=decode_ms,
                   new_tokens=n_new, peak_mem_gb=_peak_mem_gb(device),
                   meta={k: v for k, v in s.meta.items() if k != "truncation"})
        if cfg.diagnostics and m_layers:
            rec["attention_recall"] = sum(r.attention_recall for r in m_layers) / len(m_layers)
            rec["output_rel_error"] = sum(r.output_rel_error for r in m_layers) / len(m_layers)
        for k in ("depth",):
            if k in s.meta:
                rec[k] = s.meta[k]
        sample_recs.append(rec)
        layer_recs.extend(dict(run_id=job.run_id, sample_id=s.id, **asdict(r)) for r in prefill)
        used |= {r.executor for r in m_layers or prefill}
    # the executor(s) that really ran the method's layers (auto resolves per call)
    executor = "+".join(sorted(used)) or resolve(cfg.method.executor, None, device)
    rows = aggregate(job, sample_recs, info, executor, method.label)
    base = _row_base(job, info, executor, method.label)
    for sub, count in (getattr(job.task, "skipped", lambda: {})() or {}).items():
        rows.append(Row(**base, subtask=sub, phase="prefill", metric="skipped_samples", value=float(count),
                        unit="samples", n=count))
    for sub, reason in (getattr(job.task, "unavailable", lambda: {})() or {}).items():
        rows.append(Row(**base, subtask=sub, phase="prefill", metric="status", value=None, unit="", n=0,
                        status="missing_data", message=reason))
    return rows, sample_recs, layer_recs


def _execute_hook(job: Job, model, tok, info, device, label: str, meter,
                  calib: dict | None = None) -> tuple[list[Row], list[dict], list[dict]]:
    """A task that drives the model itself (`run(model, tokenizer, cfg, meter=...)`, e.g. lm-eval) instead of
    `samples()`: its metric and cost rows (the meter records every routed prefill it makes) become result rows.
    With `method.target_density`, a `calibration_density` row (subtask `calibration`) records the budget knob's
    value and the density it gave on the calibration prompts, which come from another task (`job.calib_task`)."""
    from sparsebench.executors import resolve

    cfg = job.cfg
    rows_m, recs = job.task.run(model, tok, cfg, meter=meter)
    ran = {r.get("executor") for r in getattr(job.task, "layer_records", []) if r.get("executor")}
    executor = "+".join(sorted(ran)) or resolve(cfg.method.executor, None, device)
    base = _row_base(job, info, executor, label)
    rows = [Row(**base, **r) for r in rows_m]
    if calib is not None:
        source = job.calib_task or job.task
        rows.append(Row(**base, subtask="calibration", phase="prefill", metric="calibration_density",
                        value=float(calib["density"]), unit="fraction", n=len(calib.get("calib_seeds") or []),
                        message=f"{calib['knob']}={calib['value']} calibrated on {source.name} prompts at "
                                f"seq_len={cfg.seq_len} (seeds {calib.get('calib_seeds')}, data "
                                f"{calib.get('calib_data')})"))
    layers = [dict(run_id=job.run_id, **r) for r in getattr(job.task, "layer_records", [])]
    return rows, [{**_sample_factors(job), **r} for r in recs], layers


UNITS = {"density": "fraction", "input_tokens": "tokens", "estimation_flops": "flop", "attention_flops": "flop",
         "total_flops": "flop", "estimation_ms": "ms", "attention_ms": "ms", "prefill_ms": "ms", "decode_ms": "ms",
         "peak_mem_gb": "GB", "attention_recall": "fraction", "output_rel_error": "fraction"}
DECODE_METRICS = {"decode_ms"}


def aggregate(job: Job, recs: list[dict], info, executor: str, label: str) -> list[Row]:
    """Per subtask: mean and standard error of each quality metric and each cost metric over samples."""
    base = _row_base(job, info, executor, label)
    rows = []
    for sub in sorted({r["subtask"] for r in recs}):
        group = [r for r in recs if r["subtask"] == sub]
        quality = sorted({m for r in group for m in r["scores"]})
        for metric in quality + [m for m in UNITS if m in group[0]]:
            vals = [r["scores"][metric] if metric in quality else r[metric] for r in group]
            if metric == "peak_mem_gb":
                value, err = max(vals), None
            else:
                value, err = mean_stderr([float(v) for v in vals])
            rows.append(Row(**base, subtask=sub, phase="decode" if metric in DECODE_METRICS else "prefill",
                            metric=metric, value=value, unit=UNITS.get(metric, "fraction"), n=len(vals),
                            stderr=err))
    subtasks = sorted({r["subtask"] for r in recs})
    if len(subtasks) > 1:
        # a suite's summary number (RULER's per-length average): the unweighted mean of the subtask means
        for metric in sorted({m for r in recs for m in r["scores"]}):
            means = [x.value for x in rows if x.metric == metric and x.subtask in subtasks]
            if len(means) == len(subtasks):
                rows.append(Row(**base, subtask="average", phase="prefill", metric=metric,
                                value=sum(means) / len(means), unit="fraction",
                                n=sum(x.n for x in rows if x.metric == metric and x.subtask in subtasks)))
    return rows


def run_job(cfg: DictConfig, raise_errors: bool = True) -> tuple[str, list[Row]]:
    """Run one cell; returns (status, rows). Finished cells are skipped ("skipped", their rows)."""
    import torch

    from sparsebench.results import read_jsonl

    job = prepare(cfg)  # bad input raises here, before any model loads
    if job.files.finished():
        log.info("run_id %s finished before: skipped (%s)", job.run_id, job.files.dir)
        return "skipped", [Row(**r) for r in read_jsonl(job.files.rows)]
    config = {"run_id": job.run_id, "semantic": job.semantic, "resolved": OmegaConf.to_container(cfg, resolve=True)}
    try:
        rows, samples, layers = execute(job)
    except torch.OutOfMemoryError as e:
        rows, samples, layers = status_rows(job, "oom", str(e)), [], []
    except FileNotFoundError as e:
        rows, samples, layers = status_rows(job, "missing_data", str(e)), [], []
    except Exception as e:  # a failed cell is data: record it, then let the caller decide
        rows, samples, layers = status_rows(job, "error", f"{type(e).__name__}: {e}"), [], []
        job.files.write(rows, samples, layers, config)
        if raise_errors:
            raise
        log.exception("cell %s failed", job.run_id)
        return "error", rows
    job.files.write(rows, samples, layers, config)
    from sparsebench.tracking import log_job

    log_job(cfg, rows)
    status = rows[0].status if rows else "error"
    return status, rows
