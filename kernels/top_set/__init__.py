"""The k best entries of each long row (exact: ties to the lower index), as ascending indices: MInference's top
columns and diagonals without sorting the row; naive.py pins the semantics, triton.py is one radix-select kernel."""
from .naive import top_set_naive

__all__ = ["top_set_naive", "top_set_triton"]


def __getattr__(name):
    # importing the package must not import triton: load the kernel on first use
    if name == "top_set_triton":
        from .triton import top_set_triton

        return top_set_triton
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
