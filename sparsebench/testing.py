"""Test helpers shared by the test suite (shipped, so downstream method packages can test the same way)."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys


# the worker's limit guards against a hung worker, not a slow machine: tests/kernels/test_last_q_scores.py's 150 cases
# took 911 s on session 13's machine (2 cores; its 7 PBS cases about 85 s each), over the 600 s used until then
INTERPRET_TIMEOUT = 1800


def interpreter_verdicts(test_file: str, timeout: int = INTERPRET_TIMEOUT) -> dict:
    """Run `python <test_file> --interpret` once under `TRITON_INTERPRET=1` and collect its verdicts.

    Triton reads the variable when its helpers are jitted at import, so interpreter checks run in a child process
    that imports triton afresh. The child prints JSON lines `{case id: None | failure text}`; the parent's
    parametrized tests look their case up. The child sees the same modules as this process (its `sys.path`).
    """
    import pytest

    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run([sys.executable, test_file, "--interpret"], check=False, env=env, capture_output=True,
                          text=True, timeout=timeout)
    verdicts: dict = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            verdicts.update(json.loads(line))
    if not verdicts:
        pytest.fail(f"interpreter worker produced no verdicts (rc={proc.returncode}):\n{proc.stderr[-4000:]}")
    return verdicts


def report_verdicts(check, cases) -> None:
    """Child side of `interpreter_verdicts`: run `check(*case.values)` for each `pytest.param` case and print its
    verdict as a JSON line (None, or the traceback of any failure kind, not only assertions)."""
    import traceback

    assert os.environ.get("TRITON_INTERPRET") == "1"
    for case in cases:
        try:
            check(*case.values)
            verdict = None
        except Exception:  # noqa: BLE001
            verdict = traceback.format_exc(limit=3)
        print(json.dumps({case.id: verdict}), flush=True)


def assert_verdict(verdicts: dict, request) -> None:
    """Parent side: the running parametrized test's case reported, and passed."""
    cid = request.node.callspec.id
    assert cid in verdicts, f"case {cid} did not report"
    assert verdicts[cid] is None, verdicts[cid]


@contextlib.contextmanager
def switched(module, **values):
    """Module attributes (a kernel's or method's switches) set to `values` inside the block, restored after it, also
    on failure: the interpreter children cannot use pytest's monkeypatch."""
    saved = {name: getattr(module, name) for name in values}
    try:
        for name, value in values.items():
            setattr(module, name, value)
        yield module
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


def off_and_on(module, switch, fn):
    """`(fn() with module.<switch> False, fn() with it True)`: a fast path's result beside the result of the path it
    replaces (a method's selection, say). `switch`: a name, or a tuple of names switched together."""
    names = (switch,) if isinstance(switch, str) else tuple(switch)
    with switched(module, **dict.fromkeys(names, False)):
        off = fn()
    with switched(module, **dict.fromkeys(names, True)):
        on = fn()
    return off, on


def assert_same_lists(a, b) -> None:
    """Two `Selection`s list the same blocks in the same order, with the same counts."""
    import torch

    assert torch.equal(a.kv_indices, b.kv_indices) and torch.equal(a.kv_counts, b.kv_counts)


# (T, H, HKV, D, seed) of the FlexPrefill-level checks of its kernel switches: a ragged last block, grouped heads
FLEX_SHAPES = ((640, 4, 2, 32, 0), (700, 2, 1, 64, 1))


def flex_cases() -> list:
    """FLEX_SHAPES as `pytest.param`s with their ids."""
    import pytest

    return [pytest.param(c, id="flex-T{}-H{}-HKV{}-D{}-s{}".format(*c)) for c in FLEX_SHAPES]


def flexprefill_off_and_on(switch, shape, dtype: str = "float32", **knobs):
    """FlexPrefill's official selection (block 32, min_budget 64, `scores_kernel="torch"`, `knobs`) on random q, k of
    `shape` (an entry of FLEX_SHAPES) with `methods.flexprefill.<switch>` (a name, or a tuple of names) off and on:
    asserts the same lists and returns the two per-head decisions `(off, on)`."""
    import torch

    import sparsebench.methods.flexprefill as fp
    from sparsebench.attention import AttnContext

    T, H, HKV, D, seed = shape
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, H, T, D, generator=g).to(getattr(torch, dtype))
    k = torch.randn(1, HKV, T, D, generator=g).to(getattr(torch, dtype))
    m = fp.FlexPrefill(**{"min_budget": 64, "block_size": 32, "scores_kernel": "torch", **knobs})
    ctx = AttnContext(layer_idx=0, num_heads=H, num_kv_heads=HKV, head_dim=D, scale=D ** -0.5)
    with switched(fp, _WHOLE_GRAPH=False):  # the switches FlexPrefill's tests turn act on its eager path
        (off, d_off), (on, d_on) = off_and_on(fp, switch, lambda: (m.select(q, k, ctx), m.last_decision))
    assert_same_lists(on, off)
    return d_off, d_on
