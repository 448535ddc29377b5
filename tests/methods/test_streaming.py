"""Streaming (A-shape): the token rule [0, n_init) U (p - n_local, p], its exact density, and the dense limit."""
import pytest
import torch

from sparsebench.attention import AttnContext
from sparsebench.executors import execute
from sparsebench.methods.streaming import Streaming


def _qkv(T, seed=42):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 4, T, 32, generator=g), torch.randn(1, 1, T, 32, generator=g),
            torch.randn(1, 1, T, 32, generator=g))


def test_pattern_is_sink_plus_window():
    q, k, _ = _qkv(300)
    sel = Streaming(n_init=8, n_local=50, block_size=64).select(q, k, AttnContext(0, 4, 1, 32, 32 ** -0.5))
    mask = sel.token_mask()[0, 0]
    p = torch.arange(300)[:, None]
    s = torch.arange(300)[None, :]
    assert torch.equal(mask, (s <= p) & ((s < 8) | (p - s < 50)))
    # hand count: row p keeps min(p+1, 50) window keys plus the sink keys left of its window
    expected = sum(min(t + 1, 50) + max(0, min(8, t + 1 - 50)) for t in range(300)) / (300 * 301 / 2)
    assert sel.density() == pytest.approx(expected, abs=1e-12)


def test_window_covering_everything_is_dense():
    q, k, v = _qkv(257)
    sel = Streaming(n_init=0, n_local=257, executor="reference").select(q, k, AttnContext(0, 4, 1, 32, 32 ** -0.5))
    assert sel.density() == 1.0
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert (execute("reference", q, k, v, sel) - ref).abs().max() < 1e-5


def test_bad_knobs():
    with pytest.raises(ValueError, match="n_local=0"):
        Streaming(n_local=0)
    with pytest.raises(ValueError, match="n_init=-1"):
        Streaming(n_init=-1)
