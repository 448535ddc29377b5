"""Any lm-evaluation-harness task on a sparsebench-patched model: `task=lm_eval task.tasks=[hellaswag]`.

lm-evaluation-harness (Gao et al., EleutherAI/lm-evaluation-harness; `lm_eval.simple_evaluate` and
`lm_eval.models.huggingface.HFLM`) drives its own requests (log-likelihoods, greedy generation), so this task does
not produce `Sample`s; it has a `run(model, tokenizer, cfg, meter=None)` hook that `sparsebench.run` calls instead of
its sample loop. For each name in `tasks` (a task, group, tag or glob that lm-eval's `TaskManager` knows; local YAMLs
through `include_path`) it calls

    simple_evaluate(model=HFLM(pretrained=<the routed model>, tokenizer=<its tokenizer>, max_length=seq_len,
                    batch_size=1), tasks=[name], limit=n_samples, log_samples=True, task_manager=..., ...)

and turns the results into rows and records:

- rows: one per lm-eval metric and task (groups included), value and stderr as lm-eval reports them, `n` = the
  number of documents evaluated. `acc` / `acc_norm` are renamed `accuracy` / `accuracy_norm` (sparsebench's metric
  names); a filter other than "none" is appended as `metric/filter`; sacrebleu's 0-100 metrics (bleu, chrf, ter)
  are divided by 100 so that fractions are stored as fractions; perplexities (unit "perplexity") and
  bits_per_byte (unit "bits") are kept as they are; any other metric has unit "fraction" when it lies in [0, 1] and
  "score" otherwise.
- cost rows per requested name, from the meter that records every routed prefill during lm-eval's forward calls:
  `density` (mean over the method's layer calls), `estimation_flops`, `attention_flops`, `estimation_ms`,
  `attention_ms` (per document: totals over the task's calls divided by its documents), `input_tokens` (mean).
  lm-eval batches and reorders requests, so these are per task, not per document.
- sample records (`samples.jsonl`): one per logged lm-eval sample, with the document id, the prompt's sha256, its
  tokens, `truncation` ("left" when lm-eval had to cut the prompt's start to fit `max_length`, else "none"), the
  (filtered) response, the per-sample metric values and the target.
- `layer_records`: one record per (requested name, layer) with the calls, mean density and summed costs, written to
  the per-layer file.

`method.target_density`: lm-eval builds its own requests, so there are no prompts of this task to bisect the budget
knob on; the knob is calibrated instead on the prompts of `calibration_task()` — NIAH with its defaults (a haystack
of Python's documentation prose, no download) — at `seq_len`, with the calibration seeds (disjoint from the
evaluation seeds) the budget resolver uses for every task. A `calibration_density` row records the knob value, the
density it gave on those prompts and where they came from; the `density` rows measure what the lm-eval prompts
executed, which differs from the target when they are much shorter than `seq_len` or unlike NIAH's prose.

Seeds: `random_seed = seed` and numpy/torch/few-shot seeds `1234 + seed`, so seed 0 reproduces lm-eval's defaults.
The chat template follows `model.chat_template` (`apply_chat_template` when it is active). Batch size is 1:
sparsebench's attention takes unpadded inputs.

Offline use: a local task YAML with `dataset_path: json` and `dataset_kwargs: {data_files: ...}` under
`include_path`; relative data paths resolve against the working directory (`datasets.load_dataset`'s rule).

Deviations from plain lm-eval: none in what is evaluated; `metadata.max_seq_lengths` defaults to `[seq_len]` (read
only by tasks that generate data per length, such as lm-eval's RULER port, which also needs
`metadata.pretrained=<tokenizer id>` when given a model object: see specs §1.4).
"""
from __future__ import annotations

import difflib
import hashlib
import inspect
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sparsebench.task import count_tokens

