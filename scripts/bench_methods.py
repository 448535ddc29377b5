"""Method diagnostics at matched density, and estimation cost against dense attention, in one run.

Part A (`recall`): real Q/K/V from gemma3_270m's full-attention layers on NIAH prompts. For each method and each
target density, the method's budget knob is bisected on these very calls (`sparsebench.budget.bisect_knob`), then the
attention recall (share of the dense softmax mass the selection keeps) and the output's relative error against
dense are measured on sampled query rows of every call, and averaged.

Part B (`cost`): Llama-3.1-8B-shaped tensors (H=32, HKV=8, D=128, bf16 on a GPU) at each length; each method's
estimation time (`select`: scoring plus index building) is timed with `triton.testing.do_bench` next to cuDNN dense
causal attention on the same inputs, and reported as a share of it. Random Q/K give unrealistic patterns, but the
estimators' work depends on the shapes, not on the values.

Usage:
    python scripts/bench_methods.py --out-dir results                  # GPU: 16K/32K recall, 32K-128K cost
    python scripts/bench_methods.py --smoke --out-dir /tmp/bm          # CPU plumbing check: 1K, tiny cost shapes
With `--parts recall` or `--parts cost` only that part runs and the table is `bench_methods_<part>.csv`.
Writes `<out-dir>/tables/bench_methods.csv` (tidy: part, method, seq_len, target_density, metric, value, ...) and
prints both tables.
"""
from __future__ import annotations

import argparse
import contextlib
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

METHODS = ("streaming", "minference", "xattn", "flexprefill", "pbs")
# Part B's estimators: (row label, registry name, knobs); XAttention at both strides its paper reports,
# MInference in the vertical-slash pattern the estimation target is set for.
COST_VARIANTS = (("streaming", "streaming", {}), ("minference_vs", "minference", {"pattern": "vertical_slash"}),
                 ("xattn_s8", "xattn", {"stride": 8}), ("xattn_s16", "xattn", {"stride": 16}),
                 ("flexprefill", "flexprefill", {}), ("pbs", "pbs", {}))
# on a GPU also the paths the defaults do not take there: the torch scorers that MInference, PBS and FlexPrefill
# replaced with the fused kernels/last_q_scores on CUDA (scores_kernel=auto) and XAttention's torch block selection
# (the fused select kernel is its CUDA default)
GPU_COST_VARIANTS = (("minference_vs_torch", "minference", {"pattern": "vertical_slash", "scores_kernel": "torch"}),
                     ("flexprefill_torch", "flexprefill", {"scores_kernel": "torch"}),
                     ("pbs_torch", "pbs", {"scores_kernel": "torch"}),
                     ("xattn_s8_torchsel", "xattn", {"stride": 8}), ("xattn_s16_torchsel", "xattn", {"stride": 16}),
                     # module switches not yet defaults, and the setting a default replaced (VARIANT_PATCH)
                     ("xattn_s8_noflat", "xattn", {"stride": 8}), ("xattn_s16_noflat", "xattn", {"stride": 16}),
                     ("pbs_torchsort", "pbs", {}),
                     ("pbs_fp32pool", "pbs", {}),
                     ("flexprefill_nofast", "flexprefill", {}), ("pbs_nofast", "pbs", {}),
                     ("minference_vs_torchcombine", "minference", {"pattern": "vertical_slash"}),
                     ("flexprefill_torchcombine", "flexprefill", {}),
                     # session 7's defaults, each turned off alone, and all together (session 6's path)
                     ("minference_vs_s6", "minference", {"pattern": "vertical_slash"}),
                     ("minference_vs_norows", "minference", {"pattern": "vertical_slash"}),
                     ("minference_vs_nowrap", "minference", {"pattern": "vertical_slash"}),
                     ("minference_vs_notopset", "minference", {"pattern": "vertical_slash"}),
                     ("minference_vs_nolists", "minference", {"pattern": "vertical_slash"}),
                     ("minference_vs_topsettwo", "minference", {"pattern": "vertical_slash"}),
                     ("minference_vs_nomaps", "minference", {"pattern": "vertical_slash"}),
                     ("minference_vs_fusedstats", "minference", {"pattern": "vertical_slash"}),
                     ("minference_vs_nofusedstats", "minference", {"pattern": "vertical_slash"}),
                     ("flexprefill_fusedstats", "flexprefill", {}),
                     ("flexprefill_nocoverkernel", "flexprefill", {}),
                     ("flexprefill_nowrap", "flexprefill", {}),
                     ("flexprefill_noblockskernel", "flexprefill", {}),
                     ("flexprefill_noswitchkernel", "flexprefill", {}),
                     ("flexprefill_poolkernel", "flexprefill", {}),
                     ("flexprefill_allnew", "flexprefill", {}),
                     ("minference_vs_noasmround", "minference", {"pattern": "vertical_slash"}),
                     ("flexprefill_noasmround", "flexprefill", {}),
                     ("minference_vs_rb32", "minference", {"pattern": "vertical_slash"}),
                     ("flexprefill_rb32", "flexprefill", {}),
                     ("flexprefill_nographtail", "flexprefill", {}),
                     ("flexprefill_cover16k", "flexprefill", {}),
                     ("flexprefill_hist1d", "flexprefill", {}),
                     ("flexprefill_noskipupper", "flexprefill", {}),
                     ("flexprefill_nosidemeans", "flexprefill", {}),
                     ("flexprefill_sidepool", "flexprefill", {}),
                     ("flexprefill_s9defaults", "flexprefill", {}),
                     ("flexprefill_coverb256", "flexprefill", {}),
                     ("flexprefill_cover2k", "flexprefill", {}),
                     ("flexprefill_notransscores", "flexprefill", {}),
                     ("minference_vs_notransscores", "minference", {"pattern": "vertical_slash"}),
                     ("flexprefill_transfold", "flexprefill", {}),
                     ("minference_vs_transfold", "minference", {"pattern": "vertical_slash"}),
                     ("flexprefill_st2", "flexprefill", {}),
                     ("minference_vs_st2", "minference", {"pattern": "vertical_slash"}),
                     ("flexprefill_noemptyexit", "flexprefill", {}),
                     ("flexprefill_s10c", "flexprefill", {}),
                     ("flexprefill_s9path", "flexprefill", {}),
                     ("minference_vs_s9path", "minference", {"pattern": "vertical_slash"}),
                     ("flexprefill_fusedmeans", "flexprefill", {}),
                     ("flexprefill_nowholegraph", "flexprefill", {}),
                     ("flexprefill_nowholeside", "flexprefill", {}),
                     ("flexprefill_nocoverskip", "flexprefill", {}),
                     ("flexprefill_cover1k", "flexprefill", {}),
                     ("flexprefill_cover4k", "flexprefill", {}),
                     ("flexprefill_nostackcombine", "flexprefill", {}),
                     ("flexprefill_nostatskernel", "flexprefill", {}),
                     ("flexprefill_statsbl128", "flexprefill", {}),
                     ("flexprefill_switch4k", "flexprefill", {}),
                     ("flexprefill_twowalks", "flexprefill", {}),
                     ("flexprefill_decidecb8", "flexprefill", {}),
                     ("flexprefill_histunroll1", "flexprefill", {}),
                     ("flexprefill_noqascoreskernel", "flexprefill", {}),
                     ("flexprefill_noqaside", "flexprefill", {}),
                     ("flexprefill_s12graph", "flexprefill", {}),
                     ("flexprefill_s13graph", "flexprefill", {}),
                     ("flexprefill_s14agraph", "flexprefill", {}),
                     ("flexprefill_chaincounts", "flexprefill", {}),
                     ("flexprefill_nokeygather", "flexprefill", {}),
                     ("minference_vs_nokeygather", "minference", {"pattern": "vertical_slash"}),
                     ("flexprefill_noresidentcover", "flexprefill", {}))
