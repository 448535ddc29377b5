"""XAttention's strided antidiagonal block scores (and the exact block mass they estimate); see naive.py for the
exact semantics, triton.py for the fused GPU kernel."""
from .naive import antidiag_block_scores_naive, exact_block_scores_naive

__all__ = ["antidiag_block_scores_naive", "antidiag_block_scores_triton", "exact_block_scores_naive"]


def __getattr__(name):
    # importing the package must not import triton (CPU-only users, cheap CLI start-up): load the kernel on first use
    if name == "antidiag_block_scores_triton":
        from .triton import antidiag_block_scores_triton

        return antidiag_block_scores_triton
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
