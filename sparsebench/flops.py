"""FLOP accounting in closed form (a multiply-add counts 2 FLOPs; norms, RoPE and softmax are not counted).

- linear layers: 2 * N_nonembedding * T per prefill (Kaplan et al., 2020, arXiv:2001.08361, the 2N rule);
- LM head at the positions kept: 2 * d_model * V each (prefill keeps the last position only);
- attention: 4 * D per executed (query, key) pair per query head (QK^T and PV), i.e. dense causal
  4 * H * D * T(T+1)/2 per layer (The Sparse Frontier's convention, arXiv:2504.17768), scaled by executed density;
- each method adds its own estimation cost (`SparseAttention.estimation_flops`).
"""
from __future__ import annotations


def dense_causal_attention_flops(num_heads: int, head_dim: int, q_len: int, k_len: int | None = None) -> int:
    k_len = q_len if k_len is None else k_len
    pairs = q_len * (k_len - q_len) + q_len * (q_len + 1) // 2
    return 4 * num_heads * head_dim * pairs


def non_embedding_params(model) -> int:
    """Parameters outside the input embedding and the LM head (the head is counted by `lm_head_flops`)."""
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    n = sum(p.numel() for p in model.parameters()) - emb.numel()
    if head is not None and head.weight is not emb:
        n -= head.weight.numel()
    return n


def linear_flops(model, tokens: int) -> int:
    return 2 * non_embedding_params(model) * tokens


def lm_head_flops(model, positions: int = 1) -> int:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return 2 * cfg.hidden_size * cfg.vocab_size * positions
