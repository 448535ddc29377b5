"""RULER's variable tracking (`vt`): follow a chain of assignments "VAR B = VAR A" through a noise haystack.

Recipe of NVIDIA/RULER `scripts/data/synthetic/variable_tracking.py` with `scripts/synthetic.yaml` (one chain of four
hops, noise haystack; commit c3f5e3b4f87f): variable names are five random upper-case letters, the value a random
integer in [10000, 99999) (numpy's exclusive upper bound); the chain's lines "VAR A = 12345", "VAR B = VAR A " ...
(trailing space kept) go into the list of noise lines at sorted random positions, so their order is kept; lines
are joined by newlines and ". \\n" is folded to ".\\n". One in-context example comes first: it is built once with
three-letter names and the value 12345, as large as fits 500 tokens (no BOS, as RULER's `text_to_tokens` counts),
answered ("... they are:  A B C D E" + newline), and for every sample its names and value are re-drawn
(`randomize_icl`). The answer is the five names of the chain; scored with string_match_all. The answer prefix is
upstream's ("... variables are assigned the value ..."), not lm-evaluation-harness's typo "assgined".
"""
from __future__ import annotations

import random
import string

from sparsebench.tasks._haystack import NOISE_LINE
from sparsebench.tasks.ruler._fit import (Draft, PerTokenizer, Skip, fit_largest, piece_lengths, raw_count,
                                          stable_rng, upper_bound)
from sparsebench.tasks.ruler._templates import TASKS

NUM_CHAINS = 1
NUM_HOPS = 4
ICL_MAX_TOKENS = 500
ICL_VALUE = "12345"
TEMPLATE = TASKS["variable_tracking"]["template"]
ANSWER_PREFIX = TASKS["variable_tracking"]["answer_prefix"]


def _names(rng: random.Random, k: int, count: int, avoid: set[str]) -> list[str]:
    """`count` distinct names of k upper-case letters, none in `avoid`."""
    names: list[str] = []
    while len(names) < count:
        name = "".join(rng.choices(string.ascii_uppercase, k=k))
        if name not in names and name not in avoid:
            names.append(name)
    return names


def _chain(names: list[str], value: str) -> list[str]:
    return [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(len(names) - 1)]


def _context(chain: list[str], n: int, rng: random.Random) -> str:
    """n noise lines with the chain's lines inserted at sorted random positions (order kept)."""
    sentences = [NOISE_LINE] * n
    for j, pos in enumerate(sorted(rng.sample(range(n), len(chain)))):
        sentences.insert(pos + j, chain[j])
    return "\n".join(sentences).replace(". \n", ".\n")


def _task_text(context: str, value: str) -> str:
    return (TEMPLATE + ANSWER_PREFIX).format(context=context, query=value, num_v=NUM_HOPS + 1)


class VTGenerator:
    family = "variable_tracking"
    metric = "string_match_all"
    tokens_to_generate = TASKS["variable_tracking"]["tokens_to_generate"]

    def __init__(self, name: str = "vt"):
        self.name = name
        self._icl = PerTokenizer()
        self._line = PerTokenizer()

    def icl_example(self, tokenizer, seed: int) -> tuple[str, int]:
        """RULER's one in-context example for this seed, answered, and its noise-line count."""
        cache = self._icl.get(tokenizer, dict)
        if seed not in cache:
            rng = stable_rng("ruler", self.name, "icl", seed)
            names = _names(rng, 3, NUM_HOPS + 1, avoid={"VAR"})
            chain = _chain(names, ICL_VALUE)

            def text(n: int) -> str:
                return _task_text(_context(chain, n, stable_rng("ruler", self.name, "icl", seed, "positions")),
                                  ICL_VALUE)

            lo, hi = NUM_HOPS + 1, 200  # 200 noise lines are far beyond 500 tokens for any tokenizer
            if raw_count(tokenizer, text(lo)) > ICL_MAX_TOKENS:
                n = lo  # RULER keeps the smallest size when nothing fits
            else:
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    if raw_count(tokenizer, text(mid)) <= ICL_MAX_TOKENS:
                        lo = mid
                    else:
                        hi = mid - 1
                n = lo
            cache[seed] = (text(n) + " " + " ".join(names) + "\n", n)
        return cache[seed]

    @staticmethod
    def randomize_icl(icl: str, rng: random.Random) -> str:
        """RULER's randomize_icl: new names of the same length and a new value. New names avoid the old ones and
        "VAR", so that a replacement never rewrites another name or the keyword (upstream does not check)."""
        old = icl.strip().split()[-NUM_HOPS - 1:]
        new = _names(rng, len(old[0]), len(old), avoid=set(old) | {"VAR"})
        for a, b in zip(old, new):
            icl = icl.replace(a, b)
        return icl.replace(ICL_VALUE, str(rng.randint(10000, 99998)))

    def draft(self, tokenizer, seq_len: int, seed: int, i: int, max_new_tokens: int) -> Draft | Skip:
        key = ("ruler", self.name, seq_len, seed, i)
        rng = stable_rng(*key, "chain")
        names = _names(rng, 5, NUM_HOPS + 1, avoid={"VAR"})
        value = str(rng.randint(10000, 99998))
        chain = _chain(names, value)
        icl_base, icl_lines = self.icl_example(tokenizer, seed)
        icl = self.randomize_icl(icl_base, stable_rng(*key, "icl"))
        answer_prefix = ANSWER_PREFIX.format(num_v=NUM_HOPS + 1, query=value)

        def render(n: int) -> str:
            # RULER inserts the example before the task text: example + "\n" + task (the example ends with "\n")
            return icl + "\n" + _task_text(_context(chain, n, stable_rng(*key, "positions")), value)

        per_line = self._line.get(tokenizer, lambda: piece_lengths(tokenizer, ["\n" + NOISE_LINE])[0])
        budget = seq_len - max_new_tokens
        lo = len(chain)
        hi = upper_bound(lambda n: n * per_line, budget, budget)
        fit = fit_largest(render, lambda n: n * per_line, tokenizer, budget, lo, hi, answer_prefix)
        if fit is None:
            raise ValueError(f"seq_len={seq_len} is too small for ruler/{self.name}: the in-context example and the "
                             f"chain alone exceed seq_len minus max_new_tokens={max_new_tokens}")
        n, prompt, total = fit
        return Draft(prompt=prompt, answer_prefix=answer_prefix, targets=tuple(names), input_tokens=total,
                     meta={"haystack": "noise", "haystack_source": "noise", "haystack_units": n,
                           "haystack_unit": "lines", "value": value, "icl_noise_lines": icl_lines})