RENAME = {"acc": "accuracy", "acc_norm": "accuracy_norm"}
PERCENT_METRICS = {"bleu", "chrf", "ter"}
PERPLEXITIES = {"perplexity", "word_perplexity", "byte_perplexity"}
COST_UNITS = {"density": "fraction", "estimation_flops": "flop", "attention_flops": "flop", "estimation_ms": "ms",
              "attention_ms": "ms", "input_tokens": "tokens"}
INSTALL_HINT = "pip install 'sparsebench[lm-eval]' (or pip install lm-eval)"


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def metric_row(name: str, filt: str, value: float, stderr: float | None) -> tuple[str, float, float | None, str]:
    """(sparsebench metric name, value, stderr, unit) for lm-eval's `<name>,<filter>` result."""
    metric = RENAME.get(name, name) + ("" if filt in ("none", "") else f"/{filt}")
    if name in PERCENT_METRICS:
        return metric, value / 100, (stderr / 100 if stderr is not None else None), "fraction"
    if name in PERPLEXITIES:
        return metric, value, stderr, "perplexity"
    if name == "bits_per_byte":
        return metric, value, stderr, "bits"
    return metric, value, stderr, "fraction" if 0.0 <= value <= 1.0 else "score"


def result_rows(results: Mapping[str, Any]) -> list[dict]:
    """Rows from `simple_evaluate(...)` output: one per (task or group, metric, filter)."""
    rows = []
    n_samples = results.get("n-samples", {})
    for task, entry in results.get("results", {}).items():
        n = n_samples.get(task, {}).get("effective") or entry.get("sample_len") or 0
        for key, raw in entry.items():
            if "," not in key:
                continue
            name, filt = key.split(",", 1)
            value = _number(raw)
            if name.endswith("_stderr") or value is None:
                continue
            stderr = _number(entry.get(f"{name}_stderr,{filt}"))
            metric, value, stderr, unit = metric_row(name, filt, value, stderr)
            rows.append(dict(subtask=task, phase="prefill", metric=metric, value=value, unit=unit, n=int(n),
                             stderr=stderr))
    return rows


def _cost_rows(name: str, records: Sequence[Any], n_docs: int, tokens: Sequence[int]) -> list[dict]:
    method = [r for r in records if r.kind == "method"]
    per = max(n_docs, 1)
    values = {
        "density": sum(r.density for r in method) / len(method) if method else 1.0,
        "estimation_flops": sum(r.estimation_flops for r in records) / per,
        "attention_flops": sum(r.attention_flops for r in records) / per,
        "estimation_ms": sum(r.estimation_ms for r in records) / per,
        "attention_ms": sum(r.attention_ms for r in records) / per,
    }
    if tokens:
        values["input_tokens"] = sum(tokens) / len(tokens)
    return [dict(subtask=name, phase="prefill", metric=m, value=float(v), unit=COST_UNITS[m],
                 n=len(method) if m == "density" else n_docs, stderr=None) for m, v in values.items()]


def _layer_summary(name: str, records: Sequence[Any]) -> list[dict]:
    out: dict[int, dict] = {}
    for r in records:
        s = out.setdefault(r.layer, dict(sample_id=f"lm_eval/{name}", layer=r.layer, kind=r.kind, calls=0,
                                         q_len=0.0, density=0.0, estimation_flops=0, attention_flops=0,
                                         estimation_ms=0.0, attention_ms=0.0, executor=""))
        ran = getattr(r, "executor", "")  # the executor that ran the call, where the meter records it
        if ran and ran not in s["executor"].split("+"):
            s["executor"] = "+".join(sorted(filter(None, [*s["executor"].split("+"), ran])))
        s["calls"] += 1
        s["q_len"] += r.q_len
        s["density"] += r.density
        for k in ("estimation_flops", "attention_flops", "estimation_ms", "attention_ms"):
            s[k] += getattr(r, k)
    for s in out.values():
        s["q_len"] /= s["calls"]
        s["density"] /= s["calls"]
    return [out[k] for k in sorted(out)]


