"""Dense: every causal block; equals SDPA; density 1; no estimation cost."""
import torch

from sparsebench.attention import AttnContext, AttnShape
from sparsebench.executors import execute
from sparsebench.methods.dense import Dense


def test_dense_selection_equals_sdpa():
    g = torch.Generator().manual_seed(42)
    q, k, v = torch.randn(1, 4, 211, 32, generator=g), torch.randn(1, 2, 211, 32, generator=g), torch.randn(
        1, 2, 211, 32, generator=g)
    m = Dense(block_size=64, executor="reference")
    sel = m.select(q, k, AttnContext(0, 4, 2, 32, 32 ** -0.5))
    assert sel.density() == 1.0 and sel.granularity == "shared"
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert (execute("reference", q, k, v, sel) - ref).abs().max() < 1e-5
    assert m.estimation_flops(AttnShape(1, 211, 211, 4, 2, 32)) == 0
