"""`target_density`: find the value of a method's one budget knob that gives a requested density.

Every method that supports it names its knob (`budget_knob`, e.g. XAttention's `threshold`) and whether raising it
raises density (`budget_increases_density`). The resolver runs the model once, densely, on calibration prompts
(the task's generator with seeds offset by `calibration.CALIB_SEED_OFFSET`, so they never overlap evaluation
prompts), keeps the post-RoPE Q/K of the method's layers, and bisects the knob until the density averaged over
those layers and prompts meets the target (the knob's other settings stay at their configured values). The answer
is stored in the calibration store, keyed by model, method, every other knob, the target, `seq_len` and the
calibration prompts' hash, so later jobs read it instead of recomputing. Rows report the requested density
(`target_density`) next to the executed one (`density`), which is always measured, never taken from the knob.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from sparsebench import calibration
from sparsebench.attention import AttnContext, SparseAttention

log = logging.getLogger(__name__)


@dataclass
class Captured:
    """Q/K of the method's layers from dense prefills: (layer_idx, q, k, ctx) per call."""

    calls: list[tuple[int, torch.Tensor, torch.Tensor, AttnContext]] = field(default_factory=list)


class _Capture(SparseAttention):
    """Records each call's Q/K and attends densely (the selection of the configured method is not needed here)."""

    name = "capture"

    def __init__(self, inner: SparseAttention, store: Captured):
        super().__init__(executor=inner.executor)
        self.inner, self.store = inner, store

    def select(self, q, k, ctx):
        from sparsebench.selection import Selection

        self.store.calls.append((ctx.layer_idx, q.detach().clone(), k.detach().clone(), ctx))
        return Selection.causal(batch=q.shape[0], q_len=q.shape[2], k_len=k.shape[2], num_heads=ctx.num_heads,
                                num_kv_heads=ctx.num_kv_heads, device=q.device)


def mean_density(method_cls, knobs: dict[str, Any], captured: Captured) -> float:
    method = method_cls(**knobs)
    with torch.inference_mode():
        vals = [method.select(q, k, ctx).density() for _, q, k, ctx in captured.calls]
    return sum(vals) / len(vals)


def bisect_knob(method_cls, knobs: dict[str, Any], captured: Captured, target: float, lo: float, hi: float,
                integer: bool = False, iters: int = 24, tol: float = 0.005) -> tuple[Any, float]:
    """Smallest-error knob value in [lo, hi] for `target` (density monotone in the knob); returns (value, density)."""
    knob, up = method_cls.budget_knob, method_cls.budget_increases_density
    best = None
    for _ in range(iters):
        mid = (lo + hi) // 2 if integer else (lo + hi) / 2
        d = mean_density(method_cls, {**knobs, knob: mid}, captured)
        if best is None or abs(d - target) < abs(best[1] - target):
            best = (mid, d)
        if abs(d - target) <= tol or (integer and hi - lo <= 1):
            break
        if (d < target) == up:
            lo = mid
        else:
            hi = mid
    return best


def knob_range(method_cls, knobs: dict[str, Any], seq_len: int) -> tuple[float, float, bool]:
    """Search interval of the budget knob: method-declared (`budget_range`) or [0, 1] for thresholds."""
    rng = getattr(method_cls, "budget_range", None)
    if callable(rng):
        return rng(knobs, seq_len)
    if rng is not None:
        return rng
    return 0.0, 1.0, False


def resolve(cfg, method_cls, knobs: dict[str, Any], model, tok, task, calib_dir, layers: list[int],
            n_prompts: int = 2) -> tuple[Any, dict]:
    """The knob value meeting `cfg.method.target_density`, from the store or computed now; returns (value, record)."""
    from sparsebench.attention import Meter, install
    from sparsebench.models import TemplatedTokenizer, encode_sample, task_tokenizer

    target = float(cfg.method.target_density)
    if not 0 < target <= 1:
        raise ValueError(f"method.target_density={target} is not in (0, 1]")
    knob = getattr(method_cls, "budget_knob", None)
    if knob is None:
        raise ValueError(f"method {method_cls.name!r} has no budget knob, so it cannot take a target_density")
    seeds = [calibration.CALIB_SEED_OFFSET + cfg.seed * 101 + i for i in range(n_prompts)]
    calibration.check_disjoint(seeds, cfg.seed)
    # prompts fitted and encoded exactly as the run does (chat template included), so the calibration prefills what
    # the evaluation will
    mode = cfg.model.get("chat_template", "none")
    task_tok = task_tokenizer(tok, mode)
    templated = isinstance(task_tok, TemplatedTokenizer)
    samples = []
    for s in seeds:
        samples.extend(list(task.samples(task_tok, cfg.seq_len, 1, s))[:1])
    # untemplated runs keep the hash (and the stored artifacts) they always had
    data_hash = hashlib.sha256(("".join(x.prompt_sha256 for x in samples)
                                + (f"|template={mode}" if templated else "")).encode()).hexdigest()[:16]
    others = {k: v for k, v in knobs.items() if k != knob}
    path = calibration.artifact_path(calib_dir, cfg.model.name, method_cls.name, "target_density", knobs=others,
                                     target=target, seq_len=cfg.seq_len, data=data_hash, layers=layers,
                                     impl_version=method_cls.impl_version)
    if path.exists():
        rec = calibration.load(path)
        return rec["value"], rec
    captured = Captured()
    meter = Meter()
    install(model, _Capture(method_cls(**knobs), captured), layers, cfg.method.executor, meter)
    device = next(model.parameters()).device
    with torch.inference_mode():
        for s in samples:
            ids = encode_sample(tok, s, mode, return_tensors="pt").to(device)
            model(input_ids=ids, use_cache=False, logits_to_keep=1)
    lo, hi, integer = knob_range(method_cls, knobs, cfg.seq_len)
    value, density = bisect_knob(method_cls, knobs, captured, target, lo, hi, integer)
    rec = {"value": value, "density": density, "target": target, "knob": knob, "calib_seeds": seeds,
           "calib_data": data_hash, "n_calls": len(captured.calls)}
    calibration.save(path, rec, knobs=others, target=target, seq_len=cfg.seq_len, data=data_hash)
    log.info("target_density %.3f -> %s=%s (calibration density %.4f), stored in %s", target, knob, value,
             density, path)
    return value, rec
