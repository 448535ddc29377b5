"""PBS-Attn: permuted block-sparse prefill attention (Wang et al., 2025, arXiv:2510.21270).

Official code: github.com/xinghaow99/pbs-attn at commit 8ce8e024b03e (`pbs_attn/src/pbs.py`,
`pbs_attn/src/permute_states.py`, `pbs_attn/src/utils.py`, `pbs_attn/src/kernels/permuted_block_sparse_attention.py`).

Algorithm, per batch entry and query head, for a prefill of N tokens (T == S == N):

1. Permutation. Keys are split into segments of `segment_size` tokens; only the N // segment complete segments are
   permuted, the remainder keeps its order. The last `last_q` queries attend (softmax, no causal mask, the model's
   scale) over the keys of the complete segments; a key's importance is its probability averaged over those rows.
   Inside each segment, keys are ordered by importance, descending. Queries are never permuted.
2. Block scoring. Queries (original order) and permuted keys are mean-pooled per block of `block_size` tokens
   (zero padding to a whole block, divided by `block_size`). A query block r may score key block c only when c lies
   in an earlier segment (segment(c) != segment(r) and c <= r); a row softmax over those scores (NaN -> 0) is kept
   by its minimal descending prefix whose cumulative mass reaches `threshold` (the crossing block is kept; a row
   that never reaches it keeps nothing; `threshold=1` keeps every allowed block).
3. Always kept: the permuted block holding original token 0 (`force_first_block`) and the query's whole own
   segment, causally on original positions.
4. Sequences of at most `segment_size` tokens run dense.

Execution needs no permutation support in the executor. Attention does not depend on the order of its keys, and
every key of an earlier segment precedes every query of a later segment, so a selected permuted block c is exactly
the key tokens perm[c*BS:(c+1)*BS], all causally visible. Those tokens go into the `Selection`'s extra key columns
of the query block, except where every permuted block of an earlier segment is selected: their union is the whole
segment, listed as ordinary key blocks (cheaper to execute, and it keeps the padded column lists narrow). The own
segment also becomes ordinary key blocks in original order, where the executor's causal mask on original positions
gives the official within-segment mask. The executed (query, key) pairs are the official kernel's, so
`Selection.density()` is the executed density. Selection granularity is `query_head`: the permutation
and the block choice are per query head (the official code repeats K/V before estimating).

Tie-breaking (so that the fast and the naive estimator agree exactly): within a segment, keys of equal importance
keep their original order; among equal block probabilities, the lower key-block index is taken first (stable
descending sorts in both places). The official code uses non-stable sorts there.

Deviations from the official code:
- Ties: the stable-sort rule above; the official order of tied elements is unspecified.
- `last_q` is a knob of its own; the official code takes the last `block_size` queries (the defaults agree).
- The estimator's scores use the model's softmax scale (`ctx.scale`); the official code divides by sqrt(D), which
  is the same number for Llama, Qwen and Gemma 3.
- `threshold=1.0` keeps every allowed block, as the official code does for the integer threshold 1; the official
  code compares a float 1.0 against an fp32 cumulative sum, which can fall short and then keep nothing.
- Chunked prefill (T < S), which the official code does not support (it asserts q_len == kv_len), runs dense.
- The dense fallback (N <= segment_size) is exact causal attention through the configured executor, not SDPA.

As in the official HF patch (and its LongBench configs), every attention layer is sparse at prefill and decode stays
dense; on Llama and Qwen that is this harness's default `method.layers=full_attention`.

Option `scores_kernel` (default `"auto"`: `"triton"` on CUDA, `"torch"` elsewhere): with `"triton"`, step 1's
importance through the fused kernel `kernels/last_q_scores` (`last_q_importance_triton`, two passes over the key
tiles), which never materialises the last queries' `[H, last_q, Sc]` softmax. It rounds the logits as the torch
path does (the product to the input dtype, then the scaled value again), so its importance equals the torch path's
up to rounding (the dot's accumulation, the softmax sums, the mean over rows, the kernel's fast exponential): the
last bits, which can reorder two keys of near-equal importance and with them a block mean. On an H200 the whole
estimate took 0.111/0.047/0.032 of dense cuDNN attention time with it against 0.136/0.080/0.047 with the torch path
at 32K/64K/128K (results/tables/bench_methods_cost.csv, session 6, medians of 3); `"torch"` keeps the exact official
importance on any device.

On CUDA two more steps take faster routes with the same rule (`_POOL_MM16`, `_SORT_KERNEL` below): the permuted keys
are pooled by a 16-bit GEMM with fp32 output, and both sorts (with the cumulative-mass rule) run through
`kernels/row_rank` for rows of up to 512 key blocks; the sort orders are torch's stable ones bit for bit, the fp32
sums are added in other orders (as torch's own GPU reductions are).
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from sparsebench.attention import AttnContext, AttnShape, SparseAttention
from sparsebench.kernels import runs_triton
from sparsebench.kernels.last_q_scores import check_fused_device, check_scores_kernel, fused_scores
from sparsebench.selection import Selection, stable_partition

# temporary memory one estimator chunk of KV heads may use (bounds memory at 128K; not a result knob)
_CHUNK_BYTES = 2 << 30


# ------------------------------------------------------------------------------------------------ pieces
def threshold_blocks(probs: torch.Tensor, allowed: torch.Tensor, threshold: float,
                     kernel: bool = False) -> torch.Tensor:
    """Per row, the minimal set of highest-probability blocks whose mass reaches `threshold` (crossing included).

    probs `[..., NK]` fp32 (NaN where a row has no allowed block), allowed `[..., NK]` bool -> `[..., NK]` bool.
    Rows that never reach `threshold` keep nothing. Ties go to the lower block index. `threshold >= 1` keeps every
    allowed block. `kernel`: through `kernels/row_rank`'s fused kernel (`mass_prefix_triton`, CUDA, rows of at most
    4096 blocks) instead of the torch reference (`mass_prefix_naive`); the same rule, its fp32 running sum added in
    another order.
    """
    if threshold >= 1:
        return allowed.expand(probs.shape).clone()
    from sparsebench.kernels import row_rank

    return (row_rank.mass_prefix_triton if kernel else row_rank.mass_prefix_naive)(probs, threshold)


@functools.lru_cache(maxsize=16)
def _block_layout(NQ: int, NK: int, nbps: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                 torch.Tensor]:
    """`(allowed, not_allowed, own, own_causal)`, each `[NQ, NK]` bool for query and key blocks grouped `nbps` to a
    segment: the blocks of earlier segments (all causal), their complement, the query block's own segment, and its
    causal part. Made once per shape and device (about twenty small torch ops a call otherwise, for an estimate
    bound by its host below 128K); callers never write into them."""
    r = torch.arange(NQ, device=device)[:, None]
    c = torch.arange(NK, device=device)[None, :]
    own = (r // nbps) == (c // nbps)
    allowed = (c // nbps) < (r // nbps)  # an earlier segment: every block of it lies left of the diagonal
    return allowed, ~allowed, own, own & (c <= r)


def _block_mean(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """`[..., N, D] -> [..., ceil(N/BS), D]`: zero-padded block means (a partial last block is divided by BS).

    The complete blocks are averaged from a view of `x`; only a partial last block is padded (a copy of at most BS
    rows, not of `x`), and averaged by the same reduction over BS rows."""
    n = x.shape[-2]
    nfull, tail = divmod(n, block_size)
    means = x.narrow(-2, 0, nfull * block_size).unflatten(-2, (nfull, block_size)).mean(-2)
    if not tail:
        return means
    last = F.pad(x.narrow(-2, nfull * block_size, tail), (0, 0, 0, block_size - tail))
    return torch.cat([means, last.unflatten(-2, (1, block_size)).mean(-2)], dim=-2)


def _pooled_permuted_keys(k: torch.Tensor, order: torch.Tensor, block_size: int) -> torch.Tensor:
    """k `[B, hc, S, D]`, order `[B, hc * G, nseg, seg]` (each complete segment's keys, most important first) ->
    `[B, hc * G, ceil(S / BS), D]`: `_block_mean` of each query head's permuted keys, without permuting them.

    Permuted block c of a segment is the set of keys ranked in [c * BS, (c + 1) * BS) there, so its sum is a 0/1
    membership row times the segment's keys. One batched matmul per segment takes the rows of all G query heads of a
    KV head, so K is read once per KV head; gathering the permuted keys wrote G copies of K instead, only to average
    them. The sums are exact products accumulated in fp32 (fp64 for fp32 keys, which TF32 would otherwise round),
    then divided by BS in fp32 as `_block_mean` does: only the summation order differs from the mean of the gathered
    keys, which can move the last bit of an fp32 mean (for 16-bit keys the rounding back to 16 bits almost always
    hides it). The remainder past the last complete segment is not permuted: its block means are shared by the G
    query heads.
    """
    B, hc, S, D = k.shape
    HC, nseg, seg = order.shape[1:]
    G, nbps, Sc = HC // hc, seg // block_size, nseg * seg
    acc = torch.float64 if k.dtype == torch.float32 else torch.float32
    # 16-bit keys on CUDA with `_POOL_MM16`: one 16-bit GEMM with fp32 output (exact 0/1 x key products, fp32 sums)
    # instead of an fp32 copy of the keys
    mm16 = _POOL_MM16 and k.is_cuda and k.dtype in (torch.float16, torch.bfloat16)
    member = torch.zeros(B, hc, nseg, G, nbps, seg, dtype=k.dtype if mm16 else acc, device=k.device)
    member.scatter_(-1, order.view(B, hc, G, nseg, nbps, block_size).transpose(2, 3), 1.0)
    if mm16:
        keys = k[:, :, :Sc].unflatten(2, (nseg, seg)).reshape(B * hc * nseg, seg, D)
        sums = torch.bmm(member.view(B * hc * nseg, G * nbps, seg), keys, out_dtype=torch.float32)
    else:
        keys = k[:, :, :Sc].to(acc).unflatten(2, (nseg, seg))
        sums = torch.matmul(member.view(B, hc, nseg, G * nbps, seg), keys)
    means = sums.view(B, hc, nseg, G, nbps, D).transpose(2, 3).reshape(B, HC, nseg * nbps, D)
    means = means.to(torch.float32).div_(block_size).to(k.dtype)
    if Sc == S:
        return means
    tail = _block_mean(k[:, :, Sc:], block_size)
    return torch.cat([means, tail[:, :, None].expand(B, hc, G, *tail.shape[2:]).reshape(B, HC, -1, D)], dim=-2)


def _importance_torch(q: torch.Tensor, k: torch.Tensor, scale: float, L: int, Sc: int) -> torch.Tensor:
    """Step 1 in torch: q `[B, HC, T, D]`, k `[B, hc, S, D]` -> importance `[B, HC, Sc]` fp32 of each key of the
    complete segments to the last L queries. The query heads of a KV group share one matmul against their unrepeated
    keys."""
    B, HC, T, D = q.shape
    hc = k.shape[1]
    ql = q[:, :, T - L:].reshape(B, hc, HC // hc * L, D)
    logits = torch.matmul(ql, k[:, :, :Sc].transpose(-1, -2)).mul_(scale)  # scaled in place, in the input dtype
    return torch.softmax(logits, dim=-1, dtype=torch.float32).view(B, HC, L, Sc).mean(-2)


def _importance_triton(q: torch.Tensor, k: torch.Tensor, scale: float, L: int, Sc: int) -> torch.Tensor:
    """`_importance_torch` through the fused kernel (`scores_kernel="triton"`): no `[HC, L, Sc]` softmax."""
    check_fused_device("pbs", q)
    from sparsebench.kernels.last_q_scores import last_q_importance_triton

    return last_q_importance_triton(q[:, :, q.shape[2] - L:], k, scale, Sc)


# Pool the permuted keys of 16-bit inputs on CUDA by a 16-bit GEMM with fp32 output (`torch.bmm(..., out_dtype=)`)
# rather than an fp32 GEMM on an fp32 copy of the keys. On an H200 (bf16, Llama-3.1-8B heads; session 5,
# bench_methods `pbs_poolmm` against `pbs`) the whole estimate took 1.71 / 3.31 / 8.73 ms against 1.86 / 3.57 /
# 9.20 ms at 32K / 64K / 128K.
_POOL_MM16 = True
# The estimator's two sorts (each segment's keys by importance; each query block's key blocks by probability, with
# the cumulative-mass rule) through `kernels/row_rank`'s fused kernels on CUDA, for rows of at most
# `_SORT_KERNEL_MAX_BLOCKS` key blocks; torch's stable sorts otherwise (and with `_SORT_KERNEL=False`). Same orders;
# the mass rule's fp32 running sum is added in another order (see `threshold_blocks`). On an H200 (session 5,
# bench_methods `pbs_sortk` against `pbs`) the whole estimate took 1.62 / 3.25 ms against 1.86 / 3.57 ms at 32K / 64K
# (256 / 512 blocks a row), but 9.52 against 9.20 ms at 128K (1024 blocks a row).
_SORT_KERNEL = True
_SORT_KERNEL_MAX_BLOCKS = 512


def _sort_kernel(q: torch.Tensor, segment_size: int, nk: int) -> bool:
    """Whether this call sorts through `kernels/row_rank`: `_SORT_KERNEL`, on CUDA (or under the interpreter), rows
    of at most `_SORT_KERNEL_MAX_BLOCKS` key blocks, segments within the kernel's width."""
    if not _SORT_KERNEL or not runs_triton(q):
        return False
    from sparsebench.kernels.row_rank.triton import MAX_N

    return segment_size <= MAX_N and nk <= _SORT_KERNEL_MAX_BLOCKS


def _estimate_heads(q: torch.Tensor, k: torch.Tensor, scale: float, block_size: int, segment_size: int,
                    threshold: float, force_first_block: bool, last_q: int,
                    imp: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Estimator on one group of KV heads: q `[B, HC, T, D]` (HC = hc * G), k `[B, hc, S, D]`; `imp` the heads'
    step-1 importance `[B, HC, Sc]` if computed already (else in torch here).

    Returns `perm [B, HC, S]` (int64: original key index at each permuted position) and the official block mask
    `[B, HC, NQ, NK]` over permuted key blocks: selected | token-0 block | own segment.
    """
    B, HC, T, _ = q.shape
    S = k.shape[2]
    L = min(last_q, T)
    nseg = S // segment_size
    Sc = nseg * segment_size

    # 1) importance of each key of the complete segments to the last L queries
    if imp is None:
        imp = _importance_torch(q, k, scale, L, Sc)

    # 2) order each segment by importance, descending; the remainder stays in place
    from sparsebench.kernels import row_rank

    kernel = _sort_kernel(q, segment_size, -(-S // block_size))
    order = (row_rank.desc_order_triton if kernel else row_rank.desc_order_naive)(imp.view(B, HC, nseg, segment_size))
    seg0 = torch.arange(0, Sc, segment_size, device=q.device)[:, None]
    perm = torch.cat([(order + seg0).view(B, HC, Sc),
                      torch.arange(Sc, S, device=q.device).expand(B, HC, S - Sc)], dim=-1)

    # 3) pooled permuted keys, straight from each segment's order (the permuted keys themselves are never needed)
    kbar = _pooled_permuted_keys(k, order, block_size)
    qbar = _block_mean(q, block_size)

    # 4) block scores over earlier-segment causal blocks, softmax per row, cumulative-mass selection
    allowed, not_allowed, own, _ = _block_layout(-(-T // block_size), -(-S // block_size),
                                                 segment_size // block_size, q.device)
    scores = torch.einsum("bhqd,bhkd->bhqk", qbar, kbar).mul_(scale)
    probs = torch.softmax(scores.masked_fill_(not_allowed, float("-inf")), dim=-1, dtype=torch.float32)
    del scores
    mask = threshold_blocks(probs, allowed, threshold, kernel)
    if force_first_block:
        # original token 0 sits in segment 0, wherever the permutation put it
        nbps = segment_size // block_size
        sink = (perm[..., :segment_size].view(B, HC, nbps, block_size) == 0).any(-1)
        mask[..., :nbps] |= sink[:, :, None, :]
    mask |= own
    return perm, mask


# ------------------------------------------------------------------------------------------------ estimators
def pbs_estimate(q: torch.Tensor, k: torch.Tensor, scale: float, block_size: int = 128, segment_size: int = 256,
                 threshold: float = 0.9, force_first_block: bool = True, last_q: int = 128, *,
                 chunk_bytes: int = _CHUNK_BYTES, scores_kernel: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """The estimator for prefill (T == S > segment_size): q `[B, H, T, D]`, k `[B, HKV, S, D]`.

    Returns `perm [B, H, S]` int64 and the block mask `[B, H, NQ, NK]` over permuted key blocks (see
    `_estimate_heads`). Work runs in chunks of whole KV heads sized by `chunk_bytes` (a memory bound, never a result
    knob); each chunk is one vectorised pass doing each head's arithmetic as an unchunked pass would (bitwise on CPU;
    on CUDA a reduction may be split differently for another number of heads, moving the last bit).
    `scores_kernel="triton"`: step 1 for every head at once through the fused kernel (its memory is `[B, H, S]`-sized,
    not chunked), the rest chunked as above.
    """
    B, H, T, D = q.shape
    HKV, S = k.shape[1], k.shape[2]
    if T != S or S <= segment_size:
        raise ValueError(f"pbs estimates prefill longer than one segment: got T={T}, S={S}, "
                         f"segment_size={segment_size}")
    check_scores_kernel("pbs", scores_kernel)
    G = H // HKV
    L = min(last_q, T)
    NQ, NK = -(-T // block_size), -(-S // block_size)
    e = q.element_size()
    # the peak of one KV head's temporaries: its query heads' logits (input dtype, scaled in place) with the fp32
    # softmax (and the fp32 copy of its input that torch makes for a half-precision input), or later the keys in the
    # pooling dtype (fp32, fp64 for fp32 inputs), the query heads' 0/1 block-membership rows (segment_size //
    # block_size per key, same dtype) and block-score rows (scores, fp32 probabilities, NaN-free copy, sort values
    # and indices, running sums, masks: < 40 bytes an entry); the outputs perm and mask come on top
    a = 8 if q.dtype == torch.float32 else 4
    nbps = segment_size // block_size
    imp = None
    if fused_scores(scores_kernel, q, D):
        imp = _importance_triton(q, k, scale, L, S // segment_size * segment_size)
    # the fused kernel has already done step 1 for every head (scratch of a few floats a key): no logits per chunk
    logits = G * L * S * (e + 8) if imp is None else 0
    per_kv_head = B * max(logits, S * D * a + G * (S * nbps * a + NQ * NK * 40))
    hc = max(1, min(HKV, chunk_bytes // max(per_kv_head, 1)))
    if hc == HKV:
        return _estimate_heads(q, k, scale, block_size, segment_size, threshold, force_first_block, last_q, imp)
    perm = torch.empty(B, H, S, dtype=torch.int64, device=q.device)
    mask = torch.empty(B, H, NQ, NK, dtype=torch.bool, device=q.device)
    for h0 in range(0, HKV, hc):
        h1 = min(HKV, h0 + hc)
        perm[:, h0 * G:h1 * G], mask[:, h0 * G:h1 * G] = _estimate_heads(
            q[:, h0 * G:h1 * G], k[:, h0:h1], scale, block_size, segment_size, threshold, force_first_block, last_q,
            None if imp is None else imp[:, h0 * G:h1 * G])
    return perm, mask


def pbs_estimate_naive(q: torch.Tensor, k: torch.Tensor, scale: float, block_size: int = 128,
                       segment_size: int = 256, threshold: float = 0.9, force_first_block: bool = True,
                       last_q: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """The official estimator's steps done directly: K repeated per query head, every head at once, full padding.

    The oracle of `pbs_estimate` (same outputs); memory O(H * S * D + H * last_q * S).
    """
    B, H, T, D = q.shape
    S = k.shape[2]
    G = H // k.shape[1]
    kr = k.repeat_interleave(G, dim=1)
    nseg = S // segment_size
    Sc = nseg * segment_size
    L = min(last_q, T)

    attn = torch.softmax(torch.matmul(q[:, :, -L:], kr[:, :, :Sc].transpose(-1, -2)) * scale, dim=-1,
                         dtype=torch.float32)
    imp = attn.mean(dim=-2).view(B, H, nseg, segment_size)
    within = torch.sort(imp, dim=-1, descending=True, stable=True).indices
    perm_c = (within + torch.arange(nseg, device=q.device)[:, None] * segment_size).reshape(B, H, Sc)
    perm = torch.cat([perm_c, torch.arange(Sc, S, device=q.device).expand(B, H, S - Sc)], dim=-1)
    k_perm = torch.gather(kr, 2, perm[..., None].expand(B, H, S, D))

    NQ, NK = -(-T // block_size), -(-S // block_size)
    qpad = F.pad(q, (0, 0, 0, NQ * block_size - T))
    kpad = F.pad(k_perm, (0, 0, 0, NK * block_size - S))
    qbar = qpad.view(B, H, NQ, block_size, D).mean(-2)
    kbar = kpad.view(B, H, NK, block_size, D).mean(-2)

    nbps = segment_size // block_size
    rb = torch.arange(NQ, device=q.device)[:, None]
    cb = torch.arange(NK, device=q.device)[None, :]
    own = (rb // nbps) == (cb // nbps)
    allowed = ~own & (cb <= rb)
    scores = torch.einsum("bhqd,bhkd->bhqk", qbar, kbar) * scale
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1, dtype=torch.float32)
    mask = threshold_blocks(probs, allowed, threshold)
    if force_first_block:
        kpad_idx = F.pad(perm, (0, NK * block_size - S), value=S)
        mask = mask | (kpad_idx.view(B, H, NK, block_size) == 0).any(-1)[:, :, None, :]
    return perm, mask | own


# ------------------------------------------------------------------------------------------------ selection
def pbs_selection(perm: torch.Tensor, mask: torch.Tensor, *, q_len: int, k_len: int, num_kv_heads: int,
                  block_size: int, segment_size: int) -> Selection:
    """The `Selection` that computes the same (query, key) pairs as the official permuted kernel.

    perm `[B, H, S]`, mask `[B, H, NQ, NK]` over permuted key blocks. Key blocks (original order) are the causal
    blocks of the query's own segment and every earlier segment whose permuted blocks are all selected (their union
    is the whole segment). The selected permuted blocks of the other earlier segments become their original key
    tokens as extra columns (int32, ascending permuted-block order); those segments are not listed as blocks, so
    columns and blocks never overlap. One host sync reads the widest block list and the widest column list.
    """
    B, H, S = perm.shape
    NQ, NK = mask.shape[-2], mask.shape[-1]
    dev = perm.device
    nbps = segment_size // block_size
    nseg = S // segment_size
    nkc = nseg * nbps  # key blocks of complete segments; every earlier segment is complete
    allowed, _, _, own = _block_layout(NQ, NK, nbps, dev)
    earlier = mask & allowed

    whole = torch.zeros_like(earlier)
    whole[..., :nkc] = earlier[..., :nkc].unflatten(-1, (nseg, nbps)).all(-1, keepdim=True).expand(
        B, H, NQ, nseg, nbps).flatten(-2)
    blocks = whole | own
    partial = earlier & ~whole
    # selected blocks first, each group in ascending order (the stable partition of the bool mask); both masks in one
    # call, which is row-wise (one set of launches instead of two)
    (block_order, partial_order), (kv_counts, n_partial) = stable_partition(torch.stack([blocks, partial]))
    maxk, maxb = torch.stack([kv_counts.max(), n_partial.max()]).tolist()

    kv_indices = block_order[..., :maxk]
    extra_cols = extra_counts = None
    if maxb:
        pick = partial_order[..., :maxb].clamp_max(nkc - 1).long()
        # each picked permuted block's BS original key indices, by a gather whose index is an expanded (stride-0)
        # view. (A row gather, `index_select` of BS-wide rows of a [B*H*nkc, BS] table, was timed on an H200 in
        # session 5 and dropped: the whole estimate took 3.13-3.90 vs 2.88-3.57 ms at 64K over three runs.)
        perm_blocks = perm[..., :nkc * block_size].to(torch.int32).view(B, H, 1, nkc, block_size)
        extra_cols = torch.gather(perm_blocks.expand(B, H, NQ, nkc, block_size), 3,
                                  pick[..., None].expand(B, H, NQ, maxb, block_size)).view(B, H, NQ, -1)
        extra_counts = n_partial * block_size
    return Selection(kv_indices.contiguous(), kv_counts, block_size, block_size, q_len, k_len, H, num_kv_heads,
                     "query_head", extra_cols=extra_cols, extra_counts=extra_counts)


# ------------------------------------------------------------------------------------------------ method
class PBS(SparseAttention):
    """PBS-Attn prefill (see the module docstring).

    Args:
        block_size: query and key block size of the block scores and of the executed selection.
        segment_size: keys are permuted within segments of this many tokens (a multiple of block_size).
        threshold: cumulative block-probability mass each query block keeps, in (0, 1] (1 keeps every block).
        force_first_block: always keep the permuted block that holds token 0.
        last_q: queries (the last ones) whose attention ranks the keys.
        scores_kernel: `auto` (default: `triton` on CUDA, else `torch`), `torch` (the official importance,
            exactly) or `triton`: the keys' importance through the fused Triton kernel `kernels/last_q_scores`
            (`last_q_importance_triton`), which never materialises the last queries' softmax; the same logit
            rounding, equal up to summation order, so a near-tie of two keys' importance may order them the other
            way.
        executor: `auto`, `reference` or `triton` (earlier-segment keys run as extra columns: not flex).
    """

    name = "pbs"
    label = "PBS-Attn"
    paper = "arXiv:2510.21270"
    # 2: permuted keys pooled by a membership matmul (fp32 means may move in the last bit); 3: on CUDA, that matmul in
    # 16 bits with fp32 output, and the sorts (with the mass rule's fp32 running sum) through kernels/row_rank
    impl_version = 3
    budget_knob = "threshold"
    budget_increases_density = True

    def __init__(self, block_size: int = 128, segment_size: int = 256, threshold: float = 0.9,
                 force_first_block: bool = True, last_q: int = 128, scores_kernel: str = "auto",
                 executor: str = "auto") -> None:
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"pbs block_size={block_size!r} must be a positive integer")
        if (isinstance(segment_size, bool) or not isinstance(segment_size, int) or segment_size < block_size
                or segment_size % block_size):
            raise ValueError(f"pbs segment_size={segment_size!r} must be a positive multiple of "
                             f"block_size={block_size}")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
            raise ValueError(f"pbs threshold={threshold!r} must lie in (0, 1] (1 keeps every block)")
        if not isinstance(force_first_block, bool):
            raise ValueError(f"pbs force_first_block={force_first_block!r} must be true or false")
        if isinstance(last_q, bool) or not isinstance(last_q, int) or last_q < 1:
            raise ValueError(f"pbs last_q={last_q!r} must be a positive integer")
        check_scores_kernel("pbs", scores_kernel)
        if executor == "flex":
            raise ValueError("pbs executor='flex' cannot run it: pbs executes earlier-segment keys as extra key "
                             "columns, which flex does not take; choose one of auto, reference, triton")
        super().__init__(executor=executor, block_size=block_size, segment_size=segment_size,
                         threshold=float(threshold), force_first_block=force_first_block, last_q=last_q,
                         scores_kernel=scores_kernel)
        self.scores_kernel = scores_kernel
        self.block_size, self.segment_size = block_size, segment_size
        self.threshold, self.force_first_block, self.last_q = float(threshold), force_first_block, last_q

    def _is_dense(self, q_len: int, k_len: int) -> bool:
        return q_len != k_len or k_len <= self.segment_size

    def estimate(self, q: torch.Tensor, k: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """`perm [B, H, S]` and the block mask `[B, H, NQ, NK]` over permuted key blocks (sparse path only)."""
        return pbs_estimate(q, k, scale, self.block_size, self.segment_size, self.threshold, self.force_first_block,
                            self.last_q, scores_kernel=self.scores_kernel)

    def select(self, q: torch.Tensor, k: torch.Tensor, ctx: AttnContext) -> Selection:
        B, H, T, _ = q.shape
        HKV, S = k.shape[1], k.shape[2]
        if self._is_dense(T, S):
            return Selection.causal(batch=B, q_len=T, k_len=S, num_heads=H, num_kv_heads=HKV,
                                    block_q=self.block_size, block_k=self.block_size, device=q.device)
        perm, mask = self.estimate(q, k, ctx.scale)
        return pbs_selection(perm, mask, q_len=T, k_len=S, num_kv_heads=HKV, block_size=self.block_size,
                             segment_size=self.segment_size)

    def estimation_flops(self, shape: AttnShape) -> int:
        """Matmuls of the estimator: last `last_q` queries x keys of complete segments, and the full pooled
        `NQ x NK` score matrix (masked after it is computed, as in the official code), per query head. The block
        means are not counted, though `_pooled_permuted_keys` takes them as a 0/1 matmul."""
        if self._is_dense(shape.q_len, shape.k_len):
            return 0
        L = min(self.last_q, shape.q_len)
        Sc = shape.k_len // self.segment_size * self.segment_size
        NQ, NK = math.ceil(shape.q_len / self.block_size), math.ceil(shape.k_len / self.block_size)
        D = shape.head_dim
        return shape.batch * shape.num_heads * (2 * L * Sc * D + 2 * NQ * NK * D)
