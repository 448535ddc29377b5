"""The task interface: a task turns (tokenizer, seq_len, n, seed) into prompts and scores generated text.

Length rule (RULER / The Sparse Frontier): a prompt's total length, counted in tokens of the model's tokenizer with
BOS, chat template, answer prefix and the generation budget included, is at most `seq_len` and at least 90% of it.
Synthetic tasks are pure functions of the seed: the same seed gives the same prompt bytes.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

LENGTH_FLOOR = 0.9


@dataclass(frozen=True)
class Sample:
    """One prompt.

    Args:
        id: stable sample id (same seed, same id).
        subtask: subtask name (the task name when there is none).
        prompt: the full text fed to the model (answer prefix included, no BOS: the tokenizer adds it).
        targets: strings the scorer looks for.
        max_new_tokens: generation budget, counted inside `seq_len`.
        input_tokens: tokens of `prompt` as the model sees it (BOS included).
        meta: task-specific fields recorded per sample (depth, haystack source, truncation, ...).
    """

    id: str
    subtask: str
    prompt: str
    targets: tuple[str, ...]
    max_new_tokens: int
    input_tokens: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt_sha256(self) -> str:
        return hashlib.sha256(self.prompt.encode()).hexdigest()


class Task(Protocol):
    """What every task implements. Two optional methods extend it for suites of subtasks:

    - `unavailable() -> dict[str, str]`: subtasks that cannot run here (e.g. their data is absent) and why; the run
      writes a `missing_data` status row for each and runs the others. `check()` must still raise when every
      requested subtask is unavailable.
    - `skipped() -> dict[str, int]`: after `samples()`, how many samples per subtask were skipped because they could
      not fit `seq_len` (the task's skip-or-fail policy); reported as `skipped_samples` rows.
    """

    name: str

    def check(self) -> None:
        """Raise a clear error before any model loads when the task cannot run (e.g. missing data)."""

    def samples(self, tokenizer, seq_len: int, n: int, seed: int) -> Iterator[Sample]:
        """Yield `n` samples within the length rule."""

    def score(self, sample: Sample, output: str) -> dict[str, float]:
        """Metric name -> value in [0, 1] for one generated output."""


def count_tokens(tokenizer, text: str) -> int:
    """Tokens of `text` as fed to the model (with the tokenizer's BOS, if it adds one)."""
    return len(tokenizer(text, add_special_tokens=True)["input_ids"])
