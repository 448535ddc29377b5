"""Executors: how a `Selection` is computed. `reference` is the oracle; `flex` and `triton` must match it.

- `reference`: `kernels/block_sparse_attn/naive.py` (exact masked softmax, fp32 accumulation; CPU and GPU).
- `flex`: compiled `torch.nn.attention.flex_attention` from the index lists, with blocks that need no mask listed as
  "full" and the rest as "partial" (a `mask_mod` applies causality and the sink/window rule). Never run eagerly:
  eager FlexAttention ignores the index lists and silently computes dense attention.
- `triton`: the project's kernel (`kernels/block_sparse_attn/triton.py`), CUDA only.
- `auto`: triton on CUDA where it supports the selection, else flex (CUDA and CPU), else reference.
"""
from __future__ import annotations

import importlib.util
import math

import torch

from sparsebench.selection import Selection, stable_partition

EXECUTORS = ("auto", "reference", "flex", "triton")


def check_executor(name: str) -> None:
    if name not in EXECUTORS:
        raise ValueError(f"executor={name!r} is not one of {', '.join(EXECUTORS)}")


def _triton_available() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("triton") is not None and importlib.util.find_spec(
        "sparsebench.kernels.block_sparse_attn.triton") is not None


def resolve(name: str, sel: Selection | None, device: torch.device, dtype: torch.dtype | None = None,
            head_dim: int | None = None) -> str:
    """The executor `name` stands for on `device` (and for `sel`, dtype and head dim, where support depends on them).

    The Triton kernel's fp32 tiles do not fit shared memory at head dim 256 on an H200, so fp32 with D > 128 goes to
    flex (or the reference, for selections with extra columns).
    """
    check_executor(name)
    if name != "auto":
        return name
    fp32_wide = dtype == torch.float32 and head_dim is not None and head_dim > 128
    if device.type == "cuda" and _triton_available() and not fp32_wide:
        return "triton"
    if sel is None or sel.extra_cols is None:
        return "flex"
    return "reference"


def execute(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sel: Selection,
            scale: float | None = None, return_lse: bool = False):
    """Attention over `sel`: q `[B, H, T, D]`, k/v `[B, HKV, S, D]` -> out `[B, H, T, D]` (and lse `[B, H, T]`)."""
    name = resolve(name, sel, q.device, q.dtype, q.shape[-1])
    args = dict(scale=scale, sink=sel.sink, window=sel.window, extra_cols=sel.extra_cols,
                extra_counts=sel.extra_counts, return_lse=return_lse)
    if name == "reference":
        from sparsebench.kernels.block_sparse_attn.naive import block_sparse_attn_naive
        return block_sparse_attn_naive(q, k, v, sel.kv_indices, sel.kv_counts, sel.block_q, sel.block_k, **args)
    if name == "triton":
        from sparsebench.kernels.block_sparse_attn.triton import block_sparse_attn_triton
        return block_sparse_attn_triton(q, k, v, sel.kv_indices, sel.kv_counts, sel.block_q, sel.block_k, **args)
    return flex_execute(q, k, v, sel, scale=scale, return_lse=return_lse)


# ---------------------------------------------------------------------------------------------------- flex
_FLEX = None


def _compiled_flex():
    global _FLEX
    if _FLEX is None:
        import torch._dynamo
        from torch.nn.attention.flex_attention import flex_attention

        # past the recompile limit dynamo would fall back to eager flex, which silently computes dense attention:
        # allow many shapes, and fail loudly rather than fall back
        cfg = torch._dynamo.config
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(cfg, name):
                setattr(cfg, name, max(getattr(cfg, name), 256))
        if hasattr(cfg, "fail_on_recompile_limit_hit"):
            cfg.fail_on_recompile_limit_hit = True
        _FLEX = torch.compile(flex_attention, dynamic=False)
    return _FLEX


def full_block_flags(sel: Selection) -> torch.Tensor:
    """`[B, HS, NQ, MAXK]` bool: listed blocks whose every pair is allowed (no mask needed inside)."""
    qb = torch.arange(sel.num_q_blocks, device=sel.kv_indices.device)
    p_lo = (qb * sel.block_q + sel.q_offset)[None, None, :, None]
    p_hi = (torch.clamp((qb + 1) * sel.block_q, max=sel.q_len) - 1 + sel.q_offset)[None, None, :, None]
    k0 = sel.kv_indices.long() * sel.block_k
    k_last = k0 + sel.block_k - 1
    full = (k_last <= p_lo) & (k_last < sel.k_len)
    if sel.window is not None:
        full &= (k0 > p_hi - sel.window) | (k_last < sel.sink)
    return full & sel.valid()


def to_flex_block_mask(sel: Selection):
    """A FlexAttention `BlockMask` with full and partial blocks separated (`compute_q_blocks=False`)."""
    from torch.nn.attention.flex_attention import BlockMask

    if sel.extra_cols is not None:
        raise ValueError("the flex executor does not take extra key columns; use executor=reference or triton")
    if sel.granularity == "kv_head":
        sel_idx = sel.expand_heads(sel.kv_indices)
        full = sel.expand_heads(full_block_flags(sel))
        live = sel.expand_heads(sel.valid())
    else:  # query_head lists are per head already; shared lists broadcast over heads (H = 1)
        sel_idx, full, live = sel.kv_indices, full_block_flags(sel), sel.valid()
    partial = live & ~full

    nk = sel.num_k_blocks

    def split(flags):
        # flex reads the key-block grid size off the last dim, so the lists are padded to NK columns
        order, counts = stable_partition(flags)
        idx = torch.gather(sel_idx, -1, order.long()).to(torch.int32)
        idx = torch.nn.functional.pad(idx, (0, max(0, nk - idx.shape[-1])))[..., :nk]
        return counts, idx.contiguous()

    p_cnt, p_idx = split(partial)
    f_cnt, f_idx = split(full)
    # the rule's numbers ride in tensors, so a new window or offset reuses the compiled kernel
    dev = sel.kv_indices.device
    off = torch.tensor(sel.q_offset, device=dev)
    has_window = sel.window is not None
    window = torch.tensor(sel.window if has_window else 0, device=dev)
    sink = torch.tensor(sel.sink, device=dev)

    def mask_mod(b, h, q_idx, kv_idx):
        pos = q_idx + off
        ok = kv_idx <= pos
        if has_window:
            ok = ok & ((pos - kv_idx < window) | (kv_idx < sink))
        return ok

    kw = {"compute_q_blocks": False}
    return BlockMask.from_kv_blocks(p_cnt, p_idx, f_cnt, f_idx, BLOCK_SIZE=(sel.block_q, sel.block_k),
                                    mask_mod=mask_mod, seq_lengths=(sel.q_len, sel.k_len), **kw)


def flex_execute(q, k, v, sel: Selection, scale: float | None = None, return_lse: bool = False, block_mask=None):
    """Compiled FlexAttention over `sel` (GQA through `enable_gqa`, K/V never repeated)."""
    bm = to_flex_block_mask(sel) if block_mask is None else block_mask
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    gqa = q.shape[1] != k.shape[1]
    if return_lse:
        out, lse = _compiled_flex()(q, k, v, block_mask=bm, scale=scale, enable_gqa=gqa, return_lse=True)
        # rows with no allowed key come back as 0 output and -inf lse in the reference; align flex to that
        return out, lse.float()
    return _compiled_flex()(q, k, v, block_mask=bm, scale=scale, enable_gqa=gqa)
