"""Needle in a haystack: one "special magic number" hidden at a chosen depth of a long text, then asked for.

The needle, the question, the answer prefix, the `noise` haystack and the scoring follow RULER's `niah_single_1/2`
(Hsieh et al., "RULER: What's the Real Context Size of Your Long-Context Language Models?", arXiv:2404.06654):
a needle "One of the special magic numbers for {adjective-noun} is: {7-digit number}.", a base-model template
with the answer prefix at the end of the prompt, and string matching of the number in the prediction. The
depth × length grid comes from Kamradt's needle-in-a-haystack test (gkamradt/LLMTest_NeedleInAHaystack): the
needle goes in at a sentence boundary at a given percentage of the haystack, 0 = first, 100 = last.

Haystacks: `noise` repeats RULER's five-sentence line, one per text line; `essay` uses English prose split into
sentences — Paul Graham essays when given (`essay_path` or `essay_dataset`), otherwise Python's documentation text
from the standard library, so that the default needs no download (see `_haystack.py`).

Length: the haystack is the longest prefix of the (repeated) prose, counted in sentences or lines, such that the
prompt with BOS plus `max_new_tokens` fits `seq_len`; the size comes from cumulative per-sentence token counts and
is then confirmed by tokenising the actual prompt (`_fit.fit_largest`, shared with RULER, joint recall and story).

Recorded per sample: `meta["depth"]` (the percent asked for) and `meta["depth_tokens"]`, the needle's position in
tokens relative to the start of the task's prompt (the user content): its index in the prompt tokenised on its own,
BOS included when the tokenizer adds one (so 1 + the tokens of the text before the needle with a BOS tokenizer).
Under a chat template it is counted the same way, never with the template's tokens (its header before the user text
or anything after it); the needle's index in the fed ids is then (barring a merge at the seam) depth_tokens - 1 + the
template's tokens before the user text, BOS included.
"""
from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sparsebench.task import LENGTH_FLOOR, Sample, count_tokens
from sparsebench.tasks import _haystack
from sparsebench.tasks._fit import count_prompt, fit_largest, piece_lengths, stable_rng

HAYSTACKS = ("essay", "noise")

INSTRUCTION = ("A special magic number is hidden within the following text. Make sure to memorize it. "
               "I will quiz you about the number afterwards.\n")
QUESTION = "\nWhat is the special magic number for {key} mentioned in the provided text?"
ANSWER_PREFIX = " The special magic number for {key} mentioned in the provided text is"
NEEDLE = "One of the special magic numbers for {key} is: {value}."

ADJECTIVES = (
    "ancient", "angry", "bitter", "blue", "bold", "brave", "bright", "broad", "brown", "busy", "calm", "careful",
    "cheap", "clean", "clever", "cloudy", "cold", "cool", "crazy", "curious", "damp", "dark", "deep", "dirty",
    "dry", "dull", "eager", "early", "empty", "fair", "famous", "fancy", "fast", "fierce", "flat", "fresh",
    "friendly", "funny", "gentle", "giant", "glad", "golden", "grand", "green", "grumpy", "happy", "hard", "heavy",
    "hollow", "honest", "huge", "humble", "hungry", "icy", "jolly", "kind", "large", "late", "lazy", "light",
    "little", "lively", "lonely", "loud", "lucky", "mighty", "modern", "narrow", "noisy", "odd", "old", "orange",
    "patient", "plain", "polite", "proud", "purple", "quick", "quiet", "rapid", "rare", "red", "rich", "rough",
    "round", "rusty", "sad", "salty", "sharp", "shiny", "short", "silent", "silly", "simple", "sleepy", "slow",
    "small", "smooth", "soft", "sour", "steady", "strange", "strong", "sweet", "tall", "tame", "tender", "thick",
    "thin", "tidy", "tiny", "warm", "wet", "wide", "wild", "wise", "yellow", "young",
)
NOUNS = (
    "anchor", "apple", "arrow", "badge", "basket", "beach", "bell", "bicycle", "blanket", "boat", "bottle", "bridge",
    "brush", "bucket", "butter", "button", "cabin", "candle", "canyon", "carpet", "castle", "cat", "chair", "cherry",
    "circle", "cloud", "coat", "coin", "comet", "copper", "cottage", "crayon", "desert", "diamond", "dragon", "drum",
    "eagle", "engine", "falcon", "feather", "fence", "field", "flower", "forest", "fountain", "garden", "glove",
    "hammer", "harbor", "helmet", "hill", "honey", "horse", "island", "jacket", "kettle", "kite", "kitten", "ladder",
    "lamp", "lantern", "lemon", "library", "lizard", "magnet", "maple", "market", "meadow", "mirror", "monkey",
    "mountain", "nutmeg", "ocean", "orchard", "otter", "owl", "paddle", "panda", "pebble", "pencil", "piano",
    "pillow", "planet", "pocket", "pond", "puzzle", "rabbit", "river", "robot", "rocket", "saddle", "sailor",
    "shadow", "shell", "spoon", "squirrel", "station", "statue", "stone", "sunset", "teapot", "tiger", "tower",
    "tractor", "trumpet", "tunnel", "turtle", "umbrella", "valley", "violin", "wagon", "whistle", "window", "wolf",
)