class LMEval:
    """lm-evaluation-harness tasks through the `run` hook (see the module docstring).

    Args:
        tasks: lm-eval task, group or tag names (globs allowed), each evaluated by its own `simple_evaluate` call.
        include_path: a folder of extra task YAMLs (local tasks), passed to `TaskManager(include_path=...)`.
        num_fewshot: few-shot examples (None: each task's default).
        gen_kwargs: lm-eval's generation overrides, e.g. "max_gen_toks=64" (None: each task's own).
        system_instruction: lm-eval's system instruction (None: none).
        bootstrap_iters: bootstrap resamples for metrics whose stderr lm-eval bootstraps.
        metadata: passed to lm-eval's TaskManager and tasks (e.g. RULER's `pretrained`, `max_seq_lengths`).
    """

    name = "lm_eval"
    version = 1

    def __init__(self, *, tasks: Sequence[str] = (), include_path: str | None = None, num_fewshot: int | None = None,
                 gen_kwargs: str | None = None, system_instruction: str | None = None,
                 bootstrap_iters: int = 100000, metadata: Mapping[str, Any] | None = None):
        tasks = [tasks] if isinstance(tasks, str) else list(tasks)
        if not tasks or not all(isinstance(t, str) and t for t in tasks):
            raise ValueError(f"task=lm_eval needs lm-eval task names, e.g. task.tasks=[hellaswag]; got {tasks}")
        if num_fewshot is not None and int(num_fewshot) < 0:
            raise ValueError(f"num_fewshot must be None or >= 0, got {num_fewshot}")
        if int(bootstrap_iters) < 0:
            raise ValueError(f"bootstrap_iters must be >= 0, got {bootstrap_iters}")
        self.tasks = tasks
        self.include_path = include_path
        self.num_fewshot = None if num_fewshot is None else int(num_fewshot)
        self.gen_kwargs = gen_kwargs
        self.system_instruction = system_instruction
        self.bootstrap_iters = int(bootstrap_iters)
        self.metadata = dict(metadata or {})
        self.layer_records: list[dict] = []
        self._manager = None

    def _task_manager(self):
        if self._manager is None:
            try:
                from lm_eval.tasks import TaskManager
            except ImportError as e:
                raise ValueError(f"task=lm_eval needs lm-evaluation-harness, which is not installed ({e}); "
                                 f"{INSTALL_HINT}") from None
            kwargs = {"include_path": str(Path(self.include_path).expanduser())} if self.include_path else {}
            if self.metadata and "metadata" in inspect.signature(TaskManager).parameters:
                kwargs["metadata"] = self.metadata
            self._manager = TaskManager(**kwargs)
        return self._manager

    def check(self) -> None:
        """lm-eval installed, include_path present, every task name known (before any model loads)."""
        if self.include_path and not Path(self.include_path).expanduser().is_dir():
            raise FileNotFoundError(f"lm_eval include_path {self.include_path!r} is not a folder")
        manager = self._task_manager()
        known = manager.all_tasks
        for name in self.tasks:
            if name in known or manager.match_tasks([name]):
                continue
            close = difflib.get_close_matches(name, known, n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            where = f" (include_path {self.include_path!r})" if self.include_path else ""
            raise KeyError(f"unknown lm-eval task {name!r}{where}.{hint}")

    def calibration_task(self):
        """The task whose prompts calibrate `method.target_density` (see the module docstring): NIAH, defaults."""
        from sparsebench.tasks.niah import NIAH

        return NIAH()

    def samples(self, tokenizer, seq_len: int, n: int, seed: int):
        """lm-eval builds its own requests: this task runs through `run`, never through the sample loop."""
        raise TypeError("task=lm_eval is driven by its run() hook, not by samples()")

    def score(self, sample, output: str) -> dict[str, float]:
        raise TypeError("task=lm_eval is scored by lm-eval inside run()")

    def run(self, model, tokenizer, cfg, meter=None) -> tuple[list[dict], list[dict]]:
        """Evaluate every requested lm-eval task on `model`; returns (rows, sample records). See the module docs."""
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM

        from sparsebench.models import uses_chat_template

        manager = self._task_manager()
        lm = HFLM(pretrained=model, tokenizer=tokenizer, max_length=int(cfg.seq_len), batch_size=1)
        metadata = {"max_seq_lengths": [int(cfg.seq_len)], **self.metadata}
        seed = int(cfg.seed)
        kwargs = dict(model=lm, limit=int(cfg.n_samples), log_samples=True, task_manager=manager,
                      num_fewshot=self.num_fewshot, gen_kwargs=self.gen_kwargs, bootstrap_iters=self.bootstrap_iters,
                      system_instruction=self.system_instruction,
                      apply_chat_template=uses_chat_template(tokenizer, cfg.model.chat_template),
                      random_seed=seed, numpy_random_seed=1234 + seed, torch_random_seed=1234 + seed,
                      fewshot_random_seed=1234 + seed, metadata=metadata)
        accepted = inspect.signature(simple_evaluate).parameters
        kwargs = {k: v for k, v in kwargs.items() if k in accepted}
        rows: list[dict] = []
        records: list[dict] = []
        self.layer_records = []
        for name in self.tasks:
            if meter is not None:
                meter.reset()
            out = simple_evaluate(tasks=[name], **kwargs)
            rows.extend(result_rows(out))
            task_records = [rec for task, logged in (out.get("samples") or {}).items()
                            for rec in self._records(task, logged, tokenizer, int(cfg.seq_len))]
            records.extend(task_records)
            if meter is not None:
                n_docs = len({(r["subtask"], r["doc_id"]) for r in task_records})
                tokens = [r["input_tokens"] for r in task_records]
                rows.extend(_cost_rows(name, meter.records, n_docs, tokens))
                self.layer_records.extend(_layer_summary(name, meter.records))
        return rows, records

    @staticmethod
    def _records(task: str, logged: Sequence[Mapping[str, Any]], tokenizer, max_length: int) -> list[dict]:
        out = []
        for s in logged:
            args = s.get("arguments") or [[""]]
            first = args[0] if isinstance(args, (list, tuple)) and args else [""]
            context = str(first[0]) if isinstance(first, (list, tuple)) and first else str(first)
            tokens = count_tokens(tokenizer, context)
            second = first[1] if isinstance(first, (list, tuple)) and len(first) > 1 else None
            if isinstance(second, Mapping):  # generation: the context plus the generation budget
                generated = True
                needed = tokens + int(second.get("max_gen_toks", 256))
            else:  # log-likelihood: context and the longest continuation
                generated = False
                conts = [a[1] for a in args if isinstance(a, (list, tuple)) and len(a) > 1 and isinstance(a[1], str)]
                needed = max((count_tokens(tokenizer, context + c) for c in conts), default=tokens)
            resp = s.get("filtered_resps")
            if generated and isinstance(resp, (list, tuple)) and resp and isinstance(resp[0], str):
                output = resp[0]
            else:
                output = json.dumps(resp, default=str)
            filt = s.get("filter", "none")
            metrics = s.get("metrics") or []
            scores = {}
            for m in metrics:
                value = _number(s.get(m))
                if value is not None:
                    scores[metric_row(m, filt, value, None)[0]] = metric_row(m, filt, value, None)[1]
            doc_id = s.get("doc_id")
            out.append(dict(sample_id=f"lm_eval/{task}/{doc_id}" + ("" if filt in ("none", "") else f"/{filt}"),
                            subtask=task, doc_id=doc_id,
                            prompt_sha256=hashlib.sha256(context.encode()).hexdigest(), input_tokens=tokens,
                            truncation="left" if needed > max_length else "none", output=output, scores=scores,
                            target=str(s.get("target")), density=None,
                            meta={"filter": filt, "doc_hash": s.get("doc_hash")}))
        return out
