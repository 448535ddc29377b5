"""Triton kernels for `kernels/cover` (semantics in naive.py): the cumulative-coverage cut of a row found by a radix
descent on the values' bit patterns, with the row cut into chunks, instead of a sort.

Each value gets an unsigned key that orders as the value (the fp32 bit pattern made monotone; -0.0 folded to +0.0).
With f(t) the row's mass at keys >= t (non-increasing in t), the cut is the largest key t' with f(t') > target:
the entries with keys above t' all fit under the target, the value v* of key t' is the one whose ties cross it, and
j = floor((target - f(t' + 1)) / v*) of those ties still fit (each adds v*). The count is #(keys > t') +
min(j, #ties) + 1, or the whole row + 1 when the row's mass is within the target; the mask keeps the keys above t'
and the first min(j, #ties) ties in index order (the stable rule).

t' is fixed four bits at a time from the top, in eight digit launches. Each row is cut into chunks of `chunk`
entries, one program per (chunk, row). Launch d stores, per chunk, the count and the fp32 mass of the entries in
each of the 16 values of key digit d among those matching the digits fixed so far; then one program per row decides
the digit from those tables (summed over chunks and bins in a fixed order): the highest bin b whose mass, with
everything above the prefix, exceeds the target, and stores the row's state (prefix, mass and count above it, ...)
for the later launches. (Until session 9 every program derived all the earlier digits itself from the tables, a
preamble that grew with the chunks per row and made short chunks slow.) The first FULL (3) digits read the whole
row; then a compaction launch writes the entries that match them (values and indices, in index order: each chunk
after the earlier chunks' counts) to a candidate buffer, and the other five digits read only the candidates. A last
launch writes the counts (one program per row), or the mask: the keys above t' over the whole row, then the ties of
t' that fit from the candidates (their rank among the ties in index order, the earlier chunks' ties from the last
digit's counts). No sort, no atomics; the row is read four times for a count, five for a mask (from L2 after the
first). `cover_pair_triton` runs the counts of one matrix and the mask of another in the same launches (rows below
R1 are the first's), 20 instead of 38. On the candidates' digits (`SKIP_FROM`), blocks with no entry matching the
digits fixed so far skip their per-bin sums.

Rounding: the masses are fp32 sums per chunk and bin, where the reference adds the sorted values one by one; a
running sum within rounding of the target may fall on the other side (so may the reference's own CUDA scan, which
is not sequential either). Where the regrouped sums leave no bin above the target at a deeper digit, the descent
takes the lowest occupied bin (all of the previous digit's bin fits but its smallest key). Exact where the sums are
(e.g. values on a binary grid).

(The first version, one program per row bisecting the key bit by bit in 34 passes over the row, took 6.5 ms of
FlexPrefill's 64K estimate on an H200 (session 8, bench_methods `flexprefill_coverkernel`) against 3.1 ms for the
whole estimate through torch's sorts. The next, with all eight digits over the whole rows and no block skip, took
0.33-0.41 ms for the counts of 64 rows of 64K (0.53 ms for 128 rows, against 1.05 ms through torch's sort and
scan) and 0.77 ms for the global cover of 32 rows of 512 x 512 against 0.59 ms through torch (session 8,
do_bench); with the block skip, FlexPrefill's estimate took 3.20 against 3.11 ms at 64K
(`results/tables/bench_methods_cost_s8c.csv`). Not profiled per launch; by the values' bits, nearly every block of
softmax scores holds an entry matching the prefix through the first three or four digits, so those launches did the
full [BLOCK, 16] work: hence the compaction after three, not yet timed.)

Rows flagged in `skip` (`cover_pair_triton`) are not worked on: every launch's programs of such a row return at
once, its count is 0 and its mask row all False (FlexPrefill needs the counts of its vertical-slash heads only and
the global cover of its query-aware heads only).

Resident path (`RESIDENT`, off: no faster on an H200, see its comment): the same cut in ONE launch, one program of
`RESIDENT_WARPS` warps a row (count rows, then mask rows, as above; `skip` honoured), for rows of at most
`RESIDENT_MAX` participating entries. At FlexPrefill's 32K shapes the launches above took ~129 us on an H200, mostly
launch and small-kernel latency. The row's values stay in registers for the whole search: a main tile of P entries
(a power of two; `[NT, E]`, E consecutive entries a thread) and a small tail tile for the rest (32768 + 128 for the
256 x 256 block scores' triangle of 32896); a mask row's entries in row-major order of its lower triangle (entry s at
(r, c), s = r(r + 1) / 2 + c, by an fp32 sqrt and an exact integer correction). t' is found by bisection on the
32-bit key between the row's smallest and largest keys, each step one masked fp32 sum over the row (values whose
key >= mid; tested on the values, which order as the keys) reduced over the program by tl.sum: fp32 addition is
monotone in each argument and the tree is fixed, so the computed f is non-increasing and the bisection well defined.
Then f(t' + 1), v*, the ties and `_fit` as above. The mask keeps the keys above t' and the ties up to the position of
the fit-th tie in index order, found (only when some ties fit and some do not) by a second bisection over the
positions on per-thread tie bitmasks; every other entry of the mask row is written False. Deterministic (fixed
reduction order, no atomics). Offline sm_90 build at 32K: 61 registers a thread, no spills (its budget at 1024
threads: 64).

Under `TRITON_INTERPRET=1` (set before triton is imported) the loops take the constexpr lengths `I_CH`, `I_C`, `I_N2`.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .._jit import per_mode
from ..top_set.triton import _monotone
from .naive import _check, _check_cols

__all__ = ["cover_count_triton", "cover_mask_triton", "cover_pair_triton"]

DIGITS = 8  # of 4 bits: 16 bins a launch
FULL = 3  # digits taken over the whole rows; the rest over the compacted candidates
_FULL = tl.constexpr(FULL)  # the same, for the kernels (a jitted function reads only constexpr globals)
# first digit whose hist launch skips the blocks with no entry matching the prefix (session 9: from the candidates'
# digits on; before, every digit, which put a block-wide reduction and a barrier in each full-row iteration)
SKIP_FROM = FULL
# default chunk and block of the wrappers (module attributes, read at call time, for A/B runs). 4096-entry chunks
# since session 9 (with the per-row digit decisions): FlexPrefill's counts and global cover took 781 vs 859 us at 64K
# and 488 vs 493 us at 32K against 16K chunks (H200, do_bench; `results/logs/cover_variants_s9.txt`)
CHUNK = 4096
# rows of at most SHORT_ROWS entries (the longer of the two matrices' rows) take chunks of SHORT_CHUNK: more programs
# for short rows, whose chunks otherwise walk serially. With FlexPrefill's unused cuts left out (its `_COVER_SKIP`),
# its estimate took 0.711 ms with 2048-entry chunks against 0.772 ms with 4096 at 32K keys (H200, Llama-3.1-8B
# heads: 256 x 256 block scores, the longest rows), 1.447 / 3.675 against 1.433 / 3.388 ms at 64K / 128K; 1024
# entries were slower than 2048 everywhere (session 11, `bench_methods_cost_s11d.csv`, rows `flexprefill_cover2k` /
# `_cover1k`; row `flexprefill_cover4k` keeps 4096)
SHORT_ROWS = 1 << 16
SHORT_CHUNK = 2048
BLOCK = 128
# the digit launches' block as a [BLOCK, 1] column (`TWO_D` of `_cover_hist`; a third of the full-row passes'
# instructions in offline sm_90 builds): FlexPrefill's estimate took 1.043 / 1.906 / 4.709 ms with it against 1.095 /
# 2.013 / 4.986 ms in 1-D at 32K / 64K / 128K (H200, session 10, `bench_methods_cost_s10a.csv`; row
# `flexprefill_hist1d` builds it in 1-D as before)
HIST_2D = True
# blocks of a mask row that lie wholly above its matrix's diagonal (no entry takes part) skip the full-row digit
# launches and the compaction: about half of each mask row (FlexPrefill's nb x nb block scores). On by default since
# session 10: FlexPrefill's estimate took 1.878 / 4.558 ms with it against 1.906 / 4.722 ms at 64K / 128K (1.042 at
# 32K either way; H200, `bench_methods_cost_s10b.csv`, row `flexprefill_skipupper`, when it was off by default).
# Its digit launches took 388 against 417 us a call at 64K (profiled): the mask rows' full passes are not most of them
SKIP_UPPER = True
# on the candidates' digits (and in the ties' launch) a program whose chunk lies past its row's candidates stores
# zeros and returns. Those five launches took 32-35 us each at FlexPrefill's 64K shapes, most programs idle, against
# 70 us for a full-row digit; all launches 497 against 417 us with it at 64K, 184.5 against 169.6 us at 32K
# (`results/logs/bench_methods_s10c.txt` and `_s10d.txt`, cover10). On by default since session 10: FlexPrefill's
# estimate took 1.663 / 3.949 ms with it against 1.741 / 4.306 ms at 64K / 128K (0.921 against 0.904 ms at 32K,
# host-bound there; `bench_methods_cost_s10d.csv`, row `flexprefill_emptyexit`); row `flexprefill_noemptyexit`
EMPTY_EXIT = True
# chunks whose tables a digit's decision (and `_before`) reads in one step, and the decision's warps. 64 since session
# 12 (8 before: FlexPrefill's estimate 0.668 / 1.352 / 3.179 ms, row `flexprefill_decidecb8`, against 0.664 / 1.345 /
# 3.124 ms; its decisions 15.4 against 22.8 us a call at 32K, profiled); 4 warps were slower than 1 (20.3 us)
DECIDE_CB = 64
DECIDE_WARPS = 1
# the digit launches' blocks a loop step (`_hist_chunk`'s UNROLL; 1: a block a step, with the skip tests). 4 since
# session 12: each step's loads were waited for one block after another. FlexPrefill's estimate at 32K (H200,
# Llama-3.1-8B heads, whole graph; `results/logs/flexprefill_knobs_s12.txt`): its digit launches 79.8 against 101.5
# us a call (profiled), 641 against 663-675 us (do_bench); 2, 8 and 16: 86.0, 81.3, 81.8 us. The whole estimate
# 0.642 / 1.310 / 3.111 ms against 0.664 / 1.341 / 3.102 ms at 32K / 64K / 128K (`bench_methods_cost_s12b.csv`;
# bench row `flexprefill_histunroll1` keeps 1)
HIST_UNROLL = 4
# the resident path (module docstring): one launch, one program a row holding the row in registers. Off: no faster
# in FlexPrefill's estimate on an H200 (session 13, 32K, do_bench: 630.7 against 630.9 us alone, 559.4 against 559.6
# us with the session's graph switches; profiled, the global cover of 32 rows of 256 x 256 block scores took 83 us
# in one launch, about 2.8 us a bisection step, each step two reductions over 1024 threads). RESIDENT_MAX: the
# longest row (participating entries) it takes, FlexPrefill's 32K shapes with room; longer rows take the launches
# above. RESIDENT_WARPS: its warps (1024 threads: 32 entries a thread at 32K, within the 64 registers a thread that a
# 1024-thread program may use)
RESIDENT = False
RESIDENT_MAX = 32768 + 1024
RESIDENT_WARPS = 32


def _entries(x_row, idx, ok, COLS, tril):
    """Which of the indices `idx` take part (`ok`, and for a `tril` row on the lower triangle of the row read as
    `[N / COLS, COLS]`), their values (0 elsewhere) and keys."""
    ok = ok & tl.where(tril, idx % COLS <= idx // COLS, True)
    x = tl.load(x_row + idx, mask=ok, other=0.0)
    return ok, x, _monotone(x)


def _upper(first, tril, COLS: tl.constexpr, BLOCK: tl.constexpr):
    """Whether the block of BLOCK entries from index `first` of a `tril` row lies wholly above the diagonal of the
    row read as `[N / COLS, COLS]`: within one matrix row, from a column past that row (a block that reaches into
    the next matrix row counts as live)."""
    col = first % COLS
    return tril & (col > first // COLS) & (col + BLOCK <= COLS)


def _row(X, X2, row, R1, N, N2, sx, sx2):
    """The row's source, length and kind: rows below R1 are the count matrix's, the others the mask matrix's (on
    its lower triangle)."""
    x_row = X + row * sx
    n = N
    if row >= R1:
        x_row = X2 + (row - R1) * sx2
        n = N2
    return x_row, n, row >= R1


def _cand(row, R1, N, N2):
    """Start of the row's slot in the candidate buffers: the count matrix's rows take N entries each, then the mask
    matrix's N2 (a row's candidates never outnumber its entries)."""
    return tl.where(row < R1, row * N, R1 * N + (row - R1) * N2)


def _state(ST, row):
    """The row's state after the digits decided so far (`_cover_decide` wrote it; zero before the first): `(prefix,
    mass_above, cnt_above, all_in, b_last, ties, valid, n_cand)`: the key digits fixed, the mass and count of the
    entries above them, whether the row's mass is within the target (from digit 0), the bin taken at the last digit,
    the entries equal to the prefix in it (after the last digit: the ties of t'), the row's entries (digit 0's
    total) and, once FULL digits are fixed, the candidates the compaction keeps (the entries matching them)."""
    base = ST + row * 8
    prefix = tl.load(base).to(tl.uint32, bitcast=True)
    mass_above = tl.load(base + 1).to(tl.float32, bitcast=True)
    return (prefix, mass_above, tl.load(base + 2), tl.load(base + 3) != 0, tl.load(base + 4), tl.load(base + 5),
            tl.load(base + 6), tl.load(base + 7))


def _skipped(SK, row, HAS_SKIP: tl.constexpr):
    """Whether the row is flagged in `SK` (a row of zeros' state, never read, when it is)."""
    if HAS_SKIP:
        return tl.load(SK + row) != 0
    return False


def _cover_decide(HC, HM, ST, R, C, R1, target, target2, D: tl.constexpr, CB: tl.constexpr, I_C: tl.constexpr,
                  INTERPRET: tl.constexpr, SK=None, HAS_SKIP: tl.constexpr = False):
    """Program (row): digit `D` from its tables (summed over the chunks in a fixed order): the highest bin b whose
    mass, with everything above the prefix, exceeds the target; the row's state advanced by it (`_state`)."""
    row = tl.program_id(0).to(tl.int64)
    if _skipped(SK, row, HAS_SKIP):
        return
    tgt = tl.where(row >= R1, target2, target)
    bins = tl.arange(0, 16)
    cc = tl.arange(0, CB)
    prefix, mass_above, cnt_above, all_in, _, _, valid, n_cand = _state(ST, row)  # all zero before digit 0
    cnt = tl.zeros([16], dtype=tl.int32)
    mass = tl.zeros([16], dtype=tl.float32)
    base = ((D * R + row) * C) * 16
    for c0 in range(0, I_C if INTERPRET else C, CB):
        off = base + (c0 + cc)[:, None] * 16 + bins[None, :]
        live = (c0 + cc < C)[:, None]
        cnt += tl.sum(tl.load(HC + off, mask=live, other=0), 0)
        mass += tl.sum(tl.load(HM + off, mask=live, other=0.0), 0)
    # the mass of bins >= b, for every b; the cut lies in the highest bin where it exceeds the target
    suffix = tl.cumsum(mass, 0, reverse=True)
    b_cross = tl.max(tl.where(mass_above + suffix > tgt, bins, -1))
    if D == 0:
        all_in = b_cross < 0
        valid = tl.sum(cnt)
    # regrouped sums may leave no bin over the target below digit 0: the lowest occupied one then
    lowest = tl.min(tl.where(cnt > 0, bins, 15))
    b_star = tl.where(b_cross >= 0, b_cross, lowest)
    mass_above += tl.sum(tl.where(bins > b_star, mass, 0.0))
    cnt_above += tl.sum(tl.where(bins > b_star, cnt, 0))
    ties = tl.sum(tl.where(bins == b_star, cnt, 0))
    if D == _FULL - 1:
        n_cand = ties
    prefix = prefix | (b_star.to(tl.uint32) << (28 - 4 * D))
    out = ST + row * 8
    tl.store(out, prefix.to(tl.int32, bitcast=True))
    tl.store(out + 1, mass_above.to(tl.int32, bitcast=True))
    tl.store(out + 2, cnt_above)
    tl.store(out + 3, all_in.to(tl.int32))
    tl.store(out + 4, b_star)
    tl.store(out + 5, ties)
    tl.store(out + 6, valid)
    tl.store(out + 7, n_cand)


def _fit(prefix, mass_above, ties, target):
    """How many ties of v* (the value of key `prefix`) still fit under the target, in [0, ties]."""
    sign = tl.full([], 0x80000000, tl.uint32)
    ones = tl.full([], 0xFFFFFFFF, tl.uint32)
    v_star = tl.where((prefix & sign) != 0, prefix ^ sign, prefix ^ ones).to(tl.float32, bitcast=True)
    fit = tl.floor((target - mass_above) / tl.where(v_star > 0, v_star, 1.0))
    return tl.minimum(tl.maximum(fit, 0.0), ties.to(tl.float32)).to(tl.int32)


def _before(HC, row, R, C, c, b, D: tl.constexpr, CB: tl.constexpr, I_C: tl.constexpr, INTERPRET: tl.constexpr):
    """Entries of bin `b` at digit `D` in the row's chunks before chunk `c` (from that digit's counts)."""
    cc = tl.arange(0, CB)
    n = tl.zeros([], dtype=tl.int32)
    base = ((D * R + row) * C) * 16 + b
    for c0 in range(0, I_C if INTERPRET else C, CB):
        n += tl.sum(tl.load(HC + base + (c0 + cc) * 16, mask=c0 + cc < c, other=0))
    return n


def _cover_hist(X, X2, BV, HC, HM, ST, R1, N, N2, CH, sx, sx2, R, C, COLS: tl.constexpr, D: tl.constexpr,
                BLOCK: tl.constexpr, I_CH: tl.constexpr, INTERPRET: tl.constexpr, SKIP_FROM: tl.constexpr = 0,
                TWO_D: tl.constexpr = False, SKIP_UPPER: tl.constexpr = False, EMPTY_EXIT: tl.constexpr = False,
                SK=None, HAS_SKIP: tl.constexpr = False, UNROLL: tl.constexpr = 1):
    """Program (chunk, row): count and mass of key digit `D` over the chunk's entries that match the digits fixed so
    far -> `HC / HM[D, row, chunk]`. Digits below FULL read the row, the others the row's compacted candidates
    (`BV`, each row's slot at `_cand`)."""
    c = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64)
    if _skipped(SK, row, HAS_SKIP):
        return
    x_row, n, tril = _row(X, X2, row, R1, N, N2, sx, sx2)
    prefix, _, _, _, _, _, _, n_cand = _state(ST, row)
    slot = BV + _cand(row, R1, N, N2)
    bins = tl.arange(0, 16)
    # TWO_D: the block's entries as a [BLOCK, 1] column from the start. Built in 1-D and broadcast, every per-entry
    # value was recomputed for each bin a thread holds and moved between layouts through shared memory (offline
    # sm_90: 358 / 173 instructions per full-row iteration at digit 0 / 1-2 in 1-D, 121 / 124 in 2-D)
    offs = tl.arange(0, BLOCK)[:, None] if TWO_D else tl.arange(0, BLOCK)
    out = ((D * R + row) * C + c) * 16 + bins
    if EMPTY_EXIT and D >= _FULL:
        # a chunk past the row's candidates (most of them, after the compaction) stores zeros, without the [BLOCK, 16]
        # sums and their reduction
        if c * CH >= n_cand:
            tl.store(HC + out, tl.zeros([16], dtype=tl.int32))
            tl.store(HM + out, tl.zeros([16], dtype=tl.float32))
            return
    # [BLOCK, 16] running sums in registers, reduced over the block once at the end (a reduction per block costs
    # cross-thread traffic every iteration)
    cnt = tl.zeros([BLOCK, 16], dtype=tl.int32)
    mass = tl.zeros([BLOCK, 16], dtype=tl.float32)
    # only the chunk's part inside the row (or its candidates): a shorter row's idle chunks skip their loop
    for b00 in range(0, I_CH if INTERPRET else tl.minimum(CH, tl.where(D >= _FULL, n_cand, n) - c * CH),
                     BLOCK * UNROLL):
        # UNROLL > 1: that many blocks a step in straight-line code (no skip tests), so that their loads are issued
        # together instead of one block's latency after another's
        for u in tl.static_range(UNROLL):
            b0 = b00 + u * BLOCK
            idx = c * CH + b0 + offs
            inside = (idx < n) & (b0 + offs < CH)
            if D >= _FULL:
                ok = inside & (idx < n_cand)
                x = tl.load(slot + idx, mask=ok, other=0.0)
                key = _monotone(x)
            else:
                ok, x, key = _entries(x_row, idx, inside, COLS, tril)
            if D > 0:
                ok = ok & ((key >> (32 - 4 * D)) == (prefix >> (32 - 4 * D)))
            if TWO_D:
                hit = ok & (((key >> (28 - 4 * D)) & 15).to(tl.int32) == bins[None, :])
                xb = x
            else:
                hit = ok[:, None] & (((key >> (28 - 4 * D)) & 15).to(tl.int32)[:, None] == bins[None, :])
                xb = x[:, None]
            live = True
            if UNROLL == 1 and D >= SKIP_FROM:
                # blocks without an entry matching the prefix skip the [BLOCK, 16] work (the test is a reduction
                # over the block, a barrier each time: only from the digit where such blocks get common)
                live = tl.max(ok.to(tl.int32)) > 0
            elif UNROLL == 1 and SKIP_UPPER:
                # a scalar test, uniform over the program: no reduction, no barrier
                live = not _upper(c * CH + b0, tril, COLS, BLOCK)
            if live:
                cnt += hit.to(tl.int32)
                mass += tl.where(hit, xb, 0.0)
    tl.store(HC + out, tl.sum(cnt, 0))
    tl.store(HM + out, tl.sum(mass, 0))


def _cover_compact(X, X2, BV, BI, HC, ST, R1, N, N2, CH, sx, sx2, R, C, COLS: tl.constexpr, BLOCK: tl.constexpr,
                   CB: tl.constexpr, I_CH: tl.constexpr, I_C: tl.constexpr, INTERPRET: tl.constexpr,
                   SKIP_UPPER: tl.constexpr = False, SK=None, HAS_SKIP: tl.constexpr = False):
    """Program (chunk, row): the chunk's entries that match the first FULL digits, values and indices, written in
    index order after those of the earlier chunks (their counts from digit FULL - 1)."""
    c = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64)
    if _skipped(SK, row, HAS_SKIP):
        return
    x_row, n, tril = _row(X, X2, row, R1, N, N2, sx, sx2)
    prefix, _, _, _, b_last, _, _, _ = _state(ST, row)
    taken = _before(HC, row, R, C, c, b_last, _FULL - 1, CB, I_C, INTERPRET)
    slot = _cand(row, R1, N, N2)
    offs = tl.arange(0, BLOCK)
    for b0 in range(0, I_CH if INTERPRET else tl.minimum(CH, n - c * CH), BLOCK):
        live = True
        if SKIP_UPPER:
            live = not _upper(c * CH + b0, tril, COLS, BLOCK)
        if live:
            idx = c * CH + b0 + offs
            ok, x, key = _entries(x_row, idx, (idx < n) & (b0 + offs < CH), COLS, tril)
            keep = (ok & ((key >> (32 - 4 * _FULL)) == (prefix >> (32 - 4 * _FULL)))).to(tl.int32)
            pos = taken + tl.cumsum(keep, 0) - keep
            tl.store(BV + slot + pos, x, mask=keep != 0)
            tl.store(BI + slot + pos, idx.to(tl.int32), mask=keep != 0)
            taken += tl.sum(keep)


def _cover_count(ST, CNT, target, SK=None, HAS_SKIP: tl.constexpr = False):
    """Program (row of the count matrix): the cover count from the row's state after every digit (0 if skipped)."""
    row = tl.program_id(0).to(tl.int64)
    prefix, mass_above, cnt_above, all_in, _, ties, valid, _ = _state(ST, row)
    fit = _fit(prefix, mass_above, ties, target)
    n = (tl.where(all_in, valid, cnt_above + fit) + 1).to(tl.int64)
    tl.store(CNT + row, tl.where(_skipped(SK, row, HAS_SKIP), 0, n))


def _cover_mask(X2, ST, OUT, R1, N2, CH, sx2, so, COLS: tl.constexpr, BLOCK: tl.constexpr, I_CH: tl.constexpr,
                INTERPRET: tl.constexpr, SK=None, HAS_SKIP: tl.constexpr = False):
    """Program (chunk, row of the mask matrix): the mask over the chunk, keys above t' (every entry when the row is
    within the target; none when it is skipped); the ties of t' that fit are set afterwards by `_cover_ties`."""
    c = tl.program_id(0)
    r2 = tl.program_id(1).to(tl.int64)
    row = R1 + r2
    prefix, _, _, all_in, _, _, _, _ = _state(ST, row)
    live = not _skipped(SK, row, HAS_SKIP)
    offs = tl.arange(0, BLOCK)
    for b0 in range(0, I_CH if INTERPRET else tl.minimum(CH, N2 - c * CH), BLOCK):
        idx = c * CH + b0 + offs
        inside = (idx < N2) & (b0 + offs < CH)
        ok, x, key = _entries(X2 + r2 * sx2, idx, inside & live, COLS, True)
        keep = tl.where(all_in, ok, ok & (key > prefix))
        tl.store(OUT + r2 * so + idx, keep.to(tl.int8), mask=inside)


def _cover_ties(BV, BI, HC, ST, OUT, R1, N, N2, CH, so, R, C, target2, NDIG: tl.constexpr, BLOCK: tl.constexpr,
                CB: tl.constexpr, I_CH: tl.constexpr, I_C: tl.constexpr, INTERPRET: tl.constexpr,
                EMPTY_EXIT: tl.constexpr = False, SK=None, HAS_SKIP: tl.constexpr = False):
    """Program (chunk of candidates, row of the mask matrix): sets the ties of t' whose rank among the row's ties
    (index order: the candidates keep it; the ties in earlier chunks from the last digit's counts) is below the
    number that fit."""
    c = tl.program_id(0)
    r2 = tl.program_id(1).to(tl.int64)
    row = R1 + r2
    if _skipped(SK, row, HAS_SKIP):
        return
    prefix, mass_above, _, all_in, b_last, ties, _, n_cand = _state(ST, row)
    if EMPTY_EXIT:
        if c * CH >= n_cand:  # no candidate in this chunk: nothing to set
            return
    fit = tl.where(all_in, 0, _fit(prefix, mass_above, ties, target2))
    seen = _before(HC, row, R, C, c, b_last, NDIG - 1, CB, I_C, INTERPRET)
    slot = _cand(row, R1, N, N2)
    offs = tl.arange(0, BLOCK)
    for b0 in range(0, I_CH if INTERPRET else tl.minimum(CH, n_cand - c * CH), BLOCK):
        pos = c * CH + b0 + offs
        ok = (pos < N2) & (b0 + offs < CH) & (pos < n_cand)
        key = _monotone(tl.load(BV + slot + pos, mask=ok, other=0.0))
        eq = (ok & (key == prefix)).to(tl.int32)
        rank = seen + tl.cumsum(eq, 0) - eq  # ties of t' before this one, in index order
        hit = (eq != 0) & (rank < fit)
        idx = tl.load(BI + slot + pos, mask=hit, other=0)
        tl.store(OUT + r2 * so + idx, tl.full([BLOCK], 1, tl.int8), mask=hit)
        seen += tl.sum(eq)


def _value(key):
    """The fp32 value of a monotone key (the inverse of `_monotone`; key 0x80000000 is +0.0)."""
    sign = tl.full([], 0x80000000, tl.uint32)
    ones = tl.full([], 0xFFFFFFFF, tl.uint32)
    return tl.where((key & sign) != 0, key ^ sign, key ^ ones).to(tl.float32, bitcast=True)


def _support(s, COLS: tl.constexpr, RECT: tl.constexpr):
    """Index in a mask row of its participating entry `s`: the s-th entry in row-major order of the lower triangle of
    the row read as `[N2 / COLS, COLS]`, (r, c) with s = r(r + 1) / 2 + c while r < COLS, then (RECT: more matrix
    rows than COLS) COLS entries a matrix row."""
    # fp32 sqrt is within one of the exact root here (s < 2^24); the two steps after it make r exact
    r = ((tl.sqrt(8.0 * s.to(tl.float32) + 1.0) - 1.0) * 0.5).to(tl.int32)
    r = tl.where(r * (r + 1) // 2 > s, r - 1, r)
    r = tl.where((r + 1) * (r + 2) // 2 <= s, r + 1, r)
    c = s - r * (r + 1) // 2
    if RECT:
        TRI: tl.constexpr = COLS * (COLS + 1) // 2
        past = s >= TRI
        r = tl.where(past, COLS + (s - TRI) // COLS, r)
        c = tl.where(past, (s - TRI) % COLS, c)
    return r * COLS + c


def _take(x_row, s, S, tril, COLS: tl.constexpr, RECT: tl.constexpr, FULL: tl.constexpr = False):
    """Values of the participating entries `s` (of a mask row if `tril`, else of a count row: index s); NaN past the
    row's `S` (false in every comparison below, so those slots never count, never enter a sum and never cross the
    cut). FULL: every row has all of them (no bounds test)."""
    idx = tl.where(tril, _support(s, COLS, RECT), s)
    if FULL:
        return tl.load(x_row + idx)
    return tl.load(x_row + idx, mask=s < S, other=float("nan"))


def _mass(xm, xt, v, T: tl.constexpr):
    """f at the key of `v`: the fp32 sum of the values >= v (keys >= its key) over the main and the tail tile, each
    reduced by one fixed tree."""
    f = tl.sum(tl.where(xm >= v, xm, 0.0))
    if T > 0:
        f += tl.sum(tl.where(xt >= v, xt, 0.0))
    return f


def _key_range(x, lo, hi):
    """`(lo, hi)` widened by the keys of the smallest and largest values `x` (NaN slots left out; the keys order as
    the values, so only the two extremes are made keys)."""
    kmin = tl.min(_monotone(tl.min(tl.where(x == x, x, float("inf")))), 0)
    kmax = tl.max(_monotone(tl.max(tl.where(x == x, x, float("-inf")))), 0)
    return tl.minimum(lo, kmin), tl.maximum(hi, kmax)


def _popc(b):
    """Set bits of each uint32 (SWAR: shifts and adds, the same in the interpreter)."""
    b = b - ((b >> 1) & 0x55555555)
    b = (b & 0x33333333) + ((b >> 2) & 0x33333333)
    b = (b + (b >> 4)) & 0x0F0F0F0F
    b = b + (b >> 8)
    return ((b + (b >> 16)) & 0x3F).to(tl.int32)


def _from(bits, th):
    """`bits` (bit e: slot e of a main-tile line) keeping the slots e >= th only."""
    ones = tl.full(bits.shape, 0xFFFFFFFF, tl.uint32)
    return tl.where(th >= 32, 0, bits & (ones << tl.minimum(tl.maximum(th, 0), 31).to(tl.uint32)))


def _first(bits, xt, v, m, E: tl.constexpr, NT: tl.constexpr, T: tl.constexpr):
    """Ties of v* at support positions <= m: in the main tile from the lines' tie bits (slot e of line t is position
    t * E + E - 1 - e, so the slots e >= t * E + E - 1 - m), then in the tail."""
    n = tl.sum(_popc(_from(bits, tl.arange(0, NT) * E + (E - 1) - m)))
    if T > 0:
        n += tl.sum(((xt == v) & (E * NT + tl.arange(0, T) <= m)).to(tl.int32))
    return n


def _slots(E: tl.constexpr, NT: tl.constexpr):
    """Support indices of the main tile `[NT, E]`: s = t * E + E - 1 - e, a line of E consecutive positions (at most
    32: its flags are the bits of one uint32), one line a thread across the threads. Descending along axis 1:
    ascending, the compiler sees that axis contiguous and lays the threads along it instead (a line then spans a
    warp, and the per-line sums become shuffles)."""
    return tl.arange(0, NT)[:, None] * E + (E - 1 - tl.arange(0, E))[None, :]


def _clear(out_row, N2, COLS: tl.constexpr, ALL, ZB: tl.constexpr, I_N2: tl.constexpr, INTERPRET: tl.constexpr):
    """False over a mask row's entries above the diagonal (all of them if `ALL`): the resident path writes its rows
    whole, into torch.empty."""
    zo = tl.arange(0, ZB)
    for z0 in range(0, I_N2 if INTERPRET else N2, ZB):
        idx = z0 + zo
        tl.store(out_row + idx, tl.zeros([ZB], dtype=tl.int8), mask=(idx < N2) & ((idx % COLS > idx // COLS) | ALL))


def _cover_resident(X, X2, CNT, OUT, R1, N, N2, S2, sx, sx2, so, target, target2, COLS: tl.constexpr,
                    RECT: tl.constexpr, E: tl.constexpr, NT: tl.constexpr, FULL: tl.constexpr, T: tl.constexpr,
                    ZB: tl.constexpr, I_N2: tl.constexpr, INTERPRET: tl.constexpr, SK=None,
                    HAS_SKIP: tl.constexpr = False):
    """Program (row; the count matrix's rows, then the mask matrix's): the whole cut of the row in one program, its
    participating entries held in registers (a main tile `[NT, E]` of P and a tail of T) through a bisection on the
    key. FULL: every row fills the main tile."""
    P: tl.constexpr = E * NT
    row = tl.program_id(0).to(tl.int64)
    x_row, n, tril = _row(X, X2, row, R1, N, N2, sx, sx2)
    if _skipped(SK, row, HAS_SKIP):
        if tril:
            _clear(OUT + (row - R1) * so, N2, COLS, True, ZB, I_N2, INTERPRET)
        else:
            tl.store(CNT + row, tl.zeros([], dtype=tl.int64))
        return
    tgt = tl.where(tril, target2, target)
    S = tl.where(tril, S2, n)
    xm = _take(x_row, _slots(E, NT), S, tril, COLS, RECT, FULL)
    lo, hi = _key_range(xm, tl.full([], 0xFFFFFFFF, tl.uint32), tl.full([], 0, tl.uint32))
    xt = xm  # a stand-in when there is no tail (never read then)
    if T > 0:
        xt = _take(x_row, P + tl.arange(0, T), S, tril, COLS, RECT)
        lo, hi = _key_range(xt, lo, hi)
    # every entry's key is >= lo: f(lo) is the row's mass, and the cut exists (the largest key t' with f(t') >
    # target) unless the row is within the target. Invariant: f(lo) > target, t' in [lo, hi), f_hi = f(hi) (0 at
    # one past the largest key). The computed f is non-increasing in the key (each added value is >= 0 and fp32
    # addition is monotone in each argument over the fixed tree), so the bisection is well defined.
    all_in = _mass(xm, xt, _value(lo), T) <= tgt
    hi = tl.where(all_in, lo + 1, hi + 1)
    f_hi = tl.zeros([], dtype=tl.float32)
    # a runtime loop over the key bits that differ between the row's extremes (at most 32 steps), one masked sum
    # over the row each; the test key >= mid is made on the values (x >= the value of mid: the same order, no
    # per-entry key in registers)
    while hi - lo > 1:
        mid = lo + ((hi - lo) >> 1)
        f = _mass(xm, xt, _value(mid), T)
        up = f > tgt
        lo = tl.where(up, mid, lo)
        hi = tl.where(up, hi, mid)
        f_hi = tl.where(up, f_hi, f)
    v = _value(lo)  # v*: the value of t'
    ties = tl.sum((xm == v).to(tl.int32))
    if T > 0:
        ties += tl.sum((xt == v).to(tl.int32))
    fit = _fit(lo, f_hi, ties, tgt)
    if tril:
        # keys above t' and the first `fit` ties in index order (support order is index order). A row within the
        # target ends with t' = its smallest key: everything above it and all its ties, every entry
        fit = tl.where(all_in, ties, fit)
        # each line's entries above v* and ties of v* as bits (slot e: bit e), so that the values die here
        e = tl.arange(0, E)[None, :].to(tl.uint32)
        over = tl.sum((xm > v).to(tl.uint32) << e, 1)
        bits = tl.sum((xm == v).to(tl.uint32) << e, 1)
        # the position of the fit-th tie, by bisection over the positions on the lines' tie bits (one uint32 a
        # thread; a block-wide scan of the 32 tie flags a thread took 320 shuffles and spilled on sm_90). It loops
        # only where some ties fit and some do not (rare on softmax scores); none fit: -1, all of them: S - 1.
        # Invariant: fewer than fit ties at positions <= p_lo, at least fit at positions <= p_hi
        p_lo = tl.where(fit <= 0, -2, tl.where(fit >= ties, S - 2, -1))
        p_hi = tl.where(fit <= 0, -1, S - 1)
        while p_hi - p_lo > 1:
            mid = (p_lo + p_hi) // 2
            enough = _first(bits, xt, v, mid, E, NT, T) >= fit
            p_lo = tl.where(enough, p_lo, mid)
            p_hi = tl.where(enough, mid, p_hi)
        # the key loop left hi = lo + 1: z is 0, unknown to the compiler, so the support indices and the row mask
        # are recomputed here from the thread ids instead of being merged with the loads' and held through the
        # loops (32 more registers a thread at 32K)
        z = (hi - lo - 1).to(tl.int32)
        out_row = OUT + (row - R1) * so
        s = z + _slots(E, NT)
        kept = (over | _from(bits, tl.arange(0, NT) * E + (E - 1) - p_hi))[:, None]
        tl.store(out_row + _support(s, COLS, RECT), ((kept >> e) & 1).to(tl.int8), mask=(s < S) | FULL)
        if T > 0:
            s = z + P + tl.arange(0, T)
            keep = (xt > v) | ((xt == v) & (s <= p_hi))
            tl.store(out_row + _support(s, COLS, RECT), keep.to(tl.int8), mask=s < S)
        _clear(out_row, N2, COLS, False, ZB, I_N2, INTERPRET)
    else:
        above = tl.sum((xm > v).to(tl.int32))
        if T > 0:
            above += tl.sum((xt > v).to(tl.int32))
        tl.store(CNT + row, (tl.where(all_in, S, above + fit) + 1).to(tl.int64))


_kernels = per_mode((_cover_hist, _cover_compact, _cover_count, _cover_mask, _cover_ties, _cover_decide),
                    (_monotone, _entries, _row, _state, _fit, _before, _cand, _upper, _skipped))
_resident_kernel = per_mode((_cover_resident,), (_monotone, _row, _skipped, _fit, _value, _support, _take, _mass,
                                                _key_range, _popc, _from, _first, _slots,
                                                _clear),
                            one=True)


def _default_chunk(x, x2) -> int:
    """`SHORT_CHUNK` where the longer rows of x and x2 (either may be None) have at most `SHORT_ROWS` entries, else
    `CHUNK`."""
    longest = max(0 if t is None else t.shape[-1] for t in (x, x2))
    return SHORT_CHUNK if longest <= SHORT_ROWS else CHUNK


def _skip_kw(skip, R, dev) -> dict:
    """The kernels' arguments for `skip` (bool `[R]` on `dev`, or None), checked."""
    if skip is not None and (skip.dtype != torch.bool or tuple(skip.shape) != (R,) or skip.device != dev):
        raise ValueError(f"skip must be a bool [{R}] tensor on {dev}; got {skip.dtype} {tuple(skip.shape)} on "
                         f"{skip.device}")
    return {} if skip is None else {"SK": skip.view(torch.int8), "HAS_SKIP": True}


def _support_len(n2: int, cols: int) -> int:
    """Entries of a mask row of n2 that take part: the lower triangle of `[n2 / cols, cols]`."""
    rows = n2 // cols
    sq = min(rows, cols)
    return sq * (sq + 1) // 2 + (rows - sq) * cols


def _resident_fits(x, x2, cols, resident: bool | None = None) -> bool:
    """Whether the resident path takes the call: `resident` (None: `RESIDENT`) on, and every row's participating
    entries (x's rows, x2's lower triangles; either may be None) between 1 and `RESIDENT_MAX`."""
    lens = ([] if x is None else [x.shape[1]]) + ([] if x2 is None else [_support_len(x2.shape[1], cols)])
    return (RESIDENT if resident is None else resident) and 0 < min(lens) and max(lens) <= RESIDENT_MAX


def _resident(x, target, x2, target2, cols, skip=None):
    """`_launch`'s results in one launch of `_cover_resident`, one program a row (x's rows, then x2's)."""
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    x = x if x is None or x.stride(-1) == 1 else x.contiguous()
    x2 = x2 if x2 is None or x2.stride(-1) == 1 else x2.contiguous()
    R1, N = (0, 0) if x is None else x.shape
    R2, N2 = (0, 0) if x2 is None else x2.shape
    S2 = 0 if x2 is None else _support_len(N2, cols)
    xa = x if x is not None else x2  # a stand-in where a matrix is absent (its rows never read)
    xb = x2 if x2 is not None else xa
    dev = xa.device
    sk = _skip_kw(skip, R1 + R2, dev)
    # tiles from the longest row: the largest power of two within it, and the rest rounded up to one (FlexPrefill's
    # 32K shapes: 32768 + 0 for the counts, 32768 + 128 for 256 x 256 block scores)
    longest = max(N, S2)
    P = max(16, 1 << (longest.bit_length() - 1))
    T = 0 if longest <= P else max(16, triton.next_power_of_2(longest - P))
    # E entries a main-tile line (at most 32: a line's flags are the bits of one uint32), a line a thread where the
    # warps allow: 32 x 1024 at 32K
    warps = min(RESIDENT_WARPS, max(1, P // 1024))
    E = min(32, max(1, P // (32 * warps)))
    cnt = torch.empty(max(R1, 1), dtype=torch.int64, device=dev)
    out = torch.empty(max(R2, 1), max(N2, 1), dtype=torch.int8, device=dev)
    # the mask rows' zero pass: four entries a thread a step
    zb = min(4 * 32 * warps, max(16, triton.next_power_of_2(N2)))
    # FULL: every row fills the main tile, whose loads then go without bounds tests (FlexPrefill's 32K shapes; with
    # the tests, ptxas spilled 8-12 bytes there)
    full = min(n for n in (N, S2) if n) >= P
    _resident_kernel(interpret)[(R1 + R2,)](
        xa, xb, cnt, out, R1, N, N2, S2, xa.stride(0), xb.stride(0), out.stride(0), float(target), float(target2),
        cols, RECT=N2 // cols > cols, E=E, NT=P // E, FULL=full, T=T, ZB=zb, I_N2=N2 if interpret else 0,
        INTERPRET=interpret, num_warps=warps, **sk)
    return (cnt if R1 else None), (out.view(torch.bool) if R2 else None)


def _launch(x, target, x2, target2, cols, chunk, block, num_warps, skip=None):
    """Counts of `x`'s rows and the mask of `x2`'s (either may be None) in one set of launches; rows flagged in `skip`
    (bool [R1 + R2], on the device) left out."""
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if chunk < 16 or chunk & (chunk - 1):
        raise ValueError(f"chunk={chunk} must be a power of two >= 16")
    x = x if x is None or x.stride(-1) == 1 else x.contiguous()
    x2 = x2 if x2 is None or x2.stride(-1) == 1 else x2.contiguous()
    R1, N = (0, 0) if x is None else x.shape
    R2, N2 = (0, 0) if x2 is None else x2.shape
    R, NB = R1 + R2, max(N, N2)
    chunk = min(chunk, max(16, triton.next_power_of_2(NB)))
    block = min(block, chunk)
    C = -(-NB // chunk)
    xa = x if x is not None else x2  # a stand-in pointer where a matrix is absent (its rows never read)
    xb = x2 if x2 is not None else xa
    dev = xa.device
    hc = torch.empty(DIGITS, R, C, 16, dtype=torch.int32, device=dev)
    hm = torch.empty(DIGITS, R, C, 16, dtype=torch.float32, device=dev)
    # each row's state after the digits so far (`_state`), all zero before the first
    st = torch.zeros(R, 8, dtype=torch.int32, device=dev)
    # the candidates after FULL digits (at most the whole row): values and indices, in index order
    bv = torch.empty(R1 * N + R2 * N2, dtype=torch.float32, device=dev)
    bi = torch.empty(R1 * N + R2 * N2, dtype=torch.int32, device=dev)
    hist_k, compact_k, count_k, mask_k, ties_k, decide_k = _kernels(interpret)
    sk = _skip_kw(skip, R, dev)
    t1, t2 = float(target), float(target2)
    # the decisions read every chunk's tables in one step up to DECIDE_CB chunks
    loops = {"CB": min(DECIDE_CB, max(8, triton.next_power_of_2(C))), "I_C": C if interpret else 0,
             "INTERPRET": interpret}
    rows = {"I_CH": chunk if interpret else 0, "num_warps": num_warps}
    both = (xa, xb)
    dims = (R1, N, N2, chunk, xa.stride(0), xb.stride(0), R, C, cols)
    # (2048-entry write blocks, session 12: no faster, `results/logs/flexprefill_knobs_s13.txt`)
    wblock = min(4 * block, chunk)
    for d in range(DIGITS):
        if d == FULL:
            # the write passes hold no [BLOCK, 16] sums: longer blocks (at 256 their scans spill on sm_90)
            compact_k[(C, R)](*both, bv, bi, hc, st, *dims, BLOCK=wblock, SKIP_UPPER=SKIP_UPPER,
                              **rows, **loops, **sk)
        hist_k[(C, R)](*both, bv, hc, hm, st, *dims, D=d, BLOCK=block, SKIP_FROM=SKIP_FROM, TWO_D=HIST_2D,
                       SKIP_UPPER=SKIP_UPPER, EMPTY_EXIT=EMPTY_EXIT, **rows, INTERPRET=interpret, **sk,
                       UNROLL=max(1, min(HIST_UNROLL, chunk // block)))
        decide_k[(R,)](hc, hm, st, R, C, R1, t1, t2, D=d, num_warps=DECIDE_WARPS, **loops, **sk)
    cnt = out = None
    if R1:
        cnt = torch.empty(R1, dtype=torch.int64, device=dev)
        count_k[(R1,)](st, cnt, t1, num_warps=1, **sk)
    if R2:
        out = torch.empty(R2, N2, dtype=torch.int8, device=dev)
        mask_k[(C, R2)](xb, st, out, R1, N2, chunk, xb.stride(0), out.stride(0), cols,
                        BLOCK=wblock, **rows, INTERPRET=interpret, **sk)
        ties_k[(C, R2)](bv, bi, hc, st, out, R1, N, N2, chunk, out.stride(0), R, C, t2, NDIG=DIGITS,
                        BLOCK=wblock, EMPTY_EXIT=EMPTY_EXIT, **rows, **loops, **sk)
        out = out.view(torch.bool)
    return cnt, out


def cover_count_triton(x: torch.Tensor, target: float, chunk: int | None = None, block: int | None = None,
                       num_warps: int = 4, skip: torch.Tensor | None = None, resident: bool | None = None
                       ) -> torch.Tensor:
    """int64 `[R]` of `cover_count_naive` (arguments as there), up to the rounding in the module docstring; rows cut
    into chunks of `chunk` entries (a power of two), each program walking its chunk `block` entries at a time.
    `skip` (bool `[R]` on the device): flagged rows are left out, their counts 0. `resident`: the resident path
    (one launch) where the rows fit it, or not (None: `RESIDENT`)."""
    _check(x, target)
    if _resident_fits(x, None, 1, resident):
        return _resident(x, target, None, 0.0, 1, skip)[0]
    return _launch(x, target, None, 0.0, 1, chunk or _default_chunk(x, None), block or BLOCK, num_warps, skip)[0]


def cover_mask_triton(x: torch.Tensor, target: float, cols: int, chunk: int | None = None,
                      block: int | None = None, num_warps: int = 4, skip: torch.Tensor | None = None,
                      resident: bool | None = None) -> torch.Tensor:
    """bool like `x` of `cover_mask_naive` (arguments as there), up to the rounding in the module docstring. `skip`
    (bool `[R]` on the device): flagged rows are left out, all False. `resident`: as `cover_count_triton` takes it."""
    _check(x, target)
    _check_cols(x, cols)
    if _resident_fits(None, x, cols, resident):
        return _resident(None, 0.0, x, target, cols, skip)[1]
    return _launch(None, 0.0, x, target, cols, chunk or _default_chunk(None, x), block or BLOCK, num_warps,
                   skip)[1]


def cover_pair_triton(x: torch.Tensor, target: float, x2: torch.Tensor, target2: float, cols2: int,
                      chunk: int | None = None, block: int | None = None, num_warps: int = 4,
                      skip: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`(cover_count_triton(x, target), cover_mask_triton(x2, target2, cols2))` in one set of launches (20 instead
    of 38; FlexPrefill's cover counts and global cover). The rows of both are cut into chunks of the same length.
    `skip` (bool `[R1 + R2]` on the device: x's rows, then x2's): flagged rows are left out, their counts 0 and
    mask rows all False."""
    _check(x, target)
    _check(x2, target2)
    _check_cols(x2, cols2)
    if _resident_fits(x, x2, cols2):
        return _resident(x, target, x2, target2, cols2, skip)
    return _launch(x, target, x2, target2, cols2, chunk or _default_chunk(x, x2), block or BLOCK, num_warps,
                   skip)