# environment a variant runs under (switches that are not constructor knobs, read at call time)
VARIANT_ENV = {"xattn_s8_torchsel": {"SPARSEBENCH_XATTN_SELECT_KERNEL": "0"},
               "xattn_s16_torchsel": {"SPARSEBENCH_XATTN_SELECT_KERNEL": "0"}}
# module attributes a variant runs under (switches read from the module at call time): (module, name, value)
_ANTIDIAG = "sparsebench.kernels.antidiag_score.triton"
_S13_GRAPH = [("sparsebench.methods.flexprefill", "_SIDE_PRIORITY", 0),
              ("sparsebench.methods.flexprefill", "_WHOLE_SCORES_MAXNREG", None),
              ("sparsebench.methods.flexprefill", "_BRANCH_BLOCK_SCORES", None),
              ("sparsebench.methods.flexprefill", "_WHOLE_MEANS", None),
              ("sparsebench.methods.flexprefill", "_BUDGET_IN_KEEP", False),
              ("sparsebench.methods.flexprefill", "_RESIDENT_COUNTS", False)]
_LASTQ = "sparsebench.kernels.last_q_scores.triton"
_SWITCH = "sparsebench.kernels.flex_switch.triton"
_VS = "sparsebench.kernels.vertical_slash.triton"
# FlexPrefill's eager path (since session 11 the estimate is replayed from one CUDA graph by default): rows whose
# switches act on it (the means, the graph-replayed tail) run with it
_EAGER = ("sparsebench.methods.flexprefill", "_WHOLE_GRAPH", False)
VARIANT_PATCH = {# session 4's XAttention scorer: every key tile through the masked, unflattened loop
    "xattn_s8_noflat": [(_ANTIDIAG, "_FLATTEN", False), (_ANTIDIAG, "_SPLIT", False)],
    "xattn_s16_noflat": [(_ANTIDIAG, "_FLATTEN", False), (_ANTIDIAG, "_SPLIT", False)],
    # PBS's defaults until session 5: torch's sorts, and the permuted keys pooled by an fp32 GEMM
    "pbs_torchsort": [("sparsebench.methods.pbs", "_SORT_KERNEL", False)],
    "pbs_fp32pool": [("sparsebench.methods.pbs", "_POOL_MM16", False)],
    # kernels/last_q_scores before its fast arithmetic (session 6)
    "flexprefill_nofast": [(_LASTQ, "_FAST", False)], "pbs_nofast": [(_LASTQ, "_FAST", False)],
    # the scores pass's partial sums added by torch (shifted slice adds), before the combine kernel of session 6
    "minference_vs_torchcombine": [(_LASTQ, "_COMBINE_KERNEL", False)],
    "flexprefill_torchcombine": [(_LASTQ, "_COMBINE_KERNEL", False)],
    # session 7's defaults off: MInference's 64 queries through the per-tile kernels (`_ROWS_MIN_L` 65), the
    # row-block scores pass's diagonal skew into [rows, 2 * BLOCK_N] (`_WRAP_GATHER` off), the columns and diagonals
    # by two int64 topk (`_TOP_SET` off), the block lists by torch (`_LIST_KERNEL` off); then all four and session
    # 8's map kernel (`minference_vs_nomaps`) off together: session 6's path
    "minference_vs_norows": [(_LASTQ, "_ROWS_MIN_L", 65)],
    "minference_vs_nowrap": [(_LASTQ, "_WRAP_GATHER", False)],
    "minference_vs_notopset": [("sparsebench.methods.minference", "_TOP_SET", False)],
    "minference_vs_nolists": [(_VS, "_LIST_KERNEL", False)],
    # the slash maps and their sorted slots by torch instead of one Triton launch (kernels/vertical_slash)
    "minference_vs_nomaps": [(_VS, "_MAP_KERNEL", False)],
    # the row-block path's (m, l) reduced inside its scores kernel, forced on and off (by default: for at most two row
    # blocks, 64 queries, and 32K keys)
    "minference_vs_fusedstats": [(_LASTQ, "_FUSED_ROW_STATS", True)],
    "minference_vs_nofusedstats": [(_LASTQ, "_FUSED_ROW_STATS", False)],
    "flexprefill_fusedstats": [(_LASTQ, "_FUSED_ROW_STATS", True)],
    # the settings session 9's defaults replaced: FlexPrefill's cover counts and global cover by sorts instead of
    # kernels/cover, its rule after the reads launched eagerly instead of from a CUDA graph, kernels/cover's 16K chunks
    "flexprefill_nocoverkernel": [("sparsebench.methods.flexprefill", "_COVER_KERNEL", False)],
    "flexprefill_nographtail": [_EAGER, ("sparsebench.methods.flexprefill", "_GRAPH_TAIL", False)],
    "flexprefill_cover16k": [("sparsebench.kernels.cover.triton", "CHUNK", 16384)],
    # kernels/cover's digit blocks built in 1-D and broadcast (until session 9) instead of as [BLOCK, 1] columns
    "flexprefill_hist1d": [("sparsebench.kernels.cover.triton", "HIST_2D", False)],
    # the settings session 10's defaults replaced: kernels/cover's mask rows walking their blocks above the diagonal
    # too; the block means after the score passes on one stream; both, with the (m, l) fusion for two row blocks
    # (FlexPrefill's 128 queries at 32K keys): session 9's path. Not a default: the side stream's means by
    # kernels/block_means
    "flexprefill_noskipupper": [("sparsebench.kernels.cover.triton", "SKIP_UPPER", False)],
    "flexprefill_nosidemeans": [_EAGER, ("sparsebench.methods.flexprefill", "_SIDE_MEANS", False)],
    "flexprefill_sidepool": [_EAGER, ("sparsebench.methods.flexprefill", "_POOL_KERNEL", True)],
    "flexprefill_s9defaults": [_EAGER, ("sparsebench.kernels.cover.triton", "SKIP_UPPER", False),
                               ("sparsebench.methods.flexprefill", "_SIDE_MEANS", False),
                               (_LASTQ, "_FUSED_STATS_MAX_RB", 2)],
    # the setting session 10's default replaced: the row-block scores pass on untransposed tiles. Not a default:
    # 1 / l folded into the exponent on the transposed tiles
    "flexprefill_notransscores": [(_LASTQ, "_TRANS_SCORES", False)],
    "minference_vs_notransscores": [(_LASTQ, "_TRANS_SCORES", False)],
    "flexprefill_transfold": [(_LASTQ, "_TRANS_FOLD_L", True)],
    "minference_vs_transfold": [(_LASTQ, "_TRANS_FOLD_L", True)],
    # the settings session 10's defaults replaced: 2 pipeline stages in the row-block score passes; kernels/cover's
    # idle chunks running their (empty) loops and sums on the candidates' digits; both; and session 9's path (every
    # session-10 default off); the defaults eagerly, for profiles
    "flexprefill_st2": [(_LASTQ, "_ROWS_STAGES", 2)],
    "minference_vs_st2": [(_LASTQ, "_ROWS_STAGES", 2)],
    "flexprefill_noemptyexit": [("sparsebench.kernels.cover.triton", "EMPTY_EXIT", False)],
    "flexprefill_s10c": [(_LASTQ, "_ROWS_STAGES", 2), ("sparsebench.kernels.cover.triton", "EMPTY_EXIT", False)],
    "flexprefill_s9path": [_EAGER, (_LASTQ, "_ROWS_STAGES", 2),
                           ("sparsebench.kernels.cover.triton", "EMPTY_EXIT", False),
                           (_LASTQ, "_TRANS_SCORES", False), ("sparsebench.kernels.cover.triton", "SKIP_UPPER", False),
                           ("sparsebench.methods.flexprefill", "_SIDE_MEANS", False),
                           (_LASTQ, "_FUSED_STATS_MAX_RB", 2)],
    "minference_vs_s9path": [(_LASTQ, "_ROWS_STAGES", 2), (_LASTQ, "_TRANS_SCORES", False)],
    # not a default (slower, session 10): FlexPrefill's block means from extra programs of the stats launch
    "flexprefill_fusedmeans": [_EAGER, ("sparsebench.methods.flexprefill", "_FUSED_MEANS", True)],
    # the setting session 11's default replaced: the estimate eagerly, its tail replayed from a CUDA graph, instead of
    # all of it from one graph; and in that graph the block means after the score passes instead of beside them
    "flexprefill_nowholegraph": [_EAGER],
    "flexprefill_nowholeside": [("sparsebench.methods.flexprefill", "_WHOLE_SIDE", False)],
    # session 11: kernels/cover working out every row, also those whose cut the rule does not use
    "flexprefill_nocoverskip": [("sparsebench.methods.flexprefill", "_COVER_SKIP", False)],
    # session 11: the scores stacked, flipped and divided by torch after the combine launch
    "flexprefill_nostackcombine": [(_LASTQ, "_STACK_IN_COMBINE", False)],
    # the settings session 12's defaults replaced: the row statistics between the passes reduced by torch's four
    # launches; `_stats_reduce` at 128 rows a program and 16 parts a step; kernels/flex_switch walking the last queries
    # and the key-block means in steps of 4096 / 8192 elements by 4 warps; kernels/flex_blocks listing a row in two
    # walks; kernels/cover's decisions reading 8 chunks' tables a step
    "flexprefill_nostatskernel": [(_LASTQ, "_STATS_KERNEL", False)],
    "flexprefill_statsbl128": [(_LASTQ, "_STATS_BL", 128), (_LASTQ, "_STATS_BP", 16)],
    "flexprefill_switch4k": [(_SWITCH, "Q_TILE", 4096), (_SWITCH, "K_TILE", 8192), (_SWITCH, "WARPS", 4)],
    "flexprefill_twowalks": [("sparsebench.kernels.flex_blocks.triton", "ONE_WALK", False)],
    "flexprefill_decidecb8": [("sparsebench.kernels.cover.triton", "DECIDE_CB", 8)],
    # kernels/cover's digit launches a block a loop step (session 12 made it 4)
    "flexprefill_histunroll1": [("sparsebench.kernels.cover.triton", "HIST_UNROLL", 1)],
    # the setting session 13's default replaced: the query-aware block scores by torch's four launches
    "flexprefill_noqascoreskernel": [("sparsebench.methods.flexprefill", "_QA_SCORES_KERNEL", False)],
    # the settings session 13's defaults replaced: the query-aware block scores and cover after the pattern switch
    # (query-aware heads only), or that and session 12's graph (a program a unit in the stats pass, the means' branch
    # forked first, one stream priority)
    "flexprefill_noqaside": [("sparsebench.methods.flexprefill", "_QA_SIDE", False)],
    "flexprefill_s12graph": [("sparsebench.methods.flexprefill", "_QA_SIDE", False),
                             ("sparsebench.methods.flexprefill", "_LATE_FORK", False),
                             ("sparsebench.methods.flexprefill", "_MAIN_PRIORITY", False),
                             ("sparsebench.methods.flexprefill", "_WHOLE_STATS_PERSIST", None),
                             *_S13_GRAPH],
    # the settings session 14's defaults replaced: the means' branch at the lowest priority, the scores pass and the
    # branch's block scores uncapped, the means at kernels/block_means' defaults, the budgets by torch, the counts by
    # the digit launches; or only the last three
    "flexprefill_s13graph": _S13_GRAPH,
    "flexprefill_s14agraph": _S13_GRAPH[3:],
    # the vertical and slash counts by kernels/cover's digit launches (session 14's resident path replaced them)
    "flexprefill_chaincounts": _S13_GRAPH[5:],
    # the scores pass's diagonal skew along the rows (session 15's skew along the keys replaced it)
    "flexprefill_nokeygather": [(_LASTQ, "_KEY_GATHER", False)],
    "minference_vs_nokeygather": [(_LASTQ, "_KEY_GATHER", False)],
    # the global cover of the query-aware block scores by kernels/cover's digit launches (session 15's resident path
    # replaced them at 32K)
    "flexprefill_noresidentcover": [("sparsebench.methods.flexprefill", "_RESIDENT_COVER", False)],
    # kernels/cover's digit blocks of 256 entries, or chunks of 2048 (defaults 128 and 4096)
    "flexprefill_coverb256": [("sparsebench.kernels.cover.triton", "BLOCK", 256)],
    "flexprefill_cover2k": [("sparsebench.kernels.cover.triton", "CHUNK", 2048),
                            ("sparsebench.kernels.cover.triton", "SHORT_CHUNK", 2048)],
    "flexprefill_cover1k": [("sparsebench.kernels.cover.triton", "CHUNK", 1024),
                            ("sparsebench.kernels.cover.triton", "SHORT_CHUNK", 1024)],
    # the chunks before session 11: 4096 entries also for rows of at most 64K entries (FlexPrefill at 32K keys)
    "flexprefill_cover4k": [("sparsebench.kernels.cover.triton", "SHORT_CHUNK", 4096)],
    # the columns and the diagonals by two top_set calls instead of one paired call
    "minference_vs_topsettwo": [("sparsebench.methods.minference", "_TOP_SET_PAIR", False)],
    "minference_vs_s6": [(_LASTQ, "_ROWS_MIN_L", 65), (_LASTQ, "_WRAP_GATHER", False),
                         ("sparsebench.methods.minference", "_TOP_SET", False), (_VS, "_LIST_KERNEL", False),
                         (_VS, "_MAP_KERNEL", False)],
    "flexprefill_nowrap": [(_LASTQ, "_WRAP_GATHER", False)],
    # the settings session 9's defaults replaced: FlexPrefill's block lists by a sort, the mask and stable_partition
    # instead of kernels/flex_blocks, and its pattern switch by torch instead of kernels/flex_switch
    "flexprefill_noblockskernel": [("sparsebench.methods.flexprefill", "_BLOCKS_KERNEL", False)],
    "flexprefill_noswitchkernel": [("sparsebench.methods.flexprefill", "_SWITCH_KERNEL", False)],
    # not a default (slower in session 9): FlexPrefill's block means of Q and K by kernels/block_means
    "flexprefill_poolkernel": [_EAGER, ("sparsebench.methods.flexprefill", "_POOL_KERNEL", True)],
    # the setting session 9's default replaced: the row-block passes' logits rounded to bf16 by a cast (with which
    # the compiler computed the scores pass's probabilities twice, once per layout) instead of a packed conversion
    "minference_vs_noasmround": [(_LASTQ, "_ASM_ROUND", False)],
    "flexprefill_noasmround": [(_LASTQ, "_ASM_ROUND", False)],
    # the setting session 9's default replaced: 32 query rows a program in the row-block scores pass instead of 64
    "minference_vs_rb32": [(_LASTQ, "_RB_SCORES", 32)],
    "flexprefill_rb32": [(_LASTQ, "_RB_SCORES", 32)],
    # FlexPrefill's four kernel switches on together (the (m, l) fusion, slower for it in session 8, left to its
    # default)
    "flexprefill_allnew": [("sparsebench.methods.flexprefill", "_COVER_KERNEL", True),
                           ("sparsebench.methods.flexprefill", "_BLOCKS_KERNEL", True),
                           ("sparsebench.methods.flexprefill", "_SWITCH_KERNEL", True),
                           ("sparsebench.methods.flexprefill", "_POOL_KERNEL", True)]}


