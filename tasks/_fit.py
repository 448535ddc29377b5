"""Token-exact prompt fitting shared by the synthetic tasks: seeded RNG streams, per-piece token counts, and
`fit_largest`, which finds the largest unit count whose whole prompt fits a token budget.

A generator gives an increasing *estimate* of the prompt's variable part from per-piece token counts (computed once
per tokenizer); `fit_largest` confirms it with a few exact tokenisations of the whole prompt.
"""
from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from typing import Any

from sparsebench.task import count_tokens

# Exact tokenisations per fit after the first; the estimate is normally right within two or three.
MAX_EXACT_CHECKS = 10


def stable_rng(*parts: Any) -> random.Random:
    """A Random seeded from the sha256 of the parts (never Python's salted hash()): same parts, same stream."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def piece_lengths(tokenizer, pieces: Sequence[str]) -> list[int]:
    """Tokens of each piece without special tokens. A fast tokenizer gets one batch call; a chat-template view
    (`TemplatedTokenizer`) hands lists to the plain tokenizer, so no template is counted per piece."""
    if not pieces:
        return []
    if getattr(tokenizer, "is_fast", False):
        return [len(ids) for ids in tokenizer(list(pieces), add_special_tokens=False)["input_ids"]]
    return [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in pieces]


def count_prompt(tokenizer, prompt: str, answer_prefix: str = "") -> int:
    """Tokens of a whole prompt as the run feeds it (`count_tokens`: BOS and chat template included). A prompt that
    ends with `answer_prefix` is fed, under a chat template, with the prefix after the assistant header
    (`sparsebench.models.render_prompt`); the chat-template view is told the prefix so that it counts that text."""
    from sparsebench.models import TemplatedTokenizer

    if answer_prefix and isinstance(tokenizer, TemplatedTokenizer):
        return len(tokenizer(prompt, answer_prefix=answer_prefix)["input_ids"])
    return count_tokens(tokenizer, prompt)


def raw_count(tokenizer, text: str) -> int:
    """Tokens of text without special tokens and without a chat template (RULER's `text_to_tokens`)."""
    return piece_lengths(tokenizer, [text])[0]


def fit_largest(render: Callable[[int], str], estimate: Callable[[int], float], tokenizer, budget: int,
                lo: int, hi: int, answer_prefix: str = "") -> tuple[int, str, int] | None:
    """Largest n in [lo, hi] whose prompt `render(n)` has at most `budget` tokens (BOS and template included).

    `estimate(n)` must not decrease with n; it predicts the tokens that n units add. `answer_prefix`: the text every
    prompt ends with that the sample records as meta `answer_prefix` (see `count_prompt`). Returns (n, prompt,
    tokens), or None when even `lo` does not fit.
    """
    def largest(x: float) -> int:  # largest n in [lo, hi] with estimate(n) <= x; lo - 1 when none
        a, b = lo - 1, hi
        while a < b:
            m = (a + b + 1) // 2
            if estimate(m) <= x:
                a = m
            else:
                b = m - 1
        return a

    prompt = render(lo)
    total = count_prompt(tokenizer, prompt, answer_prefix)
    if total > budget:
        return None
    best = (lo, prompt, total)
    too_big = hi + 1  # smallest n known not to fit
    n = largest(estimate(lo) + budget - total)
    for _ in range(MAX_EXACT_CHECKS):
        n = min(n, too_big - 1)
        if n <= best[0]:
            break
        prompt = render(n)
        total = count_prompt(tokenizer, prompt, answer_prefix)
        if total <= budget:
            best = (n, prompt, total)
            n = largest(estimate(n) + budget - total)  # grow by the remaining gap
        else:
            too_big = n
            n = min(largest(estimate(n) - (total - budget)), n - 1)  # shrink by the overshoot
    return best
