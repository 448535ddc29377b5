"""Joint recall (HAX) and multi-query associative recall (MQAR, zoology): token-level generators and text tasks.

**Joint recall** ("Overcoming Long-Context Limitations of State-Space Models via Context-Dependent Sparse
Attention", NeurIPS 2025, arXiv:2507.00449; DeepGraphLearning/HAX `scripts/create_dataset.py`, commit 73d3c18)
extends associative recall so that a value depends jointly on a context and a key: a table `V[c, k]` of values is
drawn i.i.d.; the sequence lists, for every context in a random order, the context token and then every key with its
value; after a separator a second pass repeats every context (fresh order) with every key (fresh order), and the
model must produce `V[c, k]` after each key of the second pass. The key alone is ambiguous, so a pattern that ignores
which context it is in cannot solve it.

**MQAR** (Arora, Eyuboglu et al., "Zoology: Measuring and Improving Recall in Efficient Language Models",
arXiv:2312.04927; HazyResearch/zoology `zoology/data/multiquery_ar.py`, commit d88d6f5): key-value pairs first,
then a query region in which every key appears once, at an even offset drawn with a power law, so most queries come
soon after the pairs and a few come late.

This module has both forms:

- Token level, for small models trained from scratch: `joint_recall_tokens` / `joint_recall_item` (one sequence,
  exactly HAX's vocabulary, layout, mask and padding), `iter_joint_recall_splits` (the whole train/valid/test set with
  duplicate rejection, in HAX's loop order), `write_joint_recall_text` + `convert_to_hf_dataset` (HAX's text files
  and their conversion to a `datasets.DatasetDict`), `joint_recall_accuracy` (HAX's masked accuracy); `mqar_tokens`
  (zoology's generator) and `mqar_accuracy`. With the same seed these reproduce the upstream arrays draw for draw
  (one `numpy.random.RandomState(seed)` in the order of upstream's global-RNG calls; MQAR's random filler aside).
- Text tasks for pretrained LLMs (`JointRecall`, registered as `joint_recall`, and `MQAR`, registered as `mqar`):
  the same structures written as text, filled to the length rule, with a numbered question list and numbered answers.

Text form of joint recall (`JointRecall`):

    <INTRO>
    Context Ravodi:
    lamp: blue
    river: amber
    ...

    Context Kelumi:
    lamp: green
    ...

    <QUESTIONS>
    Context Kelumi:
    1. river
    2. lamp

    Context Ravodi:
    3. lamp
    ...

    Answers:
    1.

Context names are pronounceable made-up words (so their number is unbounded), keys are common nouns, values are
colour words (`n_value` of them, so chance is 1/n_value as in HAX). Every context lists the same `n_key` keys; the
question section is HAX's second pass restricted to `num_queries` (context, key) cells drawn uniformly without
replacement: grouped by context, contexts in a fresh random order, keys inside a context in a fresh random order.

Text form of MQAR (`MQAR`): lines `key: value` (made-up lowercase words, distinct 5-digit numbers), then the
numbered question list of `num_queries` keys and the same answer block. Which pairs are asked follows zoology's power
law over the distance from the question section: the pair `g` places before the end is drawn with probability
proportional to `(g + 1) ** (power_a - 1)`, without replacement.

Scoring (both text tasks), exactly: the model's output is appended to the answer prefix's final "1." and split into
lines; a line `N. answer` (also `N:` or `N)`) gives the answer to question N, the first such line for each N wins and
lines without a number are ignored (so run-on generations are harmless). An answer is normalised by lower-casing,
keeping only the text after its last `:`, `=` or `->` (so "lamp: blue" counts as "blue") and stripping whitespace,
quotes, `*` and trailing `.,;!?`; it is right when it equals the gold value. `accuracy` = right answers / number of
questions; a question without a parsable line counts as wrong.

Length: the facts are added a unit at a time (a whole context block, or one pair), and the largest count whose full
prompt (BOS and the answer prefix included) plus `max_new_tokens` fits `seq_len` is chosen from cumulative per-piece
token counts and confirmed by tokenising the prompt. Joint recall keeps every key in every context and lowers the
number of keys per context (never below `min_n_key`) only when whole blocks cannot reach 90% of `seq_len`.

Deviations from upstream:

- HAX's text files are read by a converter that the script calls without its argument (`convert_to_hf_dataset()`
  on its last line, a TypeError); `convert_to_hf_dataset(data_dir, ...)` here takes it. Duplicate rejection compares
  sha256 digests of the token strings instead of the strings themselves (same result, far less memory).
- zoology fills non-query positions (`random_non_queries`) from torch's unseeded global RNG; here they come from
  the same `RandomState(seed)` after the other draws, so a seed fixes the whole example. Constraint violations
  raise ValueError instead of AssertionError. zoology at d88d6f5 fails for `num_passes > 1` (its pair array is
  sized with the passes before it is tiled, a broadcast error); here the pairs are tiled as intended.
- HAX retries a duplicate draw forever; here 100,000 duplicates in a row raise ValueError (only tiny
  configurations can exhaust the space).
- The text tasks are renderings (ARCHITECTURE's recipe §(b8)), not upstream tasks: contexts and keys range beyond
  HAX's 5..16 to fill long prompts, only `num_queries` cells are asked, and MQAR's power law is applied to the
  distance between a pair and the question section (all questions come at the end, since an LLM answers by
  generating), not to the position of a query inside a noise region.
"""
from __future__ import annotations

