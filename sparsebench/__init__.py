"""sparsebench: a research harness for sparse-attention methods on long-context LLMs.

Importing the package is cheap on purpose: torch, transformers and triton load only where they are used.
"""
__version__ = "0.1.0"
