"""Tile-candidate timing shared by the Triton kernels' opt-in autotuning."""
from __future__ import annotations


def fastest(candidates, call):
    """The candidate whose `call(candidate)` has the lowest `triton.testing.do_bench` time (5 ms warm-up, 20 ms
    measured), or None when every one fails (e.g. out of shared memory on this GPU: such a candidate is skipped)."""
    from triton.testing import do_bench

    best, best_ms = None, float("inf")
    for cand in candidates:
        try:
            ms = do_bench(lambda cand=cand: call(cand), warmup=5, rep=20)
        except Exception:  # noqa: BLE001, S112
            continue
        if ms < best_ms:
            best, best_ms = cand, ms
    return best