import bisect
import contextlib
import hashlib
import itertools
import random
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sparsebench.task import LENGTH_FLOOR, Sample
from sparsebench.tasks._fit import fit_largest, piece_lengths, stable_rng

# ------------------------------------------------------------------------------------------------ token level: HAX
BOS, PAD, SEP, OFFSET = 1, 3, 4, 10
SPLITS = ("train", "valid", "test")
HF_SPLITS = {"train": "train", "valid": "validation", "test": "test"}
_MAX_DUPLICATE_DRAWS = 100_000  # upstream retries forever; this many duplicates in a row means the space is exhausted


def joint_recall_pad_len(max_n_context: int = 16, max_n_key: int = 16) -> int:
    """HAX's padded length, `2 * max_n_context * (2 * max_n_key + 1) + 2` (1058 for 16 x 16): the longest sequence."""
    return 2 * max_n_context * (2 * max_n_key + 1) + 2


def _check_jr_args(n_context: int, n_key: int, n_value: int, max_n_context: int, max_n_key: int) -> None:
    if n_value < 1:
        raise ValueError(f"n_value must be at least 1, got {n_value}")
    if not 1 <= n_context <= max_n_context:
        raise ValueError(f"n_context={n_context} must be in [1, max_n_context={max_n_context}]")
    if not 1 <= n_key <= max_n_key:
        raise ValueError(f"n_key={n_key} must be in [1, max_n_key={max_n_key}]")


def joint_recall_item(rng, n_context: int, n_key: int, *, n_value: int = 16, max_n_context: int = 16,
                      max_n_key: int = 16):
    """One joint-recall sequence drawn from `rng` (a `numpy.random.RandomState`), as HAX's `generate_data_item`.

    Token ids: BOS 1, PAD 3, SEP 4; value v -> 10 + v; key k -> 10 + n_value + k; context c -> 10 + n_value +
    max_n_key + c. Layout: BOS, then for each context (random order) the context token and, for each of its keys
    (random order), the key and its value `V[c, k]`; SEP; then the same again with fresh orders. The mask is 1 on the
    key tokens of the second pass (the next token, `V[c, k]`, is the target) and 0 elsewhere; both arrays are padded
    with PAD / 0 to `joint_recall_pad_len(max_n_context, max_n_key)`.

    Draw order (as upstream): `randint(0, n_value, (n_context, n_key))`, then one permutation of contexts and one of
    keys per context for each pass. Returns `(inputs int64 [pad_len], mask int8 [pad_len])`.
    """
    import numpy as np

    _check_jr_args(n_context, n_key, n_value, max_n_context, max_n_key)
    pad_len = joint_recall_pad_len(max_n_context, max_n_key)
    table = rng.randint(0, n_value, (n_context, n_key))
    inputs, mask = [BOS], [0]
    for second in (False, True):
        if second:
            inputs.append(SEP)
            mask.append(0)
        for c in rng.permutation(n_context):
            inputs.append(OFFSET + n_value + max_n_key + int(c))
            mask.append(0)
            for k in rng.permutation(n_key):
                inputs += [OFFSET + n_value + int(k), OFFSET + int(table[c][k])]
                mask += [int(second), 0]
    inputs += [PAD] * (pad_len - len(inputs))
    mask += [0] * (pad_len - len(mask))
    return np.asarray(inputs, dtype=np.int64), np.asarray(mask, dtype=np.int8)