def _variants(cuda: bool) -> tuple:
    """The estimator rows to time: COST_VARIANTS, plus GPU_COST_VARIANTS on a GPU: exactly those labelled in `EXACT`
    if it is set (`--rows`), else those whose label starts with one of `ONLY`'s prefixes if it is set (`--methods`)."""
    rows = COST_VARIANTS + (GPU_COST_VARIANTS if cuda else ())
    if EXACT:
        return tuple(v for v in rows if v[0] in EXACT)
    return tuple(v for v in rows if not ONLY or v[0].startswith(ONLY))


ONLY: tuple[str, ...] = ()
EXACT: tuple[str, ...] = ()  # `--rows`: exactly these labels (overrides ONLY)


@contextlib.contextmanager
def _variant_env(label: str):
    """The variant's environment variables and module switches, restored afterwards."""
    import importlib
    import os

    env = VARIANT_ENV.get(label, {})
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    patched = []
    try:
        for mod_name, attr, value in VARIANT_PATCH.get(label, []):
            mod = importlib.import_module(mod_name)
            patched.append((mod, attr, getattr(mod, attr)))
            setattr(mod, attr, value)
        yield
    finally:
        for mod, attr, old in reversed(patched):
            setattr(mod, attr, old)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _CaptureQKV:
    """A method stand-in that keeps each call's q, k, v (and attends densely, so the model runs as usual)."""

    def __init__(self):
        from sparsebench.attention import SparseAttention

        outer = self

        class Capture(SparseAttention):
            name = "capture"

            def select(self, q, k, ctx):
                from sparsebench.selection import Selection

                outer.ctx.append(ctx)
                return Selection.causal(batch=q.shape[0], q_len=q.shape[2], k_len=k.shape[2],
                                        num_heads=ctx.num_heads, num_kv_heads=ctx.num_kv_heads, device=q.device)

            def attend(self, q, k, v, sel, scale):
                outer.qkv.append((q.detach().clone(), k.detach().clone(), v.detach().clone()))
                return super().attend(q, k, v, sel, scale)

        self.ctx, self.qkv = [], []
        self.method = Capture(executor="auto")


