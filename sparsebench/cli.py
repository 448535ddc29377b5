"""Command line: `python -m sparsebench key=value ...` and `-m` multiruns (Hydra).

With no argument at all it runs `experiment=quickstart`. Each job is one cell (`sparsebench.run.run_job`); after a
single run, or when a multirun ends, the experiment's jobs are collected into tables, its figure is drawn and a
summary table is printed. Importing this module stays cheap: torch loads inside the job.
"""
from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from sparsebench import schema

log = logging.getLogger("sparsebench")
schema.store()

HELP_HIDDEN = ("schema",)  # internal groups: the structured-config schemas that `schema.store()` registers
HELP_HYDRA_GROUPS = ("hydra/launcher",)  # Hydra's own groups that users pick (the rest are in --hydra-help)


def help_groups() -> str:
    """The config groups `--help` lists, one `group: option, ...` line each: the user-facing groups, without the
    internal `schema/*` ones, plus `hydra/launcher`. Used by the `hydra.help.template` in conf/config.yaml through
    the `sparsebench_help_groups` resolver; reads the config repository Hydra has loaded (installed launcher
    plugins included)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.object_type import ObjectType

    if not GlobalHydra.instance().is_initialized():
        return ""
    loader = GlobalHydra.instance().config_loader()

    def walk(parent: str):
        for group in loader.list_groups(parent):
            name = f"{parent}/{group}" if parent else group
            yield name
            yield from walk(name)

    lines = []
    for name in sorted(walk("")):
        top = name.split("/")[0]
        if top in HELP_HIDDEN or (top == "hydra" and name not in HELP_HYDRA_GROUPS):
            continue
        options = sorted(loader.get_group_options(name, ObjectType.CONFIG))
        if options:
            lines.append(f"{name}: {', '.join(options)}")
    return "\n".join(lines)


if not OmegaConf.has_resolver("sparsebench_help_groups"):
    OmegaConf.register_new_resolver("sparsebench_help_groups", help_groups)


def finalize(cfg: DictConfig) -> None:
    """Collect the experiment's jobs into tables, draw its figure and print the summary."""
    from sparsebench.report import summarize

    summarize(cfg.paths.raw_dir, cfg.experiment_name, cfg.paths.table_dir, cfg.paths.figure_dir, cfg.figures)


class SweepSummary(Callback):
    """Hydra callback: when a multirun ends, collect its jobs and print the summary once."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        finalize(config)


def _is_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


def _record_invalid(cfg: DictConfig, err: Exception) -> None:
    """A cell that failed its checks inside a multirun: one status row, so the sweep's table shows it."""
    import json
    from dataclasses import asdict
    from pathlib import Path

    from omegaconf import OmegaConf

    from sparsebench.results import Row, run_id, write_jsonl

    raw = OmegaConf.to_container(cfg, resolve=True)
    rid = run_id({"invalid": {k: raw.get(k) for k in ("method", "task", "model", "seq_len", "seed", "n_samples")}})
    row = Row(run_id=rid, experiment=cfg.experiment_name, method=str(cfg.method.name), method_label="",
              method_params=json.dumps(raw["method"], sort_keys=True), target_density=None, model=cfg.model.name,
              model_quant=cfg.model.quant, n_params=None, task=str(cfg.task.name), subtask=str(cfg.task.name),
              seq_len=cfg.seq_len, seed=cfg.seed, phase="prefill", executor=cfg.method.executor, dtype="",
              metric="status", value=None, unit="", n=0, status="error", message=str(err))
    write_jsonl(Path(cfg.paths.raw_dir) / cfg.experiment_name / rid / "rows.jsonl", [asdict(row)])


@hydra.main(version_base="1.3", config_path="pkg://sparsebench.conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    from sparsebench.run import run_job

    multirun = _is_multirun()
    try:
        status, rows = run_job(cfg, raise_errors=not multirun)
    except (ValueError, KeyError, FileNotFoundError, MissingMandatoryValue) as e:  # the checks, before any model
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        if not multirun:
            # exit here: an exception would reach Hydra's handler and print as a crash with a traceback
            print(f"sparsebench: error: {msg}", file=sys.stderr)
            sys.exit(2)
        print(f"sparsebench: cell failed its checks: {msg}", file=sys.stderr)
        _record_invalid(cfg, e)
        return
    tag = {"skipped": "already finished, skipped"}.get(status, status)
    print(f"[{cfg.method.name} | {cfg.task.name} | {cfg.model.name} | seq_len={cfg.seq_len}] {tag}")
    if not multirun:
        finalize(cfg)


def main() -> None:
    if len(sys.argv) == 1:
        sys.argv.append("experiment=quickstart")
    _hydra_main()