def joint_recall_tokens(n_context: int, n_key: int, n_value: int = 16, seed: int = 0, *, max_n_context: int = 16,
                        max_n_key: int = 16):
    """One joint-recall sequence from `RandomState(seed)`: `(inputs, mask)`, see `joint_recall_item`."""
    import numpy as np

    return joint_recall_item(np.random.RandomState(seed), n_context, n_key, n_value=n_value,
                             max_n_context=max_n_context, max_n_key=max_n_key)


def iter_joint_recall_splits(*, max_n_context: int = 16, max_n_key: int = 16, n_value: int = 16,
                             n_train_per_context_key: int = 10000, n_test_per_context_key: int = 100, seed: int = 1,
                             min_n: int = 5) -> Iterator[tuple[str, Any, Any]]:
    """HAX's whole data set as `(split, inputs, mask)` in upstream order (split, index, n_context, n_key).

    For every split (train, valid, test: `n_train_per_context_key`, `n_test_per_context_key`,
    `n_test_per_context_key` rounds) and every (n_context, n_key) in [min_n, max_n_context] x [min_n, max_n_key],
    draw sequences until one has not been seen in any split (duplicates are rejected across all splits). One
    `RandomState(seed)` drives everything, as HAX's `set_seed(seed)` does for numpy's global RNG. Defaults give
    1.44M / 14.4K / 14.4K sequences.
    """
    import numpy as np

    if min_n < 1 or min_n > min(max_n_context, max_n_key):
        raise ValueError(f"min_n={min_n} must be in [1, min(max_n_context, max_n_key)]")
    rng = np.random.RandomState(seed)
    seen: set[bytes] = set()
    sizes = (n_train_per_context_key, n_test_per_context_key, n_test_per_context_key)
    for split, size in zip(SPLITS, sizes):
        for _ in range(size):
            for n_context in range(min_n, max_n_context + 1):
                for n_key in range(min_n, max_n_key + 1):
                    for _ in range(_MAX_DUPLICATE_DRAWS):
                        inputs, mask = joint_recall_item(rng, n_context, n_key, n_value=n_value,
                                                         max_n_context=max_n_context, max_n_key=max_n_key)
                        digest = hashlib.sha256(inputs.tobytes()).digest()
                        if digest not in seen:
                            seen.add(digest)
                            break
                    else:
                        raise ValueError(f"{_MAX_DUPLICATE_DRAWS} duplicates in a row at n_context={n_context}, "
                                         f"n_key={n_key}: fewer distinct sequences exist than requested")
                    yield split, inputs, mask


def _split_paths(data_dir: Path, max_n_context: int, max_n_key: int, seed: int, split: str) -> tuple[Path, Path]:
    stem = f"max_n_context_{max_n_context}_max_n_key_{max_n_key}_seed_{seed}_{split}"
    return data_dir / f"{stem}_inputs.txt", data_dir / f"{stem}_mask.txt"


