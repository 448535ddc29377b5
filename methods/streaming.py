"""StreamingLLM / MInference A-shape prefill: attention sinks plus a local window, on original positions.

Query at position p attends to keys `[0, n_init)` and `(p - n_local, p]` (token level, causal), as MInference's
`streaming_forward(q, k, v, n_init, n_local)`; defaults are MInference's A-shape (`n_init=128`, `n_local=3968`).
StreamingLLM: Xiao et al., 2023, arXiv:2309.17453. MInference: Jiang et al., 2024, arXiv:2407.02490.
The pattern is static, so it costs no estimation FLOPs. Deviation: none in the prefill pattern; decode stays dense
(StreamingLLM's decode-time cache eviction is not applied).
"""
from __future__ import annotations

from sparsebench.attention import AttnContext, SparseAttention
from sparsebench.selection import Selection


class Streaming(SparseAttention):
    name = "streaming"
    label = "A-shape (StreamingLLM)"
    paper = "arXiv:2309.17453"
    impl_version = 1
    budget_knob = "n_local"  # target_density tunes the local window; the sink stays as configured
    budget_increases_density = True

    @staticmethod
    def budget_range(knobs, seq_len):
        return 1, seq_len, True

    def __init__(self, n_init: int = 128, n_local: int = 3968, block_size: int = 128, executor: str = "auto") -> None:
        if n_init < 0 or n_local < 1:
            raise ValueError(f"streaming needs n_init >= 0 and n_local >= 1; got n_init={n_init}, n_local={n_local}")
        super().__init__(executor=executor, n_init=n_init, n_local=n_local, block_size=block_size)
        self.n_init, self.n_local, self.block_size = n_init, n_local, block_size

    def select(self, q, k, ctx: AttnContext) -> Selection:
        return Selection.local(batch=q.shape[0], q_len=q.shape[2], k_len=k.shape[2], num_heads=ctx.num_heads,
                               num_kv_heads=ctx.num_kv_heads, window=self.n_local, sink=self.n_init,
                               block_q=self.block_size, block_k=self.block_size, device=q.device)
