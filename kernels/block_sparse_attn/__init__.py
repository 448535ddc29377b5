"""Block-sparse prefill attention over per-row key-block lists (see naive.py for the exact semantics)."""
from .naive import block_sparse_attn_naive, dense_attn_naive

__all__ = ["block_sparse_attn_naive", "dense_attn_naive"]
