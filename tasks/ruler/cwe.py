"""RULER's common words extraction (`cwe`): name the 10 words that appear most often in a long numbered list.

Recipe of NVIDIA/RULER `scripts/data/synthetic/common_words_extraction.py` with `scripts/synthetic.yaml`
(freq_cw=30, freq_ucw=3, num_cw=10; commit c3f5e3b4f87f): the vocabulary is wonderwords' nouns + adjectives + verbs
(unique, sorted, shuffled with `Random(seed)`); a sample draws `num_words` distinct words, the first 10 are "common"
and repeated 30 times, the rest repeated 3 times (below 4K tokens: 6 and 1), the list is shuffled with
`Random(seed)` and written "1. w 2. w ..." on one line. One few-shot example (40 words, 10x/3x; below 4K: 20 words,
3x/1x) rendered with the same template plus its answer "1. a 2. b ... 10. j" comes first, then a newline, then the
task. Answer: the 10 common words; scored with string_match_all. `num_words` is the largest that fits.

When more words are needed than wonderwords has (8,166 in 3.0.1; at 128K with a tokenizer that packs digits),
RULER samples from its `json/english_words.json`; that file is not on PyPI, so here it is read from
`cwe_words_path` when given, and otherwise such a sample is skipped and counted (`Ruler.skipped()`).
"""
from __future__ import annotations

import itertools
import random

from sparsebench.tasks.ruler import _words
from sparsebench.tasks.ruler._fit import Draft, PerTokenizer, Skip, fit_largest, piece_lengths, stable_rng
from sparsebench.tasks.ruler._templates import TASKS

FREQ_CW = 30
FREQ_UCW = 3
NUM_CW = 10
TEMPLATE = TASKS["common_words_extraction"]["template"]
ANSWER_PREFIX = TASKS["common_words_extraction"]["answer_prefix"]


def repeats(seq_len: int) -> tuple[tuple[int, int, int], tuple[int, int]]:
    """((few-shot words, common repeats, uncommon repeats), (common repeats, uncommon repeats)) for this length."""
    if seq_len < 4096:
        return (20, 3, 1), (6, 1)
    return (40, 10, 3), (FREQ_CW, FREQ_UCW)


def word_list(words: list[str], common_repeats: int, uncommon_repeats: int, seed: int) -> list[str]:
    """RULER's get_example body: common words first, repeated, then the shuffle with Random(seed)."""
    common, uncommon = words[:NUM_CW], words[NUM_CW:]
    out = common * common_repeats + uncommon * uncommon_repeats
    random.Random(seed).shuffle(out)
    return out


def numbered(words: list[str]) -> str:
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))


class CWEGenerator:
    family = "common_words_extraction"
    metric = "string_match_all"
    tokens_to_generate = TASKS["common_words_extraction"]["tokens_to_generate"]

    def __init__(self, name: str = "cwe", extra_words_path: str | None = None):
        self.name = name
        self.extra_words_path = extra_words_path
        self._numbers = PerTokenizer()  # cumulative tokens of " 1.", " 2.", ...
        self._word_tokens = PerTokenizer()  # word -> tokens of " word"

    def words(self, seed: int) -> list[str]:
        words = list(_words.cwe_words())
        random.Random(seed).shuffle(words)  # RULER: random.Random(args.random_seed).shuffle(words)
        return words

    def _number_prefix(self, tokenizer, entries: int) -> list[int]:
        cum = self._numbers.get(tokenizer, lambda: [0])
        if len(cum) <= entries:
            start = len(cum)
            stop = max(entries + 1, 2 * start)
            for n in piece_lengths(tokenizer, [f" {i}." for i in range(start, stop)]):
                cum.append(cum[-1] + n)
        return cum

    def _prefix_tokens(self, tokenizer, words: list[str]) -> list[int]:
        known = self._word_tokens.get(tokenizer, dict)
        new = [w for w in dict.fromkeys(words) if w not in known]
        known.update(zip(new, piece_lengths(tokenizer, [" " + w for w in new])))
        return [0, *itertools.accumulate(known[w] for w in words)]

    def _fit(self, tokenizer, perm: list[str], few_shot: str, reps: tuple[int, int], seed: int, budget: int,
             lo: int) -> tuple[int, str, int] | None:
        """The largest word count n in [lo, len(perm)] whose prompt (few-shot, then perm[:n] listed) fits."""
        cr, ucr = reps
        wcum = self._prefix_tokens(tokenizer, perm)
        ncum = self._number_prefix(tokenizer, NUM_CW * cr + (len(perm) - NUM_CW) * ucr)

        def estimate(n: int) -> float:
            entries = NUM_CW * cr + (n - NUM_CW) * ucr
            return ncum[entries] + cr * wcum[NUM_CW] + ucr * (wcum[n] - wcum[NUM_CW])

        def render(n: int) -> str:
            return few_shot + "\n" + (TEMPLATE + ANSWER_PREFIX).format(
                context=numbered(word_list(perm[:n], cr, ucr, seed)))

        return fit_largest(render, estimate, tokenizer, budget, lo, len(perm), ANSWER_PREFIX)

    def draft(self, tokenizer, seq_len: int, seed: int, i: int, max_new_tokens: int) -> Draft | Skip:
        key = ("ruler", self.name, seq_len, seed, i)
        (n_shot, shot_cr, shot_ucr), (cr, ucr) = repeats(seq_len)
        vocabulary = self.words(seed)
        shot = stable_rng(*key, "fewshot").sample(vocabulary, n_shot)
        few_shot = (TEMPLATE + ANSWER_PREFIX).format(context=numbered(word_list(shot, shot_cr, shot_ucr, seed))) \
            + " " + numbered(shot[:NUM_CW])
        budget = seq_len - max_new_tokens
        floor = 0.9 * seq_len - max_new_tokens
        pools = [(vocabulary, f"wonderwords {_words.wonderwords_version()}", NUM_CW)]
        if self.extra_words_path:
            pools.append((list(_words.load_word_file(self.extra_words_path)), f"file:{self.extra_words_path}",
                          len(vocabulary) + 1))
        for pool, source, lo in pools:
            if lo > len(pool):
                break
            # each uncommon word adds at least two tokens per repeat (its number and itself)
            hi = min(len(pool), budget // (2 * ucr) + NUM_CW + 1)
            if hi < lo:
                break
            perm = stable_rng(*key, "words", source).sample(pool, hi)  # perm[:n]: n distinct words, random order
            fit = self._fit(tokenizer, perm, few_shot, (cr, ucr), seed, budget, lo)
            if fit is None:
                if lo == NUM_CW:
                    raise ValueError(f"seq_len={seq_len} is too small for ruler/{self.name}: the few-shot example "
                                     f"and {NUM_CW} common words exceed seq_len minus max_new_tokens="
                                     f"{max_new_tokens}")
                break
            n, prompt, total = fit
            if total >= floor or n < hi or hi < len(pool):
                return Draft(prompt=prompt, answer_prefix=ANSWER_PREFIX, targets=tuple(perm[:NUM_CW]),
                             input_tokens=total,
                             meta={"haystack": "words", "haystack_source": source, "haystack_units": n,
                                   "haystack_unit": "words", "common_repeats": cr, "uncommon_repeats": ucr,
                                   "fewshot_words": n_shot})
        return Skip(f"cwe at seq_len={seq_len} needs more distinct words than the {len(vocabulary)} of wonderwords "
                    f"to fill {0.9:.0%} of the length; set cwe_words_path to RULER's english_words.json "
                    f"(or any word list)")
