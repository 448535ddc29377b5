"""The k best entries of each long row (exact: ties to the lower index), as ascending indices: MInference's top
columns and diagonals without sorting the row; naive.py pins the semantics, triton.py is a chunked radix select (one
row matrix, or two of one row length in the same launches)."""
from .naive import top_set_naive

__all__ = ["top_set_naive", "top_set_pair_triton", "top_set_triton"]


def __getattr__(name):
    # importing the package must not import triton: load the kernel on first use
    if name in ("top_set_triton", "top_set_pair_triton"):
        from . import triton

        return getattr(triton, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
