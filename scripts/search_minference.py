"""MInference's offline kernel-aware pattern search: one config JSON of per-head (pattern, v, s) for a model.

For every layer the method acts on (`method.layers`) and every query head, each candidate of the search space
(`sparsebench.methods.minference.SEARCH_SPACE`, the official FLOPs-comparable list) is scored by attention recall
(the share of the dense causal softmax mass its executed selection covers, over query rows >= --score-from-row,
averaged over the calibration prompts), and the best candidate is written, in the official per-model format, to the
calibration store through `sparsebench.calibration.save`. Calibration prompts come from the configured task with
seeds offset by `calibration.CALIB_SEED_OFFSET`, so they never coincide with evaluation prompts; the seeds are
recorded in the artifact (`calib_seeds`).

The official search ran on one InfiniteBench kv_retrieval prompt truncated to 30K tokens, rows >= 2500:

    python scripts/search_minference.py model=gemma3_270m task=niah seq_len=32768 --samples 1
    python scripts/search_minference.py model=tiny_llama model.device=cpu seq_len=512 --score-from-row 256

Positional arguments are Hydra overrides of the sparsebench config (model, task, seq_len, seed, paths, and
`method.*` knobs shared by the candidates: last_q, block_size, forced_columns, forced_diagonals, min_vertical,
min_slash). It prints the artifact's path and the command that runs MInference with it.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from sparsebench import schema

    schema.store()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="sparsebench.conf", version_base="1.3"):
            return hydra_compose(config_name="config", overrides=["method=minference", *overrides])
    finally:
        GlobalHydra.instance().clear()


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=tiny_llama seq_len=512")
    ap.add_argument("--samples", type=int, default=1, help="calibration prompts (default 1, as the official search)")
    ap.add_argument("--score-from-row", type=int, default=2500,
                    help="score query rows from this index on (default 2500, as the official search)")
    ap.add_argument("--no-remap", action="store_true",
                    help="write stream_llm / block_sparse winners as such (default: the official remap to "
                         "vertical_and_slash)")
    ap.add_argument("--out", type=Path, default=None, help="artifact path (default: the calibration store's)")
    args = ap.parse_args(argv)
    if args.samples < 1:
        raise ValueError(f"--samples={args.samples} must be >= 1")

    import torch
    from omegaconf import OmegaConf

    from sparsebench import calibration
    from sparsebench.attention import install, method_layers
    from sparsebench.methods.minference import SEARCH_KNOBS, SEARCH_SPACE, MInferenceSearch
    from sparsebench.models import encode_sample, load, task_tokenizer
    from sparsebench.tasks import TASKS

    cfg = compose(args.overrides)
    method_cfg = OmegaConf.to_container(cfg.method, resolve=True)
    knobs = {k: method_cfg[k] for k in SEARCH_KNOBS}
    task_knobs = {k: v for k, v in OmegaConf.to_container(cfg.task, resolve=True).items() if k != "name"}
    task = TASKS.get(cfg.task.name)(**task_knobs)
    task.check()
    recorder = MInferenceSearch(SEARCH_SPACE, args.score_from_row, executor=cfg.method.executor, **knobs)

    model, tok, _ = load(cfg.model, cfg.paths.cache_dir)
    layers = method_layers(model.config, cfg.method.layers)
    previous = getattr(model.config, "_attn_implementation", None) or "eager"
    install(model, recorder, layers, cfg.method.executor, None)
    device = next(model.parameters()).device
    task_tok = task_tokenizer(tok, cfg.model.chat_template)
    seed = calibration.CALIB_SEED_OFFSET + cfg.seed
    samples = list(itertools.islice(task.samples(task_tok, cfg.seq_len, args.samples, seed), args.samples))
    lengths = []
    try:
        for s in samples:
            ids = encode_sample(tok, s, cfg.model.chat_template, return_tensors="pt").to(device)  # as the run feeds it
            lengths.append(int(ids.shape[1]))
            with torch.inference_mode():
                model(input_ids=ids, use_cache=False, logits_to_keep=1)
    finally:
        model.set_attn_implementation(previous)  # the model object is cached per process: leave it as found

    n_layers = model.config.get_text_config().num_hidden_layers if hasattr(model.config, "get_text_config") else (
        model.config.num_hidden_layers)
    recall = recorder.recall()
    payload = {
        "best_pattern": recorder.best_pattern(n_layers, remap=not args.no_remap),
        "recall": {str(li): r.tolist() for li, r in recall.items()},  # [head][candidate]
        "candidates": [list(c) for c in SEARCH_SPACE],
        "calib_seeds": [seed],
        "input_tokens": lengths,
    }
    inputs = dict(model=cfg.model.name, task=cfg.task.name, task_knobs=task_knobs, seq_len=cfg.seq_len,
                  calib_seeds=[seed], samples=args.samples, score_from_row=args.score_from_row,
                  remap=not args.no_remap, layers=layers, candidates=[list(c) for c in SEARCH_SPACE], knobs=knobs)
    path = args.out or calibration.artifact_path(cfg.paths.calib_dir, cfg.model.name, "minference", "pattern",
                                                 **inputs)
    calibration.save(path, payload, **inputs)
    print(f"wrote {path}")
    print(f"Run: python -m sparsebench method=minference method.pattern=config method.pattern_file={path} "
          f"model={cfg.model.name} seq_len={cfg.seq_len}")
    return Path(path)


if __name__ == "__main__":
    main(sys.argv[1:])