def capture_gemma(seq_len: int, n_prompts: int, device: str):
    """Q/K/V of gemma3_270m's full-attention layers on `n_prompts` NIAH prompts of `seq_len` tokens."""
    from hydra import compose, initialize_config_module

    from sparsebench import schema
    from sparsebench.attention import install, method_layers
    from sparsebench.models import load
    from sparsebench.tasks.niah import NIAH

    schema.store()
    with initialize_config_module(config_module="sparsebench.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model.device={device}"])
    model, tok, _ = load(cfg.model, cfg.paths.cache_dir)
    cap = _CaptureQKV()
    install(model, cap.method, method_layers(model.config, "full_attention"), "auto", None)
    task = NIAH(haystack="essay", depths=(50,))
    with torch.inference_mode():
        for seed in range(n_prompts):
            s = next(iter(task.samples(tok, seq_len, 1, 10_000 + seed)))
            ids = tok(s.prompt, return_tensors="pt")["input_ids"].to(model.device)
            model(input_ids=ids, use_cache=False, logits_to_keep=1)
    model.set_attn_implementation("sdpa")
    return cap


def recall_part(seq_lens, targets, n_prompts, device, rows_rows, n_rows=64):
    from sparsebench.attention import _diagnose
    from sparsebench.budget import Captured, bisect_knob, knob_range
    from sparsebench.methods import METHODS as REGISTRY

    for L in seq_lens:
        cap = capture_gemma(L, n_prompts, device)
        calls = Captured([(c.layer_idx, q, k, c) for c, (q, k, _) in zip(cap.ctx, cap.qkv)])
        for name in METHODS:
            cls = REGISTRY.get(name)
            for target in targets:
                lo, hi, integer = knob_range(cls, {}, L)
                value, density = bisect_knob(cls, {}, calls, target, lo, hi, integer)
                method = cls(**{cls.budget_knob: value})
                rec, err = [], []
                with torch.inference_mode():
                    for ctx, (q, k, v) in zip(cap.ctx, cap.qkv):
                        sel = method.select(q, k, ctx)
                        out = method.attend(q, k, v, sel, ctx.scale)
                        r, e = _diagnose(q, k, v, sel, out, ctx.scale, n_rows)
                        rec.append(r)
                        err.append(e)
                common = dict(part="recall", method=name, seq_len=L, target_density=target, knob=cls.budget_knob,
                              knob_value=float(value), model="gemma3_270m", calls=len(rec))
                for metric, val in (("density", density), ("attention_recall", sum(rec) / len(rec)),
                                    ("output_rel_error", sum(err) / len(err))):
                    rows_rows.append(dict(common, metric=metric, value=float(val)))
                print(f"recall  L={L} {name:<12} target={target:<5} {cls.budget_knob}={value:.4g} "
                      f"density={density:.3f} recall={sum(rec) / len(rec):.4f} err={sum(err) / len(err):.4f}")


