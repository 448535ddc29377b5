"""The calibration store: per-model artifacts a method reads at run time (pattern configs, per-head thresholds,
resolved budget knobs), kept under `paths.calib_dir` and read through one loader.

An artifact is one JSON file named by what it depends on:

    <calib_dir>/<model>/<method>/<kind>-<key>.json      key = sha1(knobs, calibration-data id)[:12]

and it carries those inputs in its body, so a file found on disk can always be traced back. A method knob that
names an artifact (`*_file`, e.g. `pattern_file`, `thresholds_file`) is hashed into the job's `run_id`
(`sparsebench.run.prepare`), so changing a calibration changes every result that used it. Calibration samples must
never overlap evaluation samples: producers record the seeds they used (`calib_seeds`), and `check_disjoint`
refuses an evaluation seed among them.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from sparsebench.results import atomic_write_text

CALIB_SEED_OFFSET = 1_000_003  # calibration prompts use seeds far from the evaluation seeds 0, 1, 2, ...


def artifact_key(**inputs: Any) -> str:
    return hashlib.sha1(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:12]


def artifact_path(calib_dir: str | Path, model: str, method: str, kind: str, **inputs: Any) -> Path:
    return Path(calib_dir).expanduser() / model / method / f"{kind}-{artifact_key(**inputs)}.json"


def save(path: str | Path, payload: dict, **inputs: Any) -> Path:
    """Write an artifact atomically, with the inputs it was made from."""
    path = Path(path)
    atomic_write_text(path, json.dumps({"inputs": inputs, "payload": payload}, indent=1, sort_keys=True,
                                       default=str))
    return path


def load(path: str | Path) -> dict:
    """The payload of an artifact; a missing file is a clear FileNotFoundError naming it."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"calibration artifact {str(path)!r} does not exist (make it with the method's "
                                f"calibration command, or point the knob at an existing file)")
    body = json.loads(path.read_text())
    return body["payload"] if "payload" in body else body


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).expanduser().read_bytes()).hexdigest()


def check_disjoint(calib_seeds: list[int], eval_seed: int) -> None:
    if eval_seed in set(calib_seeds):
        raise ValueError(f"evaluation seed {eval_seed} was used to calibrate (calibration seeds {sorted(calib_seeds)})")
