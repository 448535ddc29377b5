"""Profile XAttention's per-layer x per-head thresholds for a model and write them to the calibration store.

Usage:
    python scripts/calibrate_xattn.py model=gemma3_270m seq_len=8192 [--stride 8] [--block-size 128]
        [--coverage 0.9] [--n-samples 4] [--layers full_attention] [--out PATH] [other key=value overrides]

The key=value arguments are ordinary sparsebench config overrides (model, seq_len, model.device, paths.calib_dir,
task.essay_path, ...). Prompts come from the NIAH task's essay haystack (`task.*` settings apply; the default is
offline prose) at seeds `CALIB_SEED_OFFSET + i`, which evaluation never uses. Each prompt is prefilled densely; at
every method layer the official profiling rule (`sparsebench.methods.xattn.profile_thresholds`: the fewest exact
128-blocks covering `coverage` of each row's attention, the smallest estimate among them, the share of estimated
mass at or above it) gives one threshold per query head, and the artifact keeps the maximum over prompts, as the
official `profile_threshold.py` does. Use it with `method=xattn method.thresholds_file=<printed path>`.

The artifact's payload is `{"thresholds": [[tau per head] or null, per layer index], "stride", "block_size",
"coverage", "layers"}`; its inputs record the model, lengths, seeds and haystack, and its name hashes them.
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from sparsebench import schema

    schema.store()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="sparsebench.conf", version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def _layers_arg(text: str):
    if text in ("full_attention", "all"):
        return text
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--layers {text!r}: full_attention, all, or comma-separated indices")


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stride", type=int, default=8, help="antidiagonal stride profiled (official: 8)")
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--coverage", type=float, default=0.9, help="exact attention mass the blocks must cover")
    ap.add_argument("--norm", type=float, default=1.0)
    ap.add_argument("--n-samples", type=int, default=4, help="calibration prompts (the maximum over them is kept)")
    ap.add_argument("--layers", type=_layers_arg, default="full_attention",
                    help="full_attention (default), all, or comma-separated layer indices")
    ap.add_argument("--use-triton", choices=("auto", "true", "false"), default="auto")
    ap.add_argument("--out", default=None, help="artifact path (default: the calibration store's name)")
    args, overrides = ap.parse_known_args(argv)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        ap.error(f"unrecognised arguments {bad} (config overrides are key=value)")
    if not 0 < args.coverage <= 1 or args.n_samples < 1:
        ap.error(f"--coverage must be in (0, 1] and --n-samples >= 1; got {args.coverage}, {args.n_samples}")

    from omegaconf import OmegaConf

    from sparsebench import calibration
    from sparsebench.attention import SparseAttention, install, method_layers
    from sparsebench.methods.xattn import XAttention, profile_thresholds
    from sparsebench.models import encode_sample, load, task_tokenizer
    from sparsebench.selection import Selection
    from sparsebench.tasks import TASKS

    cfg = _compose(overrides)
    # the method's own checks on the profiled knobs (stride divides block_size, ...)
    checker = XAttention(stride=args.stride, block_size=args.block_size, norm=args.norm, use_triton=args.use_triton)
    if cfg.seq_len > cfg.model.max_context:
        raise ValueError(f"seq_len={cfg.seq_len} is beyond model {cfg.model.name!r}'s context of "
                         f"{cfg.model.max_context} tokens")
    if cfg.task.name != "niah":
        raise ValueError(f"calibration prompts come from the niah task's haystack; got task={cfg.task.name!r}")
    task_knobs = {k: v for k, v in OmegaConf.to_container(cfg.task, resolve=True).items() if k != "name"}
    task = TASKS.get("niah")(**task_knobs)
    task.check()

    model, tok, info = load(cfg.model, cfg.paths.cache_dir)
    layers = method_layers(model.config, args.layers)
    per_layer: dict[int, list[torch.Tensor]] = {}

    class Profiler(SparseAttention):
        """Dense prefill that records, at each method layer, the per-head thresholds of this prompt."""

        name = "xattn_profile"

        def select(self, q, k, ctx):
            thr = profile_thresholds(q, k, args.stride, args.block_size, ctx.scale, args.coverage, args.norm,
                                     use_triton=checker._triton_for(q))
            per_layer.setdefault(ctx.layer_idx, []).append(thr.amax(0).cpu())
            return Selection.causal(batch=q.shape[0], q_len=q.shape[2], k_len=k.shape[2], num_heads=ctx.num_heads,
                                    num_kv_heads=ctx.num_kv_heads, device=q.device)

        def attend(self, q, k, v, sel, scale):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                                  enable_gqa=q.shape[1] != k.shape[1])

    install(model, Profiler(executor="reference"), layers, "reference", None)
    device = next(model.parameters()).device
    task_tok = task_tokenizer(tok, cfg.model.chat_template)
    seeds = [calibration.CALIB_SEED_OFFSET + i for i in range(args.n_samples)]
    prompt_shas = []
    for seed in seeds:
        sample = next(iter(task.samples(task_tok, cfg.seq_len, 1, seed)))
        prompt_shas.append(sample.prompt_sha256)
        ids = encode_sample(tok, sample, cfg.model.chat_template, return_tensors="pt").to(device)  # as the run feeds it
        with torch.inference_mode():
            model(input_ids=ids, use_cache=False, logits_to_keep=1)
        print(f"prompt seed {seed}: {ids.shape[1]} tokens", file=sys.stderr)

    n_layers = model.config.num_hidden_layers
    table = [torch.stack(per_layer[i]).amax(0).tolist() if i in per_layer else None for i in range(n_layers)]
    payload = {"thresholds": table, "stride": args.stride, "block_size": args.block_size,
               "coverage": args.coverage, "norm": args.norm, "layers": sorted(per_layer)}
    inputs = {"model": cfg.model.name, "model_file": info.file_sha256, "seq_len": cfg.seq_len,
              "n_samples": args.n_samples, "calib_seeds": seeds, "prompt_sha256": prompt_shas,
              "task": OmegaConf.to_container(cfg.task, resolve=True), "stride": args.stride,
              "block_size": args.block_size, "coverage": args.coverage, "norm": args.norm, "dtype": info.dtype,
              "procedure": "x-attention profile_threshold.py rule, max over prompts"}
    path = args.out or calibration.artifact_path(cfg.paths.calib_dir, cfg.model.name, "xattn", "thresholds",
                                                 **inputs)
    calibration.save(path, payload, **inputs)
    print(path)
    return str(path)


if __name__ == "__main__":
    main()
