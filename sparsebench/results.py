"""Results: tidy long rows, per-sample and per-layer records, atomic job files, `run_id`, and collection to tables.

One job (one method x task x model x seq_len x seed cell) writes, under `<raw_dir>/<experiment>/<run_id>/`:
`rows.jsonl` (one row per measured quantity per subtask), `samples.jsonl` (one record per sample) and
`layers.jsonl` (one record per sample and routed layer), each written to a temporary name and renamed, so no file
is ever half-written. `rows.jsonl` goes last: its presence with every status `ok` marks the cell finished.
The column list is `ROW_COLUMNS`; `results/README.md` documents it.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

SCHEMA_VERSION = 1
STATUSES = ("ok", "oom", "error", "missing_data")
FACTORS = ["experiment", "method", "method_label", "method_params", "target_density", "model", "model_quant",
           "n_params", "task", "subtask", "seq_len", "seed", "phase", "executor", "dtype"]


@dataclass
class Row:
    run_id: str
    experiment: str
    method: str
    method_label: str
    method_params: str
    target_density: float | None
    model: str
    model_quant: str
    n_params: int | None
    task: str
    subtask: str
    seq_len: int
    seed: int
    phase: str
    executor: str
    dtype: str
    metric: str
    value: float | None
    unit: str
    n: int
    stderr: float | None = None
    status: str = "ok"
    message: str = ""
    schema_version: int = SCHEMA_VERSION
    model_file: str = ""  # the weights' identity: GGUF sha256, hub revision, or random seed
    git_sha: str = ""
    versions: str = ""
    device: str = ""
    timestamp: str = ""


ROW_COLUMNS = [f for f in Row.__dataclass_fields__]


def mean_stderr(values: list[float]) -> tuple[float, float | None]:
    """Mean and standard error of the mean (sample std / sqrt(n)); stderr None for n < 2."""
    n = len(values)
    if n == 0:
        return math.nan, None
    m = sum(values) / n
    if n < 2:
        return m, None
    var = sum((x - m) ** 2 for x in values) / (n - 1)
    return m, math.sqrt(var / n)


def run_id(semantic: dict[str, Any]) -> str:
    """Hash of everything that changes a result (see ARCHITECTURE.md): 12 hex digits of sha1 over sorted JSON."""
    blob = json.dumps(semantic, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:12]


def git_sha() -> str:
    try:
        here = Path(__file__).resolve().parent
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_jsonl(path: Path, records: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, default=_json_default) + "\n" for r in records))


def _json_default(x):
    if hasattr(x, "item"):
        return x.item()
    return str(x)


def read_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@dataclass
class JobFiles:
    """The files of one job directory."""

    dir: Path
    rows: Path = field(init=False)
    samples: Path = field(init=False)
    layers: Path = field(init=False)
    config: Path = field(init=False)

    def __post_init__(self) -> None:
        self.rows, self.samples = self.dir / "rows.jsonl", self.dir / "samples.jsonl"
        self.layers, self.config = self.dir / "layers.jsonl", self.dir / "config.json"

    def finished(self) -> bool:
        """True when some rows are `ok` and none failed (`oom`/`error` cells are tried again on re-run; a suite's
        subtask whose data is absent, `missing_data`, does not make the other subtasks run again)."""
        if not self.rows.exists():
            return False
        rows = read_jsonl(self.rows)
        status = [r.get("status") for r in rows]
        return "ok" in status and all(x in ("ok", "missing_data") for x in status)

    def write(self, rows: list[Row], samples: list[dict], layers: list[dict], config: dict) -> None:
        atomic_write_text(self.config, json.dumps(config, indent=1, sort_keys=True, default=str))
        write_jsonl(self.samples, samples)
        write_jsonl(self.layers, layers)
        write_jsonl(self.rows, [asdict(r) for r in rows])  # last: marks the job finished


def collect(raw_dir: str | Path, experiment: str, table_dir: str | Path) -> dict[str, Path]:
    """Merge every job of `experiment` into `<table_dir>/<experiment>.parquet|csv` (rows) and `_samples` twins."""
    import pandas as pd

    root = Path(raw_dir) / experiment
    rows, samples = [], []
    for job in sorted(p for p in root.glob("*/") if (p / "rows.jsonl").exists()):
        rows.extend(read_jsonl(job / "rows.jsonl"))
        if (job / "samples.jsonl").exists():
            samples.extend(read_jsonl(job / "samples.jsonl"))
    if not rows:
        raise FileNotFoundError(f"no finished jobs under {root}")
    out: dict[str, Path] = {}
    table_dir = Path(table_dir)
    table_dir.mkdir(parents=True, exist_ok=True)
    for name, recs in ((experiment, rows), (f"{experiment}_samples", samples)):
        if not recs:
            continue
        df = pd.DataFrame.from_records(recs)
        for col in df.columns:  # nested fields (scores, meta) as JSON strings keep parquet and csv flat
            if df[col].map(lambda x: isinstance(x, (dict, list))).any():
                df[col] = df[col].map(lambda x: json.dumps(x, sort_keys=True) if isinstance(x, (dict, list)) else x)
        for ext in ("parquet", "csv"):
            path = table_dir / f"{name}.{ext}"
            tmp = path.with_name(f".{path.name}.tmp")
            df.to_parquet(tmp, index=False) if ext == "parquet" else df.to_csv(tmp, index=False)
            os.replace(tmp, path)
            out[f"{name}.{ext}"] = path
    return out


def load_table(path: str | Path):
    """Read a rows table and check its schema version."""
    import pandas as pd

    df = pd.read_parquet(path) if str(path).endswith(".parquet") else pd.read_csv(path)
    versions = set(df["schema_version"].unique())
    if versions != {SCHEMA_VERSION}:
        raise ValueError(f"{path}: schema_version {sorted(versions)} != {SCHEMA_VERSION}")
    return df


def to_wide(df):
    """Pivot tidy rows to one column per metric (factors as the index)."""
    ok = df[df["status"] == "ok"]
    index = [c for c in FACTORS if c in ok.columns and ok[c].notna().any()]
    return ok.pivot_table(index=index, columns="metric", values="value", aggfunc="mean").reset_index()