def write_joint_recall_text(data_dir: str | Path, **kwargs) -> dict[str, tuple[Path, Path]]:
    """Write HAX's text files (`max_n_context_{C}_max_n_key_{K}_seed_{S}_{split}_{inputs,mask}.txt`, one sequence
    of space-separated ids per line) for `iter_joint_recall_splits(**kwargs)`; returns split -> (inputs, mask)."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    mc, mk, seed = kwargs.get("max_n_context", 16), kwargs.get("max_n_key", 16), kwargs.get("seed", 1)
    paths = {split: _split_paths(data_dir, mc, mk, seed, split) for split in SPLITS}
    with contextlib.ExitStack() as stack:
        files = {split: (stack.enter_context(open(p[0], "w")), stack.enter_context(open(p[1], "w")))
                 for split, p in paths.items()}
        for split, inputs, mask in iter_joint_recall_splits(**kwargs):
            fin, fmask = files[split]
            fin.write(" ".join(map(str, inputs.tolist())) + "\n")
            fmask.write(" ".join(map(str, mask.tolist())) + "\n")
    return paths


def convert_to_hf_dataset(data_dir: str | Path, max_n_context: int = 16, max_n_key: int = 16, seed: int = 1,
                          save: bool = True):
    """HAX's converter with its argument: the text files of `data_dir` -> `DatasetDict` (train, validation, test;
    features `inputs` int32 sequence and `mask` int8 sequence), saved to `data_dir` with `save_to_disk` if `save`."""
    from datasets import Dataset, DatasetDict, Features, Sequence, Value

    data_dir = Path(data_dir)
    features = Features({"inputs": Sequence(Value("int32")), "mask": Sequence(Value("int8"))})
    splits = {}
    for split in SPLITS:
        inputs_path, mask_path = _split_paths(data_dir, max_n_context, max_n_key, seed, split)
        for p in (inputs_path, mask_path):
            if not p.exists():
                raise FileNotFoundError(f"joint recall split file {str(p)!r} does not exist "
                                        f"(write it with write_joint_recall_text)")
        rows: dict[str, list] = {"inputs": [], "mask": []}
        with open(inputs_path) as fin, open(mask_path) as fmask:
            for line_in, line_mask in zip(fin, fmask):
                rows["inputs"].append([int(t) for t in line_in.split()])
                rows["mask"].append([int(t) for t in line_mask.split()])
        splits[HF_SPLITS[split]] = Dataset.from_dict(rows, features=features)
    dataset = DatasetDict(splits)
    if save:
        dataset.save_to_disk(str(data_dir))
    return dataset


def joint_recall_accuracy(predictions, inputs, mask) -> float:
    """HAX's accuracy: `predictions[:, t]` is the model's token after reading `inputs[:, t]`; per sequence the mean
    of `predictions[:, t] == inputs[:, t + 1]` over masked t, then the mean over sequences."""
    import numpy as np

    preds = np.asarray(predictions)[:, :-1]
    labels = np.asarray(inputs)[:, 1:]
    m = np.asarray(mask)[:, :-1].astype(bool)
    per_seq = ((preds == labels) & m).sum(-1) / m.sum(-1)
    return float(per_seq.mean())


# ------------------------------------------------------------------------------------------------ token level: MQAR
def mqar_tokens(*, vocab_size: int = 8192, num_examples: int, input_seq_len: int, seed: int, power_a: float = 0.01,
                num_kv_pairs: int = 8, num_passes: int = 1, random_non_queries: bool = True):
    """zoology's multi-query associative recall: `(inputs int64 [N, L], labels int64 [N, L])`, labels -100 but at
    the query keys, where they hold the key's value (the token to predict after reading the key).

    Keys are drawn without replacement from [1, vocab/2), values from [vocab/2, vocab); the context `k1 v1 k2 v2 ...`
    is repeated `num_passes` times; in the query region that follows, every key is placed once at offset `2 * g`, with
    g drawn without replacement from {0, ..., (L - context) / 2 - 1} with probability proportional to
    `(g + 1) ** (power_a - 1)`; all other query-region positions are 0, or random tokens in [0, vocab) with
    `random_non_queries`.
    """
    import numpy as np

    if input_seq_len % 2:
        raise ValueError(f"input_seq_len must be even, got {input_seq_len}")
    if vocab_size <= input_seq_len:
        raise ValueError(f"vocab_size={vocab_size} must be larger than input_seq_len={input_seq_len}")
    if num_kv_pairs * 2 * num_passes + num_kv_pairs * 2 > input_seq_len:
        raise ValueError(f"num_kv_pairs={num_kv_pairs} x 2 x (num_passes={num_passes} + 1) tokens do not fit "
                         f"input_seq_len={input_seq_len}")
    if num_kv_pairs < 1 or num_examples < 1 or num_passes < 1:
        raise ValueError("num_kv_pairs, num_examples and num_passes must be positive")
    if power_a <= 0:
        raise ValueError(f"power_a must be positive, got {power_a}")
    rng = np.random.RandomState(seed)
    context_size = num_kv_pairs * 2 * num_passes
    key_vocab = vocab_size // 2
    key_choices = np.arange(1, key_vocab)
    value_choices = np.arange(key_vocab, vocab_size)
    # one row at a time, in the order of upstream's np.apply_along_axis(np.random.choice, ...) calls
    keys = np.stack([rng.choice(key_choices, replace=False, size=num_kv_pairs) for _ in range(num_examples)])
    values = np.stack([rng.choice(value_choices, replace=False, size=num_kv_pairs) for _ in range(num_examples)])
    kvs = np.zeros((num_examples, num_kv_pairs * 2), dtype=np.int64)
    kvs[:, 0::2] = keys
    kvs[:, 1::2] = values
    kvs = np.tile(kvs, (1, num_passes))
    space = (input_seq_len - context_size) // 2
    p = power_a * np.arange(1, space + 1) ** (power_a - 1)
    p = p / p.sum()
    gaps = np.stack([rng.choice(np.arange(space), replace=False, p=p, size=num_kv_pairs)
                     for _ in range(num_examples)])
    queries = np.zeros((num_examples, input_seq_len - context_size + 1), dtype=np.int64)
    np.put_along_axis(queries, gaps * 2, values=keys, axis=1)
    examples = np.concatenate([kvs, queries], axis=1)
    labels = np.full((num_examples, input_seq_len + 1), -100, dtype=np.int64)
    np.put_along_axis(labels, gaps * 2 + context_size + 1, values=values, axis=1)
    inputs, labels = examples[:, :-1].copy(), labels[:, 1:].copy()
    if random_non_queries:
        noise = rng.randint(vocab_size, size=inputs.shape)
        inputs[inputs == 0] = noise[inputs == 0]
    return inputs, labels


def mqar_accuracy(predictions, labels) -> float:
    """zoology's accuracy: mean of `predictions == labels` over the positions whose label is not -100."""
    import numpy as np

    labels = np.asarray(labels)
    keep = labels != -100
    return float((np.asarray(predictions)[keep] == labels[keep]).mean())


