"""Test helpers shared by the test suite (shipped, so downstream method packages can test the same way)."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys


def interpreter_verdicts(test_file: str, timeout: int = 600) -> dict:
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
