"""Cumulative-coverage cuts of long rows (FlexPrefill's cover counts and global cover) without sorting the row:
naive.py pins the semantics by a stable sort and a sequential running sum; triton.py finds the cut by a radix descent
on the values' bit patterns, each row cut into chunks."""
from .naive import cover_count_naive, cover_mask_naive

__all__ = ["cover_count_naive", "cover_count_triton", "cover_mask_naive", "cover_mask_triton", "cover_pair_triton"]


def __getattr__(name):
    # importing the package must not import triton: load the kernels on first use
    if name in ("cover_count_triton", "cover_mask_triton", "cover_pair_triton"):
        from . import triton

        return getattr(triton, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
