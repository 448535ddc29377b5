"""MInference's vertical-slash scores of the last queries (column and diagonal sums of their causal softmax); see
naive.py for the exact semantics, triton.py for the fused GPU kernel."""
from .naive import last_q_scores_naive

__all__ = ["last_q_scores_naive", "last_q_scores_triton"]


def __getattr__(name):
    # importing the package must not import triton (CPU-only users, cheap CLI start-up): load the kernel on first use
    if name == "last_q_scores_triton":
        from .triton import last_q_scores_triton

        return last_q_scores_triton
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
