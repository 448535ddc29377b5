"""FlexPrefill's pattern switch (`methods/flexprefill.py` step 5): naive.py pins it in torch; triton.py computes the
probe, its softmax over the key blocks, the Jensen-Shannon distance and the decision in one launch."""
from .naive import flex_switch_naive, js_distance

__all__ = ["flex_switch_naive", "flex_switch_triton", "js_distance"]


def __getattr__(name):
    # importing the package must not import triton: load the kernel on first use
    if name == "flex_switch_triton":
        from . import triton

        return triton.flex_switch_triton
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
