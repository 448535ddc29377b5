"""MInference's vertical-slash scores of the last queries (column and diagonal sums of their causal softmax), and
PBS-Attn's key importance (column means of their unmasked softmax over the first keys); see naive.py for the exact
semantics, triton.py for the fused GPU kernels."""
from .naive import last_q_importance_naive, last_q_scores_naive

__all__ = ["last_q_importance_naive", "last_q_importance_triton", "last_q_scores_naive", "last_q_scores_triton"]


def __getattr__(name):
    # importing the package must not import triton (CPU-only users, cheap CLI start-up): load the kernel on first use
    if name in ("last_q_scores_triton", "last_q_importance_triton"):
        from . import triton

        return getattr(triton, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