def _time_ms(fn, device):
    if device == "cuda":
        from triton.testing import do_bench

        return do_bench(fn, warmup=50, rep=200)
    fn()
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def _issue_ms(fn, device, n: int = 5) -> float:
    """Median host time for `fn` to return, the device idle before each call and not waited for after: the time the
    host takes to issue an estimate. Where it is close to the estimate's time, the estimate is bound by its host."""
    import statistics

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    runs = []
    for _ in range(n):
        sync()
        t = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t) * 1e3)
    sync()
    return statistics.median(runs)


def _cost_inputs(L, shape, device):
    """Random q, k, v (bf16 on a GPU, fp32 on a CPU; seed 0) and the attention context for one cost length."""
    from sparsebench.attention import AttnContext

    H, HKV, D = shape
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(1, H, L, D, device=device, dtype=dtype, generator=g)
    k = torch.randn(1, HKV, L, D, device=device, dtype=dtype, generator=g)
    v = torch.randn(1, HKV, L, D, device=device, dtype=dtype, generator=g)
    return q, k, v, AttnContext(0, H, HKV, D, D ** -0.5)


def graph_part(seq_lens, shape, rows_rows):
    """Each estimator's `select` replayed from a CUDA graph, where it can be captured (no host synchronisation
    inside): the estimation time without host launch cost, i.e. how much of `estimation_ms` is launch overhead.
    A method that synchronises cannot be captured and gets a status row. Runs after everything else, since a failed
    capture can leave the device in a poor state for later timings."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_kernels import cuda_graph

    from sparsebench.methods import METHODS as REGISTRY

    H, HKV, D = shape
    for L in seq_lens:
        q, k, _, ctx = _cost_inputs(L, shape, "cuda")
        for label, name, knobs in _variants(True):
            common = dict(part="graph", method=label, seq_len=L, heads=H, kv_heads=HKV, head_dim=D)
            try:
                m = REGISTRY.get(name)(**knobs)
                with torch.inference_mode(), _variant_env(label):
                    ms = _time_ms(cuda_graph(lambda m=m: m.select(q, k, ctx)), "cuda")
            except Exception as e:  # noqa: BLE001
                rows_rows.append(dict(common, metric="status", value=float("nan"), status=type(e).__name__,
                                      message=str(e)[:200]))
                print(f"graph   L={L} {label:<16} not capturable: {type(e).__name__}: {str(e)[:100]}")
                torch.cuda.synchronize()
                continue
            rows_rows.append(dict(common, metric="estimation_graph_ms", value=ms, status="ok"))
            print(f"graph   L={L} {label:<16} select as a CUDA-graph replay {ms:.3f} ms")


def profile_part(seq_lens, shape, device, rows_rows, n=3, top=12):
    """torch.profiler over `n` calls of each estimator's `select`: per call, the GPU kernels' summed device time and
    the wall time, and the top ops by device time (printed). With device time well below wall time the estimator is
    bound by its host code and launches; otherwise the listed kernels are where its time goes."""
    from torch.profiler import ProfilerActivity, profile

    from sparsebench.methods import METHODS as REGISTRY

    H, HKV, D = shape
    for L in seq_lens:
        q, k, _, ctx = _cost_inputs(L, shape, device)
        cuda = device == "cuda"
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        for label, name, knobs in _variants(cuda):
            m = REGISTRY.get(name)(**knobs)
            try:
                with torch.inference_mode(), _variant_env(label):
                    m.select(q, k, ctx)
                    sync()
                    t0 = time.perf_counter()
                    with profile(activities=acts) as prof:
                        for _ in range(n):
                            m.select(q, k, ctx)
                        sync()
                    wall = (time.perf_counter() - t0) * 1e3 / n
            except Exception as e:  # noqa: BLE001  (one failing estimator must not cost the others' profiles)
                rows_rows.append(dict(part="profile", method=label, seq_len=L, metric="status", value=float("nan"),
                                      status=type(e).__name__, message=str(e)[:200], heads=H, kv_heads=HKV,
                                      head_dim=D))
                print(f"profile L={L} {label:<16} FAILED {type(e).__name__}: {str(e)[:120]}")
                continue
            kern = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
            dev_ms = sum(getattr(e, "device_time", 0.0) for e in kern) / 1e3 / n
            launches = len(kern) / n
            common = dict(part="profile", method=label, seq_len=L, heads=H, kv_heads=HKV, head_dim=D, status="ok")
            for metric, val in (("device_ms", dev_ms), ("wall_ms_profiled", wall), ("kernels_per_call", launches)):
                rows_rows.append(dict(common, metric=metric, value=val))
            print(f"\n=== profile L={L} {label}: {dev_ms:.3f} ms of GPU kernels, {launches:.0f} kernels, "
                  f"{wall:.3f} ms wall per call (profiled)")
            print(prof.key_averages().table(sort_by="device_time_total" if cuda else "cpu_time_total",
                                            row_limit=top, max_name_column_width=60))


def host_op_us(device, n: int = 2000, rounds: int = 3) -> float:
    """Median over `rounds` of the host time per launch of a tiny in-place torch op (`n` launches, no sync between):
    how fast this machine's host issues work. Estimates that are host-bound (MInference's at 32K-64K) scale with it,
    and it varied about twofold between H200 machine instances in session 7."""
    import statistics

    x = torch.zeros(16, device=device)
    x.add_(1.0)
    times = []
    for _ in range(rounds):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(n):
            x.add_(1.0)
        times.append((time.perf_counter() - t) / n * 1e6)
        if device == "cuda":
            torch.cuda.synchronize()
    return statistics.median(times)


def cost_part(seq_lens, shape, device, rows_rows, repeats: int = 1):
    """Each estimator's `select` time against dense attention on the same inputs. With `repeats` > 1 every timing is
    taken that many times, in rounds (dense, then each estimator, per round, so that drift spreads over all; each round
    starts one estimator later), and the rows give the median (`estimation_ms`, `attention_ms`; the share is median
    over median) with the spread as `*_min` / `*_max` rows: host-bound estimators vary from run to run."""
    import statistics

    from sparsebench.methods import METHODS as REGISTRY

    H, HKV, D = shape
    variants = _variants(device == "cuda")
    common = dict(heads=H, kv_heads=HKV, head_dim=D, repeats=repeats)
    host_us = host_op_us(device)
    rows_rows.append(dict(part="cost", method="host", seq_len=0, metric="torch_op_host_us", value=host_us, **common))
    print(f"cost    host: {host_us:.1f} us a tiny torch op launch (the pace of host-bound estimates)")
    for L in seq_lens:
        q, k, v, ctx = _cost_inputs(L, shape, device)

        def dense():
            ctxm = (torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION)
                    if device == "cuda" else contextlib.nullcontext())
            with ctxm:
                torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

        dense_runs, est_runs, issue_runs, failed = [], {}, {}, {}
        with torch.inference_mode():
            for r in range(repeats):
                dense_runs.append(_time_ms(dense, device))
                # each round starts one row later, so that no row is always the one timed right after dense
                for label, name, knobs in variants[r % len(variants):] + variants[:r % len(variants)]:
                    if label in failed:
                        continue
                    try:
                        m = REGISTRY.get(name)(**knobs)
                        with _variant_env(label):
                            est_runs.setdefault(label, []).append(_time_ms(lambda m=m: m.select(q, k, ctx), device))
                            issue_runs.setdefault(label, []).append(_issue_ms(lambda m=m: m.select(q, k, ctx), device))
                    except Exception as e:  # noqa: BLE001  (one failing estimator must not cost the other rows)
                        failed[label] = e
                        print(f"cost    L={L} {label:<16} FAILED {type(e).__name__}: {str(e)[:120]}")
                        if device == "cuda":
                            torch.cuda.empty_cache()
        dense_ms = statistics.median(dense_runs)
        kind = "dense_cudnn" if device == "cuda" else "dense_sdpa"
        rows_rows.append(dict(part="cost", method=kind, seq_len=L, metric="attention_ms", value=dense_ms, **common))
        if repeats > 1:
            for metric, val in (("attention_ms_min", min(dense_runs)), ("attention_ms_max", max(dense_runs))):
                rows_rows.append(dict(part="cost", method=kind, seq_len=L, metric=metric, value=val, **common))
        for label, _, _ in variants:
            if label in failed:
                e = failed[label]
                rows_rows.append(dict(part="cost", method=label, seq_len=L, metric="status", value=float("nan"),
                                      status=type(e).__name__, message=str(e)[:200], **common))
                continue
            runs = est_runs[label]
            est_ms = statistics.median(runs)
            metrics = [("estimation_ms", est_ms), ("estimation_share", est_ms / dense_ms),
                       ("host_issue_ms", statistics.median(issue_runs[label]))]
            if repeats > 1:
                metrics += [("estimation_ms_min", min(runs)), ("estimation_ms_max", max(runs))]
            for metric, val in metrics:
                rows_rows.append(dict(part="cost", method=label, seq_len=L, metric=metric, value=val, status="ok",
                                      **common))
            spread = f" (min {min(runs):.3f}, max {max(runs):.3f} over {repeats})" if repeats > 1 else ""
            print(f"cost    L={L} {label:<16} select {est_ms:.3f} ms = {est_ms / dense_ms:.4f} x dense "
                  f"({dense_ms:.3f} ms){spread}; host issue {statistics.median(issue_runs[label]):.3f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recall-lens", default="16384,32768")
    ap.add_argument("--cost-lens", default="32768,65536,131072")
    ap.add_argument("--targets", default="0.1,0.25")
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="CPU plumbing check: 1K recall, small cost shapes")
    ap.add_argument("--parts", default="recall,cost", help="recall, cost, graph (GPU: estimators replayed from CUDA "
                    "graphs, at the cost lengths), profile (GPU: torch.profiler breakdown of each estimator at "
                    "--profile-lens), comma-separated")
    ap.add_argument("--profile-lens", default="32768,131072")
    ap.add_argument("--repeats", type=int, default=1,
                    help="cost part: time everything this many times in rounds and report medians (and the spread)")
    ap.add_argument("--autotune", action="store_true",
                    help="let the Triton kernels time their tile candidates on first use per shape "
                         "(SPARSEBENCH_ANTIDIAG_AUTOTUNE=1, SPARSEBENCH_BSA_AUTOTUNE=1); off: the fixed defaults")
    ap.add_argument("--methods", default="",
                    help="cost, profile and graph parts: only the estimator rows whose label starts with one of these "
                         "comma-separated prefixes (e.g. flexprefill,pbs); default all")
    ap.add_argument("--rows", default="",
                    help="cost, profile and graph parts: exactly these comma-separated row labels (e.g. "
                         "flexprefill,flexprefill_nocoverkernel); overrides --methods")
    ap.add_argument("--out-dir", default="results")
    args = ap.parse_args()
    global ONLY, EXACT
    ONLY = tuple(x.strip() for x in args.methods.split(",") if x.strip())
    EXACT = tuple(x.strip() for x in args.rows.split(",") if x.strip())
    labels = [v[0] for v in COST_VARIANTS + GPU_COST_VARIANTS]
    unknown = [x for x in ONLY if not any(lb.startswith(x) for lb in labels)]
    if unknown:
        ap.error(f"--methods {unknown}: no estimator row starts with that; rows: {', '.join(labels)}")
    unknown = [x for x in EXACT if x not in labels]
    if unknown:
        ap.error(f"--rows {unknown}: no such estimator row; rows: {', '.join(labels)}")
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if args.autotune:
        import os

        os.environ["SPARSEBENCH_ANTIDIAG_AUTOTUNE"] = os.environ["SPARSEBENCH_BSA_AUTOTUNE"] = "1"
    if not parts or parts - {"recall", "cost", "graph", "profile"}:
        ap.error(f"--parts {args.parts!r}: choose from recall, cost, graph, profile")
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    recall_lens = [1024] if args.smoke else [int(x) for x in args.recall_lens.split(",")]
    cost_lens = [1024] if args.smoke else [int(x) for x in args.cost_lens.split(",")]
    shape = (4, 1, 64) if args.smoke else (32, 8, 128)
    targets = [float(x) for x in args.targets.split(",")]
    rows: list[dict] = []
    if "recall" in parts:
        recall_part(recall_lens, targets, 1 if args.smoke else args.prompts, device, rows)
    if "cost" in parts:
        if args.repeats < 1:
            ap.error(f"--repeats {args.repeats}: must be at least 1")
        cost_part(cost_lens, shape, device, rows, args.repeats)
    if "profile" in parts:
        profile_part(cost_lens if args.smoke else [int(x) for x in args.profile_lens.split(",")], shape, device,
                     rows)
    if "graph" in parts:
        if device != "cuda":
            ap.error("--parts graph needs a CUDA GPU")
        graph_part(cost_lens, shape, rows)
    import pandas as pd

    df = pd.DataFrame(rows)
    df["device"] = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    df["torch"] = torch.__version__
    df["autotune"] = args.autotune
    df["timestamp"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    out = Path(args.out_dir) / "tables"
    out.mkdir(parents=True, exist_ok=True)
    name = "bench_methods.csv" if parts == {"recall", "cost"} else f"bench_methods_{'_'.join(sorted(parts))}.csv"
    df.to_csv(out / name, index=False)
    if "recall" in parts:
        rec = df[df["part"] == "recall"].pivot_table(index=["seq_len", "method", "target_density"],
                                                      columns="metric", values="value")
        print("\nmatched-density diagnostics (gemma3_270m full-attention layers):\n" + rec.to_string())
    if "cost" in parts:
        cost = df[(df["part"] == "cost") & (df["metric"] == "estimation_share")].pivot_table(
            index="method", columns="seq_len", values="value")
        print("\nestimation time as a share of dense attention time:\n" + cost.to_string())
    if "graph" in parts and (df["metric"] == "estimation_graph_ms").any():
        gr = df[df["metric"] == "estimation_graph_ms"].pivot_table(index="method", columns="seq_len", values="value")
        print("\nestimation as a CUDA-graph replay, ms:\n" + gr.to_string())
    print(f"\nwrote {out / name}")


if __name__ == "__main__":
    main()
