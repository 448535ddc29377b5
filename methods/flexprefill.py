"""FlexPrefill: context-aware sparse prefill with a per-head choice between a query-aware block pattern and an
adaptive vertical-slash pattern (Lai et al., 2025, "FlexPrefill: A Context-Aware Sparse Attention Mechanism for
Efficient Long-Sequence Inference", ICLR 2025, arXiv:2502.20766).

Official code: bytedance/FlexPrefill at commit a24b27bf117f (`flex_prefill/ops/flex_prefill_attention.py`,
`flex_prefill_attention` and `get_active_blocks`); sparsebench spec: `methods-prefill-1.md` section 3.

Rule of `variant="official"` (B = `block_size`, N = T = S, nb = ceil(N / B), per query head; GQA native, query head h
reads KV head h // G, selections per query head):

1. N <= max(2B, ceil(min_budget / B) * B): dense causal attention.
2. The last B queries, multiplied by the softmax scale, against all keys; causal mask on the last B x B; softmax in
   fp32 -> P `[B, N]`. vertical = P averaged over its rows; slash[o] = (sum of P along diagonal offset o) / B.
3. Token counts that cover gamma: cnt = #(descending cumulative sum <= gamma) + 1, turned into blocks as
   cnt // 128 + 1 (128 is hard-coded in the official code, whatever B is), then clamped below by
   minb = ceil(min_budget / B) and above by min(ceil(max_budget / B), nb), in that order.
4. Block scores: vertical and slash sum-pooled over B consecutive entries (slash entries are ordered from the
   farthest diagonal to the main one, so pooled entry c stands for block offset nb - 1 - c).
5. Pattern switch: a = softmax(mean of the scaled last queries . block-mean keys) over the nb key blocks; the
   square root of the Jensen-Shannon divergence (natural log) between a and the pooled vertical is compared with
   tau; below tau the head is query-aware and its vertical and slash budgets drop to minb.
6. Vertical-slash blocks: the top-nv key blocks (block 0 forced first) in every row at or below them, and the
   top-ns block diagonals (the main one forced first).
7. Query-aware heads add: Abar = softmax over causal key blocks of (block-mean scaled queries . block-mean keys),
   an nb x nb matrix whose rows each sum to 1; its entries sorted globally in descending order are kept while their
   running sum stays <= gamma * nb (the entry that crosses is dropped; not per row).

Tie rule (both top-k choices and the global sort): a stable descending sort, so among equal scores the lower index
(row-major for the global sort) comes first. The official code leaves ties to `torch.topk` / `torch.sort`.

`variant="sparse_frontier"` is the simplified FlexPrefill of The Sparse Frontier (Nawrot et al., 2025,
arXiv:2504.17768; PiotrNawrot/sparse-frontier at 31d86c1, `FlexPrefill` in
`sparse_frontier/modelling/attention/efficient_prefilling.py`), per query head and at token level:
the last `approximation_size` (default 512) queries estimate P as above (causal on the last window, fp32 softmax);
nv = max(min_budget, cover(vertical, gamma)) key columns and ns = max(min_budget, cover(slash, gamma)) diagonals,
cover counted in tokens as in step 3 but with no block conversion; then the first 4 key columns and the 64 nearest
diagonals are forced and the top-nv columns and top-ns diagonals are kept; execution is MInference's vertical-slash
form with 64 x 64 blocks. Compared with the official method it has no query-aware heads and no pattern switch (tau
is unused), no block pooling of the scores, no maximum budget (max_budget must be None) and its own execution block
(block_size is unused). Its reference configuration is gamma (SF's `alpha`) 0.65, min_budget 512,
approximation_size 512: set them explicitly, since the knob defaults are the official method's.

Deviations from the official code:
- Head dim: any (the official top-level function asserts D in {16, 32, 64, 128}). Block size keeps the official
  restriction to {16, 32, 64, 128}.
- Softmax scale: the estimates use the model's attention scale (`ctx.scale`); the official code uses 1/sqrt(D).
  Identical on every model whose scale is D^-1/2 (Llama, Qwen, Gemma 3 270M).
- Ties: the stable rule above.
- Batch > 1: each batch entry is selected independently (the official code asserts batch 1).
- Chunked prefill (T < S): the official code asserts T == S; such calls run dense here (density 1 is recorded).
- Blocks above the block diagonal, which the query-aware rule can reach at gamma near 1 through zero-probability
  entries, are not listed; they hold no causal pair, so the computed pairs are the same.
- Block-mean queries and keys accumulate in fp32 and are rounded to the input dtype before their matmul; the
  official code pools in the input dtype. Matmuls run in the input dtype and softmaxes in fp32, as officially.
- The pooled query-aware matrix is computed for every head and used where the switch chose query-aware, which keeps
  selection free of host synchronisation (the official code loops over the query-aware heads); the selection is the
  same, and `estimation_flops` counts all heads, as executed. With `kernels/cover` (below) the cuts the rule does
  not use are left out (`_COVER_SKIP`, since session 11): the cover counts of the query-aware heads (their budgets
  are min_budget) and the global cover of the others; `official_parts` returns the latter as all False.
- Execution: the Selection runs on sparsebench's executors instead of the official Triton block-wise kernel.
- Running sums on CUDA: the cover counts and the global cover scan few long rows in two levels (`scan_rows`), whose
  rounding differs from torch.cumsum's (itself not sequential on CUDA): a running sum within rounding of its
  threshold may fall on the other side. On CPU they are torch.cumsum's sequential sums. On CUDA by default
  (`_COVER_KERNEL`, since session 9) both cuts come from `kernels/cover` instead (a radix descent on the values' bit
  patterns with fp32 sums per chunk and digit, no sort): the same rule, with the same kind of rounding at the
  threshold.
- Launching: on CUDA the whole estimate is replayed from one CUDA graph captured on the first call per layout
  (`_WHOLE_GRAPH`, since session 11), its kernels taking q's and k's addresses from a device table, the block means
  on a branch of their own (`_WHOLE_SIDE`); where the layout does not allow it, the rule after the reads of q and k
  is replayed from a graph captured per shape (`_GRAPH_TAIL`). The same kernels on the same values (tested equal),
  launched at once; a new layout costs one capture (an estimate run twice).
- `variant="sparse_frontier"`: ties as above; T < approximation_size runs dense (the Sparse Frontier code fails
  there); nv and ns are capped at T (its `topk` fails beyond); the model's scale as above; execution through
  `kernels/vertical_slash` (each slash band rounded out to the aligned 64 x 64 blocks it crosses, a superset of
  MInference's unaligned 64-wide bands, so density at equal knobs is somewhat higher than Sparse Frontier's
  kernel computes); density counts executed causal pairs (Sparse Frontier counts whole 64 x 64 blocks); one host
  synchronisation per call sizes the index lists (Sparse Frontier synchronises per head).

Option `scores_kernel` (default `"auto"`: `"triton"` on CUDA, `"torch"` elsewhere): with `"triton"` the last queries'
vertical and slash scores go through the fused kernel `kernels/last_q_scores`, which never materialises their
`[B, H, n, N]` softmax; the same values up to rounding (the summation order of the softmax sums, and the kernel's
fast exponential: `kernels/last_q_scores/triton.py`, `_FAST`). On an H200 (bf16, Llama-3.1-8B heads; session 6,
bench_methods, medians of 3) the whole estimate took 1.96 / 3.26 / 7.66 ms with it against 2.09 / 4.43 / 9.88 ms
with the torch path at 32K / 64K / 128K (`results/tables/bench_methods_cost.csv`). `"torch"` keeps the official
summation (it was the default until session 5).
"""
from __future__ import annotations

import sys
from collections.abc import Iterator

import torch

from sparsebench.attention import AttnContext, AttnShape, SparseAttention
from sparsebench.kernels import runs_triton
from sparsebench.kernels.block_means.naive import block_mean, block_means_naive, split_blocks  # noqa: F401
from sparsebench.kernels.flex_blocks.naive import block_tables, flex_blocks_mask, stable_rank  # noqa: F401
from sparsebench.kernels.flex_switch.naive import flex_switch_naive, js_distance  # noqa: F401  (js_distance: API)
from sparsebench.kernels.last_q_scores import check_fused_device, check_scores_kernel, fused_scores
from sparsebench.selection import Selection, stable_partition

