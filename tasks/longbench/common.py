"""What LongBench v1/E and v2 share: the data knobs and loading rows through `datasets`, choosing the samples, middle
truncation, and the chat-template flags a sample carries.

Loading: every source goes through one call, `datasets.load_dataset(path, name=..., data_files=..., split=...,
revision=...)`: a hub id with a config name and a pinned revision, or the "json"/"parquet" builders with local
`data_files` (which is what the `data_dir` knobs expand to). Rows are returned in file order.

Middle truncation (upstream LongBench `pred.py`, v1 and v2): when the prompt does not fit, keep its first and its last
half of the token budget and drop the middle, because instructions and the question sit at both ends. Here the budget
is what `seq_len` leaves after the generation budget and the tokens the model adds around the prompt (BOS, chat
template), so that the prompt as the model sees it plus `max_new_tokens` is at most `seq_len`. The halves are decoded
back to text (as upstream does), and the result is tokenised again to confirm the fit; a seam that re-tokenises
longer shrinks the halves by the overshoot.

Chat template: a prompt is either fed inside the model's chat template (counted with it) or raw (BOS only); the sample
records which in meta `chat_template` / `raw_prompt`, which the run reads to render it the same way (`Fit.sample_meta`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparsebench.task import count_tokens
from sparsebench.tasks._fit import stable_rng

SAMPLING = ("first", "random")
# `datasets` builders that read local files (no hub revision applies).
LOCAL_BUILDERS = frozenset({"json", "parquet", "csv", "text", "arrow"})
# Exact tokenisations of a truncated prompt before giving up; the first is normally right.
_MAX_FIT_CHECKS = 8


def load_table(path: str, *, name: str | None = None, data_files: str | Sequence[str] | None = None,
               split: str = "test", revision: str | None = None):
    """`datasets.load_dataset(path, name, data_files={split: data_files}, split=..., revision=...)`: a memory-mapped
    `datasets.Dataset` in file order (rows are materialised only when a sample needs them)."""
    import datasets

    kwargs: dict[str, Any] = {"split": split}
    if name is not None:
        kwargs["name"] = name
    if data_files is not None:
        # keyed by the split: a bare path or list would be named "train" by datasets, whatever `split` says
        kwargs["data_files"] = {split: data_files if isinstance(data_files, str) else list(data_files)}
    if revision:
        kwargs["revision"] = revision
    if path not in LOCAL_BUILDERS:
        return datasets.load_dataset(path, **kwargs)
    # datasets pings S3 to count a "download" of the json/parquet builder even for local files; offline that is a
    # DNS timeout per load, so the count is switched off around local loads
    counts = datasets.config.HF_UPDATE_DOWNLOAD_COUNTS
    datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False
    try:
        return datasets.load_dataset(path, **kwargs)
    finally:
        datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = counts


def check_fields(table, fields: Sequence[str], source: str, what: str) -> None:
    if len(table) == 0:
        raise ValueError(f"{source} has no rows")
    missing = sorted(set(fields) - set(table.column_names))
    if missing:
        raise ValueError(f"{source} lacks the {what} fields {missing} (columns: {', '.join(table.column_names)})")


def describe_source(path: str, name: str | None, data_files: str | Sequence[str] | None, split: str,
                    revision: str | None) -> str:
    if data_files is not None:
        files = data_files if isinstance(data_files, str) else ",".join(map(str, data_files))
        return f"datasets:{path}[data_files={files}]:{split}"
    return f"datasets:{path}" + (f"@{revision}" if revision else "") + (f":{name}" if name else "") + f":{split}"


def local_file(data_dir: str | Path, stem: str, suffixes: Sequence[str] = (".jsonl",)) -> Path | None:
    """`<data_dir>/<stem><suffix>` for the first suffix that exists, else None."""
    folder = Path(data_dir).expanduser()
    for suffix in suffixes:
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def builder_for(path: Path) -> str:
    return "parquet" if path.suffix == ".parquet" else "json"


class DataKnobs:
    """The data knobs of both adapters (`data_dir`, `hf_id`, `revision`, `data_files`, `split`, `sampling`): checked
    and stored the same way, and turned into `load_table` arguments the same way."""

    def _set_data_knobs(self, *, data_dir: str | None, hf_id: str, revision: str | None, data_files: str | None,
                        split: str, sampling: str) -> None:
        if sampling not in SAMPLING:
            raise ValueError(f"unknown sampling {sampling!r}; valid choices: {', '.join(SAMPLING)}")
        if data_dir and data_files:
            raise ValueError("set at most one of data_dir and data_files")
        self.data_dir = data_dir
        self.hf_id = hf_id
        self.revision = revision
        self.data_files = data_files
        self.split = split
        self.sampling = sampling

    def _load_args(self, local: Sequence[tuple[str, Sequence[str]]], missing: str, config: str | None = None) -> dict:
        """`load_table`/`describe_source` arguments, from the first source set:

        - data_dir: the first `<stem><suffix>` of `local` (pairs of stem and suffixes, tried in order) that exists,
          read with the json/parquet builder; none raises FileNotFoundError(`missing` + the folder);
        - data_files: read by `hf_id` (a builder such as "json"; a hub revision only for a hub id), with "{config}"
          replaced by `config` when given;
        - else the hub: `hf_id` at `revision`, configuration `config`.
        """
        if self.data_dir:
            found = (local_file(self.data_dir, stem, suffixes) for stem, suffixes in local)
            path = next((p for p in found if p is not None), None)
            if path is None:
                raise FileNotFoundError(f"{missing} {str(Path(self.data_dir).expanduser())!r}")
            return {"path": builder_for(path), "name": None, "data_files": str(path), "split": self.split,
                    "revision": None}
        if self.data_files is not None:
            files = self.data_files if config is None else self.data_files.replace("{config}", config)
            return {"path": self.hf_id, "name": None, "data_files": files, "split": self.split,
                    "revision": None if self.hf_id in LOCAL_BUILDERS else self.revision}
        return {"path": self.hf_id, "name": config, "data_files": None, "split": self.split, "revision": self.revision}


def select(indices: Sequence[int], n: int, sampling: str, seed: int, *key: Any) -> list[int]:
    """The first n of `indices` (row numbers in file order), or a seeded subset of n of them kept in file order."""
    if sampling == "first" or n >= len(indices):
        return list(indices[:n])
    picked = sorted(stable_rng("longbench-select", *key, seed).sample(range(len(indices)), n))
    return [indices[i] for i in picked]


def _ids(tokenizer, text: str, special: bool) -> list[int]:
    # A one-element batch: a TemplatedTokenizer (sparsebench.models) passes lists straight to the wrapped tokenizer,
    # so these are the prompt's own tokens, without a chat template.
    return list(tokenizer([text], add_special_tokens=special)["input_ids"][0])


@dataclass(frozen=True)
class Fit:
    prompt: str
    input_tokens: int  # as the model sees it: BOS and (templated prompts) the chat template included
    meta: dict  # truncation record
    raw: bool = False  # fed without the chat template

    def sample_meta(self, data_source: str) -> dict:
        """The meta both adapters record after their own fields: chat-template flags (read by the run to render the
        prompt as it was counted), the data source and the truncation record."""
        return {"chat_template": not self.raw, "raw_prompt": self.raw, "data_source": data_source, **self.meta}


def fit_middle(tokenizer, prompt: str, seq_len: int, max_new_tokens: int, *, raw: bool, halves: str) -> Fit:
    """Middle-truncate `prompt` so that its tokens as fed to the model plus `max_new_tokens` fit `seq_len`.

    Args:
        raw: the prompt is fed without a chat template (counted as the tokenizer's plain encoding with BOS);
            otherwise it is counted by `count_tokens`, which includes a chat template when the tokenizer applies one.
        halves: "equal" (LongBench v1: keep int(budget/2) tokens at each end, decode each half separately and join
            the texts) or "floor_ceil" (LongBench v2: keep budget//2 + ceil(budget/2) tokens, decode them together).
    """
    if halves not in ("equal", "floor_ceil"):
        raise ValueError(f"halves={halves!r} is not one of equal, floor_ceil")

    def count(text: str) -> int:
        return len(_ids(tokenizer, text, True)) if raw else count_tokens(tokenizer, text)

    room = seq_len - max_new_tokens
    ids = _ids(tokenizer, prompt, False)
    base = {"truncation": "none", "truncated_tokens": 0, "prompt_tokens": len(ids)}
    if len(ids) <= room:  # possibly fits: count it exactly as the model will see it
        total = count(prompt)
        if total <= room:
            return Fit(prompt, total, base, raw)
        overhead = total - len(ids)
    else:  # certainly too long; the overhead does not depend on the content, so measure it on a short piece
        probe = tokenizer.decode(ids[:32], skip_special_tokens=True)
        overhead = count(probe) - len(_ids(tokenizer, probe, False))
    budget = room - overhead
    if budget < 2:
        raise ValueError(f"seq_len={seq_len} is too small for this LongBench prompt: max_new_tokens={max_new_tokens} "
                         f"and {overhead} template/BOS tokens leave {budget} tokens for the prompt")
    best = None
    for _ in range(_MAX_FIT_CHECKS):
        if halves == "equal":
            head = tail = budget // 2
            text = (tokenizer.decode(ids[:head], skip_special_tokens=True)
                    + tokenizer.decode(ids[len(ids) - tail:], skip_special_tokens=True))
        else:
            head, tail = budget // 2, budget - budget // 2
            text = tokenizer.decode(ids[:head] + ids[len(ids) - tail:], skip_special_tokens=True)
        total = count(text)
        if total <= room:
            best = (text, total, head, tail)
            break
        budget -= max(total - room, 1)
        if budget < 2:
            break
    if best is None:
        raise ValueError(f"LongBench middle truncation could not fit seq_len={seq_len}: the truncated prompt "
                         f"re-tokenises longer than its budget")
    text, total, head, tail = best
    return Fit(text, total, {"truncation": "middle", "truncated_tokens": len(ids) - head - tail,
                             "prompt_tokens": len(ids), "kept_head_tokens": head, "kept_tail_tokens": tail}, raw)
