"""The method interface (`SparseAttention`) and the one attention function that routes any HF model to it.

A method answers *which* (query, key) pairs to compute (`select -> Selection`); an executor answers *how*
(`sparsebench.executors`). The attention function registered with `transformers.AttentionInterface` under the name
"sparsebench" reads the per-layer route that `install()` attached to each attention module:

- prefill (`T == S`) and chunked prefill (`1 < T < S`, offset diagonal) on the method's layers: `select` + `attend`;
- the model's own sliding-window layers keep their window, executed as a local `Selection` (O(T * window));
- other layers and decode (`T == 1`) stay dense (decode through SDPA with GQA, never repeating K/V).
"""
from __future__ import annotations

import abc
import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from sparsebench import executors
from sparsebench.selection import Selection


@dataclass
class AttnContext:
    """What a method may know about the call besides q and k."""

    layer_idx: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    scale: float
    calib: Any = None


@dataclass(frozen=True)
class AttnShape:
    """Shape of one prefill attention call, for FLOP accounting."""

    batch: int
    q_len: int
    k_len: int
    num_heads: int
    num_kv_heads: int
    head_dim: int


class SparseAttention(abc.ABC):
    """Base class of every method: prefill attention over the pairs chosen by `select`.

    Subclasses set `name`, `label`, `paper` and `impl_version` (bump it whenever results would change), and
    implement `select`. `attend` runs the configured executor; `estimation_flops` is the cost of `select`.
    """

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    impl_version: ClassVar[int] = 1

    def __init__(self, executor: str = "auto", **params: Any) -> None:
        executors.check_executor(executor)
        self.executor = executor
        self.params = params

    @abc.abstractmethod
    def select(self, q: torch.Tensor, k: torch.Tensor, ctx: AttnContext) -> Selection:
        """The pairs to compute for q `[B, H, T, D]` against k `[B, HKV, S, D]`."""

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sel: Selection, scale: float) -> torch.Tensor:
        return executors.execute(self.executor, q, k, v, sel, scale=scale)

    def estimation_flops(self, shape: AttnShape) -> int:
        return 0


# ------------------------------------------------------------------------------------------------ meters
@dataclass
class LayerRecord:
    layer: int
    kind: str  # "method", "sliding", "dense"
    q_len: int
    k_len: int
    density: float
    estimation_flops: int
    attention_flops: int
    estimation_ms: float
    attention_ms: float
    attention_recall: float | None = None
    output_rel_error: float | None = None
    executor: str = ""


@dataclass
class Meter:
    """Collects one `LayerRecord` per routed prefill call; `diagnostics` adds recall and error on sampled rows."""

    diagnostics: bool = False
    diag_rows: int = 64
    records: list[LayerRecord] = field(default_factory=list)

    def reset(self) -> None:
        self.records = []


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def attention_flops(sel: Selection, head_dim: int) -> int:
    """QK^T and PV over the executed pairs: 4 * D per pair per query head."""
    return 4 * head_dim * sel.executed_pairs()


def _diagnose(q, k, v, sel: Selection, out: torch.Tensor, scale: float, n_rows: int) -> tuple[float, float]:
    """Attention recall (dense softmax mass the selection covers) and output relative error, on sampled rows."""
    from sparsebench.kernels.block_sparse_attn.naive import block_sparse_attn_naive

    T = q.shape[2]
    rows = torch.linspace(0, T - 1, min(n_rows, T), device=q.device).round().long().unique()
    dense = Selection.causal(batch=q.shape[0], q_len=T, k_len=k.shape[2], num_heads=sel.num_heads,
                             num_kv_heads=sel.num_kv_heads, device=q.device)
    ref, lse_dense = block_sparse_attn_naive(q, k, v, dense.kv_indices, dense.kv_counts, dense.block_q,
                                             dense.block_k, scale=scale, return_lse=True, q_rows=rows)
    _, lse_sel = block_sparse_attn_naive(q, k, v, sel.kv_indices, sel.kv_counts, sel.block_q, sel.block_k,
                                         scale=scale, sink=sel.sink, window=sel.window, extra_cols=sel.extra_cols,
                                         extra_counts=sel.extra_counts, return_lse=True, q_rows=rows)
    recall = torch.exp(lse_sel - lse_dense).mean().item()
    o = out[:, :, rows].float()
    err = ((o - ref.float()).norm() / ref.float().norm().clamp_min(1e-30)).item()
    return recall, err


# ------------------------------------------------------------------------------------------------ routing
@dataclass
class Route:
    """Per attention module: what to do with it at prefill."""

    method: SparseAttention | None  # None: not a method layer
    sliding_window: int | None
    executor: str
    meter: Meter | None