VARIANTS = ("official", "sparse_frontier")
BLOCK_SIZES = (16, 32, 64, 128)
TOKENS_PER_BUDGET_BLOCK = 128  # the official token-count -> block-count conversion ignores block_size
SF_SINK_COLUMNS = 4
SF_LOCAL_DIAGONALS = 64
SF_BLOCK = 64  # MInference's vertical-slash kernel block
SF_APPROXIMATION = 512
MAX_SCORE_ELEMS = 1 << 27  # score elements held at once by the last-queries estimate (512 MB in fp32)
SCAN_ROW_LOOP_MIN = 1 << 15  # row length from which a CUDA running sum over few rows is scanned in two levels
SCAN_CHUNK_MIN = 64  # shortest chunk of the two-level scan
# the cover counts and the global cover by `kernels/cover` (a radix descent on the values' bits over chunked rows,
# no sort; both cuts in one set of 20 launches, `cover_pair_triton`) instead of torch's sorts and scans (0.69 ms of
# the 64K estimate's 2.65 ms of GPU time on an H200, session 9). On by default since session 9, with the graph-
# replayed tail below and 4K-entry chunks: the whole estimate took 1.133 / 2.155 / 5.502 ms against 1.258 / 2.372 /
# 5.634 ms with the tail alone at 32K / 64K / 128K (`bench_methods_cost_s9c.csv`; row `flexprefill_nocoverkernel`)
_COVER_KERNEL = True
# with it, the rows whose cut the rule does not use are left out (`skip` of `cover_pair_triton`): the vertical and
# slash counts of the query-aware heads, whose budgets are minb, and the global cover of the other heads. On by
# default since session 11: 0.772 / 1.441 / 3.391 ms against 0.788 / 1.552 / 3.741 ms at 32K / 64K / 128K (H200,
# Llama-3.1-8B heads, random q and k: every head query-aware; `bench_methods_cost_s11c.csv`, row
# `flexprefill_nocoverskip`)
_COVER_SKIP = True
# the block lists from the block scores, budgets and query-aware cover by `kernels/flex_blocks` (two launches: ranks
# by counting, then each row's lists) instead of a stable sort, the mask and `stable_partition` (about twenty torch
# ops, for an estimate bound by its host below 128K). On by default since session 9: the whole estimate took 2.67 /
# 2.78 / 6.37 ms with it against 3.01 / 3.08 / 7.38 ms without at 32K / 64K / 128K (H200, Llama-3.1-8B heads, same
# run, `bench_methods_cost_s9.csv`; row `flexprefill_noblockskernel` turns it off)
_BLOCKS_KERNEL = True
# with the early query-aware cover (`_QA_SIDE`), the budgets worked out from the cover counts by kernels/flex_blocks'
# first launch (`flex_blocks_from_counts_triton`), which also reads the cover on the query-aware heads only, instead
# of five torch launches for the budgets and one for the cover's mask; the same lists. On since session 14: on an H200
# (do_bench, 32K) 559.0 against 573.9 us (`results/logs/flexprefill_knobs_s14.txt`; bench row `flexprefill_s14agraph`
# turns it and `_WHOLE_MEANS` off)
_BUDGET_IN_KEEP = True
# with the early query-aware cover, the vertical and slash counts by kernels/cover's resident path (one launch, one
# program a row bisecting on the key; `RESIDENT`) instead of its 17 digit launches, which are bound by launch latency
# on the critical path (the resident path stays off for the global cover on the means' branch: its 32-warp programs
# would not fit beside the scores pass). On since session 14: on an H200 (do_bench, 32K, Llama-3.1-8B heads) 498.5
# against 529.7 us on random q and k (every head query-aware: the counts all skipped), 551.0 against 590.7 us on q
# near its keys (every head vertical-slash; the counts 50.5 us in one launch against 89 us in 17), the same lists
# (`results/logs/flexprefill_knobs_s14.txt`); the estimate 0.503 against 0.532 ms at 32K (`bench_methods_cost_s14d.csv`,
# row `flexprefill_chaincounts`). Rows longer than kernels/cover's `RESIDENT_MAX` (33K entries) take the launches
_RESIDENT_COUNTS = True
# with the early query-aware cover, its global cover (every head's block scores, on the means' branch) by
# kernels/cover's resident path too. Off in session 14 (its 32-warp programs would not fit beside the scores pass);
# on since session 15, once the scores pass got shorter (`last_q_scores`' `_KEY_GATHER`) and the branch's 17 cover
# launches (~167 us beside it) became the longer chain: on an H200 (do_bench, 32K, Llama-3.1-8B heads, medians of 3)
# 408.2 against 434.1 us on random q and k, 455.1 against 469.9 us on q near its keys, the same lists
# (`results/logs/flexprefill_knobs_s15.txt`); the estimate 0.412 against 0.432 ms at 32K (`bench_methods_cost_s15a.csv`,
# row `flexprefill_noresidentcover`). Rows longer than `RESIDENT_MAX` (64K keys and up) take the launches
_RESIDENT_COVER = True
# the pattern switch (probe, softmax over the key blocks, Jensen-Shannon distance, decision) by `kernels/flex_switch`
# in one launch instead of about twenty torch ops; equal up to fp32 summation order (a distance within rounding of
# tau may decide the other way). On by default since session 9: 2.81 / 3.05 / 7.36 ms against 3.01 / 3.08 / 7.38 ms
# without (`bench_methods_cost_s9.csv`; row `flexprefill_noswitchkernel` turns it off)
_SWITCH_KERNEL = True
# the query-aware block scores (the block means' products, the causal mask, the fp32 softmax) by `kernels/block_scores`
# in one launch instead of torch's matmul, mask, cast and softmax (four launches, 23 us a call at FlexPrefill's 32K
# shapes on an H200, session 12's profile; the kernel 17.6 us, session 13); equal up to rounding (a logit may round to
# the neighbouring value of the input dtype). On by default since session 13: the whole estimate took 0.631 / 1.282 /
# 2.944 ms against 0.638 / 1.306 / 3.085 ms at 32K / 64K / 128K (H200, Llama-3.1-8B heads, `bench_methods_cost_s13a
# .csv`; row `flexprefill_noqascoreskernel` turns it off)
_QA_SCORES_KERNEL = True
# the block means of the keys and of the scaled queries by `kernels/block_means` (one launch each, reading every block
# once) instead of torch's sum, counts, division, cast and multiply; equal up to the order of the fp32 sums. Off:
# slower in the whole estimate in session 9 (3.20 / 3.28 / 7.80 ms against 3.01 / 3.08 / 7.38 ms at 32K / 64K /
# 128K, `bench_methods_cost_s9.csv`, row `flexprefill_poolkernel`)
_POOL_KERNEL = False
# On CUDA the official rule's steps after the reads of q and k (`parts_from_reads` and the block lists: sorts, scans,
# the switch, the pooled block scores, their softmax and cover, some seventy launches on small tensors) are replayed
# from a CUDA graph captured on the first call per shape (`official_lists`): the same kernels on the same values,
# launched by one call instead of one by one from the host, which bounds the estimate below 128K on an H200. On by
# default since session 9: 1.258 / 2.372 / 5.634 ms against 1.962 / 2.398 / 5.599 ms eagerly at 32K / 64K / 128K,
# the host's issue time per call 0.66 / 0.61 / 1.33 ms against 1.97 / 1.68 / 1.77 ms (`bench_methods_cost_s9c.csv`;
# row `flexprefill_nographtail`). The first call per shape captures (a few ms, once).
_GRAPH_TAIL = True
# On CUDA the block means of q and k (a read of all of q and k, bound by memory bandwidth) run on a side stream while
# the last queries' score passes (bound by instruction latency, reading little) run on the caller's stream, which
# waits for both before the rule. On by default since session 10: 1.012 / 1.885 / 4.697 ms against 1.042 / 1.906 /
# 4.722 ms at 32K / 64K / 128K, and with kernels/cover's SKIP_UPPER 1.009 / 1.854 / 4.524 ms (H200,
# `bench_methods_cost_s10b.csv`, rows `flexprefill_sidemeans`, `_s10`). Little overlap: the score passes' programs
# fill the multiprocessors' registers. With kernels/block_means on the side stream instead it was slower (row
# `flexprefill_sidepool`: 1.110 / 2.096 / 5.138 ms)
_SIDE_MEANS = True
_side_streams: dict = {}
# On CUDA, where the fused scores kernel takes the last queries through its row-block kernels, the block means of q
# and k are computed by extra programs of its stats launch (`last_q_scores_and_means_triton`: bound by memory
# bandwidth beside programs bound by instruction latency) instead of torch's reductions (on the side stream above).
# Equal up to the order of the fp32 sums. Off: slower on an H200 (session 10: 1.019 / 1.958 ms against 0.913 / 1.596
# ms at 32K / 64K, `bench_methods_cost_s10f.csv`, row `flexprefill_fusedmeans`): the side programs hold launch slots
# that the stats programs' shared memory limits to two per multiprocessor, and each reads its blocks 32 rows at a time
_FUSED_MEANS = False
# On CUDA the whole estimate (the reads of q and k included) is replayed from one CUDA graph captured on the first
# call per layout (`_whole_lists`): the kernels that read q and k take their addresses from a two-entry device table
# that each call refills, so the graph replays on any q and k of that layout, and the host issues a handful of
# launches instead of about forty (the estimate was bound by its host at 32K). Where the layout does not allow it
# (the row-block score kernels, T == S, unit last strides, 16-byte aligned q and k viewable as [-1, T, D]) the
# eager reads and the graph-replayed tail run as before. The reads are then `kernels/block_means`' means (the
# `_POOL_KERNEL` path: equal up to the order of the fp32 sums) and q_last by `scaled_last_rows` (torch's values).
# On by default since session 11: 0.820 / 1.589 / 3.72 ms against 0.990 / 1.600 / 3.76 ms eagerly with the graph-
# replayed tail at 32K / 64K / 128K, the host's issue time 0.25 against 0.97 ms at 32K (H200, Llama-3.1-8B heads,
# `bench_methods_cost_s11a.csv`, rows `flexprefill` / `flexprefill_wholegraph` when it was off); row
# `flexprefill_nowholegraph` turns it off
_WHOLE_GRAPH = True
# inside that graph, the block means of q and k (bound by memory bandwidth) on a branch beside the last queries' score
# passes (bound by instruction latency) instead of after them. On by default since session 11: 0.793 / 1.554 /
# 3.695 ms against 0.820 / 1.587 / 3.726 ms at 32K / 64K / 128K (H200, `bench_methods_cost_s11b.csv`; row
# `flexprefill_nowholeside`). Little overlap: the scores pass's programs fill the registers, only the stats pass
# leaves room beside it
_WHOLE_SIDE = True
# inside that graph, the query-aware block scores (`kernels/block_scores`) and their global cover (`kernels/cover`)
# for every head on the means' branch, right after the means, instead of after the pattern switch for the query-
# aware heads only: neither needs the last queries' scores, so they run beside the score passes and the tail; the
# switch then only picks the heads' masks (the branch joins there; the tail waits only for the key means before the
# switch), and the tail's cover takes the vertical and slash counts alone. The same kernels on the same values: the
# same lists. On by default since session 13 (with the three switches below; H200, Llama-3.1-8B heads, random q and
# k, do_bench: 559.6 against 630.9 us at 32K without any of the four, 575.7 with this one alone, 567.7 with the
# other three alone; 1239.7 against 1283.2 us at 64K; `results/logs/flexprefill_knobs_s13.txt`; bench rows
# `flexprefill_noqaside`, `flexprefill_s12graph`)
_QA_SIDE = True
# the means' branch forked after `scaled_last_rows` and captured after the score passes, so that the graph's nodes
# list the stats pass before the means (both wait for `scaled_last_rows`): the one-wave stats pass
# (`_WHOLE_STATS_PERSIST`) is then placed first and the means take the slots it leaves, beside it. Kernels of
# concurrent branches take the GPU in launch order: a later kernel gets slots only once every program of the earlier
# ones is placed (session 12's timeline: the query means at 120-207 us, after the stats pass's 10-119 us, then holding
# back the scores pass). With the persistent stats pass and the late fork the stats pass and the means overlap
# (profiled at 32K: 145 us beside 52 + 123 us of means, against 95 and 30 + 87 us alone). On since session 13
_LATE_FORK = True
# the whole graph captured on a high-priority stream (the means' branch keeps the default, lowest, priority): the
# blocks of the main chain (the stats reduction, the scores pass, the tail) are placed before the waiting blocks of
# the means, which fill what is left (profiled at 32K: the scores pass right after the stats pass instead of after
# the query means). On since session 13
_MAIN_PRIORITY = True
# the means' branch of the whole graph at a priority above the main chain's (-2, against `_MAIN_PRIORITY`'s -1), the
# scores pass capped at `_WHOLE_SCORES_MAXNREG` registers and the branch's block scores (`_BRANCH_BLOCK_SCORES`: key
# blocks a step, a register cap) sized so that one 4-warp program of the branch (the means, the block scores, the
# global cover's kernels: at most 64 registers) fits on a multiprocessor beside the scores pass's two (255 registers
# uncapped: then nothing else fits, and the branch waited for the scores pass to end). The branch then runs beside the
# scores pass instead of after it. On since session 14: on an H200 (Llama-3.1-8B heads, random q and k, do_bench,
# medians of 3) 573.6 / 1195.8 / 2797.6 us against 588.3 / 1238.0 / 2856.9 us at 32K / 64K / 128K; at 32K the
# priority alone 585.2, with the cap alone 582.6, the block scores alone 578.9 us; a 216-register cap 577.4, 232
# 588.5 us; the branch at the main chain's priority 598.9 us (`results/logs/flexprefill_knobs_s14.txt`; bench row
# `flexprefill_s13graph` turns all three off). The same kernels and values, save the block scores' sums, added 32
# key blocks at a time instead of 64 (equal up to rounding)
_SIDE_PRIORITY = -2
# the whole graph's block means (kernels/block_means) at this many elements a step and warps (None: its defaults,
# 4096 and 4, the fastest alone). Beside the stats pass, fewer warps with more loads in flight each did better: on an
# H200 (session 14, do_bench, 32K, with `_BUDGET_IN_KEEP`) 528.1 us at (2048, 2) against 558.1 at the defaults, 533.1
# at (4096, 2), 532.8 at (4096, 1), 542.0 at (8192, 2), 654.4 us at (4096, 8); 1114.4 against 1165.2 us at 64K with
# (4096, 2) (`results/logs/flexprefill_knobs_s14.txt`)
_WHOLE_MEANS: tuple[int, int] | None = (2048, 2)
_WHOLE_SCORES_MAXNREG: int | None = 224
_BRANCH_BLOCK_SCORES: tuple[int, int] | None = (32, 64)
# those two caps apply up to this head dim only: at 256 (gemma3) one scores program fills a multiprocessor's shared
# memory (144 KB, offline sm_90), so there is room beside it anyway, and the caps would only spill (the scores pass
# spills 96 registers uncapped, the block scores 144 at the cap against none)
_SHARED_MAX_D = 128
# the graph's stats pass as this many resident programs a multiprocessor (`kernels/last_q_scores`' `persist`: one
# wave, so that the means launched after it find the slots it leaves at once; two stats programs a multiprocessor by
# shared memory, capped at `_STATS_PERSIST_MAXNREG` registers). None: a program a unit. On (2) since session 13
_WHOLE_STATS_PERSIST: int | None = 2