# ------------------------------------------------------------------------------------------------ text: shared parts
# Common nouns for joint-recall keys; colour words for its values (written for sparsebench).
KEYS = (
    "anchor", "apple", "arrow", "basket", "bell", "blanket", "boat", "bottle", "bridge", "brush", "bucket", "button",
    "cabin", "candle", "carpet", "castle", "chair", "clock", "cloud", "coat", "coin", "comb", "cup", "desk", "door",
    "drum", "feather", "fence", "flag", "flower", "fork", "garden", "glove", "hammer", "harbor", "hat", "helmet",
    "horse", "jacket", "kettle", "kite", "ladder", "lamp", "lantern", "letter", "mirror", "needle", "onion", "paddle",
    "pencil", "piano", "pillow", "plate", "pocket", "river", "rope", "saddle", "shell", "shovel", "spoon", "tower",
    "wagon", "whistle", "window",
)
VALUES = (
    "red", "blue", "green", "yellow", "orange", "purple", "pink", "brown", "black", "white", "gray", "gold", "silver",
    "violet", "amber", "teal", "crimson", "navy", "olive", "ivory", "maroon", "beige", "coral", "indigo", "lime",
    "scarlet", "cyan", "magenta", "tan", "turquoise", "lavender", "bronze",
)
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_NUM_LINE = re.compile(r"^\s*(\d+)\s*[.:)]\s*(.*)$")
_SEPARATORS = re.compile(r"(?:->|[:=])")
ANSWER_HEADER = "\n\nAnswers:\n"
ANSWER_START = "1."
ANSWER_PREFIX = ANSWER_HEADER + ANSWER_START


def _pseudo_word(rng: random.Random, syllables: int = 3) -> str:
    return "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(syllables))


class _DistinctWords:
    """An endless stream of distinct made-up words from one RNG; word i depends only on the RNG, not on how many
    words are taken later."""

    def __init__(self, rng: random.Random, capitalize: bool):
        self._rng, self._cap, self._seen, self.words = rng, capitalize, set(), []

    def take(self, n: int) -> list[str]:
        while len(self.words) < n:
            w = _pseudo_word(self._rng)
            if w not in self._seen:
                self._seen.add(w)
                self.words.append(w.capitalize() if self._cap else w)
        return self.words[:n]


def normalize_answer(text: str) -> str:
    """Lower-case; keep the text after the last ':', '=' or '->'; strip whitespace, quotes, '*' and final .,;!?"""
    text = _SEPARATORS.split(text.lower())[-1]
    return text.strip().strip("\"'`*").strip().rstrip(".,;!?").strip().strip("\"'`*").strip()


def parse_numbered_answers(text: str) -> dict[int, str]:
    """Question number -> normalised answer, from lines `N. answer` (or `N:` / `N)`); the first line per N wins."""
    answers: dict[int, str] = {}
    for line in text.splitlines():
        m = _NUM_LINE.match(line)
        if m:
            answers.setdefault(int(m.group(1)), normalize_answer(m.group(2)))
    return answers


def score_numbered(targets: Sequence[str], output: str) -> float:
    """Fraction of questions 1..len(targets) whose parsed answer equals its target (see the module docstring)."""
    answers = parse_numbered_answers(ANSWER_START + output)
    right = sum(answers.get(i) == normalize_answer(t) for i, t in enumerate(targets, start=1))
    return right / len(targets)


def _check_common(num_queries: int, max_new_tokens: int) -> None:
    if int(num_queries) < 1:
        raise ValueError(f"num_queries must be at least 1, got {num_queries}")
    if int(max_new_tokens) < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")


