"""FlexPrefill's query-aware block scores (`methods/flexprefill.py` step 7): naive.py pins them in torch (a matmul of
the block means, the causal mask, an fp32 softmax); triton.py computes them in one launch."""
from .naive import block_scores_naive

__all__ = ["block_scores_naive", "block_scores_triton"]


def __getattr__(name):
    # importing the package must not import triton: load the kernel on first use
    if name == "block_scores_triton":
        from . import triton

        return triton.block_scores_triton
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