# ------------------------------------------------------------------------------------------------ helpers
def _side_stream(device: torch.device, priority: int = 0) -> torch.cuda.Stream:
    side = _side_streams.get((device, priority))
    if side is None:
        side = _side_streams[(device, priority)] = torch.cuda.Stream(device=device, priority=priority)
    return side


def _head_chunks(HKV: int, G: int, per_head: int, max_elems: int) -> Iterator[tuple[int, int, int, int]]:
    """(kv0, kv1, g0, g1) slices of query heads whose score matrices hold at most `max_elems` elements together."""
    if G * per_head <= max_elems:
        hc = max(1, max_elems // (G * per_head))
        for h0 in range(0, HKV, hc):
            yield h0, min(h0 + hc, HKV), 0, G
    else:
        gc = max(1, max_elems // per_head)
        for h0 in range(HKV):
            for g0 in range(0, G, gc):
                yield h0, h0 + 1, g0, min(g0 + gc, G)


def _skewed_sums(p: torch.Tensor) -> torch.Tensor:
    """`diagonal_sums` through a zero-padded copy of `p` (used on the first n - 1 columns only)."""
    *lead, n, S = p.shape
    padded = torch.nn.functional.pad(p, (n - 1, 0)).reshape(*lead, n * (S + n - 1))
    skewed = torch.nn.functional.pad(padded, (0, n)).view(*lead, n, S + n)
    return skewed[..., :S].sum(-2)


def diagonal_sums(p: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Sums along the diagonals of `p [..., n, S]`, whose rows are the last n positions of S keys.

    Entry x of the result `[..., S]` is the diagonal at offset S - 1 - x (query position minus key position), so the
    last entry is the main diagonal. Entries x >= n - 1 cross every row: read with a row stride of S + 1, row i
    starting at element 0 of row i lines them up in columns, a strided view of `p` itself (no copy). The first n - 1
    entries, which miss the first rows, come from the skewing trick on the first n - 1 columns only: after n - 1
    zeros on the left, row i read with a stride one longer than the row length starts i elements later.
    `out` (optional, `[..., S]`, may be a strided view): written in place and returned, sparing a copy.
    """
    *lead, n, S = p.shape
    if n > S:
        return _skewed_sums(p) if out is None else out.copy_(_skewed_sums(p))
    p = p.contiguous()
    if out is None:
        out = p.new_empty(*lead, S)
    full = p.as_strided((*lead, n, S - n + 1), (*p.stride()[:-2], S + 1, 1))
    torch.sum(full, dim=-2, out=out[..., n - 1:])
    if n > 1:
        out[..., :n - 1] = _skewed_sums(p[..., :n - 1])
    return out


def last_query_scores(q: torch.Tensor, k: torch.Tensor, n: int, scale: float,
                      max_elems: int = MAX_SCORE_ELEMS, kernel: str = "torch") -> tuple[torch.Tensor, torch.Tensor]:
    """Vertical and slash scores of the last `n` queries (T == S), and those queries pre-scaled.

    Returns `scores [2, B, H, S]` fp32, one tensor so that both kinds go through each later sort, scan and pool
    together: `scores[0]` the vertical scores (column means of the softmax), `scores[1]` the slash scores (diagonal
    sums / n, ordered as in `diagonal_sums`); and `q_last [B, H, n, D]` (input dtype, multiplied by `scale`). Query
    heads are grouped onto their KV head (K is never repeated) and processed in slices of at most `max_elems` scores.
    Both kinds are summed into one buffer and divided by n once: on CPU bit for bit the column means and the diagonal
    sums / n (torch's CPU mean is a sum divided by n; tested); on CUDA torch's mean multiplies its sum by 1/n as a
    division by a host scalar does, so the same values are expected there too, unverified.
    """
    B, H, T, D = q.shape
    HKV, S = k.shape[1], k.shape[2]
    G = H // HKV
    q_last = q[:, :, T - n:] * scale
    if fused_scores(kernel, q, D, n):
        # the fused kernel (kernels/last_q_scores) with the pre-scaled queries and scale 1: its fp32 dot rounded
        # once to the input dtype is what torch.matmul of q_last returns; its slash is indexed by offset
        check_fused_device("flexprefill", q)
        from sparsebench.kernels.last_q_scores.triton import last_q_scores_stacked_triton

        return last_q_scores_stacked_triton(q_last, k, 1.0, n), q_last
    qg = q_last.view(B, HKV, G, n, D)
    scores = torch.empty(2, B, HKV, G, S, dtype=torch.float32, device=q.device)
    rows = torch.arange(n, device=q.device)
    above = rows[None, :] > rows[:, None]  # key after the query inside the last n x n square
    for h0, h1, g0, g1 in _head_chunks(HKV, G, B * n * S, max_elems):
        hc, gc = h1 - h0, g1 - g0
        logits = torch.matmul(qg[:, h0:h1, g0:g1].reshape(B, hc, gc * n, D), k[:, h0:h1].transpose(-1, -2))
        logits = logits.view(B, hc, gc, n, S)
        logits[..., S - n:].masked_fill_(above, float("-inf"))
        p = torch.softmax(logits, dim=-1, dtype=torch.float32)
        del logits
        # sums straight into `scores` and one division for all chunks and both kinds (no copies)
        torch.sum(p, dim=-2, out=scores[0, :, h0:h1, g0:g1])
        diagonal_sums(p, out=scores[1, :, h0:h1, g0:g1])
        del p
    return scores.div_(n).view(2, B, H, S), q_last


def scan_chunk_len(N: int) -> int:
    """Chunk length of the two-level CUDA scan for rows of N entries: about sqrt(N), a power of two, so that the
    within-chunk scan (rows * N / chunk short rows) and the scan of chunk totals (rows of N / chunk) both stay short."""
    return max(SCAN_CHUNK_MIN, 1 << -(-max(N, 1).bit_length() // 2))


def scan_rows(x: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Running sum of `x [..., N]` over the last dim: `torch.cumsum(x, -1)`, exactly or up to rounding (below).

    On CUDA, torch gives each row of a multi-row scan to a single thread block, which leaves most of the GPU idle
    when the rows are fewer than its multiprocessors and long (the sorted scores here: B * H or 2 * B * H rows of up
    to ~nb^2 / 2 entries). Such rows are scanned in two levels with a handful of launches whatever the number of
    rows (about 4, and 2 more when N is not a multiple of the chunk): each row cut into chunks of `chunk` entries
    (zero-padded at its end), all chunks of all rows scanned at once, the chunk totals scanned per row, and every
    chunk shifted by the total before it.
    `chunk=None` decides: two levels with `scan_chunk_len(N)` on CUDA for fewer rows than multiprocessors of at least
    SCAN_ROW_LOOP_MIN entries, otherwise plain `torch.cumsum`; 0 forces `torch.cumsum`, a positive value forces two
    levels with chunks of that length (used on CPU by the tests).

    Rounding: plain `torch.cumsum` on CPU adds each row's entries in sequence, which is what the tests compare with,
    and `chunk=None` always takes it on CPU. The two-level scan gives entry i of chunk j as (sum of the totals of
    chunks < j) + (sum of chunk j up to i), each part accumulated in its own order, so it can differ from the
    sequential sum in the last bits (exact on integer-valued inputs whose sums are representable); torch's own CUDA
    scan is not sequential either. The callers compare these sums with a threshold (`cover_count`: <= gamma;
    `global_cover_mask`: <= gamma * nb), so on CUDA an entry whose running sum lies within rounding of the
    threshold may fall on the other side, moving a cover count or a global cover by one entry.
    Returns a tensor shaped like `x` (with two levels and padding, a non-contiguous view).
    """
    N = x.shape[-1]
    rows = x.numel() // max(N, 1)
    if chunk is None:
        few_long = (x.is_cuda and N >= SCAN_ROW_LOOP_MIN
                    and 1 < rows < torch.cuda.get_device_properties(x.device).multi_processor_count)
        chunk = scan_chunk_len(N) if few_long else 0
    if chunk <= 0 or N <= chunk or rows == 0:
        return torch.cumsum(x, dim=-1)
    nc = -(-N // chunk)
    if nc * chunk != N:
        x = torch.nn.functional.pad(x, (0, nc * chunk - N))
    out = torch.cumsum(x.unflatten(-1, (nc, chunk)), dim=-1)  # [..., nc, chunk]: within each chunk
    before = torch.cumsum(out[..., :-1, -1], dim=-1)  # [..., nc - 1]: total of the chunks before chunks 1..nc-1
    out[..., 1:, :] += before.unsqueeze(-1)
    return out.flatten(-2)[..., :N]


def _cover_kernel(x: torch.Tensor) -> bool:
    """Whether the cover rules take `kernels/cover` (`_COVER_KERNEL`, on CUDA or under the Triton interpreter)."""
    return _COVER_KERNEL and x.dtype == torch.float32 and runs_triton(x)


def cover_count(x: torch.Tensor, gamma: float) -> torch.Tensor:
    """Entries of the descending running sum of `x [..., N]` that stay <= gamma, plus one (int64 `[...]`)."""
    if _cover_kernel(x):
        from sparsebench.kernels.cover import cover_count_triton

        return cover_count_triton(x.reshape(-1, x.shape[-1]), gamma).view(x.shape[:-1])
    srt = torch.sort(x, dim=-1, descending=True).values
    return (scan_rows(srt) <= gamma).sum(-1) + 1


def block_budget(x: torch.Tensor, gamma: float, minb: int, maxb: int) -> torch.Tensor:
    """Official block budget from token scores `x [..., N]`: cover count // 128 + 1, raised to minb, then cut to
    maxb (so maxb wins when minb > maxb)."""
    return budget_from_count(cover_count(x, gamma), minb, maxb)


def budget_from_count(count: torch.Tensor, minb: int, maxb: int) -> torch.Tensor:
    """`block_budget` from the cover counts themselves."""
    # clamp applies min, then max: the official order
    return (count // TOKENS_PER_BUDGET_BLOCK + 1).clamp(min=minb, max=maxb)


def sum_pool(x: torch.Tensor, size: int) -> torch.Tensor:
    """Sums of `x [..., N]` over consecutive runs of `size` (the last run may be short) -> `[..., ceil(N/size)]`.

    The complete runs are summed from a view and only the short last run is padded, so `x` is never copied."""
    full, tail = split_blocks(x, size, -1)
    sums = full.sum(-1)
    return sums if tail is None else torch.cat([sums, tail.sum(-1)], dim=-1)


def global_cover_mask(attn: torch.Tensor, target: float, support: torch.Tensor | None = None) -> torch.Tensor:
    """bool like `attn [..., R, C]`: entries kept by the global rule (sorted descending over all R * C entries with
    ties in row-major order, kept while the running sum stays <= target).

    `support` (optional, int64 `[M]`, ascending): the flat indices r * C + c of the only entries that may be
    non-zero; every other entry must be exactly 0. Then only those M entries are sorted and scanned, and the others
    come back False. A supported entry gets the same answer as without `support`: the left-out zeros sort after
    every positive entry, add nothing to the running sum, and dropping them keeps the row-major order of the rest.
    """
    flat = attn.flatten(-2)
    if support is not None:
        flat = flat.index_select(-1, support)
    vals, order = torch.sort(flat, dim=-1, descending=True, stable=True)
    kept_sorted = scan_rows(vals) <= target
    if support is not None:
        order = support[order]  # sorted position -> flat index of attn: one scatter, no M-sized intermediate
    out = torch.zeros(*attn.shape[:-2], attn.shape[-2] * attn.shape[-1], dtype=torch.bool, device=attn.device)
    return out.scatter_(-1, order, kept_sorted).view(attn.shape)


# ------------------------------------------------------------------------------------------------ patterns
def official_parts(q: torch.Tensor, k: torch.Tensor, *, gamma: float, tau: float, minb: int, maxb: int,
                   block_size: int, scale: float, max_elems: int = MAX_SCORE_ELEMS, scores_kernel: str = "torch"
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The inputs of the official block rule (module docstring, steps 2-5 and 7's cover) for q `[B, H, N, D]`,
    k `[B, HKV, N, D]`: `(pooled [2, B, H, nb]` fp32 block scores, `budget [2, B, H]` (query-aware heads at minb),
    `qa_blocks [B, H, nb, nb]` the global cover of the block scores (causal blocks only; all False for the heads
    that are not query-aware, which do not use it), `query_aware [B, H])`;
    `kernels/flex_blocks` turns them into blocks. `maxb` is the block cap before it is cut to nb."""
    return parts_from_reads(*official_reads(q, k, block_size=block_size, scale=scale, max_elems=max_elems,
                                            scores_kernel=scores_kernel),
                            gamma=gamma, tau=tau, minb=minb, maxb=maxb, block_size=block_size,
                            use_triton=runs_triton(q))


def official_reads(q: torch.Tensor, k: torch.Tensor, *, block_size: int, scale: float,
                   max_elems: int = MAX_SCORE_ELEMS, scores_kernel: str = "torch"
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The part of `official_parts` that reads q and k whole: `(scores [2, B, H, N]` fp32 vertical and slash scores,
    `q_last [B, H, bs, D]` the scaled last queries, `k_mean [B, HKV, nb, D]` the key block means, `q_mean
    [B, H, nb, D]` the scaled query block means). Everything after it works on these small tensors only."""
    if _FUSED_MEANS and q.shape[2] == k.shape[2] and fused_scores(scores_kernel, q, q.shape[-1], block_size):
        from sparsebench.kernels.last_q_scores.naive import stack_scores
        from sparsebench.kernels.last_q_scores.triton import last_q_scores_and_means_triton, means_supported

        if means_supported(q.shape[-1], block_size):
            check_fused_device("flexprefill", q)
            q_last = q[:, :, q.shape[2] - block_size:] * scale
            vertical, slash, k_mean, q_mean = last_q_scores_and_means_triton(q_last, k, 1.0, q, block_size, scale)
            return stack_scores(vertical, slash, block_size), q_last, k_mean, q_mean
    means = block_means_naive
    if _POOL_KERNEL and runs_triton(q):
        from sparsebench.kernels.block_means import block_means_triton as means
    if not (_SIDE_MEANS and q.is_cuda):
        scores, q_last = last_query_scores(q, k, block_size, scale, max_elems, scores_kernel)  # [2, B, H, N]
        k_mean = means(k, block_size)  # [B, HKV, nb, D], the input dtype
        q_mean = means(q, block_size, scale)
        return scores, q_last, k_mean, q_mean
    main = torch.cuda.current_stream(q.device)
    side = _side_stream(q.device)
    side.wait_stream(main)  # q and k are written on the caller's stream
    with torch.cuda.stream(side):
        k_mean = means(k, block_size)
        q_mean = means(q, block_size, scale)
    scores, q_last = last_query_scores(q, k, block_size, scale, max_elems, scores_kernel)
    main.wait_stream(side)
    # made on the side stream, used and freed on the caller's: the allocator must wait for the caller's uses
    k_mean.record_stream(main)
    q_mean.record_stream(main)
    return scores, q_last, k_mean, q_mean


def parts_from_reads(scores: torch.Tensor, q_last: torch.Tensor, k_mean: torch.Tensor, q_mean: torch.Tensor, *,
                     gamma: float, tau: float, minb: int, maxb: int, block_size: int, use_triton: bool,
                     early: torch.Tensor | tuple | None = None, raw: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`official_parts` from `official_reads`' tensors (`use_triton`: the kernel switches apply). No host
    synchronisation and shapes fixed by the input shapes: on CUDA it can be captured in a graph (`_GRAPH_TAIL`).
    `early`: the global cover of every head's query-aware block scores, already worked out (`_early_cover`), or
    `(that mask, a function to call before reading it)` (the graph's branch that computes it joins there). `raw`
    (with `early`): the cover counts `[2, B, H]` in place of the budgets and the cover unmasked (every head's), for
    `kernels/flex_blocks`' `flex_blocks_from_counts_triton`, which finishes both."""
    _, B, H, N = scores.shape
    HKV, nb, D = k_mean.shape[1], k_mean.shape[2], k_mean.shape[3]
    G = H // HKV
    bs = block_size
    maxb = min(maxb, nb)
    # with `kernels/cover` both cuts (the counts here, the global cover below) share one set of launches
    paired = _cover_kernel(scores)
    if not paired:
        budget = block_budget(scores, gamma, minb, maxb)  # [2, B, H]: nv, ns
    pooled = sum_pool(scores, bs)  # [2, B, H, nb]: vertical -> key block c, slash -> block offset nb - 1 - c
    if _SWITCH_KERNEL and use_triton:
        from sparsebench.kernels.flex_switch import flex_switch_triton

        query_aware = flex_switch_triton(q_last, k_mean, pooled[0], tau)[0]
    else:
        query_aware = flex_switch_naive(q_last, k_mean, pooled[0], tau)[0]

    if early is not None:
        from sparsebench.kernels.cover import cover_count_triton

        qa = query_aware.view(-1)
        counts = cover_count_triton(scores.view(-1, N), gamma, skip=torch.cat((qa, qa)) if _COVER_SKIP else None,
                                    resident=_RESIDENT_COUNTS or None)
        if isinstance(early, tuple):
            early, join = early
            join()
        if raw:
            return pooled, counts.view(2, B, H), early, query_aware
        budget = budget_from_count(counts.view(2, B, H), minb, maxb)
        return pooled, budget.masked_fill(query_aware, minb), early & query_aware[..., None, None], query_aware
    _, _, above, tril = block_tables(nb, scores.device)
    if _QA_SCORES_KERNEL and use_triton and D >= 16:
        from sparsebench.kernels.block_scores import block_scores_triton

        bn, maxnreg = _block_scores_launch(D)  # the whole graph's setting: the same sums
        attn = block_scores_triton(q_mean, k_mean, bn=bn, maxnreg=maxnreg)
    else:
        logits = torch.matmul(q_mean.view(B, HKV, G * nb, D), k_mean.transpose(-1, -2)).view(B, H, nb, nb)
        attn = torch.softmax(logits.masked_fill_(above, float("-inf")), dim=-1, dtype=torch.float32)
        del logits
    # only the causal half can be non-zero: sort and scan that half (row-major, as tril_indices lists it)
    if paired:
        from sparsebench.kernels.cover import cover_pair_triton

        skip = None
        if _COVER_SKIP:
            # the counts of the query-aware heads (their budgets become minb below) and the global cover of the others
            # (unused by the rule) are not worked out
            qa = query_aware.view(-1)
            skip = torch.cat((qa, qa, ~qa))
        counts, qa_blocks = cover_pair_triton(scores.view(-1, N), gamma, attn.view(B * H, nb * nb), gamma * nb, nb,
                                              skip=skip)
        budget = budget_from_count(counts.view(2, B, H), minb, maxb)
        qa_blocks = qa_blocks.view(B, H, nb, nb)
        if not _COVER_SKIP:
            qa_blocks &= query_aware[..., None, None]
    else:
        qa_blocks = global_cover_mask(attn, gamma * nb, support=tril) & query_aware[..., None, None]
    return pooled, budget.masked_fill(query_aware, minb), qa_blocks, query_aware


def _block_scores_launch(D: int) -> tuple[int | None, int | None]:
    """`(bn, maxnreg)` of the query-aware block scores for head dim D (`_BRANCH_BLOCK_SCORES`, `_SHARED_MAX_D`)."""
    return _BRANCH_BLOCK_SCORES if _BRANCH_BLOCK_SCORES and D <= _SHARED_MAX_D else (None, None)


def _early_cover(q_mean: torch.Tensor, k_mean: torch.Tensor, gamma: float) -> torch.Tensor:
    """bool `[B, H, nb, nb]`: every head's global cover of its query-aware block scores (`_QA_SIDE`)."""
    from sparsebench.kernels.block_scores import block_scores_triton
    from sparsebench.kernels.cover import cover_mask_triton

    B, H, nb, _ = q_mean.shape
    bn, maxnreg = _block_scores_launch(q_mean.shape[-1])
    attn = block_scores_triton(q_mean, k_mean, bn=bn, maxnreg=maxnreg)
    return cover_mask_triton(attn.view(B * H, nb * nb), gamma * nb, nb, resident=_RESIDENT_COVER or None
                             ).view(B, H, nb, nb)


def _qa_side_ok(q: torch.Tensor) -> bool:
    return _QA_SIDE and _QA_SCORES_KERNEL and _COVER_KERNEL and q.is_cuda and q.shape[-1] >= 16


def _table_reads(q: torch.Tensor, k: torch.Tensor, table: torch.Tensor, block_size: int, scale: float,
                 gamma: float | None = None):
    """`official_reads`' tensors (fused scores kernel, `_POOL_KERNEL` means) with q's and k's addresses read from
    `table[0]` / `table[1]` when the kernels run; q and k give the layout. With `_QA_SIDE` (and `gamma`) a fifth:
    `_early_cover`'s mask, worked out on the means' branch."""
    from sparsebench.kernels.block_means import block_means_triton
    from sparsebench.kernels.last_q_scores.triton import last_q_scores_stacked_triton, scaled_last_rows

    def means():
        tile, warps = _WHOLE_MEANS or (None, None)
        return (block_means_triton(k, block_size, table=table, slot=1, tile=tile, warps=warps),
                block_means_triton(q, block_size, scale, table=table, slot=0, tile=tile, warps=warps))

    keys_done = torch.cuda.Event() if q.is_cuda else None

    def side_work():
        k_mean, q_mean = means()
        if keys_done is not None:
            keys_done.record()
        return k_mean, q_mean, (_early_cover(q_mean, k_mean, gamma) if gamma is not None and _qa_side_ok(q)
                                else None)

    side_branch = _WHOLE_SIDE and q.is_cuda
    late = side_branch and _LATE_FORK
    if side_branch:
        # captured as a fork and a join: the graph then holds the means and the score passes as parallel branches
        main = torch.cuda.current_stream(q.device)
        side = _side_stream(q.device, _SIDE_PRIORITY)
        if not late:
            side.wait_stream(main)
            with torch.cuda.stream(side):
                k_mean, q_mean, early = side_work()
    q_last = scaled_last_rows(q, block_size, scale, table=table, slot=0)
    if late:
        forked = torch.cuda.Event()
        forked.record(main)
    scores = last_q_scores_stacked_triton(q_last, k, 1.0, block_size, k_table=(table, 1),
                                          stats_programs=_WHOLE_STATS_PERSIST if q.is_cuda else None,
                                          scores_maxnreg=_WHOLE_SCORES_MAXNREG if q.shape[-1] <= _SHARED_MAX_D
                                          else None)
    if late:
        side.wait_event(forked)
        with torch.cuda.stream(side):
            k_mean, q_mean, early = side_work()
    if side_branch and early is not None:
        # the tail waits for the key means (the pattern switch reads them) and joins the rest of the branch (the
        # query means, the early cover) only where it reads the cover
        main.wait_event(keys_done)
        early = (early, lambda: main.wait_stream(side))
    elif side_branch:
        main.wait_stream(side)
    else:
        k_mean, q_mean, early = side_work()
    return (scores, q_last, k_mean, q_mean) + ((early,) if early is not None else ())


def _whole_ok(q: torch.Tensor, k: torch.Tensor, block_size: int, scores_kernel: str) -> bool:
    """Whether `_WHOLE_GRAPH` can take this call (its module comment)."""
    if not (_WHOLE_GRAPH and q.is_cuda and q.shape[2] == k.shape[2] and q.dtype == k.dtype):
        return False
    from sparsebench.kernels.last_q_scores.triton import means_supported

    if not (fused_scores(scores_kernel, q, q.shape[-1], block_size) and means_supported(q.shape[-1], block_size)):
        return False
    for x in (q, k):
        if x.stride(-1) != 1 or x.data_ptr() % 16:
            return False
        try:
            x.view(-1, x.shape[-2], x.shape[-1])
        except RuntimeError:
            return False
    return True


def _lastq_switches() -> tuple:
    lq = sys.modules.get("sparsebench.kernels.last_q_scores.triton")
    names = ("_TRANS_SCORES", "_TRANS_FOLD_L", "_ROWS_STAGES", "_WRAP_GATHER", "_FAST", "_ASM_ROUND", "_RB_SCORES",
             "_RB_STATS", "_TPP", "_ROWS_BLOCK_N", "_FUSED_ROW_STATS", "_FUSED_STATS_MAX_RB", "_COMBINE_KERNEL",
             "_STATS_KERNEL", "_STACK_IN_COMBINE", "_STATS_BL", "_STATS_BP", "_STATS_PERSIST_MAXNREG", "_KEY_GATHER")
    return tuple(getattr(lq, n, None) for n in names) if lq else ()


_whole_graphs: dict = {}


def _whole_lists(q: torch.Tensor, k: torch.Tensor, rule: dict, scale: float, block_size: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`official_lists` replayed from one CUDA graph per layout (`_WHOLE_GRAPH`): the table is refilled with q's and
    k's addresses, the graph replayed, its outputs cloned (the next replay overwrites them)."""
    key = (tuple(q.shape), tuple(k.shape), q.stride(), k.stride(), q.dtype, q.device, float(scale), block_size,
           tuple(sorted(rule.items())), _switches_key(), _lastq_switches())
    with torch.no_grad(), torch.cuda.device(q.device):
        entry = _whole_graphs.get(key)
        if entry is None:
            table = torch.empty(2, dtype=torch.int64, device=q.device)
            table[0].fill_(q.data_ptr())
            table[1].fill_(k.data_ptr())
            entry = _capture(_whole_graphs, key, table,
                             lambda: _lists_from_reads(_table_reads(q, k, table, block_size, scale, rule["gamma"]),
                                                       rule, True))
        graph, table, outs = entry
        table[0].fill_(q.data_ptr())
        table[1].fill_(k.data_ptr())
        graph.replay()
        return tuple(t.clone() for t in outs)


def _capture(cache: dict, key, inputs, run) -> tuple:
    """`(graph, inputs, outputs of run())` stored in `cache` under `key` (the oldest entry dropped past
    `_GRAPH_TAIL_CACHE`): `run` once on a side stream, which compiles and warms every kernel outside the capture, then
    captured."""
    dev = torch.cuda.current_device()
    side = torch.cuda.Stream(device=dev)
    side.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(side):
        run()
    torch.cuda.current_stream(dev).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    high = torch.cuda.Stream(device=dev, priority=-1) if _MAIN_PRIORITY and cache is _whole_graphs else None
    with torch.cuda.graph(graph, stream=high):
        outs = run()
    while len(cache) >= _GRAPH_TAIL_CACHE:
        cache.pop(next(iter(cache)))
    cache[key] = (graph, inputs, outs)
    return cache[key]


def _switches_key() -> tuple:
    """The FlexPrefill kernel switches and kernels/cover's settings a captured graph was built with; inference mode
    too, since its tensors cannot be written outside it (nor normal ones inside)."""
    cover = sys.modules.get("sparsebench.kernels.cover.triton")
    means = sys.modules.get("sparsebench.kernels.block_means.triton")
    switch = sys.modules.get("sparsebench.kernels.flex_switch.triton")
    blocks = sys.modules.get("sparsebench.kernels.flex_blocks.triton")
    scores = sys.modules.get("sparsebench.kernels.block_scores.triton")
    return (_COVER_KERNEL, _COVER_SKIP, _BLOCKS_KERNEL, _BUDGET_IN_KEEP, _RESIDENT_COUNTS, _RESIDENT_COVER,
            _SWITCH_KERNEL, _QA_SCORES_KERNEL, _WHOLE_SIDE, _QA_SIDE, _LATE_FORK, _MAIN_PRIORITY, _SIDE_PRIORITY,
            _WHOLE_STATS_PERSIST, _WHOLE_SCORES_MAXNREG, _BRANCH_BLOCK_SCORES, _SHARED_MAX_D, _WHOLE_MEANS,
            torch.is_inference_mode_enabled(),
            (means.TILE, means.WARPS)
            if means else None,
            (switch.Q_TILE, switch.K_TILE, switch.WARPS) if switch else None,
            blocks.ONE_WALK if blocks else None,
            (scores.BM, scores.BN, scores.WARPS) if scores else None,
            (cover.CHUNK, cover.SHORT_CHUNK, cover.SHORT_ROWS, cover.BLOCK, cover.SKIP_FROM, cover.HIST_2D,
             cover.SKIP_UPPER, cover.EMPTY_EXIT, cover.DECIDE_CB, cover.DECIDE_WARPS,
             cover.HIST_UNROLL, cover.RESIDENT_MAX, cover.RESIDENT_WARPS)
            if _COVER_KERNEL and cover else None)


def official_lists(q: torch.Tensor, k: torch.Tensor, *, gamma: float, tau: float, minb: int, maxb: int,
                   block_size: int, scale: float, max_elems: int = MAX_SCORE_ELEMS, scores_kernel: str = "torch"
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Official FlexPrefill block lists (`Selection` layout, every key block as list width: no host
    synchronisation), eagerly, with the tail replayed from a CUDA graph (`_GRAPH_TAIL`), or all of it replayed from
    one graph (`_WHOLE_GRAPH`): `(idx, counts, query_aware)`; arguments of `official_parts`."""
    rule = {"gamma": gamma, "tau": tau, "minb": minb, "maxb": maxb, "block_size": block_size}
    if _whole_ok(q, k, block_size, scores_kernel):
        return _whole_lists(q, k, rule, scale, block_size)
    reads = official_reads(q, k, block_size=block_size, scale=scale, max_elems=max_elems,
                           scores_kernel=scores_kernel)
    use_triton = runs_triton(q)
    if _GRAPH_TAIL and q.is_cuda:
        return _graph_tail(reads, rule, use_triton)
    return _lists_from_reads(reads, rule, use_triton)


def _lists_from_reads(reads, rule: dict, use_triton: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    early = reads[4] if len(reads) > 4 else None
    if early is not None and _BLOCKS_KERNEL and use_triton and _BUDGET_IN_KEEP:
        from sparsebench.kernels.flex_blocks import flex_blocks_from_counts_triton

        pooled, counts, cover, query_aware = parts_from_reads(*reads[:4], **rule, use_triton=use_triton, early=early,
                                                              raw=True)
        idx, counts = flex_blocks_from_counts_triton(pooled, counts, rule["minb"], min(rule["maxb"], pooled.shape[-1]),
                                                     TOKENS_PER_BUDGET_BLOCK, cover, query_aware)
        return idx, counts, query_aware
    parts = parts_from_reads(*reads[:4], **rule, use_triton=use_triton, early=early)
    if _BLOCKS_KERNEL and use_triton:
        from sparsebench.kernels.flex_blocks import flex_blocks_triton

        idx, counts = flex_blocks_triton(*parts)
    else:
        idx, counts = stable_partition(flex_blocks_mask(*parts, overwrite=True))
    return idx, counts, parts[3]


# captured tails by (shapes, dtypes, device, rule, switches): (graph, static inputs, static outputs); oldest dropped
# past _GRAPH_TAIL_CACHE entries. Each holds its graph's memory pool, which grows with the sequence: kernels/cover's
# candidate buffers alone take 8 bytes per entry of its rows (2 * H rows of N, H rows of nb x nb block scores), about
# 0.34 GB at 128K keys with Llama-3.1-8B heads (0.77 GB until session 9 sized every row by the longest)
_graph_tails: dict = {}
_GRAPH_TAIL_CACHE = 2


def _graph_tail(reads, rule: dict, use_triton: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`_lists_from_reads` replayed from a CUDA graph captured on the first call per key: the reads are copied into
    the graph's input buffers and its outputs cloned (the next replay overwrites them)."""
    key = (tuple((t.shape, t.dtype, t.stride()) for t in reads), reads[0].device, tuple(sorted(rule.items())),
           use_triton, _switches_key())
    with torch.no_grad(), torch.cuda.device(reads[0].device):
        entry = _graph_tails.get(key)
        if entry is None:
            static = tuple(t.detach().clone() for t in reads)
            entry = _capture(_graph_tails, key, static, lambda: _lists_from_reads(static, rule, use_triton))
        graph, static, outs = entry
        for dst, src in zip(static, reads):
            dst.copy_(src)
        graph.replay()
        return tuple(t.clone() for t in outs)


def official_block_mask(q: torch.Tensor, k: torch.Tensor, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """Official FlexPrefill block selection (module docstring, steps 2-7; arguments of `official_parts`).
    Returns `(mask [B, H, nb, nb]` bool over causal blocks, `query_aware [B, H]` bool)."""
    pooled, budget, qa_blocks, query_aware = official_parts(q, k, **kw)
    return flex_blocks_mask(pooled, budget, qa_blocks, query_aware, overwrite=True), query_aware


def sparse_frontier_indices(q: torch.Tensor, k: torch.Tensor, *, gamma: float, min_budget: int, n: int,
                            scale: float, max_elems: int = MAX_SCORE_ELEMS, scores_kernel: str = "torch"
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse Frontier's FlexPrefill columns and diagonals for q `[B, H, N, D]`, k `[B, HKV, N, D]`.

    Returns `v_idx [B, H, NV]` key columns and `s_off [B, H, NS]` diagonal offsets (query minus key position),
    each in stable descending score order and padded with -1, NV / NS the largest per-head counts.
    """
    N = q.shape[2]
    scores, _ = last_query_scores(q, k, n, scale, max_elems, scores_kernel)  # [2, B, H, N]: vertical, slash
    nv, ns = cover_count(scores, gamma).clamp(min=min_budget, max=N)
    scores[0, ..., :SF_SINK_COLUMNS] = float("inf")
    scores[1, ..., -SF_LOCAL_DIAGONALS:] = float("inf")
    # the index lists are padded to the largest count: one synchronisation for both
    kv_max, ks_max = (int(x) for x in torch.stack([nv.max(), ns.max()]).tolist())
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    v_order, s_order = order[0, ..., :kv_max], order[1, ..., :ks_max]
    v_live = torch.arange(kv_max, device=q.device) < nv[..., None]
    s_live = torch.arange(ks_max, device=q.device) < ns[..., None]
    v_idx = torch.where(v_live, v_order, -1)
    s_off = torch.where(s_live, N - 1 - s_order, -1)
    return v_idx, s_off


# ------------------------------------------------------------------------------------------------ method
class FlexPrefill(SparseAttention):
    name = "flexprefill"
    label = "FlexPrefill"
    paper = "arXiv:2502.20766"
    impl_version = 1
    budget_knob = "gamma"
    budget_increases_density = True

    def __init__(self, gamma: float = 0.95, tau: float = 0.1, min_budget: int | None = 1024,
                 max_budget: int | None = None, block_size: int = 128, variant: str = "official",
                 approximation_size: int | None = None, scores_kernel: str = "auto", executor: str = "auto") -> None:
        if variant not in VARIANTS:
            raise ValueError(f"flexprefill variant={variant!r} is not one of {', '.join(VARIANTS)}")
        check_scores_kernel("flexprefill", scores_kernel)
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"flexprefill gamma={gamma} is outside (0, 1]")
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"flexprefill tau={tau} is outside [0, 1]")
        if min_budget is not None and min_budget < 1:
            raise ValueError(f"flexprefill min_budget={min_budget} must be None or an integer >= 1 (tokens)")
        if max_budget is not None and max_budget < 1:
            raise ValueError(f"flexprefill max_budget={max_budget} must be None or an integer >= 1 (tokens)")
        if block_size not in BLOCK_SIZES:
            raise ValueError(f"flexprefill block_size={block_size} is not one of {BLOCK_SIZES}")
        if approximation_size is not None and approximation_size < 1:
            raise ValueError(f"flexprefill approximation_size={approximation_size} must be None or an integer >= 1")
        if variant == "official" and approximation_size not in (None, block_size):
            raise ValueError(f"flexprefill approximation_size={approximation_size} applies to "
                             f"variant='sparse_frontier' only (official estimates from the last block_size queries)")
        if variant == "sparse_frontier" and max_budget is not None:
            raise ValueError(f"flexprefill max_budget={max_budget} has no meaning for variant='sparse_frontier'; "
                             "leave it None")
        super().__init__(executor=executor, gamma=gamma, tau=tau, min_budget=min_budget, max_budget=max_budget,
                         block_size=block_size, variant=variant, approximation_size=approximation_size,
                         scores_kernel=scores_kernel)
        self.gamma, self.tau, self.block_size, self.variant = gamma, tau, block_size, variant
        self.scores_kernel = scores_kernel
        self.min_budget, self.max_budget = min_budget, max_budget
        if variant == "official":
            self.minb = 1 if min_budget is None else -(-min_budget // block_size)
            self.maxb = 2**31 - 1 if max_budget is None else -(-max_budget // block_size)
            self.approximation_size = block_size
        else:
            self.approximation_size = SF_APPROXIMATION if approximation_size is None else approximation_size
        # per-head pattern of the last sparse call: [B, H] bool, True = query-aware; None after a dense call
        self.last_decision: torch.Tensor | None = None

    def runs_dense(self, q_len: int, k_len: int) -> bool:
        """Whether a call of this shape falls back to dense causal attention."""
        if q_len != k_len:
            return True
        if self.variant == "sparse_frontier":
            return q_len < self.approximation_size
        min_tokens = 1 if self.min_budget is None else self.min_budget
        return q_len <= max(2 * self.block_size, -(-min_tokens // self.block_size) * self.block_size)

    def select(self, q: torch.Tensor, k: torch.Tensor, ctx: AttnContext) -> Selection:
        B, H, T, _ = q.shape
        HKV, S = k.shape[1], k.shape[2]
        if self.runs_dense(T, S):
            self.last_decision = None
            bs = self.block_size if self.variant == "official" else SF_BLOCK
            return Selection.causal(batch=B, q_len=T, k_len=S, num_heads=H, num_kv_heads=HKV, block_q=bs,
                                    block_k=bs, device=q.device)
        if self.variant == "official":
            # every key block as list width: no host synchronisation to size the lists; listed blocks first,
            # ascending
            idx, counts, self.last_decision = official_lists(
                q, k, gamma=self.gamma, tau=self.tau, minb=self.minb, maxb=self.maxb, block_size=self.block_size,
                scale=ctx.scale, scores_kernel=self.scores_kernel)
            return Selection(idx, counts, self.block_size, self.block_size, T, S, H, HKV,
                             "query_head")
        from sparsebench.kernels.vertical_slash import vertical_slash_to_blocks

        min_tokens = 0 if self.min_budget is None else self.min_budget
        v_idx, s_off = sparse_frontier_indices(q, k, gamma=self.gamma, min_budget=min_tokens,
                                               n=self.approximation_size, scale=ctx.scale,
                                               scores_kernel=self.scores_kernel)
        self.last_decision = torch.zeros(B, H, dtype=torch.bool, device=q.device)
        idx, cnt, cols, ccnt = vertical_slash_to_blocks(v_idx, s_off, T, S, SF_BLOCK)
        return Selection(idx, cnt, SF_BLOCK, SF_BLOCK, T, S, H, HKV, "query_head", extra_cols=cols,
                         extra_counts=ccnt)

    def estimation_flops(self, shape: AttnShape) -> int:
        """Matmul FLOPs of `select`: the last-queries scores (2 * n * S * D per head), and for the official variant
        the pooled switch probe (2 * nb * D) and the pooled nb x nb block scores (2 * nb^2 * D), for all heads."""
        if self.runs_dense(shape.q_len, shape.k_len):
            return 0
        heads = shape.batch * shape.num_heads
        D, S, n = shape.head_dim, shape.k_len, self.approximation_size
        flops = 2 * n * S * D
        if self.variant == "official":
            nb = -(-S // self.block_size)
            flops += 2 * nb * D + 2 * nb * nb * D
        return heads * flops
