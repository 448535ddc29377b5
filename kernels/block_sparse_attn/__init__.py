"""Block-sparse prefill attention over per-row key-block lists (see naive.py for the exact semantics)."""
from .naive import block_sparse_attn_naive, dense_attn_naive

__all__ = ["block_sparse_attn_naive", "block_sparse_attn_triton", "dense_attn_naive"]


def __getattr__(name):
    # Importing the package must not import triton (CPU-only users, cheap CLI start-up): load the kernel on first use.
    if name == "block_sparse_attn_triton":
        from .triton import block_sparse_attn_triton

        return block_sparse_attn_triton
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
