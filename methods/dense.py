"""Dense causal attention expressed as a selection of every causal block: the baseline of every comparison."""
from __future__ import annotations

from sparsebench.attention import AttnContext, SparseAttention
from sparsebench.selection import Selection


class Dense(SparseAttention):
    name = "dense"
    label = "Dense"
    paper = ""
    impl_version = 1

    def __init__(self, block_size: int = 128, executor: str = "auto") -> None:
        super().__init__(executor=executor, block_size=block_size)
        self.block_size = block_size

    def select(self, q, k, ctx: AttnContext) -> Selection:
        return Selection.causal(batch=q.shape[0], q_len=q.shape[2], k_len=k.shape[2], num_heads=ctx.num_heads,
                                num_kv_heads=ctx.num_kv_heads, block_q=self.block_size, block_k=self.block_size,
                                device=q.device)
