"""Shared machinery of the RULER generators: seeded RNG streams, piece token counts, and token-exact fitting.

RULER sizes every haystack by a binary search over its unit count (words, lines, documents) with one full
tokenisation per probe, then shrinks per sample by a fixed increment until the prompt fits. Here each generator
gives an increasing *estimate* of the prompt's variable part from per-piece token counts (computed once per
tokenizer) and `fit_largest` confirms it with a few exact tokenisations of the whole prompt; the result is the
largest unit count whose prompt, BOS and chat template included, fits the budget.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# the generic fitting pieces live in tasks/_fit.py; the RULER generators import them from here too
from sparsebench.tasks._fit import MAX_EXACT_CHECKS, fit_largest, piece_lengths, raw_count, stable_rng  # noqa: F401

class Cyclic:
    """Prefix sums over a sequence of units that repeats as often as needed (RULER repeats short haystacks)."""

    def __init__(self, values: Sequence[float]):
        self.m = len(values)
        self.prefix = [0.0]
        for v in values:
            self.prefix.append(self.prefix[-1] + v)
        self.total = self.prefix[-1]

    def __call__(self, n: int) -> float:
        q, r = divmod(n, self.m)
        return q * self.total + self.prefix[r]


def upper_bound(estimate: Callable[[int], float], budget: float, start: int) -> int:
    """An n with estimate(n) > budget, found by doubling from `start` (estimate must grow without bound)."""
    hi = max(int(start), 1)
    while estimate(hi) <= budget:
        hi *= 2
    return hi


class PerTokenizer:
    """A cache keyed by tokenizer identity; the tokenizer is kept so that its id() stays unique."""

    def __init__(self):
        self._items: dict[int, tuple[Any, Any]] = {}

    def get(self, tokenizer, build: Callable[[], Any]) -> Any:
        entry = self._items.get(id(tokenizer))
        if entry is None or entry[0] is not tokenizer:
            entry = (tokenizer, build())
            self._items[id(tokenizer)] = entry
        return entry[1]


@dataclass
class Draft:
    """What a generator returns for one sample; the suite adds id, subtask and budget to make the `Sample`."""

    prompt: str  # answer prefix included at the end
    answer_prefix: str
    targets: tuple[str, ...]
    input_tokens: int
    meta: dict = field(default_factory=dict)


@dataclass
class Skip:
    """A sample that cannot be built within the length rule, and why (reported through `Ruler.skipped()`)."""

    reason: str
