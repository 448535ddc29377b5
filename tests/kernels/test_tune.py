"""kernels._tune.fastest: the lowest-timed candidate, failures skipped, None when all fail (timer faked: CPU)."""
import triton.testing

from sparsebench.kernels._tune import fastest


def test_fastest_picks_lowest_and_skips_failures(monkeypatch):
    cost = {"a": 3.0, "b": 1.0, "c": 2.0}

    def fake_bench(fn, warmup, rep):
        return fn()

    def call(cand):
        if cand == "b":
            raise RuntimeError("out of resource: shared memory")
        return cost[cand]

    monkeypatch.setattr(triton.testing, "do_bench", fake_bench)
    assert fastest(["a", "b", "c"], call) == "c"
    assert fastest(["b"], call) is None