def _floor_error(task: str, seq_len: int, total: int) -> ValueError:
    return ValueError(f"{task} cannot reach {LENGTH_FLOOR:.0%} of seq_len={seq_len}: the closest fit has {total} "
                      f"tokens")


# ------------------------------------------------------------------------------------------------ text: joint recall
JR_INTRO = ("Below is a list of contexts. Every context gives a value to each of the same keys, and a key's value "
            "depends on its context: the same key can have different values in different contexts. Memorize them. "
            "I will ask about some of them afterwards.\n\n")
JR_QUESTIONS = ("\n\nNow give the value of each key below in the context it is listed under. Answer with one line "
                "per question, in the form \"number. value\".\n\n")


class _NumberedAnswers:
    """What the two text tasks share: prompt i from `_sample(tokenizer, seq_len, seed, i)`, numbered answers."""

    def samples(self, tokenizer, seq_len: int, n: int, seed: int) -> Iterator[Sample]:
        """n prompts; prompt i is a pure function of (seq_len, seed, i)."""
        for i in range(n):
            yield self._sample(tokenizer, seq_len, seed, i)

    def score(self, sample: Sample, output: str) -> dict[str, float]:
        """Fraction of the numbered questions answered with the right value (module docstring: exact rules)."""
        return {"accuracy": score_numbered(sample.targets, output)}


