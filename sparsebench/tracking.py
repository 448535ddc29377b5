"""Weights & Biases mirror of a job's rows (`logger=wandb`). The tables on disk stay the record; W&B is a view.

Each job opens its own run (grouped by experiment) and always finishes it, so the jobs of a sequential multirun
do not write into one run.
"""
from __future__ import annotations

from dataclasses import asdict


def log_job(cfg, rows) -> None:
    """Log the resolved config, the rows as a table and each ok metric as a summary value."""
    if cfg.logger.name == "none":
        return
    if cfg.logger.name != "wandb":
        raise ValueError(f"logger.name={cfg.logger.name!r} is not one of none, wandb")
    try:
        import wandb
    except ImportError as e:
        raise ImportError('logger=wandb needs the wandb package: pip install -e ".[wandb]"') from e
    from omegaconf import OmegaConf

    run = wandb.init(project=cfg.logger.project, entity=cfg.logger.entity, group=cfg.experiment_name,
                     name=f"{cfg.method.name}-{cfg.task.name}-{cfg.model.name}-L{cfg.seq_len}-s{cfg.seed}",
                     tags=[cfg.method.name, cfg.task.name, cfg.model.name, *cfg.logger.tags],
                     config=OmegaConf.to_container(cfg, resolve=True), mode=cfg.logger.mode, reinit="finish_previous")
    try:
        records = [asdict(r) for r in rows]
        if records:
            columns = list(records[0])
            run.log({"rows": wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in records])})
        for r in rows:
            if r.status == "ok" and r.value is not None:
                run.summary[f"{r.subtask}/{r.metric}"] = r.value
    finally:
        run.finish()
