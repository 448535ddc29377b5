"""Pure tensor kernels (no sparsebench imports): each op has `naive.py` (the semantics) beside its fast versions."""


def runs_triton(x) -> bool:
    """Whether the Triton kernels can run on tensor `x`: on CUDA, or on any device under `TRITON_INTERPRET=1` (the
    interpreter the CPU tests use)."""
    import os

    return x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"
