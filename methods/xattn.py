"""XAttention: block-sparse prefill whose blocks are chosen by strided antidiagonal scoring (Xu et al., 2025,
"XAttention: Block Sparse Attention with Antidiagonal Scoring", arXiv:2503.16428).

Official code: github.com/mit-han-lab/x-attention at commit e37988770b9d (`xattn/src/Xattention.py`:
`xattn_estimate`, `Xattention_prefill`; `xattn/src/utils.py`: `find_blocks_chunked`; `xattn/src/kernels.py`;
`xattn/threshold/profile_threshold/profile_threshold.py`).

Algorithm, per batch entry and query head (stride `st`, block size `BS`, threshold tau):

1. Estimate (`kernels/antidiag_score`, which pins the exact definition). Queries are grouped in strided rows of
   `st` consecutive tokens, keys in tiles of `st` tokens; the logit of (row i, tile j) is the sum over the tile's
   antidiagonal, q[i*st + st-1-u] . k[j*st + u] over u (query order reversed inside the stride: the official
   select_mode "inverse"), times `scale / (st * norm)`, i.e. the mean antidiagonal logit. Tiles after the row's
   tile are masked (tile-level causality), each row gets an fp32 softmax over all its key tiles, and the
   probabilities are summed over the `BS/st x BS/st` tiles of each block: block scores `[B, H, NQ, NK]`, a query
   block's row summing to its number of strided rows.
2. Select (`find_blocks`). Per query-block row: the forced blocks (key block 0 and the diagonal block) come first,
   then the other causal blocks by descending score; item k is kept while the score mass of the items before it
   is below `tau * row total`, so the block that crosses `tau * total` is kept. tau = 0 keeps only the forced
   blocks; tau >= 1 keeps every causal block.
3. Execute the blocks with the token-level causal mask inside diagonal blocks (any sparsebench executor).

Threshold: a scalar `threshold`, or per-layer x per-head values from a calibration artifact (`thresholds_file`,
JSON payload `{"thresholds": [[tau per query head] per layer index]}`, `null` for layers without values; written by
`scripts/calibrate_xattn.py`). The file takes precedence over `threshold`. The official RULER setting uses profiled
per-head thresholds (`profile_thresholds` implements the profiling rule); LongBench, video and the MInference /
PBS baselines use scalars.

Padding: the official code zero-pads Q and K to a multiple of its chunk size, masks wholly padded key tiles and
zeroes wholly padded query rows. Here Q and K are padded only to a multiple of the stride (zeros), which keeps every
partly padded row and tile exactly as the official code does and creates no wholly padded one, so any length works
(not only multiples of the stride or of 128) with the official result. `chunk_size` only bounds memory: the
selection does not depend on it.

GQA: the official code repeats K (`repeat_kv`) and estimates per query head. Here K is read at its KV head
(query heads grouped as `q.view(B, HKV, G, ...)` in the reference, `h // G` in the kernel), with the same
per-query-head scores, thresholds and block lists: `Selection.granularity = "query_head"`.

Chunked prefill (T < S): handled with the offset diagonal. Query row t sits at position t + S - T; strided row i
allows key tile j iff the tile holds a key at or before the row's last position, j <= i + ceil((S - T) / st); the
forced "diagonal" blocks are the key blocks holding the query block's positions (one block when S - T is a multiple
of BS, the official layout; two otherwise).

Ties: blocks of equal score are taken lower key-block index first (stable sorts), so the Triton and the reference
estimator pick identical sets from identical scores.

Selection kernel (default on CUDA; `SPARSEBENCH_XATTN_SELECT_KERNEL=1` also under TRITON_INTERPRET=1), unless
use_triton="false", step 2 and the block lists run as one Triton kernel (`kernels/antidiag_score/select.py`)
instead of `find_blocks` + `block_mask_to_selection` (torch ops measured at about 3.3 ms per call at 128K on an
H200). It reproduces `find_blocks`, which stays the reference: same order, same float64 rule; its float64 sums can
differ from torch's in the last bits (another summation order), which can flip a block only when its preceding mass
lies within rounding of `tau * total`. `SPARSEBENCH_XATTN_SELECT_KERNEL=0` keeps the torch path everywhere; rows of
more than `select.MAX_NK` (8192) key blocks always take it.

Cost: the estimate is `ceil(T/st)` x `ceil(S/st)` antidiagonal dot products of length `st * D` per query head,
causal part only (`estimation_flops`), about `1/st` of the causal QK^T work; plus a softmax over the same matrix.
Memory: the Triton kernel keeps no logits, only one fp32 partial per (strided row, key block) per chunk of query
rows (`chunk_size=None`: equal chunks of at most 4 GiB); the reference keeps `max_scores` (2**26) fp32 logits at a
time.
Block lists are `[B, H, NQ, NK]` int32 (no host synchronisation).

Deviations from the official code:
- Scores stay in fp32 from the logits to the block sums. The official Triton path stores the strided logits and
  the block sums in the input dtype (bf16) and its PyTorch path also rounds the probabilities, so blocks within
  bf16 rounding of the threshold can be chosen differently.
- The logit scale is the model's softmax scale (`ctx.scale`); the official code uses 1/sqrt(D), the same number for
  Llama, Qwen and Gemma 3.
- Ties: the stable lower-index-first rule above; the official sorts leave tied order unspecified.
- tau >= 1 keeps every causal block. The official rule at tau = 1 can drop trailing blocks whose estimated mass is
  zero or below the float64 rounding of the row total.
- Padding, chunk_size and lengths as described above. The official PyTorch path additionally masks every key
  before the current chunk when the padded length equals the unpadded one (a negative-zero slice in its mask);
  that path only runs on GPUs whose name lacks "100", and its Triton path, which is what is reproduced here, does
  not have the problem.
- Chunked prefill uses the exact offset diagonal above; the official code aligns query and key chunks on their
  padded counts, which is exact only when S - T is a multiple of its chunk size.
- The Triton estimator runs on any CUDA GPU; the official code silently falls back to its PyTorch estimator on GPUs
  whose name lacks "100" (e.g. H200), with the same selection but much slower.
- Not exposed: `keep_sink` / `keep_recent` (no-ops in causal prefill: key block 0 and the diagonal are forced
  anyway), `kdb` and the ablation select modes ("slash", "random", "double", "triple"); the official default
  ("inverse", kdb 1) is what runs. Batch > 1 and block sizes other than 128 are allowed (the official asserts
  batch 1 and 128).
- Threshold profiling (`profile_thresholds`) computes the exact block mass in fp32 (the official rounds the
  probabilities to bf16) and breaks ties in its sort lower index first.
- Decode stays dense, as in the official Llama patch.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

import torch

from sparsebench.attention import AttnContext, AttnShape, SparseAttention
from sparsebench.selection import Selection, stable_partition

USE_TRITON = ("auto", "true", "false")
# "auto" (default): the fused selection kernel on CUDA; "1": also under TRITON_INTERPRET=1 on the CPU; "0": the torch
# path everywhere. On an H200 the kernel path took 23.09 vs 23.59 ms per call at 128K (stride 8) and 0.81 vs 1.05 ms
# at 32K (stride 16), CUDA-graph replays (results/tables/bench_methods_graph.csv, session 4)
SELECT_KERNEL_ENV = "SPARSEBENCH_XATTN_SELECT_KERNEL"
# scratch one Triton launch may use when chunk_size is None; the selection does not depend on it. 4 GiB: Llama-3.1-8B's
# 32 heads at 128K tokens take one launch (2 GiB) instead of five, each launch ending in a partly idle last wave
# (session 4 measured 21.3 ms a call at 128K, stride 8, with 512 MB; this change is untimed until the next GPU run)
_TRITON_CHUNK_BYTES = 4 << 30


# ------------------------------------------------------------------------------------------------ selection rule
def find_blocks(scores: torch.Tensor, threshold: float | torch.Tensor, q_len: int, k_len: int, block_size: int,
                qb_start: int = 0) -> torch.Tensor:
    """XAttention's per-row cumulative-threshold rule: `[B, H, NQc, NK]` scores -> `[B, H, NQc, NK]` bool.

    Args:
        scores: block scores of query blocks `qb_start .. qb_start + NQc - 1`.
        threshold: a float or a per-head tensor `[H]`.
        q_len, k_len: `T` and `S` (query row t at position t + S - T).
        block_size: `BS` for query and key blocks.
        qb_start: index of the first query block in `scores`.

    Per row: causal blocks are those with a key at or before the query block's last position; forced blocks are key
    block 0 and the blocks holding the query block's positions. Order: forced first, then the other causal blocks
    by descending score (ties: lower block index first), then the non-causal ones. Item k is kept iff it is forced,
    or the float64 score mass of the items before it is below `threshold * row total`, or threshold >= 1; never if
    non-causal.
    """
    _, H, NQc, NK = scores.shape
    dev = scores.device
    off = k_len - q_len
    qb = torch.arange(qb_start, qb_start + NQc, device=dev)[:, None]
    p_lo = qb * block_size + off
    p_hi = torch.clamp((qb + 1) * block_size, max=q_len) - 1 + off
    kb = torch.arange(NK, device=dev)[None, :]
    causal = kb * block_size <= p_hi  # [NQc, NK]
    forced = (kb == 0) | ((kb >= p_lo // block_size) & (kb <= p_hi // block_size))  # a subset of causal
    s = torch.where(causal, scores, 0)
    # sort keys in the scores' own dtype: its widening to float64 is exact, so the order (and the stable tie order)
    # is the one of the float64 keys
    key = torch.where(forced, math.inf, torch.where(causal, s, -1.0))
    order = torch.argsort(key, dim=-1, descending=True, stable=True)
    del key
    if isinstance(threshold, torch.Tensor):
        tau = threshold.to(device=dev, dtype=torch.float64).view(1, H, 1, 1)
        everything = tau >= 1
    else:
        tau, everything = float(threshold), float(threshold) >= 1
    required = s.double().sum(-1, keepdim=True) * tau
    # item k is taken iff the float64 mass before it, cumsum[k - 1] (0 for k = 0), is below `required`
    below = torch.gather(s, -1, order).double().cumsum_(-1) < required
    take = torch.cat([(required > 0).expand(*below.shape[:-1], 1), below[..., :-1]], dim=-1)
    del below
    take = take | everything
    # back to block order; forced blocks always, non-causal never
    mask = torch.empty_like(take).scatter_(-1, order, take)
    return mask.logical_or_(forced).logical_and_(causal)


def block_mask_to_selection(mask: torch.Tensor, *, block_size: int, q_len: int, k_len: int, num_heads: int,
                            num_kv_heads: int) -> Selection:
    """`Selection` (ascending key blocks, `MAXK = NK`, `query_head` lists) from a `[B, H, NQ, NK]` bool map, with no
    host synchronisation (`Selection.from_block_mask` reads the longest list on the host).

    The lists are the stable partition of the block indices (kept ones first, ascending; then the others,
    ascending): `selection.stable_partition`, one cumsum and one scatter instead of a sort."""
    idx, counts = stable_partition(mask)
    return Selection(idx, counts, block_size, block_size, q_len, k_len, num_heads, num_kv_heads, "query_head")


# ------------------------------------------------------------------------------------------------ estimators
def _triton_reason(q: torch.Tensor, stride: int, block_size: int) -> str | None:
    """None if the Triton estimator can run on q, else why not."""
    import importlib.util
    import os

    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if not q.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        return f"q is on {q.device} (the Triton estimator needs CUDA, or TRITON_INTERPRET=1)"
    from sparsebench.kernels.antidiag_score.triton import supports

    return supports(q.shape[-1], stride, block_size)


def block_scores(q: torch.Tensor, k: torch.Tensor, stride: int, block_size: int, scale: float, row_start: int = 0,
                 row_end: int | None = None, use_triton: bool = False) -> torch.Tensor:
    """Antidiagonal block scores `[B, H, NQc, NK]` from the Triton kernel or the reference (same semantics)."""
    if use_triton:
        from sparsebench.kernels.antidiag_score import antidiag_block_scores_triton as fn
    else:
        from sparsebench.kernels.antidiag_score import antidiag_block_scores_naive as fn
    return fn(q, k, stride, block_size, scale, row_start, row_end)


# ------------------------------------------------------------------------------------------------ profiling
def thresholds_from_scores(exact: torch.Tensor, estimate: torch.Tensor, coverage: float = 0.9) -> torch.Tensor:
    """The official per-head threshold rule on one input: `[B, H, NQ, NK]` exact block mass and estimated block
    scores -> `[B, H]` thresholds (float64).

    Per query-block row: the fewest blocks that cover `coverage` of the exact mass (descending exact mass, the
    crossing block included; ties lower index first); `mini` = the smallest estimated score among them. The head's
    threshold is the share of the estimated mass, summed over all rows, held by blocks whose estimate is >= their
    row's `mini` (denominator + 1e-8, as in the official code).
    """
    ex, est = exact.double(), estimate.double()
    vals, idx = torch.sort(ex, dim=-1, descending=True, stable=True)
    cs = vals.cumsum(-1)
    need = (cs < coverage * cs[..., -1:]).sum(-1, keepdim=True) + 1
    chosen = torch.arange(ex.shape[-1], device=ex.device) < need
    mini = torch.gather(est, -1, idx).masked_fill(~chosen, math.inf).amin(-1, keepdim=True)
    held = torch.where(est >= mini, est, 0.0).sum(dim=(-1, -2))
    return held / (est.sum(dim=(-1, -2)) + 1e-8)


def profile_thresholds(q: torch.Tensor, k: torch.Tensor, stride: int = 8, block_size: int = 128,
                       scale: float | None = None, coverage: float = 0.9, norm: float = 1.0,
                       use_triton: bool = False) -> torch.Tensor:
    """Per-head XAttention thresholds `[B, H]` for one prefill (q `[B, H, T, D]`, k `[B, HKV, S, D]`): the official
    profiling step (`profile_threshold.py`): exact 128-block attention mass vs the estimate (stride `stride`, times
    `stride` as there; the ratio does not depend on it), then `thresholds_from_scores`. The calibration takes the
    maximum over its prompts.
    """
    from sparsebench.kernels.antidiag_score import exact_block_scores_naive

    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    exact = exact_block_scores_naive(q, k, block_size, scale)
    est = block_scores(q, k, stride, block_size, scale / (stride * norm), use_triton=use_triton) * stride
    return thresholds_from_scores(exact, est, coverage)


def load_thresholds(path: str) -> list[list[float] | None]:
    """Per-layer lists of per-head thresholds from a calibration artifact (`{"thresholds": [...]}`; a dict keyed by
    layer index also works); ValueError naming the file on a bad structure."""
    from sparsebench.calibration import load

    body = load(path)
    table = body.get("thresholds") if isinstance(body, dict) else None
    if isinstance(table, dict):
        try:
            keyed = {int(key): v for key, v in table.items()}
        except ValueError as e:
            raise ValueError(f"thresholds_file {path!r}: layer keys must be integers ({e})") from None
        table = [keyed.get(i) for i in range(max(keyed, default=-1) + 1)]
    if not isinstance(table, list) or not table:
        raise ValueError(f"thresholds_file {path!r} has no non-empty 'thresholds' list (per layer, per head)")
    out: list[list[float] | None] = []
    for layer, row in enumerate(table):
        if row is None:
            out.append(None)
            continue
        if not isinstance(row, list) or not row or not all(isinstance(x, numbers.Real) for x in row):
            raise ValueError(f"thresholds_file {path!r}: layer {layer} must be a list of numbers or null, got {row!r}")
        bad = [x for x in row if not (math.isfinite(x) and x >= 0)]
        if bad:
            raise ValueError(f"thresholds_file {path!r}: layer {layer} has thresholds {bad} outside [0, inf)")
        out.append([float(x) for x in row])
    return out


# ------------------------------------------------------------------------------------------------ the method
def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def default_chunk_size(k_len: int, block_size: int) -> int:
    """The official default chunk (tokens) for key length `k_len`: 8192 at 8K, 16384 at 16K, 8192 at 32K, 2048 at
    128K; rounded down to whole blocks."""
    p = 1 << max(k_len - 1, 0).bit_length()
    c = max(min(max(2048, p), 128 * 1024 * 2048 // p), 2048)
    return max(block_size, c // block_size * block_size)


class XAttention(SparseAttention):
    """XAttention prefill (module docstring).

    Args:
        stride: antidiagonal stride `st` (official experiments: 4, 8, 16); must divide `block_size`.
        threshold: cumulative-mass threshold tau in [0, inf) (>= 1 keeps every causal block); ignored when
            `thresholds_file` is set.
        block_size: query and key block size (official: 128).
        norm: extra divisor of the estimate's logits (official: 1).
        thresholds_file: calibration artifact with per-layer x per-head thresholds, or None.
        chunk_size: query tokens estimated at once (a multiple of `block_size`); None: the official default on the
            reference path, as few equal chunks of at most 4 GiB of scratch as fit on the Triton path. Memory
            only.
        use_triton: "auto" (Triton estimator on CUDA where supported, else the reference), "true", "false".
        executor: the sparsebench executor of the selected blocks.
    """

    name = "xattn"
    label = "XAttention"
    paper = "arXiv:2503.16428"
    impl_version = 1
    budget_knob = "threshold"
    budget_increases_density = True

    def __init__(self, stride: int = 8, threshold: float = 0.9, block_size: int = 128, norm: float = 1.0,
                 thresholds_file: str | None = None, chunk_size: int | None = None, use_triton: str = "auto",
                 executor: str = "auto") -> None:
        if not _is_int(block_size) or block_size < 1:
            raise ValueError(f"xattn block_size={block_size!r} must be a positive integer (official: 128)")
        if not _is_int(stride) or stride < 1 or block_size % stride:
            raise ValueError(f"xattn stride={stride!r} must be a positive integer dividing block_size={block_size} "
                             f"(official: 4, 8 or 16)")
        if not isinstance(threshold, numbers.Real) or isinstance(threshold, bool) or not (
                math.isfinite(threshold) and threshold >= 0):
            raise ValueError(f"xattn threshold={threshold!r} must be a finite number in [0, inf) "
                             f"(0: forced blocks only, >= 1: every causal block)")
        if not isinstance(norm, numbers.Real) or isinstance(norm, bool) or not (math.isfinite(norm) and norm > 0):
            raise ValueError(f"xattn norm={norm!r} must be a finite number > 0 (official: 1)")
        if chunk_size is not None and (not _is_int(chunk_size) or chunk_size < 1 or chunk_size % block_size):
            raise ValueError(f"xattn chunk_size={chunk_size!r} must be None or a positive multiple of "
                             f"block_size={block_size}")
        mode = str(use_triton).lower()
        if mode not in USE_TRITON:
            raise ValueError(f"xattn use_triton={use_triton!r} is not one of {', '.join(USE_TRITON)}")
        if thresholds_file is not None and not isinstance(thresholds_file, str):
            raise ValueError(f"xattn thresholds_file={thresholds_file!r} must be a path or None")
        super().__init__(executor=executor, stride=stride, threshold=threshold, block_size=block_size, norm=norm,
                         thresholds_file=thresholds_file, chunk_size=chunk_size, use_triton=mode)
        self.stride, self.threshold, self.block_size, self.norm = stride, float(threshold), block_size, float(norm)
        self.thresholds_file, self.chunk_size, self.use_triton = thresholds_file, chunk_size, mode
        self.table = load_thresholds(thresholds_file) if thresholds_file else None
        if self.table is not None:
            self._check_table_provenance(thresholds_file)
        self._tau_cache: dict[tuple[int, str], torch.Tensor] = {}

    def _check_table_provenance(self, path: str) -> None:
        from sparsebench.calibration import load

        body = load(path)
        for knob in ("stride", "block_size"):
            made = body.get(knob) if isinstance(body, dict) else None
            if made is not None and made != getattr(self, knob):
                raise ValueError(f"thresholds_file {path!r} was profiled with {knob}={made}; this method has "
                                 f"{knob}={getattr(self, knob)}")

    # -------------------------------------------------------------------------------------------- pieces
    def tau(self, layer_idx: int, num_heads: int, device: torch.device) -> float | torch.Tensor:
        """The threshold of a layer: the scalar, or its per-head tensor `[H]` (cached per device, so later calls
        copy nothing to the GPU)."""
        if self.table is None:
            return self.threshold
        row = self.table[layer_idx] if 0 <= layer_idx < len(self.table) else None
        if row is None:
            raise ValueError(f"thresholds_file {self.thresholds_file!r} has no thresholds for layer {layer_idx}")
        if len(row) != num_heads:
            raise ValueError(f"thresholds_file {self.thresholds_file!r}: layer {layer_idx} has {len(row)} "
                             f"thresholds, the model has {num_heads} query heads")
        key = (layer_idx, str(device))
        if key not in self._tau_cache:
            self._tau_cache[key] = torch.tensor(row, dtype=torch.float64, device=device)
        return self._tau_cache[key]

    def _triton_for(self, q: torch.Tensor) -> bool:
        if self.use_triton == "false":
            return False
        why = _triton_reason(q, self.stride, self.block_size)
        if why is not None and self.use_triton == "true":
            raise RuntimeError(f"xattn use_triton=true, but the Triton estimator cannot run: {why}")
        return why is None

    def _select_kernel_for(self, q: torch.Tensor, S: int) -> bool:
        """Whether `select` runs the fused selection kernel (module docstring) rather than the torch path."""
        import importlib.util
        import os

        flag = os.environ.get(SELECT_KERNEL_ENV, "auto").strip().lower()
        if flag not in ("auto", "1", "0"):
            raise ValueError(f"{SELECT_KERNEL_ENV}={flag!r} must be auto, 1 or 0")
        if self.use_triton == "false" or flag == "0" or importlib.util.find_spec("triton") is None:
            return False
        # "auto": on CUDA only; "1" also under the interpreter (the CPU tests of the kernel path)
        if not (q.is_cuda or (flag == "1" and os.environ.get("TRITON_INTERPRET") == "1")):
            return False
        from sparsebench.kernels.antidiag_score.select import MAX_NK

        return -(-S // self.block_size) <= MAX_NK

    def _chunk(self, B: int, H: int, T: int, S: int, triton: bool) -> int:
        if self.chunk_size is not None:
            return self.chunk_size
        if not triton:
            return default_chunk_size(S, self.block_size)
        bs = self.block_size
        nk = -(-S // bs)
        rows = _TRITON_CHUNK_BYTES // (4 * B * H * (nk + 1))
        largest = max(bs, rows * self.stride // bs * bs)
        # as few launches as the scratch allows, of equal size (no short last launch of the longest rows)
        n = -(-T // largest)
        return -(-(-(-T // n)) // bs) * bs

    # -------------------------------------------------------------------------------------------- interface
    def select(self, q: torch.Tensor, k: torch.Tensor, ctx: AttnContext) -> Selection:
        B, H, T, _ = q.shape
        HKV, S = k.shape[1], k.shape[2]
        if S < T:
            raise ValueError(f"xattn needs at least as many keys as queries; got T={T}, S={S}")
        tau = self.tau(ctx.layer_idx, H, q.device)
        scale = ctx.scale / (self.stride * self.norm)
        triton = self._triton_for(q)
        chunk = self._chunk(B, H, T, S, triton)
        bs = self.block_size
        if self._select_kernel_for(q, S):
            from sparsebench.kernels.antidiag_score import select as select_kernel

            NQ, NK = -(-T // bs), -(-S // bs)
            idx = torch.empty(B, H, NQ, NK, dtype=torch.int32, device=q.device)
            cnt = torch.empty(B, H, NQ, dtype=torch.int32, device=q.device)
            for r0 in range(0, T, chunk):
                scores = block_scores(q, k, self.stride, bs, scale, r0, min(r0 + chunk, T), triton)
                qb0 = r0 // bs
                n = scores.shape[2]
                # each chunk's lists go straight into their rows of the whole selection
                # block scores are softmax sums (>= 0): the sort-free algorithm applies; the kernel module's
                # `_BISECT` switch (on by default, SPARSEBENCH_XATTN_BISECT=0 at import turns it off) decides
                select_kernel.select_blocks_triton(scores, tau, T, S, bs, qb0,
                                                   out=(idx[:, :, qb0:qb0 + n], cnt[:, :, qb0:qb0 + n]),
                                                   nonneg=select_kernel._BISECT)
            return Selection(idx, cnt, bs, bs, T, S, H, HKV, "query_head")
        masks = []
        for r0 in range(0, T, chunk):
            scores = block_scores(q, k, self.stride, self.block_size, scale, r0, min(r0 + chunk, T), triton)
            masks.append(find_blocks(scores, tau, T, S, self.block_size, r0 // self.block_size))
        mask = masks[0] if len(masks) == 1 else torch.cat(masks, dim=2)
        return block_mask_to_selection(mask, block_size=self.block_size, q_len=T, k_len=S, num_heads=H,
                                       num_kv_heads=HKV)

    def estimation_flops(self, shape: AttnShape) -> int:
        """2 * st * D FLOPs per antidiagonal dot product, over the tile-level causal (row, tile) pairs of every
        query head: sum over strided rows i of min(i + ceil((S - T) / st) + 1, ceil(S / st)). Softmax, block sums
        and the selection sort are not matmuls and are not counted."""
        st = self.stride
        TR, SR = -(-shape.q_len // st), -(-shape.k_len // st)
        a = -(-(shape.k_len - shape.q_len) // st) + 1
        n1 = min(max(SR - a + 1, 0), TR)  # rows whose causal limit lies inside the key tiles
        tiles = n1 * a + n1 * (n1 - 1) // 2 + (TR - n1) * SR
        return 2 * shape.batch * shape.num_heads * st * shape.head_dim * tiles
