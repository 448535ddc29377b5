"""Vertical-slash sparse attention (MInference's execution form): vertical key columns plus slash diagonals turned
into 64x64 key-block lists and leftover single columns (see naive.py for the exact semantics)."""
from .naive import vertical_slash_attn_naive, vertical_slash_to_blocks

__all__ = ["vertical_slash_attn_naive", "vertical_slash_attn_triton", "vertical_slash_to_blocks"]


def __getattr__(name):
    # importing the package must not import triton (CPU-only users): load the kernel on first use
    if name == "vertical_slash_attn_triton":
        from .triton import vertical_slash_attn_triton

        return vertical_slash_attn_triton
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