class JointRecall(_NumberedAnswers):
    """Joint recall as text: contexts x keys -> values, then numbered questions (see the module docstring).

    Args:
        max_n_key: keys per context (HAX's max_n_key, 16); at most len(KEYS).
        min_n_key: fewest keys per context used when whole blocks of max_n_key keys cannot fill the prompt (HAX: 5).
        n_value: number of distinct values (HAX: 16); at most len(VALUES).
        num_queries: (context, key) cells asked per prompt.
        max_new_tokens: generation budget, counted inside seq_len.
    """

    name = "joint_recall"
    version = 1

    def __init__(self, *, max_n_key: int = 16, min_n_key: int = 5, n_value: int = 16, num_queries: int = 16,
                 max_new_tokens: int = 128):
        if not 1 <= int(max_n_key) <= len(KEYS):
            raise ValueError(f"max_n_key={max_n_key} must be in [1, {len(KEYS)}]")
        if not 1 <= int(min_n_key) <= int(max_n_key):
            raise ValueError(f"min_n_key={min_n_key} must be in [1, max_n_key={max_n_key}]")
        if not 2 <= int(n_value) <= len(VALUES):
            raise ValueError(f"n_value={n_value} must be in [2, {len(VALUES)}]")
        _check_common(num_queries, max_new_tokens)
        self.max_n_key, self.min_n_key, self.n_value = int(max_n_key), int(min_n_key), int(n_value)
        self.num_queries, self.max_new_tokens = int(num_queries), int(max_new_tokens)
        self._line_counts: dict[int, tuple[Any, dict[tuple[str, str], int]]] = {}

    def check(self) -> None:
        """Nothing to load: the task is synthetic."""

    def _lines(self, tokenizer) -> dict[tuple[str, str], int]:
        entry = self._line_counts.get(id(tokenizer))
        if entry is None or entry[0] is not tokenizer:
            pairs = [(k, v) for k in KEYS for v in VALUES[: self.n_value]]
            lengths = piece_lengths(tokenizer, [f"\n{k}: {v}" for k, v in pairs])
            entry = (tokenizer, dict(zip(pairs, lengths)))
            self._line_counts[id(tokenizer)] = entry
        return entry[1]

    @staticmethod
    def _render(names: Sequence[str], keys: Sequence[str], rows: Sequence[Sequence[str]],
                queries: Sequence[tuple[int, int]]) -> str:
        blocks = ["\n".join([f"Context {names[c]}:"] + [f"{k}: {rows[c][j]}" for j, k in enumerate(keys)])
                  for c in range(len(names))]
        groups: list[str] = []
        number = 0
        for c, group in itertools.groupby(queries, key=lambda q: q[0]):
            lines = [f"Context {names[c]}:"]
            for _, j in group:
                number += 1
                lines.append(f"{number}. {keys[j]}")
            groups.append("\n".join(lines))
        return JR_INTRO + "\n\n".join(blocks) + JR_QUESTIONS + "\n\n".join(groups) + ANSWER_PREFIX

    def _queries(self, base: tuple, n_ctx: int, n_key: int) -> list[tuple[int, int]]:
        """num_queries distinct cells, grouped by context; contexts and keys inside a context in fresh orders."""
        rng = stable_rng(*base, "queries", n_ctx, n_key)
        cells = rng.sample(range(n_ctx * n_key), self.num_queries)
        by_ctx: dict[int, list[int]] = {}
        for cell in cells:
            by_ctx.setdefault(cell // n_key, []).append(cell % n_key)
        order = list(by_ctx)
        rng.shuffle(order)
        out = []
        for c in order:
            ks = by_ctx[c]
            rng.shuffle(ks)
            out.extend((c, j) for j in ks)
        return out

    def _sample(self, tokenizer, seq_len: int, seed: int, i: int) -> Sample:
        base = ("joint_recall", seq_len, seed, i)
        keys_all = stable_rng(*base).sample(KEYS, self.max_n_key)
        names = _DistinctWords(stable_rng(*base, "contexts"), capitalize=True)
        row_rng = stable_rng(*base, "values")
        values = VALUES[: self.n_value]
        rows: list[list[str]] = []  # V[c, k] for k < max_n_key, drawn context by context
        headers: list[int] = []  # tokens of each context's header piece
        lines = self._lines(tokenizer)
        budget = seq_len - self.max_new_tokens

        def grow(n: int) -> None:  # rows, names and header counts for the first n contexts
            while len(rows) < n:
                rows.append([row_rng.choice(values) for _ in range(self.max_n_key)])
            if len(headers) < n:
                new = names.take(n)[len(headers):]
                headers.extend(piece_lengths(tokenizer, [f"\n\nContext {w}:" for w in new]))

        last_total = 0
        for n_key in range(self.max_n_key, self.min_n_key - 1, -1):
            keys = keys_all[:n_key]
            n_min = max(2, -(-self.num_queries // n_key))  # two contexts at least, and room for every question
            cum = [0]
            while cum[-1] < budget or len(cum) <= n_min:  # contexts until their estimated tokens pass the budget
                start = len(cum) - 1
                grow(start + max(16, start))
                for c in range(start, len(rows)):
                    cum.append(cum[-1] + headers[c] + sum(lines[(k, rows[c][j])] for j, k in enumerate(keys)))
            queries_for: dict[int, list[tuple[int, int]]] = {}

            def render(n_ctx: int, keys=keys, n_key=n_key, queries_for=queries_for) -> str:
                q = queries_for.setdefault(n_ctx, self._queries(base, n_ctx, n_key))
                return self._render(names.words[:n_ctx], keys, [r[:n_key] for r in rows[:n_ctx]], q)

            fit = fit_largest(render, cum.__getitem__, tokenizer, budget, n_min, len(cum) - 1, ANSWER_PREFIX)
            if fit is None:
                continue
            n_ctx, prompt, total = fit
            last_total = max(last_total, total)
            if total + self.max_new_tokens >= LENGTH_FLOOR * seq_len:
                break
        else:
            if last_total == 0:
                raise ValueError(f"seq_len={seq_len} is too small for joint_recall: {self.num_queries} questions "
                                 f"over at least two contexts do not fit with max_new_tokens={self.max_new_tokens}")
            raise _floor_error("joint_recall", seq_len, last_total + self.max_new_tokens)
        queries = queries_for[n_ctx]
        n_facts = n_ctx * n_key
        return Sample(
            id=f"joint_recall/L{seq_len}/s{seed}/{i}",
            subtask="joint_recall",
            prompt=prompt,
            targets=tuple(rows[c][j] for c, j in queries),
            max_new_tokens=self.max_new_tokens,
            input_tokens=total,
            meta={"n_context": n_ctx, "n_key": n_key, "n_value": self.n_value, "num_queries": self.num_queries,
                  "queries": [[names.words[c], keys_all[j]] for c, j in queries],
                  "query_depths": [round((c * n_key + j + 0.5) / n_facts, 4) for c, j in queries],
                  "answer_prefix": ANSWER_PREFIX},
        )


# ------------------------------------------------------------------------------------------------ text: MQAR
MQAR_INTRO = ("Below is a list of keys, each with its value. Memorize them. I will ask about some of the keys "
              "afterwards.\n\n")
MQAR_QUESTIONS = ("\n\nNow give the value of each key below. Answer with one line per question, in the form "
                  "\"number. value\".\n\n")


def power_law_draw(rng: random.Random, n: int, k: int, power_a: float) -> list[int]:
    """k distinct g in [0, n) drawn one by one with probability proportional to (g + 1) ** (power_a - 1) among
    those not yet drawn (numpy's `choice(replace=False, p=...)` scheme, zoology's query placement)."""
    weights = [(g + 1) ** (power_a - 1) for g in range(n)]
    out: list[int] = []
    for _ in range(k):
        cum = list(itertools.accumulate(weights))
        g = min(bisect.bisect_right(cum, rng.random() * cum[-1]), n - 1)
        while weights[g] == 0:  # rounding at the very top of the range
            g -= 1
        out.append(g)
        weights[g] = 0.0
    return out


class MQAR(_NumberedAnswers):
    """Multi-query associative recall as text: `key: value` lines filling the prompt, then numbered questions.

    Args:
        num_queries: keys asked per prompt.
        power_a: zoology's power-law exponent for which pairs are asked, by distance from the questions
            (0.01 upstream; 1.0 is uniform).
        max_new_tokens: generation budget, counted inside seq_len.
    """

    name = "mqar"
    version = 1

    def __init__(self, *, num_queries: int = 16, power_a: float = 0.01, max_new_tokens: int = 192):
        _check_common(num_queries, max_new_tokens)
        if not 0 < float(power_a) <= 1:
            raise ValueError(f"power_a={power_a} must be in (0, 1] (1 is uniform)")
        self.num_queries, self.power_a, self.max_new_tokens = int(num_queries), float(power_a), int(max_new_tokens)

    def check(self) -> None:
        """Nothing to load: the task is synthetic."""

    @staticmethod
    def _render(keys: Sequence[str], values: Sequence[int], asked: Sequence[int]) -> str:
        facts = "\n".join(f"{k}: {v}" for k, v in zip(keys, values))
        questions = "\n".join(f"{q}. {keys[p]}" for q, p in enumerate(asked, start=1))
        return MQAR_INTRO + facts + MQAR_QUESTIONS + questions + ANSWER_PREFIX

    def _asked(self, base: tuple, n: int) -> list[int]:
        """Pair indices asked, in question order: distances g from the end drawn by the power law, then shuffled."""
        rng = stable_rng(*base, "queries", n)
        order = [n - 1 - g for g in power_law_draw(rng, n, self.num_queries, self.power_a)]
        rng.shuffle(order)
        return order

    def _sample(self, tokenizer, seq_len: int, seed: int, i: int) -> Sample:
        base = ("mqar", seq_len, seed, i)
        words = _DistinctWords(stable_rng(*base, "keys"), capitalize=False)
        vrng = stable_rng(*base, "values")
        values: list[int] = []
        seen: set[int] = set()
        budget = seq_len - self.max_new_tokens
        cum = [0]
        while cum[-1] < budget or len(cum) <= self.num_queries:  # pairs until their tokens pass the budget
            start = len(cum) - 1
            grow = max(64, start)
            keys = words.take(start + grow)
            while len(values) < start + grow:
                v = vrng.randrange(10_000, 100_000)
                if v not in seen:
                    seen.add(v)
                    values.append(v)
            for length in piece_lengths(tokenizer, [f"\n{k}: {v}" for k, v in zip(keys[start:], values[start:])]):
                cum.append(cum[-1] + length)
        asked_for: dict[int, list[int]] = {}

        def render(n: int) -> str:
            asked = asked_for.setdefault(n, self._asked(base, n))
            return self._render(words.words[:n], values[:n], asked)

        n_min = self.num_queries
        fit = fit_largest(render, cum.__getitem__, tokenizer, budget, n_min, len(cum) - 1, ANSWER_PREFIX)
        if fit is None:
            raise ValueError(f"seq_len={seq_len} is too small for mqar: {self.num_queries} pairs and questions do not "
                             f"fit with max_new_tokens={self.max_new_tokens}")
        n, prompt, total = fit
        if total + self.max_new_tokens < LENGTH_FLOOR * seq_len:
            raise _floor_error("mqar", seq_len, total + self.max_new_tokens)
        asked = asked_for[n]
        return Sample(
            id=f"mqar/L{seq_len}/s{seed}/{i}",
            subtask="mqar",
            prompt=prompt,
            targets=tuple(str(values[p]) for p in asked),
            max_new_tokens=self.max_new_tokens,
            input_tokens=total,
            meta={"num_kv_pairs": n, "num_queries": self.num_queries, "power_a": self.power_a,
                  "query_keys": [words.words[p] for p in asked], "query_distances": [n - 1 - p for p in asked],
                  "answer_prefix": ANSWER_PREFIX},
        )
