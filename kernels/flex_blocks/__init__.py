"""FlexPrefill's block lists from its block scores, budgets and query-aware cover (`methods/flexprefill.py` steps 6-7
and the list build): naive.py pins the semantics with torch's stable sort and `stable_partition`; triton.py ranks
each row by counting and writes the lists in two launches."""
from .naive import flex_blocks_naive

__all__ = ["flex_blocks_from_counts_triton", "flex_blocks_naive", "flex_blocks_triton"]


def __getattr__(name):
    # importing the package must not import triton: load the kernels on first use
    if name in ("flex_blocks_triton", "flex_blocks_from_counts_triton"):
        from . import triton

        return getattr(triton, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
