"""Stable descending ranking of short non-negative rows, and the minimal descending prefix that reaches a mass
threshold (PBS-Attn's per-segment key order and block selection); naive.py pins the semantics, triton.py fuses
each into one kernel (one row per program lane group, the row sorted in registers)."""
from .naive import desc_order_naive, mass_prefix_naive

__all__ = ["desc_order_naive", "desc_order_triton", "mass_prefix_naive", "mass_prefix_triton"]


def __getattr__(name):
    # importing the package must not import triton: load the kernels on first use
    if name in ("desc_order_triton", "mass_prefix_triton"):
        from . import triton as _t

        return getattr(_t, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
