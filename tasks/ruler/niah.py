"""RULER's needle-in-a-haystack family: niah_single_1..3, niah_multikey_1..3, niah_multivalue, niah_multiquery.

Recipe of NVIDIA/RULER `scripts/data/synthetic/niah.py` with the arguments of `scripts/synthetic.yaml` (commit
c3f5e3b4f87f): needles "One of the special magic {type} for {key} is: {value}." with keys/values of type `words`
(adjective-noun from wonderwords), `numbers` (7 digits) or `uuids` (UUID4 from 128 random bits); `num_needle_k`
keys (raised to at least `num_needle_q`) with `num_needle_v` values each, shuffled with `Random(seed)`; haystacks
`noise` (RULER's five-sentence line, one per text line), `needle` (distractor needles of the same types, one per
line) or `essay` (the first N words of the prose, repeated when short, split into sentences); needles inserted at
sorted random line positions (noise/needle) or after sentence floor(len·depth/100) for depths drawn without
replacement from 40 evenly spaced depths (essay); `num_needle_q` queried keys joined "a, b, and c"; the answer is
every value of the queried keys; singular template when num_q·num_v = 1. Scored with string_match_all.

Sizes are token-exact (see `_fit.py`): the largest line count or word count whose prompt fits `seq_len` minus the
128-token budget, instead of RULER's binary search with increments of 25 lines / 500 words and per-sample shrinking.
"""
from __future__ import annotations

import bisect
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sparsebench.tasks._haystack import NOISE_LINE, Prose
from sparsebench.tasks.ruler import _words
from sparsebench.tasks.ruler._fit import (Cyclic, Draft, PerTokenizer, Skip, fit_largest, piece_lengths, raw_count,
                                          stable_rng, upper_bound)
from sparsebench.tasks.ruler._templates import NIAH_NEEDLE, NOISE_HAYSTACK, TASKS

assert NOISE_HAYSTACK == NOISE_LINE  # the same line as sparsebench's NIAH task

# np.round(np.linspace(0, 100, num=40)).astype(int) in RULER; no value of k·100/39 is near a .5 tie.
DEPTHS = tuple(round(k * 100 / 39) for k in range(40))


@dataclass(frozen=True)
class NIAHSpec:
    haystack: str  # noise | essay | needle
    type_k: str  # words | numbers | uuids
    type_v: str
    num_k: int
    num_v: int
    num_q: int


# scripts/synthetic.yaml
SPECS = {
    "niah_single_1": NIAHSpec("noise", "words", "numbers", 1, 1, 1),
    "niah_single_2": NIAHSpec("essay", "words", "numbers", 1, 1, 1),
    "niah_single_3": NIAHSpec("essay", "words", "uuids", 1, 1, 1),
    "niah_multikey_1": NIAHSpec("essay", "words", "numbers", 4, 1, 1),
    "niah_multikey_2": NIAHSpec("needle", "words", "numbers", 1, 1, 1),
    "niah_multikey_3": NIAHSpec("needle", "uuids", "uuids", 1, 1, 1),
    "niah_multivalue": NIAHSpec("essay", "words", "numbers", 1, 4, 1),
    "niah_multiquery": NIAHSpec("essay", "words", "numbers", 1, 1, 4),
}


def random_item(kind: str, rng: random.Random) -> str:
    """RULER's generate_random: 7-digit number, adjective-noun pair, or UUID4."""
    if kind == "numbers":
        return str(rng.randint(10 ** 6, 10 ** 7 - 1))
    if kind == "words":
        adjectives, nouns = _words.key_words()
        return f"{rng.choice(adjectives)}-{rng.choice(nouns)}"
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    raise ValueError(f"unknown needle type {kind!r}; valid types: numbers, words, uuids")


def templates(spec: NIAHSpec) -> tuple[str, str, str]:
    """(template, answer prefix, needle type as shown): RULER's singular rewrite when num_q·num_v = 1."""
    template, prefix, shown = TASKS["niah"]["template"], TASKS["niah"]["answer_prefix"], spec.type_v
    if spec.num_q * spec.num_v == 1:
        # niah.py applies these replacements to template + answer prefix; no match spans the two parts.
        def singular(t: str) -> str:
            return (t.replace("Some", "A").replace("are all", "is").replace("are", "is")
                    .replace("answers", "answer"))

        template, prefix, shown = singular(template), singular(prefix), spec.type_v[:-1]
    return template, prefix, shown


class EssayWords:
    """The prose as one stream of words (repeated when short) with sentence boundaries and token estimates."""

    def __init__(self, prose: Prose):
        self.prose = prose
        self.words = [s.split(" ") for s in prose.sentences]
        self.cum_words = [0]
        for w in self.words:
            self.cum_words.append(self.cum_words[-1] + len(w))
        self.total_words = self.cum_words[-1]
        self._tokens = PerTokenizer()

    def locate(self, n: int) -> tuple[int, int, int]:
        """n words -> (full sentences, index of the next sentence in the prose, its words taken)."""
        q, r = divmod(n, self.total_words)
        j = bisect.bisect_right(self.cum_words, r) - 1
        return q * len(self.words) + j, j, r - self.cum_words[j]

    def sentences(self, n: int) -> list[str]:
        full, j, part = self.locate(n)
        m = len(self.words)
        sents = [self.prose.sentences[k % m] for k in range(full)]
        if part:
            sents.append(" ".join(self.words[j][:part]))
        return sents

    def estimator(self, tokenizer) -> Callable[[int], float]:
        def build():
            lengths = piece_lengths(tokenizer, [" " + s for s in self.prose.sentences])
            return lengths, Cyclic(lengths)

        lengths, cyc = self._tokens.get(tokenizer, build)

        def estimate(n: int) -> float:
            full, j, part = self.locate(n)
            return cyc(full) + (lengths[j] * part / len(self.words[j]) if part else 0.0)

        return estimate