def sparsebench_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """`AttentionInterface` function: q `[B, H, T, D]`, k/v `[B, HKV, S, D]` -> (`[B, T, H, D]`, None)."""
    if attention_mask is not None:
        raise ValueError("sparsebench attention takes unpadded inputs (batch 1 or equal lengths); "
                         "got a padding mask from the model")
    for feature in ("softcap", "s_aux", "sinks"):
        if kwargs.get(feature) is not None:
            raise ValueError(f"sparsebench attention does not support {feature!r} (layer {module.layer_idx})")
    route: Route | None = getattr(module, "_sparsebench_route", None)
    B, H, T, D = query.shape
    HKV, S = key.shape[1], key.shape[2]
    scale = 1.0 / math.sqrt(D) if scaling is None else scaling
    window = kwargs.get("sliding_window") or (route.sliding_window if route else None)
    if T == 1 or route is None:
        out = _dense_sdpa(query, key, value, scale, window)
        return out.transpose(1, 2).contiguous(), None
    meter, dev = route.meter, query.device
    t0 = _now(dev)
    est_flops = 0
    if route.method is not None and window is None:
        ctx = AttnContext(module.layer_idx, H, HKV, D, scale)
        sel = route.method.select(query, key, ctx)
        est_flops = route.method.estimation_flops(AttnShape(B, T, S, H, HKV, D))
        kind = "method"
    else:
        sel = Selection.local(batch=B, q_len=T, k_len=S, num_heads=H, num_kv_heads=HKV, window=window,
                              device=dev)
        kind = "sliding" if window is not None else "dense"
    t1 = _now(dev)
    if route.method is not None and kind == "method":
        out = route.method.attend(query, key, value, sel, scale)
        ran = executors.resolve(route.method.executor, sel, dev, query.dtype, D)
    else:
        out = executors.execute(route.executor, query, key, value, sel, scale=scale)
        ran = executors.resolve(route.executor, sel, dev, query.dtype, D)
    t2 = _now(dev)
    if meter is not None:
        rec = LayerRecord(module.layer_idx, kind, T, S, sel.density(), est_flops, attention_flops(sel, D),
                          (t1 - t0) * 1e3, (t2 - t1) * 1e3, executor=ran)
        if meter.diagnostics and kind == "method":
            rec.attention_recall, rec.output_rel_error = _diagnose(query, key, value, sel, out, scale,
                                                                   meter.diag_rows)
        meter.records.append(rec)
    return out.transpose(1, 2).contiguous(), None


def _dense_sdpa(q, k, v, scale, window):
    """Dense attention for decode and unrouted calls: bottom-right causal, optional window, GQA without repeats."""
    T, S = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if T == S and window is None:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    pos = torch.arange(T, device=q.device)[:, None] + (S - T)
    cols = torch.arange(S, device=q.device)[None, :]
    mask = cols <= pos
    if window is not None:
        mask &= pos - cols < window
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)


def register() -> None:
    """Register the attention and mask functions with transformers under the name "sparsebench"."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register("sparsebench", sparsebench_attention)
    # the flash-attention mask function gives None for unpadded inputs: no O(T^2) mask is built at long lengths
    AttentionMaskInterface.register("sparsebench", ALL_MASK_ATTENTION_FUNCTIONS["flash_attention_2"])


def method_layers(config, spec) -> list[int]:
    """Resolve `method.layers` (`full_attention`, `all` or a list of indices) against a model config."""
    n = config.num_hidden_layers
    types = getattr(config, "layer_types", None) or ["full_attention"] * n
    if spec == "full_attention":
        return [i for i, t in enumerate(types) if t == "full_attention"]
    if spec == "all":
        return list(range(n))
    if isinstance(spec, str):
        raise ValueError(f"method.layers={spec!r} is not one of: full_attention, all, or a list of layer indices")
    layers = [int(i) for i in spec]
    bad = [i for i in layers if not 0 <= i < n]
    if bad:
        raise ValueError(f"method.layers has indices {bad} outside [0, {n})")
    return layers


def install(model, method: SparseAttention, layers: list[int], executor: str, meter: Meter | None) -> None:
    """Attach a `Route` to every attention module and switch the model to the "sparsebench" attention."""
    register()
    types = getattr(model.config, "layer_types", None)
    for mod in model.modules():
        idx = getattr(mod, "layer_idx", None)
        if idx is None or not hasattr(mod, "num_key_value_groups"):
            continue
        sliding = getattr(mod, "sliding_window", None)
        if types is not None and types[idx] != "sliding_attention":
            sliding = None
        mod._sparsebench_route = Route(method if idx in layers else None, sliding, executor, meter)
    model.set_attn_implementation("sparsebench")
