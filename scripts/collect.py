"""Merge an experiment's job files into tables (and its figure), printing the summary.

Usage: python scripts/collect.py --experiment quickstart [--root-dir .] [--no-figures]
Writes <root>/results/tables/<experiment>.parquet|csv and <experiment>_samples.parquet|csv.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from sparsebench.report import summarize


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", required=True, help="experiment name (a folder under results/raw)")
    ap.add_argument("--root-dir", default=".", help="the folder holding results/ (paths.root_dir)")
    ap.add_argument("--no-figures", action="store_true")
    args = ap.parse_args()
    res = Path(args.root_dir) / "results"
    written = summarize(res / "raw", args.experiment, res / "tables", res / "figures", not args.no_figures)
    raise SystemExit(0 if written else 1)


if __name__ == "__main__":
    main()