class NIAHGenerator:
    family = "niah"
    metric = "string_match_all"
    tokens_to_generate = TASKS["niah"]["tokens_to_generate"]

    def __init__(self, name: str, essay: Callable[[], EssayWords] | None = None):
        self.name = name
        self.spec = SPECS[name]
        self._essay = essay
        self._noise_tokens = PerTokenizer()

    def haystack_source(self) -> str:
        return self._essay().prose.source if self.spec.haystack == "essay" else self.spec.haystack

    def draft(self, tokenizer, seq_len: int, seed: int, i: int, max_new_tokens: int) -> Draft | Skip:
        spec = self.spec
        key = ("ruler", self.name, seq_len, seed, i)
        rng = stable_rng(*key, "needles")
        num_k = max(spec.num_k, spec.num_q)
        keys: list[str] = []
        while len(keys) < num_k:  # distinct keys (RULER does not check; a repeat would make the answer ambiguous)
            k = random_item(spec.type_k, rng)
            if k not in keys:
                keys.append(k)
        values = [[random_item(spec.type_v, rng) for _ in range(spec.num_v)] for _ in keys]
        needles = [NIAH_NEEDLE.format(type_needle_v=spec.type_v, key=k, value=v)
                   for k, vs in zip(keys, values) for v in vs]
        random.Random(seed).shuffle(needles)  # RULER: random.Random(args.random_seed).shuffle(needles)
        queried = rng.sample(range(num_k), spec.num_q)
        queries = [keys[q] for q in queried]
        answers = tuple(v for q in queried for v in values[q])
        query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
        template, prefix_t, shown = templates(spec)
        answer_prefix = prefix_t.format(type_needle_v=shown, query=query)

        def prompt_of(context: str) -> str:
            return template.format(type_needle_v=shown, context=context, query=query) + answer_prefix

        budget = seq_len - max_new_tokens
        placement: dict = {}
        if spec.haystack == "essay":
            essay = self._essay()
            estimate = essay.estimator(tokenizer)

            def context_of(n: int) -> str:
                sents = essay.sentences(n)
                depths = sorted(stable_rng(*key, "depths").sample(DEPTHS, len(needles)))
                cuts = [int(len(sents) * d / 100) for d in depths]
                parts, last = [], 0
                for cut, needle in zip(cuts, needles):
                    parts += [" ".join(sents[last:cut]), needle]
                    last = cut
                parts.append(" ".join(sents[last:]))
                placement.update(needle_depths=depths, needle_sentences=cuts, haystack_sentences=len(sents))
                # RULER joins empty segments too (doubled spaces); they are left out here.
                return " ".join(p for p in parts if p)

            lo, unit = 0, "words"
            hi = upper_bound(estimate, budget, 2 * budget)
        else:
            lines, estimate, hi = self._lines(tokenizer, key, keys, budget)

            def context_of(n: int) -> str:
                sents = lines(n)
                at = sorted(stable_rng(*key, "positions").sample(range(n), len(needles)), reverse=True)
                for index, needle in zip(at, needles):
                    sents.insert(index, needle)
                placement.update(needle_lines=sorted(sents.index(nd) for nd in needles))
                return "\n".join(sents)

            lo, unit = len(needles), "lines"

        def render(n: int) -> str:
            return prompt_of(context_of(n))

        fit = fit_largest(render, estimate, tokenizer, budget, lo, hi, answer_prefix)
        if fit is None:
            raise ValueError(f"seq_len={seq_len} is too small for ruler/{self.name}: the template, needles and "
                             f"answer prefix alone exceed seq_len minus max_new_tokens={max_new_tokens}")
        n, prompt, total = fit
        render(n)  # placement of the chosen prompt
        body = prompt[: len(prompt) - len(answer_prefix)]
        first = body.find(answers[0])
        words_source = (f"wonderwords {_words.wonderwords_version()}" if "words" in (spec.type_k, spec.type_v)
                        else None)
        return Draft(prompt=prompt, answer_prefix=answer_prefix, targets=answers, input_tokens=total,
                     meta={"haystack": spec.haystack, "haystack_source": self.haystack_source(),
                           "haystack_units": n, "haystack_unit": unit, **placement,
                           "needle_keys": keys, "query_keys": queries, "words_source": words_source,
                           "answer_char_offset": first,
                           "answer_token_position": raw_count(tokenizer, body[:first])})

    def _lines(self, tokenizer, key, keys: list[str], budget: int):
        """(lines(n) -> first n haystack lines, estimate, hi) for the noise and needle haystacks."""
        spec = self.spec
        if spec.haystack == "noise":
            per_line = self._noise_tokens.get(tokenizer, lambda: piece_lengths(tokenizer, ["\n" + NOISE_LINE])[0])
            return (lambda n: [NOISE_LINE] * n), (lambda n: n * per_line), upper_bound(lambda n: n * per_line,
                                                                                       budget, budget)
        # needle haystack: distractor needles of the same types, drawn lazily from their own stream
        rng = stable_rng(*key, "distractors")
        lines: list[str] = []
        cum = [0]
        while cum[-1] <= budget:
            batch = []
            for _ in range(256):
                k = random_item(spec.type_k, rng)
                while k in keys:
                    k = random_item(spec.type_k, rng)
                batch.append(NIAH_NEEDLE.format(type_needle_v=spec.type_v, key=k, value=random_item(spec.type_v,
                                                                                                     rng)))
            for n_tok in piece_lengths(tokenizer, ["\n" + b for b in batch]):
                cum.append(cum[-1] + n_tok)
            lines.extend(batch)
        return (lambda n: lines[:n]), (lambda n: cum[n]), len(lines)
