"""Pure tensor kernels (no sparsebench imports): each op has `naive.py` (the semantics) beside its fast versions."""
