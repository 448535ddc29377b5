"""Block means of queries or keys (FlexPrefill's pooled queries and keys, `methods/flexprefill.py` steps 5 and 7):
naive.py pins them in torch; triton.py reads each block once and writes its mean, rounded and scaled, in one
launch."""
from .naive import block_means_naive

__all__ = ["block_means_naive", "block_means_triton"]


def __getattr__(name):
    # importing the package must not import triton: load the kernel on first use
    if name == "block_means_triton":
        from . import triton

        return triton.block_means_triton
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