_CONTROL_CHARS = re.compile(r"[\x00-\x1f]")


def _depth_label(depth: float) -> str:
    return f"{depth:g}"


def _untemplated_count(tokenizer, text: str) -> int:
    """Tokens of text with BOS (as `count_tokens`) but never with a chat template: a chat-template view
    (`sparsebench.models.TemplatedTokenizer`) hands a list to the plain tokenizer."""
    from sparsebench.models import TemplatedTokenizer

    if isinstance(tokenizer, TemplatedTokenizer):
        return len(tokenizer([text], add_special_tokens=True)["input_ids"][0])
    return count_tokens(tokenizer, text)


def postprocess_prediction(output: str) -> str:
    """RULER's prediction clean-up: strip, then turn every control character into a newline."""
    return _CONTROL_CHARS.sub("\n", output.strip()).strip()


class NIAH:
    """Needle-in-a-haystack task; `n` in `samples()` counts samples per depth.

    Args:
        haystack: "essay" (prose sentences) or "noise" (RULER's repeated line).
        depths: needle depths in percent of the haystack's sentences/lines, each in [0, 100].
        max_new_tokens: generation budget, counted inside seq_len.
        essay_path: a .txt/.json/.jsonl file or a folder of .txt files with essays (e.g. Paul Graham's).
        essay_dataset: a `datasets.load_dataset` name (a hub id, or a builder such as "json" with essay_data_files).
        essay_split, essay_field: the split and the text column (or JSON field) to read.
        essay_data_files: passed to `datasets.load_dataset` as `data_files`.
    """

    name = "niah"

    def __init__(self, *, haystack: str = "essay", depths: Sequence[float] = (0, 25, 50, 75, 100),
                 max_new_tokens: int = 16, essay_path: str | None = None, essay_dataset: str | None = None,
                 essay_split: str = "train", essay_field: str = "text",
                 essay_data_files: str | Sequence[str] | Mapping[str, Any] | None = None):
        if haystack not in HAYSTACKS:
            raise ValueError(f"unknown NIAH haystack {haystack!r}; valid haystacks: {', '.join(HAYSTACKS)}")
        depths = tuple(int(d) if float(d).is_integer() else float(d) for d in depths)
        if not depths or any(not 0 <= d <= 100 for d in depths):
            raise ValueError(f"NIAH depths must be a non-empty list of percents in [0, 100], got {list(depths)}")
        if int(max_new_tokens) < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if essay_path and essay_dataset:
            raise ValueError("set at most one of essay_path and essay_dataset")
        self.haystack = haystack
        self.depths = depths
        self.max_new_tokens = int(max_new_tokens)
        self.essay_path = essay_path
        self.essay_dataset = essay_dataset
        self.essay_split = essay_split
        self.essay_field = essay_field
        self.essay_data_files = essay_data_files
        self.subtask = f"niah_{haystack}"
        self._prose: _haystack.Prose | None = None
        # id(tokenizer) -> (tokenizer, cumulative token counts); the tokenizer is kept so that its id stays unique.
        self._counts: dict[int, tuple[Any, list[int]]] = {}

    # -- haystack -------------------------------------------------------------------------------------------------

    @property
    def _separator(self) -> str:
        return "\n" if self.haystack == "noise" else " "

    def _load(self) -> _haystack.Prose:
        if self._prose is None:
            if self.haystack == "noise":
                self._prose = _haystack.Prose((_haystack.NOISE_LINE,), "noise")
            elif self.essay_path:
                self._prose = _haystack.load_path_prose(self.essay_path, self.essay_field)
            elif self.essay_dataset:
                self._prose = _haystack.load_dataset_prose(self.essay_dataset, self.essay_split, self.essay_field,
                                                           self.essay_data_files)
            else:
                self._prose = _haystack.pydoc_prose()
        return self._prose

    def check(self) -> None:
        if self.haystack == "essay" and self.essay_path:
            from pathlib import Path

            if not Path(self.essay_path).expanduser().exists():
                raise FileNotFoundError(f"NIAH essay_path {str(self.essay_path)!r} does not exist")
        # Loading here surfaces a bad file, dataset id or field before the model is loaded.
        self._load()

    def _cumulative(self, tokenizer, min_total: int) -> list[int]:
        """cum[k] = estimated tokens of the first k haystack units, each with its separator, repeating the prose."""
        entry = self._counts.get(id(tokenizer))
        if entry is None or entry[0] is not tokenizer:
            units = self._load().sentences
            lengths = piece_lengths(tokenizer, [self._separator + u for u in units])
            if sum(lengths) <= 0:
                raise ValueError("the haystack text tokenises to zero tokens")
            entry = (tokenizer, [0, *itertools.accumulate(lengths)])
            self._counts[id(tokenizer)] = entry
        cum = entry[1]
        m = len(self._load().sentences)
        while cum[-1] < min_total:
            base = cum[-1]
            cum.extend(base + cum[j] for j in range(1, m + 1))
        return cum

    # -- prompts --------------------------------------------------------------------------------------------------

    def _render(self, k: int, depth: float, key: str, value: int, tail: str = "") -> tuple[str, int]:
        """Prompt with k haystack units (plus an optional truncated unit `tail`) and the needle after unit
        floor(units*depth/100); also the needle's char offset."""
        units = self._load().sentences
        m = len(units)
        sep = self._separator
        seq = [units[j % m] for j in range(k)] + ([tail] if tail else [])
        at = math.floor(len(seq) * depth / 100)
        before = sep.join(seq[:at])
        after = sep.join(seq[at:])
        needle = NEEDLE.format(key=key, value=value)
        context = sep.join(part for part in (before, needle, after) if part)
        prompt = INSTRUCTION + context + QUESTION.format(key=key) + ANSWER_PREFIX.format(key=key)
        return prompt, len(INSTRUCTION) + (len(before) + len(sep) if before else 0)

    def _fit(self, tokenizer, seq_len: int, depth: float, key: str, value: int) -> tuple[int, str, int, int, int]:
        """Largest k whose prompt fits; returns (k, prompt, input_tokens, needle char offset, tail words)."""
        budget = seq_len - self.max_new_tokens
        prefix = ANSWER_PREFIX.format(key=key)
        cum = self._cumulative(tokenizer, budget)
        fit = fit_largest(lambda k: self._render(k, depth, key, value)[0], cum.__getitem__, tokenizer, budget,
                          0, len(cum) - 1, prefix)
        if fit is None:
            fixed = count_prompt(tokenizer, self._render(0, depth, key, value)[0], prefix)
            raise ValueError(f"seq_len={seq_len} is too small for NIAH: the instruction, needle, question and answer "
                             f"prefix alone take {fixed} tokens (BOS included) plus max_new_tokens="
                             f"{self.max_new_tokens}")
        k, prompt, total = fit
        off = self._render(k, depth, key, value)[1]
        best = (k, prompt, total, off)
        if total + self.max_new_tokens < LENGTH_FLOOR * seq_len:
            # Deviation from RULER (whole sentences only): at short lengths one sentence can be wider than the
            # 10% slack, so the next sentence is cut at a word boundary to fill the gap (meta: tail_words).
            words = self._load().sentences[k % len(self._load().sentences)].split(" ")
            lo, hi = 0, len(words) - 1
            while lo < hi:  # largest word count that still fits
                mid = (lo + hi + 1) // 2
                p, o = self._render(k, depth, key, value, " ".join(words[:mid]))
                if count_prompt(tokenizer, p, prefix) <= budget:
                    lo = mid
                else:
                    hi = mid - 1
            if lo:
                prompt, off = self._render(k, depth, key, value, " ".join(words[:lo]))
                best = (k, prompt, count_prompt(tokenizer, prompt, prefix), off, lo)
                total = best[2]
        if total + self.max_new_tokens < LENGTH_FLOOR * seq_len:
            raise ValueError(f"NIAH cannot reach {LENGTH_FLOOR:.0%} of seq_len={seq_len}: the closest fit has "
                             f"{total + self.max_new_tokens} tokens; the haystack's sentences are too long for "
                             f"this length")
        return best if len(best) == 5 else (*best, 0)

    def samples(self, tokenizer, seq_len: int, n: int, seed: int) -> Iterator[Sample]:
        """n samples per depth, depth by depth; the needle of each comes from (haystack, seq_len, depth, seed, i)."""
        prose = self._load()
        meta_common = {"haystack": self.haystack, "haystack_source": prose.source,
                       "haystack_sha256": prose.sha256[:16]}
        for depth in self.depths:
            for i in range(n):
                rng = stable_rng("niah", self.haystack, seq_len, _depth_label(depth), seed, i)
                key = f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"
                value = rng.randint(1_000_000, 9_999_999)
                k, prompt, input_tokens, needle_at, tail_words = self._fit(tokenizer, seq_len, depth, key, value)
                # Trailing spaces stay with the needle's first token in SentencePiece/BPE vocabularies.
                depth_tokens = _untemplated_count(tokenizer, prompt[:needle_at].rstrip(" "))
                yield Sample(
                    id=f"niah/{self.haystack}/L{seq_len}/d{_depth_label(depth)}/s{seed}/{i}",
                    subtask=self.subtask,
                    prompt=prompt,
                    targets=(str(value),),
                    max_new_tokens=self.max_new_tokens,
                    input_tokens=input_tokens,
                    meta={**meta_common, "depth": depth, "depth_tokens": depth_tokens,
                          "haystack_units": k, "tail_words": tail_words, "needle_key": key, "needle_value": str(value),
                          "answer_prefix": ANSWER_PREFIX.format(key=key)},
                )

    def score(self, sample: Sample, output: str) -> dict[str, float]:
        """RULER string_match_all over the sample's single target (the needle's number)."""
        prediction = postprocess_prediction(output).lower()
        hits = [t.lower() in prediction for t in sample.targets]
        return {"accuracy": sum(hits) / len(hits)}
