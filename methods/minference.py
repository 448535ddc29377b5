"""MInference 1.0: per-head dynamic sparse prefill with three patterns (A-shape, vertical-slash, block-sparse).

Paper: Jiang et al., 2024, "MInference 1.0: Accelerating Pre-filling for Long-Context LLMs via Dynamic Sparse
Attention", arXiv:2407.02490 (NeurIPS 2024). Official code: microsoft/MInference at commit fb56c917f618
(`minference/modules/minference_forward.py`: `minference_prefill_kernel`, `minference_prefill_forward`,
`search_pattern`; `minference/ops/block_sparse_flash_attention.py`; `csrc/vertical_slash_index.cu`). Spec:
`specs/methods-prefill-1.md` §2.

Patterns (knob `pattern`):

- `vertical_slash` (what MInference runs for nearly every head): the last `last_q` queries score every key
  (causal softmax, the last `last_q` x `last_q` corner masked). Vertical scores are the column sums of those
  probabilities, slash scores the sums along each diagonal (offset o = query position - key position). The first
  `forced_columns` columns and the `forced_diagonals` nearest diagonals are forced (score +inf), then the top
  `v = min(S, max(vertical_size, min_vertical))` columns and top `s = min(S, max(slash_size, min_slash))` offsets
  are kept, per query head. Execution (`kernels/vertical_slash`): each slash becomes the `block_size`-wide key
  blocks its diagonal crosses in each query block; vertical columns outside those blocks are extra key columns.
- `block_sparse`: Q and K mean-pooled over `block_size` tokens (zero padded, as the official code pads), block
  scores = pooled Q . pooled K (no scale, no softmax), key blocks past the query block's last position masked,
  then the top `top_k` key blocks per query-block row. The diagonal block is not forced (nor in the official code).
- `a_shape`: `n_init` sink tokens plus a window of `n_local` tokens on positions, exact at token level.
- `config`: per layer and head, `[type, v, s(, score)]` from a JSON in the official per-model format (a list over
  layers of `{str(head): [...]}`, or `{"best_pattern": [...]}` as written by `scripts/search_minference.py`), read
  from `pattern_file` (calibration store). Types: `vertical_and_slash` (v, s = vertical and slash sizes),
  `stream_llm` (v, s = n_init, n_local), `block_sparse` (v, s unused; `top_k` applies). Heads or layers absent from
  the file run `vertical_and_slash` with (`vertical_size`, `slash_size`) = (1000, 6096) by default, the official
  fallback.

`budget_scale` multiplies every budget before the clamps: vertical and slash sizes (the official
`minference_ratio`, truncated to int as there), `stream_llm` / A-shape `(n_init, n_local)` (the official ratio
scales a stream_llm head's (v, s) too) and `top_k` (n_local and top_k stay >= 1).

GQA: the official code runs `repeat_kv` and loops over query heads; here the query heads of a KV group are scored
together against the shared K (`q.view(B, HKV, G, L, D)`), K is never repeated, and every query head still gets its
own selection (granularity `query_head`).

Tie rule (deterministic, where `torch.topk` is not): among equal scores, lower column index first, nearer diagonal
(smaller offset) first, lower key-block index first. It matters among the forced (+inf) entries when a size is
below the forced count (e.g. slash_size 50 < 100 forced diagonals keeps offsets 0..49).

Offline search (`search_recall`, `choose_patterns`, `MInferenceSearch`; driver `scripts/search_minference.py`):
for every layer and head, each candidate of the paper's search space (`SEARCH_SPACE`, the official
`search_pattern` list of FLOPs-comparable settings) is scored by attention recall, the share of the dense causal
softmax mass inside the selection, averaged over query rows >= `score_from_row` (official: 2500) and calibration
samples; the best per head is written as a config JSON.

Cost (`estimation_flops` counts the matmuls): vertical-slash 2 * B * H * last_q * S * D; block-sparse
2 * B * H * NQ * NK * D on pooled blocks; A-shape 0. Memory: the last-query probabilities are held fp32 for as many
KV heads at once as fit 2**27 elements (plus their logits in the input dtype; K is read in place, the diagonal sums
read a skewed view, no padded copy), the block scores for as many query-block rows as fit 2**27 elements; ranking
on CUDA (where every head keeps the same sizes) is the radix select of `kernels/top_set` (columns and diagonals in
one set of launches, no sort; the same sets), elsewhere `top_ranked` (an int64 topk or a stable sort of
`[B, H, S]`); on CUDA the scores come from `kernels/last_q_scores` (row-block kernels) and the slash maps, block
lists and extra columns from `kernels/vertical_slash`'s Triton passes (which take top_set's columns as sorted,
`v_sorted`, with no sort of their own); the block lists are `[B, H, NQ, MAXK]` int32 (at 128K, H=32: at most 512 MB).
`budget_range` gives a `target_density` resolver the interval of `budget_scale` from the minimum budgets to
keep-everything.

Deviations from the official code:

1. Slash blocks are aligned to the key-block grid (from `kernels/vertical_slash`): the official converter turns an
   offset into the unaligned 64-column band `[end - o - 64, end - o)`; here it becomes the aligned blocks the
   diagonal crosses (a superset, up to two blocks). Extra (vertical) columns obey causality; the official kernel
   assumes they lie left of the diagonal band.
2. Vertical-slash logits: Q.K^T in the input dtype (fp32 accumulation) with the scale applied in fp32 before the
   one rounding to the input dtype; softmax and sums in fp32 (official: Q.K^T rounded to the input dtype, then
   divided by sqrt(D) in the input dtype, a second rounding; softmax in fp32). Pooled block scores are fp32
   (official: input dtype). The softmax scale is the model's attention scale (official: 1/sqrt(D); equal for
   Llama/Qwen).
3. Ties are broken by the rule above (official: `torch.topk`, unspecified order).
4. `block_sparse` caps top_k at NK = ceil(S / block_size) (official: floor(N / 64), which drops one block of the
   last, partial query block when N % 64 != 0 and top_k > N // 64), so top_k >= NK keeps every causal block.
5. `budget_scale` also scales A-shape `(n_init, n_local)` and `top_k` (official `minference_ratio` only reaches
   (v, s), which for stream_llm heads are (n_init, n_local)); at 1.0 nothing changes.
6. `config` layers that mix a `stream_llm` head with other types (or with stream_llm heads of other sizes) run
   that head in vertical-slash form: sink columns exact, the window rounded out to whole key blocks (a `Selection`
   holds one token-level window). A layer of identical stream_llm heads runs the exact window. A layer absent from
   the file runs the default pattern (official: IndexError). If any head of a layer is vertical-slash (or
   block-sparse), the estimate is computed for every head of the layer, and `estimation_flops` counts it so.
7. Chunked prefill (T < S; official assumes T == S): the last `last_q` rows of the chunk score keys at their
   positions, offsets run to S - 1, sizes clamp at S.
8. Search: candidates are scored on the selection sparsebench executes (forced_diagonals=100 of the current prefill
   path, aligned blocks, block_sparse on `block_size` blocks), where the official `search_pattern` scores exact
   diagonals with 30 forced, 32-token pooled blocks and a window of n_local + 1 offsets. The official remap of
   winners (stream_llm -> vertical_and_slash with the same sizes, block_sparse -> vertical_and_slash (1000, 6096))
   is option `remap` (default on).
9. `starting_layer` is the harness's `method.layers`; decode stays dense (as in the official prefill path).
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sparsebench.attention import AttnContext, AttnShape, SparseAttention
from sparsebench.kernels import runs_triton
from sparsebench.kernels.last_q_scores import check_fused_device, check_scores_kernel, fused_scores
from sparsebench.selection import Selection

PATTERNS = ("a_shape", "vertical_slash", "block_sparse", "config")
# official type names in the per-head config files -> the pattern that runs them
FILE_TYPES = {"vertical_and_slash": "vertical_slash", "stream_llm": "a_shape", "block_sparse": "block_sparse",
              "vertical_slash": "vertical_slash", "a_shape": "a_shape"}
OFFICIAL_NAME = {"vertical_slash": "vertical_and_slash", "a_shape": "stream_llm", "block_sparse": "block_sparse"}
DEFAULT_VS = (1000, 6096)
# the official search space (`search_pattern`): (type, v, s); block_sparse's v is the kept share 1/v of key blocks
SEARCH_SPACE = (("stream_llm", 100, 800), ("vertical_and_slash", 30, 800), ("vertical_and_slash", 100, 750),
                ("vertical_and_slash", 500, 700), ("vertical_and_slash", 3500, 100), ("block_sparse", 8, 1))

SEARCH_KNOBS = ("last_q", "block_size", "forced_columns", "forced_diagonals", "min_vertical", "min_slash")
_MAX_SCORES = 1 << 27  # fp32 score elements an estimator holds at once (512 MB), before its padded copy
# Where every head keeps the same numbers of columns and diagonals, pick them with the radix-select kernel
# (kernels/top_set: the same sets as `top_ranked`, in ascending order, so the list builder skips its sort)
# instead of `top_ranked`'s two int64 topk (0.34 ms of MInference's 1.79 ms of GPU time at 64K on an H200, session
# 6). On the H200 (session 7, bench_methods) the whole estimate took 1.16 vs 2.06 ms at 32K with it; its first,
# one-program-per-row version lost at 128K (4.29 vs 3.65 ms), hence the chunked kernel (row `minference_vs_notopset`
# in results/tables/bench_methods_cost.csv for the final comparison).
_TOP_SET = True
# both picks in one set of top_set launches (`top_set_pair_triton`: 5 launches instead of 12 for two calls of the
# session-7 first chunked version, whose launches dominate the host time of a 32K-64K estimate)
_TOP_SET_PAIR = True


# ---------------------------------------------------------------------------------------------- estimators
def _scaled_logits(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """`[N, M, S]` = scale * q `[N, M, D]` . k `[N, S, D]`^T as one batched GEMM in the input dtype: fp32 accumulation,
    the scale applied in fp32 (GEMM epilogue), one rounding to the input dtype. K is read in place (no copy)."""
    # beta=0: the 0-dim input is ignored, never expanded into the output
    return torch.baddbmm(q.new_zeros(()), q, k.transpose(-1, -2), beta=0, alpha=scale)


def _diagonal_sums(p: torch.Tensor) -> torch.Tensor:
    """`[N, S]` sums along the diagonals of contiguous `[N, L, S]` probabilities whose row i sits at position
    S - L + i and is exactly 0 right of it: column r holds offset S - 1 - r (key = position - (S - 1 - r)).

    No padded copy: the view with row stride S + 1 shifts row i right by L - 1 - i; the cells it reads left of a
    row's start are the previous row's zero tail (its last L - 1 - i + 1 > L - 1 - i keys lie past its position).
    Row 0 has no previous row inside its head, so it is added on its own."""
    p = p.contiguous()
    N, L, S = p.shape
    if L == 1:
        return p[:, 0].clone()
    # rows 1 .. L-1: element (i', r) = p[i' + 1, r + i' + 2 - L]
    rows = p.as_strided((N, L - 1, S), (L * S, S + 1, 1), p.storage_offset() + S + 2 - L)
    out = rows.sum(1)
    out[:, L - 1:] += p[:, 0, :S - L + 1]
    return out


def vs_scores(q: torch.Tensor, k: torch.Tensor, last_q: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Vertical and slash scores of the last `last_q` queries, grouped by KV head (K never repeated or converted).

    q `[B, H, T, D]`, k `[B, HKV, S, D]` -> `(vertical [B, H, S], slash [B, H, S])` fp32, `slash[..., o]` = summed
    probability on the diagonal key = position - o. Logits in the input dtype (`_scaled_logits`), softmax and sums
    in fp32.
    """
    B, H, T, D = q.shape
    HKV, S = k.shape[1], k.shape[2]
    G = H // HKV
    L = min(last_q, T)
    dev = q.device
    qg = q[:, :, T - L:].reshape(B, HKV, G * L, D)  # the only copy of an input: L query rows per head
    corner = torch.ones(L, L, dtype=torch.bool, device=dev).triu_(1)  # row i may not see keys S - L + j, j > i
    vertical = torch.empty(B, HKV, G, S, dtype=torch.float32, device=dev)
    slash = torch.empty(B, HKV, G, S, dtype=torch.float32, device=dev)
    hc = max(1, min(HKV, _MAX_SCORES // max(1, G * L * S)))
    for b in range(B):
        for h0 in range(0, HKV, hc):
            h1 = min(HKV, h0 + hc)
            logits = _scaled_logits(qg[b, h0:h1], k[b, h0:h1], scale).view(h1 - h0, G, L, S)
            logits[..., S - L:].masked_fill_(corner, float("-inf"))
            p = torch.softmax(logits, dim=-1, dtype=torch.float32)
            del logits
            torch.sum(p, dim=-2, out=vertical[b, h0:h1])
            slash[b, h0:h1] = _diagonal_sums(p.view(-1, L, S)).flip(-1).view(h1 - h0, G, S)
            del p
    return vertical.view(B, H, S), slash.view(B, H, S)


def vs_scores_triton(q: torch.Tensor, k: torch.Tensor, last_q: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`vs_scores` through the fused kernel `kernels/last_q_scores` (no materialised `[B, H, last_q, S]` softmax);
    equal to it up to the summation order of the softmax sums (`scores_kernel="triton"`)."""
    check_fused_device("minference", q)
    from sparsebench.kernels.last_q_scores import last_q_scores_triton

    L = min(last_q, q.shape[2])
    return last_q_scores_triton(q[:, :, q.shape[2] - L:], k, scale)


def vs_scores_naive(q: torch.Tensor, k: torch.Tensor, last_q: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`vs_scores` the way the official code computes it: one query head at a time against its KV head's keys,
    diagonals gathered one by one (`kernels/last_q_scores`' reference, which also pins the fused kernel)."""
    from sparsebench.kernels.last_q_scores import last_q_scores_naive

    L = min(last_q, q.shape[2])
    return last_q_scores_naive(q[:, :, q.shape[2] - L:], k, scale)


def pooled_block_scores(q: torch.Tensor, k: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-padded mean pools `([B, H, NQ, D], [B, HKV, NK, D])` fp32 (a partial block is divided by block_size)."""
    def pool(x: torch.Tensor) -> torch.Tensor:
        # sums accumulate in fp32 without an fp32 (or padded) copy of x: at 128K that copy would be gigabytes
        B, N, L, D = x.shape
        full = L // block_size
        parts = [x[:, :, :full * block_size].reshape(B, N, full, block_size, D).sum(-2, dtype=torch.float32)]
        if L % block_size:
            parts.append(x[:, :, full * block_size:].sum(-2, keepdim=True, dtype=torch.float32))
        return torch.cat(parts, dim=2) / block_size

    return pool(q), pool(k)


def _block_causal(T: int, S: int, block_size: int, device) -> torch.Tensor:
    """`[NQ, NK]` bool: key block holds a key at or before the query block's last position."""
    NQ, NK = -(-T // block_size), -(-S // block_size)
    p_hi = torch.clamp((torch.arange(NQ, device=device) + 1) * block_size, max=T) - 1 + S - T
    return (torch.arange(NK, device=device) * block_size)[None, :] <= p_hi[:, None]


def block_sparse_lists(q: torch.Tensor, k: torch.Tensor, block_size: int, top_k: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-`top_k` causal key blocks per query-block row by pooled score, ascending, chunked over query blocks.

    Returns `(kv_indices [B, H, NQ, K], kv_counts [B, H, NQ])` int32 with K = min(top_k, NK).
    """
    B, H, T, D = q.shape
    HKV, S = k.shape[1], k.shape[2]
    G = H // HKV
    qp, kp = pooled_block_scores(q, k, block_size)
    NQ, NK = qp.shape[2], kp.shape[2]
    K = min(top_k, NK)
    causal = _block_causal(T, S, block_size, q.device)
    counts = torch.clamp(causal.sum(-1), max=K).to(torch.int32)  # [NQ]
    idx = torch.empty(B, H, NQ, K, dtype=torch.int32, device=q.device)
    rc = max(1, _MAX_SCORES // max(1, B * H * NK))
    qg = qp.view(B, HKV, G, NQ, D)
    ar = torch.arange(K, device=q.device)
    for r0 in range(0, NQ, rc):
        r1 = min(NQ, r0 + rc)
        sc = torch.einsum("bkgqd,bknd->bkgqn", qg[:, :, :, r0:r1], kp).reshape(B, H, r1 - r0, NK)
        sc = sc.masked_fill(~causal[r0:r1], float("-inf"))
        top = torch.sort(sc, dim=-1, descending=True, stable=True).indices[..., :K]
        live = ar < counts[r0:r1, None]
        top = torch.where(live, top, NK)  # dead slots sort last, then are zeroed
        top = torch.sort(top, dim=-1).values
        idx[:, :, r0:r1] = torch.where(live, top, 0).to(torch.int32)
    return idx, counts[None, None].expand(B, H, NQ).contiguous()


def block_sparse_lists_naive(q: torch.Tensor, k: torch.Tensor, block_size: int, top_k: int
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """`block_sparse_lists` one head and one row at a time, ranking with Python's sort on (-score, block)."""
    B, H, T, _ = q.shape
    HKV, S = k.shape[1], k.shape[2]
    G = H // HKV
    qp, kp = pooled_block_scores(q, k, block_size)
    NQ, NK = qp.shape[2], kp.shape[2]
    K = min(top_k, NK)
    causal = _block_causal(T, S, block_size, q.device).tolist()
    idx = torch.zeros(B, H, NQ, K, dtype=torch.int32)
    cnt = torch.zeros(B, H, NQ, dtype=torch.int32)
    for h in range(H):
        sc = torch.matmul(qp[:, h], kp[:, h // G].transpose(-1, -2)).tolist()  # [B, NQ, NK]
        for b in range(B):
            for r in range(NQ):
                cand = [n for n in range(NK) if causal[r][n]]
                keep = sorted(sorted(cand, key=lambda n: (-sc[b][r][n], n))[:K])
                idx[b, h, r, :len(keep)] = torch.tensor(keep, dtype=torch.int32)
                cnt[b, h, r] = len(keep)
    return idx.to(q.device), cnt.to(q.device)


def top_ranked(scores: torch.Tensor, sizes: torch.Tensor, width: int, forced: int) -> torch.Tensor:
    """Indices of the `sizes[h]` best entries per `[B, H]` row (-1 past the size), the first `forced` entries ranked
    +inf; ties: lower index first (the order of a stable descending sort).

    For fp32 scores and a width well below the row length (MInference's 1000 columns of 128K keys) the whole row is
    not sorted: `torch.topk` over unique int64 keys (order-preserving score bits, then the reversed index) gives the
    stable sort's prefix exactly (signed zeros compare equal, as in the float comparison). (A topk over the fp32
    scores with the ties at the cut resolved by a cumsum was timed in session 5 and dropped: on an H200 the whole
    vertical-slash estimate took 2.52-2.63 vs 2.02 ms at 64K and 4.58-4.61 vs 3.67 ms at 128K.)"""
    sc = scores.clone()
    sc[..., :forced] = float("inf")
    N = sc.shape[-1]
    if sc.dtype == torch.float32 and 0 < width <= N // 4:
        bits = (sc + 0.0).view(torch.int32)  # + 0.0: -0.0 ties with 0.0, as in the float comparison
        bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # IEEE order for negative floats too
        key = (bits.to(torch.int64) << 32) | (N - 1 - torch.arange(N, device=sc.device))
        order = N - 1 - (torch.topk(key, width, dim=-1, largest=True, sorted=True).values & 0xFFFFFFFF)
    else:
        order = torch.sort(sc, dim=-1, descending=True, stable=True).indices[..., :width]
    live = torch.arange(width, device=scores.device)[None, :] < sizes[:, None]
    return torch.where(live, order, -1)


def top_ranked_naive(scores: torch.Tensor, sizes: Sequence[int], width: int, forced: int) -> torch.Tensor:
    """`top_ranked` with Python's sort on (-score, index) per row."""
    B, H, N = scores.shape
    out = torch.full((B, H, width), -1, dtype=torch.long)
    rows = scores.tolist()
    for b in range(B):
        for h in range(H):
            key = [(-math.inf if i < forced else -rows[b][h][i], i) for i in range(N)]
            best = [i for _, i in sorted(key)[:sizes[h]]]
            out[b, h, :len(best)] = torch.tensor(best, dtype=torch.long)
    return out.to(scores.device)


# ---------------------------------------------------------------------------------------------- pattern files
def parse_pattern_config(payload, source: str = "pattern file") -> list[dict[int, tuple[str, int, int]]]:
    """Per layer, head -> (pattern, v, s) from the official list-of-layers format (or {"best_pattern": [...]})."""
    layers = payload.get("best_pattern") if isinstance(payload, dict) else payload
    if not isinstance(layers, list):
        raise ValueError(f"{source}: expected a list of per-layer {{head: [type, v, s]}} objects "
                         f"(or {{\"best_pattern\": [...]}}), got {type(layers).__name__}")
    out = []
    for li, layer in enumerate(layers):
        if not isinstance(layer, dict):
            raise ValueError(f"{source}: layer {li} is a {type(layer).__name__}, expected {{head: [type, v, s]}}")
        heads = {}
        for head, entry in layer.items():
            if not str(head).isdigit():
                raise ValueError(f"{source}: layer {li} has head key {head!r}; expected a head index")
            if not isinstance(entry, (list, tuple)) or len(entry) < 3 or entry[0] not in FILE_TYPES:
                raise ValueError(f"{source}: layer {li} head {head}: {entry!r} is not [type, v, s(, score)] with "
                                 f"type one of {', '.join(FILE_TYPES)}")
            v, s = entry[1], entry[2]
            if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0 for x in (v, s)):
                raise ValueError(f"{source}: layer {li} head {head}: sizes {v!r}, {s!r} must be numbers >= 0")
            heads[int(head)] = (FILE_TYPES[entry[0]], int(v), int(s))
        out.append(heads)
    return out


@dataclass(frozen=True)
class _Plan:
    """One layer's per-head patterns and budgets after `budget_scale` (before clamping to S)."""

    kinds: tuple[str, ...]  # per head: vertical_slash | a_shape | block_sparse
    v: tuple[int, ...]  # vertical size (vertical_slash) or n_init (a_shape)
    s: tuple[int, ...]  # slash size (vertical_slash) or n_local (a_shape)

    def has(self, kind: str) -> bool:
        return kind in self.kinds


class MInference(SparseAttention):
    """MInference prefill (see the module docstring).

    Args:
        pattern: `a_shape`, `vertical_slash`, `block_sparse` or `config` (per head from `pattern_file`).
        last_q: queries (the last ones) that estimate vertical and slash scores.
        vertical_size, slash_size: vertical columns and slash diagonals kept per head (vertical_slash, and the
            default for heads a config file does not list).
        n_init, n_local: A-shape sink tokens and local window.
        top_k: key blocks kept per query-block row (block_sparse).
        scores_kernel: `auto` (default: `triton` on CUDA, else `torch`), `torch` or `triton`: the vertical/slash
            scores through the fused Triton kernel `kernels/last_q_scores`, which never materialises the last
            queries' softmax (equal up to the summation order of the softmax sums). On an H200 the estimate took
            1.21/1.89/3.53 ms with it against 1.32/2.26/4.29 ms with torch at 32K/64K/128K (CUDA-graph replays,
            results/tables/bench_methods_graph.csv, session 4).
        block_size: query and key block size of the executed selection (and of block_sparse pooling).
        forced_columns, forced_diagonals: first key columns and nearest diagonals always kept.
        min_vertical, min_slash: lower bounds of the vertical and slash sizes.
        budget_scale: multiplies every budget (the knob a target-density resolver tunes).
        pattern_file: the per-head config JSON (pattern=config only).
        executor: `auto`, `reference`, `flex` or `triton` (vertical-slash needs extra columns: not flex).
    """

    name = "minference"
    label = "MInference"
    paper = "arXiv:2407.02490"
    impl_version = 2  # 2: vertical-slash logits in the input dtype (bf16 selections changed)
    budget_knob = "budget_scale"
    budget_increases_density = True

    @staticmethod
    def budget_range(knobs: dict, seq_len: int) -> tuple[float, float, bool]:
        """Search interval of `budget_scale`: from 0 (every budget at its minimum) up to the scale at which every
        head's deciding budget (slash size, n_local, top_k blocks) covers seq_len, i.e. every causal pair is kept."""
        params = inspect.signature(MInference.__init__).parameters.values()
        k = {**{p.name: p.default for p in params if p.default is not inspect.Parameter.empty}, **knobs}
        # + 1: the scaled budget is truncated to int and must still reach the full count
        need_tokens, need_blocks = seq_len + 1, -(-seq_len // max(1, k["block_size"])) + 1
        ratio = {"vertical_slash": lambda s: need_tokens / max(1, s, k["min_slash"]),
                 "a_shape": lambda s: need_tokens / max(1, s),
                 "block_sparse": lambda s: need_blocks / max(1, k["top_k"])}
        entries = [("vertical_slash", k["slash_size"])]  # the default of heads a config file leaves out
        if k["pattern"] == "config" and k.get("pattern_file"):
            from sparsebench import calibration

            layers = parse_pattern_config(calibration.load(k["pattern_file"]))
            entries += [(kind, s) for layer in layers for kind, _, s in layer.values()]
        elif k["pattern"] == "a_shape":
            entries = [("a_shape", k["n_local"])]
        elif k["pattern"] == "block_sparse":
            entries = [("block_sparse", 0)]
        return 0.0, max(1.0, max(ratio[kind](s) for kind, s in entries)), False

    def __init__(self, pattern: str = "vertical_slash", last_q: int = 64, vertical_size: int = 1000,
                 slash_size: int = 6096, n_init: int = 128, n_local: int = 3968, top_k: int = 100,
                 block_size: int = 64, forced_columns: int = 30, forced_diagonals: int = 100, min_vertical: int = 30,
                 min_slash: int = 50, budget_scale: float = 1.0, pattern_file: str | None = None,
                 scores_kernel: str = "auto", executor: str = "auto") -> None:
        if pattern not in PATTERNS:
            raise ValueError(f"minference pattern={pattern!r} is not one of {', '.join(PATTERNS)}")
        check_scores_kernel("minference", scores_kernel)
        ints = dict(last_q=(last_q, 1), vertical_size=(vertical_size, 0), slash_size=(slash_size, 0),
                    n_init=(n_init, 0), n_local=(n_local, 1), top_k=(top_k, 1), block_size=(block_size, 1),
                    forced_columns=(forced_columns, 0), forced_diagonals=(forced_diagonals, 0),
                    min_vertical=(min_vertical, 0), min_slash=(min_slash, 0))
        for knob, (value, lo) in ints.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ValueError(f"minference {knob}={value!r} must be an integer >= {lo}")
        if isinstance(budget_scale, bool) or not isinstance(budget_scale, (int, float)) or not (
                0 < budget_scale < math.inf):
            raise ValueError(f"minference budget_scale={budget_scale!r} must be a finite number > 0")
        if (pattern == "config") != (pattern_file is not None):
            raise ValueError(f"minference pattern_file={pattern_file!r} goes with pattern=config and only with it "
                             f"(pattern={pattern!r})")
        super().__init__(executor=executor, pattern=pattern, last_q=last_q, vertical_size=vertical_size,
                         slash_size=slash_size, n_init=n_init, n_local=n_local, top_k=top_k, block_size=block_size,
                         forced_columns=forced_columns, forced_diagonals=forced_diagonals,
                         min_vertical=min_vertical, min_slash=min_slash, budget_scale=budget_scale,
                         pattern_file=pattern_file, scores_kernel=scores_kernel)
        self.scores_kernel = scores_kernel
        self.pattern, self.last_q, self.block_size = pattern, last_q, block_size
        self.vertical_size, self.slash_size = vertical_size, slash_size
        self.n_init, self.n_local, self.top_k = n_init, n_local, top_k
        self.forced_columns, self.forced_diagonals = forced_columns, forced_diagonals
        self.min_vertical, self.min_slash = min_vertical, min_slash
        self.budget_scale = float(budget_scale)
        self.pattern_file = pattern_file
        self.file_layers: list[dict[int, tuple[str, int, int]]] = []
        if pattern_file is not None:
            from sparsebench import calibration

            self.file_layers = parse_pattern_config(calibration.load(pattern_file), f"pattern_file {pattern_file!r}")
        self._plans: dict[tuple[int, int], _Plan] = {}
        self._last_plan: _Plan | None = None
        self._tensors: dict[tuple, torch.Tensor] = {}
        self._sizes_made: dict[tuple, tuple[tuple[int, ...], tuple[int, ...]]] = {}

    # ------------------------------------------------------------------------------------------ budgets
    def _scaled(self, kind: str, v: int, s: int) -> tuple[int, int]:
        c = self.budget_scale
        if kind == "a_shape":
            return int(v * c), max(1, int(s * c))
        return int(v * c), int(s * c)

    def _plan(self, layer: int, num_heads: int) -> _Plan:
        key = (layer, num_heads)
        if key not in self._plans:
            uniform = {"vertical_slash": (self.vertical_size, self.slash_size), "a_shape": (self.n_init, self.n_local),
                       "block_sparse": (0, 0)}
            if self.pattern == "config":
                heads = self.file_layers[layer] if layer < len(self.file_layers) else {}
                bad = [h for h in heads if h >= num_heads]
                if bad:
                    raise ValueError(f"pattern_file {self.pattern_file!r} lists heads {bad} for layer {layer}, "
                                     f"which has {num_heads} query heads")
                default = ("vertical_slash", self.vertical_size, self.slash_size)
                entries = [heads.get(h, default) for h in range(num_heads)]
            else:
                entries = [(self.pattern, *uniform[self.pattern])] * num_heads
            scaled = [self._scaled(kind, v, s) for kind, v, s in entries]
            self._plans[key] = _Plan(tuple(e[0] for e in entries), tuple(x[0] for x in scaled),
                                     tuple(x[1] for x in scaled))
        return self._plans[key]

    # ------------------------------------------------------------------------------------------ selection
    def select(self, q: torch.Tensor, k: torch.Tensor, ctx: AttnContext) -> Selection:
        return self._select(q, k, ctx, naive=False)

    def select_reference(self, q: torch.Tensor, k: torch.Tensor, ctx: AttnContext) -> Selection:
        """The same selection from the naive estimators (per-head loops, Python ranking): the test oracle."""
        return self._select(q, k, ctx, naive=True)

    def _select(self, q, k, ctx: AttnContext, naive: bool) -> Selection:
        from sparsebench.kernels.vertical_slash import vertical_slash_to_blocks

        B, H, T, _ = q.shape
        HKV, S = k.shape[1], k.shape[2]
        bs = self.block_size
        plan = self._plan(ctx.layer_idx, H)
        self._last_plan = plan
        if set(plan.kinds) == {"a_shape"} and len(set(zip(plan.v, plan.s))) == 1:
            return Selection.local(batch=B, q_len=T, k_len=S, num_heads=H, num_kv_heads=HKV, window=plan.s[0],
                                   sink=plan.v[0], block_q=bs, block_k=bs, device=q.device)
        kv_idx = kv_cnt = cols = ccnt = None
        if plan.has("vertical_slash") or plan.has("a_shape"):
            v_idx, s_off, v_sorted = self._vs_indices(q, k, ctx.scale, plan, naive)
            # on a GPU the extra-column compaction runs as one Triton kernel (same output bit for bit)
            extra = "triton" if q.is_cuda and not naive else "torch"
            kv_idx, kv_cnt, cols, ccnt = vertical_slash_to_blocks(v_idx, s_off, T, S, bs, extra=extra,
                                                                  v_sorted=v_sorted)
        if plan.has("block_sparse"):
            top_k = max(1, int(self.top_k * self.budget_scale))
            lists = block_sparse_lists_naive if naive else block_sparse_lists
            b_idx, b_cnt = lists(q, k, bs, top_k)
            if kv_idx is None:
                kv_idx, kv_cnt = b_idx, b_cnt
            else:
                is_bs = self._head_tensor(plan.kinds, "block_sparse", q.device)
                width = max(kv_idx.shape[-1], b_idx.shape[-1])
                pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[-1]))  # noqa: E731
                kv_idx = torch.where(is_bs[None, :, None, None], pad(b_idx), pad(kv_idx))
                kv_cnt = torch.where(is_bs[None, :, None], b_cnt, kv_cnt)
                ccnt = torch.where(is_bs[None, :, None], torch.zeros_like(ccnt), ccnt)
        return Selection(kv_idx.contiguous(), kv_cnt.contiguous(), bs, bs, T, S, H, HKV, "query_head",
                         extra_cols=cols, extra_counts=ccnt)

    def _vs_indices(self, q, k, scale: float, plan: _Plan, naive: bool) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """`(v_idx [B, H, NV], s_off [B, H, NS], v_sorted)`, -1 padded: picked columns and offsets for vertical-slash
        heads, sinks and window offsets for A-shape heads in vertical-slash form, nothing for block-sparse heads;
        `v_sorted` when every row of `v_idx` is ascending, distinct and live (top_set's sets, every head
        vertical-slash), which spares `vertical_slash_to_blocks` its sort."""
        B, H = q.shape[:2]
        S = k.shape[2]
        dev = q.device
        v_sz, s_sz = self._sizes(plan, S)
        NV, NS = max(v_sz), max(s_sz)
        v_sorted = False
        v_sizes = self._head_tensor(v_sz, None, dev)
        s_sizes = self._head_tensor(s_sz, None, dev)
        if plan.has("vertical_slash"):
            if naive:
                vert, slash = vs_scores_naive(q, k, self.last_q, scale)
            elif fused_scores(self.scores_kernel, q, q.shape[-1], min(self.last_q, q.shape[2])):
                vert, slash = vs_scores_triton(q, k, self.last_q, scale)
            else:
                vert, slash = vs_scores(q, k, self.last_q, scale)
            if naive:
                v_idx = top_ranked_naive(vert, v_sz, NV, self.forced_columns)
                s_off = top_ranked_naive(slash, s_sz, NS, self.forced_diagonals)
            elif _TOP_SET and runs_triton(q) and \
                    len(set(v_sz)) == len(set(s_sz)) == 1 and NV > 0 and NS > 0:
                from sparsebench.kernels.top_set import top_set_pair_triton, top_set_triton

                if _TOP_SET_PAIR:
                    v_idx, s_off = top_set_pair_triton(vert.reshape(B * H, S), NV, self.forced_columns,
                                                       slash.reshape(B * H, S), NS, self.forced_diagonals)
                else:
                    v_idx = top_set_triton(vert.reshape(B * H, S), NV, self.forced_columns)
                    s_off = top_set_triton(slash.reshape(B * H, S), NS, self.forced_diagonals)
                v_idx, s_off = v_idx.view(B, H, NV), s_off.view(B, H, NS)
                v_sorted = not plan.has("a_shape") and not plan.has("block_sparse")
            else:
                v_idx = top_ranked(vert, v_sizes, NV, self.forced_columns)
                s_off = top_ranked(slash, s_sizes, NS, self.forced_diagonals)
        else:
            v_idx = torch.full((B, H, NV), -1, dtype=torch.long, device=dev)
            s_off = torch.full((B, H, NS), -1, dtype=torch.long, device=dev)
        if plan.has("a_shape"):
            is_as = self._head_tensor(plan.kinds, "a_shape", dev)[None, :, None]
            ar_v, ar_s = torch.arange(NV, device=dev), torch.arange(NS, device=dev)
            v_idx = torch.where(is_as, torch.where(ar_v < v_sizes[:, None], ar_v, -1), v_idx)
            s_off = torch.where(is_as, torch.where(ar_s < s_sizes[:, None], ar_s, -1), s_off)
        return v_idx, s_off, v_sorted

    def _sizes(self, plan: _Plan, S: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Per head: (vertical, slash) sizes at S keys (the minimums applied, capped at S; 0 for block-sparse heads),
        made once per (plan, S): a per-head Python loop on every call costs host time the GPU waits for."""
        key = (plan, S, self.min_vertical, self.min_slash)
        if key not in self._sizes_made:
            v_sz, s_sz = [], []
            for kind, v, s in zip(plan.kinds, plan.v, plan.s):
                if kind == "vertical_slash":
                    v_sz.append(min(S, max(v, self.min_vertical)))
                    s_sz.append(min(S, max(s, self.min_slash)))
                elif kind == "a_shape":
                    v_sz.append(min(S, v))
                    s_sz.append(min(S, s))
                else:
                    v_sz.append(0)
                    s_sz.append(0)
            self._sizes_made[key] = (tuple(v_sz), tuple(s_sz))
        return self._sizes_made[key]

    def _head_tensor(self, values: tuple, equal_to, device) -> torch.Tensor:
        """Per-head values (or `values == equal_to` flags) as a device tensor, made once: a fresh host-to-device copy
        per call would synchronise the stream."""
        key = (values, equal_to, str(device))
        if key not in self._tensors:
            data = [x == equal_to for x in values] if equal_to is not None else list(values)
            self._tensors[key] = torch.tensor(data, device=device)
        return self._tensors[key]

    # ------------------------------------------------------------------------------------------ accounting
    def _plan_flops(self, plan: _Plan, shape: AttnShape) -> int:
        B, H, T, S, D = shape.batch, shape.num_heads, shape.q_len, shape.k_len, shape.head_dim
        flops = 0
        if plan.has("vertical_slash"):
            flops += 2 * B * H * min(self.last_q, T) * S * D  # last_q rows x all keys, every head
        if plan.has("block_sparse"):
            bs = self.block_size
            flops += 2 * B * H * (-(-T // bs)) * (-(-S // bs)) * D  # pooled Q x pooled K, every head
        return flops

    def estimation_flops(self, shape: AttnShape) -> int:
        """Matmul FLOPs of `select` (softmax, pooling sums and sorting are not counted, as elsewhere).

        With pattern=config it is the layer of the latest `select` call (the attention function asks right after
        selecting), or the mean over the file's layers before any call.
        """
        if self.pattern != "config":
            return self._plan_flops(self._plan(0, shape.num_heads), shape)
        if self._last_plan is not None and len(self._last_plan.kinds) == shape.num_heads:
            return self._plan_flops(self._last_plan, shape)
        n = max(1, len(self.file_layers))
        return round(sum(self._plan_flops(self._plan(i, shape.num_heads), shape) for i in range(n)) / n)


# ---------------------------------------------------------------------------------------------- offline search
def _candidate_method(cand: tuple[str, int, int], num_k_blocks: int, knobs: dict) -> MInference:
    kind, v, s = cand
    if FILE_TYPES.get(kind) is None:
        raise ValueError(f"search candidate {cand!r}: type must be one of {', '.join(FILE_TYPES)}")
    pattern = FILE_TYPES[kind]
    if pattern == "a_shape":
        return MInference(pattern="a_shape", n_init=v, n_local=max(1, s), executor="reference", **knobs)
    if pattern == "block_sparse":
        if v < 1:
            raise ValueError(f"search candidate {cand!r}: block_sparse keeps 1/v of the key blocks; v must be >= 1")
        return MInference(pattern="block_sparse", top_k=max(1, num_k_blocks // v), executor="reference", **knobs)
    return MInference(pattern="vertical_slash", vertical_size=v, slash_size=s, executor="reference", **knobs)


def _check_search_knobs(knobs: dict) -> None:
    bad = sorted(set(knobs) - set(SEARCH_KNOBS))
    if bad:
        raise ValueError(f"search knobs {bad} are not among the shared MInference knobs {', '.join(SEARCH_KNOBS)}")
    MInference(**knobs)  # their values must be valid MInference knobs


def search_recall(q: torch.Tensor, k: torch.Tensor, scale: float,
                  candidates: Sequence[tuple[str, int, int]] = SEARCH_SPACE, score_from_row: int = 2500,
                  layer_idx: int = 0, **knobs) -> torch.Tensor:
    """Attention recall `[H, C]` of each candidate per query head: dense causal softmax mass inside the candidate's
    executed selection, averaged over batch and query rows >= `score_from_row`.

    `knobs` are MInference knobs shared by the candidates (last_q, block_size, forced_columns, forced_diagonals,
    min_vertical, min_slash); a block_sparse candidate (v) keeps NK // v key blocks per row, as the official search.
    """
    from sparsebench.kernels.block_sparse_attn.naive import block_sparse_attn_naive

    B, H, T, D = q.shape
    HKV, S = k.shape[1], k.shape[2]
    if not 0 <= score_from_row < T:
        raise ValueError(f"score_from_row={score_from_row} must lie in [0, T={T}): the search needs query rows to "
                         f"score (use longer calibration prompts or a smaller score_from_row)")
    _check_search_knobs(knobs)
    ctx = AttnContext(layer_idx, H, HKV, D, scale)
    rows = torch.arange(score_from_row, T, device=q.device)
    v1 = k.new_zeros(B, HKV, S, 1)  # only the log-sum-exp is needed: a 1-wide value keeps the pass cheap

    def lse(sel: Selection) -> torch.Tensor:
        return block_sparse_attn_naive(q, k, v1, sel.kv_indices, sel.kv_counts, sel.block_q, sel.block_k,
                                       scale=scale, sink=sel.sink, window=sel.window, extra_cols=sel.extra_cols,
                                       extra_counts=sel.extra_counts, return_lse=True, q_rows=rows)[1]

    bs = knobs.get("block_size", 64)
    dense = lse(Selection.causal(batch=B, q_len=T, k_len=S, num_heads=H, num_kv_heads=HKV, block_q=bs, block_k=bs,
                                 device=q.device))
    nk = -(-S // bs)
    out = []
    for cand in candidates:
        sel = _candidate_method(tuple(cand), nk, knobs).select(q, k, ctx)
        out.append(torch.exp(lse(sel) - dense).mean(dim=(0, 2)))
    return torch.stack(out, dim=-1)


def choose_patterns(recall: torch.Tensor, candidates: Sequence[tuple[str, int, int]] = SEARCH_SPACE,
                    remap: bool = True) -> dict[str, list]:
    """Per head `{str(head): [type, v, s, recall]}`: the first candidate of highest recall (official type names).

    With `remap` (the official behaviour) a stream_llm winner is written as vertical_and_slash with the same sizes
    and a block_sparse winner as vertical_and_slash (1000, 6096).
    """
    best = torch.argmax(recall, dim=-1).tolist()  # first maximum, as the official strict `>` scan
    out = {}
    for h, c in enumerate(best):
        kind, v, s = candidates[c]
        kind = OFFICIAL_NAME[FILE_TYPES[kind]]
        score = float(recall[h, c])
        if remap and kind == "stream_llm":
            kind = "vertical_and_slash"
        elif remap and kind == "block_sparse":
            kind, (v, s) = "vertical_and_slash", DEFAULT_VS
        out[str(h)] = [kind, int(v), int(s), score]
    return out


class MInferenceSearch(SparseAttention):
    """Recorder for the offline search: at each routed prefill call it scores the candidates (`search_recall`),
    accumulates the recall per layer, and lets the layer run dense."""

    name = "minference_search"
    label = "MInference pattern search"
    paper = "arXiv:2407.02490"
    impl_version = 2  # 2: vertical-slash logits in the input dtype

    def __init__(self, candidates: Sequence[tuple[str, int, int]] = SEARCH_SPACE, score_from_row: int = 2500,
                 executor: str = "auto", **knobs) -> None:
        for cand in candidates:
            if len(cand) != 3 or cand[0] not in FILE_TYPES:
                raise ValueError(f"search candidate {cand!r} is not (type, v, s) with type one of "
                                 f"{', '.join(FILE_TYPES)}")
        if score_from_row < 0:
            raise ValueError(f"score_from_row={score_from_row} must be >= 0")
        _check_search_knobs(knobs)
        super().__init__(executor=executor, candidates=[list(c) for c in candidates], score_from_row=score_from_row,
                         **knobs)
        self.candidates = [tuple(c) for c in candidates]
        self.score_from_row = score_from_row
        self.knobs = knobs
        self.sums: dict[int, torch.Tensor] = {}
        self.counts: dict[int, int] = {}

    def select(self, q, k, ctx: AttnContext) -> Selection:
        r = search_recall(q, k, ctx.scale, self.candidates, self.score_from_row, ctx.layer_idx, **self.knobs)
        r = r.double().cpu()
        self.sums[ctx.layer_idx] = self.sums.get(ctx.layer_idx, 0) + r
        self.counts[ctx.layer_idx] = self.counts.get(ctx.layer_idx, 0) + 1
        bs = self.knobs.get("block_size", 64)
        return Selection.causal(batch=q.shape[0], q_len=q.shape[2], k_len=k.shape[2], num_heads=ctx.num_heads,
                                num_kv_heads=ctx.num_kv_heads, block_q=bs, block_k=bs, device=q.device)

    def recall(self) -> dict[int, torch.Tensor]:
        """Mean recall `[H, C]` per searched layer."""
        return {li: self.sums[li] / self.counts[li] for li in sorted(self.sums)}

    def best_pattern(self, num_layers: int, remap: bool = True) -> list[dict[str, list]]:
        """The config file's per-layer list; layers never searched are empty (they run the default pattern)."""
        rec = self.recall()
        return [choose_patterns(rec[li], self.candidates, remap) if li in rec else {} for li in range(num_layers)]
