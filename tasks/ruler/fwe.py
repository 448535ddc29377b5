"""RULER's frequent words extraction (`fwe`): name the three most frequent coded words of a Zipf-distributed text.

Recipe of NVIDIA/RULER `scripts/data/synthetic/freq_words_extraction.py` with `scripts/synthetic.yaml` (alpha=2.0;
commit c3f5e3b4f87f): a vocabulary of (seq_len - 50) // 50 random six-letter lower-case words (unique, sorted,
shuffled with `Random(seed)`), the top-ranked one replaced by "..." (noise); word k is repeated
floor(num_words · k^-alpha / zeta(alpha)) times, the words are shuffled with `Random(seed)` and joined by spaces.
Answer: the three most frequent real words (ranks 2-4); scored with string_match_all. zeta(2) = pi^2/6, so scipy
is not needed. `num_words` is the largest that fits, rather than RULER's upward search in steps of length/32.
"""
from __future__ import annotations

import math
import random
import string

from sparsebench.tasks.ruler._fit import Draft, Skip, fit_largest, piece_lengths, stable_rng, upper_bound
from sparsebench.tasks.ruler._templates import TASKS

ALPHA = 2.0
ZETA_ALPHA = math.pi ** 2 / 6  # scipy.special.zeta(2.0) == 1.6449340668482264
CODED_WORDLEN = 6
TEMPLATE = TASKS["freq_words_extraction"]["template"]
ANSWER_PREFIX = TASKS["freq_words_extraction"]["answer_prefix"]


def vocabulary(rng: random.Random, size: int, seed: int) -> list[str]:
    """RULER's vocabulary: `size` distinct random coded words, sorted, shuffled with Random(seed), rank 1 = '...'."""
    vocab = ["".join(rng.choices(string.ascii_lowercase, k=CODED_WORDLEN)) for _ in range(size)]
    while len(set(vocab)) < size:
        vocab.append("".join(rng.choices(string.ascii_lowercase, k=CODED_WORDLEN)))
    vocab = sorted(set(vocab))
    random.Random(seed).shuffle(vocab)
    vocab[0] = "..."
    return vocab


def counts(num_words: int, size: int) -> list[int]:
    """Repeats of the word of rank k = 1..size: int(num_words * k**-alpha / zeta(alpha)), as numpy computes it."""
    return [int(num_words * (k ** -ALPHA) / ZETA_ALPHA) for k in range(1, size + 1)]


class FWEGenerator:
    family = "freq_words_extraction"
    metric = "string_match_all"
    tokens_to_generate = TASKS["freq_words_extraction"]["tokens_to_generate"]

    def __init__(self, name: str = "fwe"):
        self.name = name

    def draft(self, tokenizer, seq_len: int, seed: int, i: int, max_new_tokens: int) -> Draft | Skip:
        key = ("ruler", self.name, seq_len, seed, i)
        size = (seq_len - max_new_tokens) // 50  # RULER: (max_seq_length - tokens_to_generate) // 50
        if size < 5:
            raise ValueError(f"seq_len={seq_len} is too small for ruler/{self.name}: its vocabulary of "
                             f"(seq_len - max_new_tokens) // 50 = {size} words has fewer than 5 words")
        vocab = vocabulary(stable_rng(*key, "vocab"), size, seed)
        lengths = piece_lengths(tokenizer, [" " + w for w in vocab])
        budget = seq_len - max_new_tokens

        def estimate(n: int) -> float:
            total = 0.0
            for c, t in zip(counts(n, size), lengths):
                if c == 0:
                    break  # counts only fall with the rank
                total += c * t
            return total

        def render(n: int) -> str:
            words = [w for w, c in zip(vocab, counts(n, size)) for _ in range(c)]
            random.Random(seed).shuffle(words)
            return (TEMPLATE + ANSWER_PREFIX).format(context=" ".join(words))

        hi = upper_bound(estimate, budget, budget)
        fit = fit_largest(render, estimate, tokenizer, budget, 1, hi, ANSWER_PREFIX)
        if fit is None:
            raise ValueError(f"seq_len={seq_len} is too small for ruler/{self.name}: the template alone exceeds "
                             f"seq_len minus max_new_tokens={max_new_tokens}")
        n, prompt, total = fit
        return Draft(prompt=prompt, answer_prefix=ANSWER_PREFIX, targets=tuple(vocab[1:4]), input_tokens=total,
                     meta={"haystack": "coded_words", "haystack_source": "synthetic", "haystack_units": n,
                           "haystack_unit": "num_words", "vocab_size": size,
                           "answer_counts": counts(n, size)[1:4], "noise_count": counts(n, size)[0],
                           "next_count": counts(n, size)[4]})
