"""RULER: the 13 synthetic long-context subtasks of Hsieh et al., "RULER: What's the Real Context Size of Your
Long-Context Language Models?" (COLM 2024, arXiv:2404.06654), from NVIDIA/RULER at commit c3f5e3b4f87f
(`scripts/synthetic.yaml`, `scripts/data/synthetic/*.py`, `scripts/eval/synthetic/constants.py`; Apache-2.0).

Subtasks: niah_single_1..3, niah_multikey_1..3, niah_multivalue, niah_multiquery (`niah.py`), vt (`vt.py`), cwe
(`cwe.py`), fwe (`fwe.py`), qa_1 (SQuAD v2) and qa_2 (HotpotQA) (`qa.py`). Templates, answer prefixes and
generation budgets are vendored verbatim (`_templates.py`); metrics are upstream's string_match_all (the fraction
of references found) and string_match_part (the max over references), both reported as `accuracy` so that the
harness's `average` row is RULER's per-length average over subtasks; `meta["metric"]` says which one a sample
uses. `samples()` yields n samples per subtask, subtask by subtask; every prompt ends with its answer prefix (also in
`meta["answer_prefix"]`, so a chat template can move it into the assistant turn, RULER's assistant prefill).

Length: prompt tokens (BOS and chat template included) + the subtask's generation budget are at most seq_len and at
least 90% of it, as in RULER, where the template and answer prefix also count; each haystack is the largest that
fits, found from per-piece token counts and confirmed by exact tokenisation (`_fit.py`).

Data: the `essay` haystack is English prose split into sentences — Paul Graham essays from `essay_path` or
`essay_dataset` (niah's loaders), or by default Python's documentation text from the standard library (offline).
QA data comes from local upstream-format files (`squad_path`, `hotpotqa_path`) or `datasets` (`squad_dataset`,
`hotpotqa_dataset` with pinned revisions); with neither, or with an absent file or an unreachable dataset, qa_1 and
qa_2 are reported by `unavailable()` and the other subtasks run; `check()` raises when no requested subtask can run.

Deviations from upstream:
- Sizing is token-exact: the largest haystack (words, lines, words of a list, documents) that fits, instead of a
  binary search with increments (500 words, 25 lines, 10 documents) and per-sample shrinking by an increment.
- Randomness: each sample draws from its own sha256-seeded streams of (subtask, seq_len, seed, index), so samples
  do not depend on each other or on the order of generation; RULER threads one global `random`/`numpy` state
  through the whole file. The fixed-seed shuffles of upstream (`random.Random(seed).shuffle(...)` of NIAH needles,
  CWE/FWE word lists, QA documents) are kept, with the run's seed. Prompts are therefore not byte-identical to
  upstream's for the same seed, and cannot be (they also depend on upstream's exact data files).
- Sentence splitting uses `_haystack.split_sentences` (a regular expression) instead of nltk's punkt, which needs a
  download; the default essay text is the offline pydoc prose, not Paul Graham's essays.
- NIAH keys are drawn as a uniform adjective and a uniform noun, not uniformly from the sorted set of all 6.2M
  "adjective-noun" strings (which differ only where two pairs spell the same string); keys within a sample are
  distinct and distractor needles never reuse a real key (upstream does not check). Empty haystack segments are not
  joined, so a needle at depth 0 does not start with a doubled space.
- VT: the five names of a chain are distinct (upstream's re-draw loop can leave a duplicate inside the chain), and
  the in-context example's re-drawn names avoid the old names and "VAR", so a replacement never corrupts the text.
- CWE: RULER's fallback word list `json/english_words.json` (git-LFS, not on PyPI) is read from `cwe_words_path`
  when given; without it, a sample that would need more words than wonderwords has is skipped and counted.
- QA: when the next document of the order does not fit and the prompt is below 90% of seq_len, later documents
  that fit the gap are added (`meta["fill_documents"]`); a question whose gold documents alone do not fit is skipped
  and counted. Sample i asks question i (upstream's `pre_samples` offset for chunked runs does not exist here).
- Scoring as upstream (post-processing, then string matching over the whole output); lm-evaluation-harness's
  port differs in `string_match_part` (mean instead of max over references), in not counting the chat template
  in the length budget, and in the VT answer-prefix typo "assgined" — none of those are copied.
- The saved sample index is never overwritten (upstream niah.py stores the answer's character offset in `index`);
  the offset is `meta["answer_char_offset"]`.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from sparsebench.task import LENGTH_FLOOR, Sample
from sparsebench.tasks.ruler._fit import Skip
from sparsebench.tasks.ruler._scoring import METRICS, postprocess_pred

log = logging.getLogger(__name__)

SUBTASKS = ("niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2",
            "niah_multikey_3", "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe", "qa_1", "qa_2")
QA_SUBTASKS = {"qa_1": "squad", "qa_2": "hotpotqa"}
METRIC_OF = {s: "string_match_part" if s in QA_SUBTASKS else "string_match_all" for s in SUBTASKS}
ESSAY_SUBTASKS = ("niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multivalue", "niah_multiquery")

# Pinned hub revisions, as cited by other projects; not fetched here (the hub cannot be reached from where this was
# written). Session 8 found both pinned, with these ids, in several public repositories, which read
# `squad_v2/validation-00000-of-00001.parquet` (11,873 rows) and `distractor/validation-00000-of-00001.parquet`
# (HotpotQA's dev distractor set, 7,405 rows) at them; the hub's cards list the same configs and split sizes.
# Override with squad_revision / hotpotqa_revision.
SQUAD_DATASET = "rajpurkar/squad_v2"
SQUAD_REVISION = "3ffb306f725f7d2ce8394bc1873b24868140c412"  # corroborated, not fetched
HOTPOTQA_DATASET = "hotpotqa/hotpot_qa"
HOTPOTQA_CONFIG = "distractor"
HOTPOTQA_REVISION = "1908d6afbbead072334abe2965f91bd2709910ab"  # corroborated, not fetched
_QA_FILES = {"squad": ("SQuAD v2 dev", "dev-v2.0.json", SQUAD_DATASET),
             "hotpotqa": ("HotpotQA dev distractor", "hotpot_dev_distractor_v1.json", HOTPOTQA_DATASET)}


class Ruler:
    """The RULER suite; `n` in `samples()` counts samples per subtask.

    Args:
        subtasks: which of the 13 subtasks to run, in this order.
        max_new_tokens: per-subtask generation budgets replacing upstream's (niah 128, vt 30, cwe 120, fwe 50,
            qa 32), e.g. {"cwe": 256}; counted inside seq_len.
        essay_path, essay_dataset, essay_split, essay_field, essay_data_files: the essay haystack (as for `niah`).
        squad_path / hotpotqa_path: local upstream json files (dev-v2.0.json / hotpot_dev_distractor_v1.json).
        squad_dataset, squad_revision, squad_split, squad_data_files: SQuAD v2 through `datasets.load_dataset`
            (e.g. "rajpurkar/squad_v2", or "json"/"parquet" with data_files in that schema).
        hotpotqa_dataset, hotpotqa_config, hotpotqa_revision, hotpotqa_split, hotpotqa_data_files: likewise
            (e.g. "hotpotqa/hotpot_qa", config "distractor").
        cwe_words_path: RULER's english_words.json (or a word list), used by cwe only past wonderwords' words.
    """

    name = "ruler"
    version = 1

    def __init__(self, *, subtasks: Sequence[str] = SUBTASKS, max_new_tokens: Mapping[str, int] | None = None,
                 essay_path: str | None = None, essay_dataset: str | None = None,
                 essay_data_files: str | Sequence[str] | Mapping[str, Any] | None = None,
                 essay_split: str = "train", essay_field: str = "text",
                 squad_path: str | None = None, squad_dataset: str | None = None,
                 squad_revision: str | None = SQUAD_REVISION, squad_split: str = "validation",
                 squad_data_files: str | Sequence[str] | Mapping[str, Any] | None = None,
                 hotpotqa_path: str | None = None, hotpotqa_dataset: str | None = None,
                 hotpotqa_config: str | None = HOTPOTQA_CONFIG, hotpotqa_revision: str | None = HOTPOTQA_REVISION,
                 hotpotqa_split: str = "validation",
                 hotpotqa_data_files: str | Sequence[str] | Mapping[str, Any] | None = None,
                 cwe_words_path: str | None = None):
        if isinstance(subtasks, str):
            subtasks = [subtasks]
        subtasks = list(subtasks)
        unknown = [s for s in subtasks if s not in SUBTASKS]
        if unknown or not subtasks:
            raise ValueError(f"unknown RULER subtask(s) {unknown if unknown else subtasks!r}; valid subtasks: "
                             f"{', '.join(SUBTASKS)}")
        if len(set(subtasks)) != len(subtasks):
            raise ValueError(f"RULER subtasks listed twice: {subtasks}")
        budgets = dict(max_new_tokens or {})
        bad = [k for k in budgets if k not in SUBTASKS]
        if bad:
            raise ValueError(f"max_new_tokens names unknown subtask(s) {bad}; valid subtasks: {', '.join(SUBTASKS)}")
        for k, v in budgets.items():
            if int(v) < 1:
                raise ValueError(f"max_new_tokens[{k!r}] must be at least 1, got {v}")
        for (a, va), (b, vb) in ((("essay_path", essay_path), ("essay_dataset", essay_dataset)),
                                 (("squad_path", squad_path), ("squad_dataset", squad_dataset)),
                                 (("hotpotqa_path", hotpotqa_path), ("hotpotqa_dataset", hotpotqa_dataset))):
            if va and vb:
                raise ValueError(f"set at most one of {a} and {b}")
        self.subtasks = tuple(subtasks)
        self.essay = {"path": essay_path, "dataset": essay_dataset, "data_files": essay_data_files,
                      "split": essay_split, "field": essay_field}
        self.qa_sources = {
            "squad": {"path": squad_path, "dataset": squad_dataset, "config": None, "revision": squad_revision,
                      "split": squad_split, "data_files": squad_data_files},
            "hotpotqa": {"path": hotpotqa_path, "dataset": hotpotqa_dataset, "config": hotpotqa_config,
                         "revision": hotpotqa_revision, "split": hotpotqa_split, "data_files": hotpotqa_data_files},
        }
        self.cwe_words_path = cwe_words_path
        self._essay_words = None
        self._qa: dict[str, tuple[Any, str | None]] = {}  # kind -> (QAData or None, reason)
        self._skipped: dict[str, int] = {}
        self._generators = {s: self._generator(s) for s in self.subtasks}
        self.max_new_tokens = {s: int(budgets.get(s, self._generators[s].tokens_to_generate))
                               for s in self.subtasks}

    # -- generators and data --------------------------------------------------------------------------------------

    def _generator(self, subtask: str):
        if subtask.startswith("niah_"):
            from sparsebench.tasks.ruler.niah import NIAHGenerator

            return NIAHGenerator(subtask, self._essay_stream)
        if subtask == "vt":
            from sparsebench.tasks.ruler.vt import VTGenerator

            return VTGenerator(subtask)
        if subtask == "cwe":
            from sparsebench.tasks.ruler.cwe import CWEGenerator

            return CWEGenerator(subtask, self.cwe_words_path)
        if subtask == "fwe":
            from sparsebench.tasks.ruler.fwe import FWEGenerator

            return FWEGenerator(subtask)
        from sparsebench.tasks.ruler.qa import QAGenerator

        kind = QA_SUBTASKS[subtask]
        return QAGenerator(subtask, lambda: self._qa_data(kind))

    def _essay_stream(self):
        if self._essay_words is None:
            from sparsebench.tasks import _haystack
            from sparsebench.tasks.ruler.niah import EssayWords

            e = self.essay
            if e["path"]:
                prose = _haystack.load_path_prose(e["path"], e["field"])
            elif e["dataset"]:
                prose = _haystack.load_dataset_prose(e["dataset"], e["split"], e["field"], e["data_files"])
            else:
                prose = _haystack.pydoc_prose()
            self._essay_words = EssayWords(prose)
        return self._essay_words

    def _qa_status(self, kind: str) -> tuple[Any, str | None]:
        """(QAData, None) when the data loads, else (None, why). Absent data is a reason; a malformed file raises."""
        if kind not in self._qa:
            from sparsebench.tasks.ruler import qa

            src = self.qa_sources[kind]
            what, filename, hub_id = _QA_FILES[kind]
            if src["path"]:
                if not Path(src["path"]).expanduser().exists():
                    self._qa[kind] = (None, f"{kind}_path {str(src['path'])!r} does not exist")
                else:
                    self._qa[kind] = (qa.load_path(kind, src["path"]), None)
            elif src["dataset"]:
                try:
                    self._qa[kind] = (qa.load_dataset(kind, src["dataset"], src["config"], src["split"],
                                                      src["revision"], src["data_files"]), None)
                except OSError as e:  # unreachable hub, missing files, unknown dataset or revision
                    where = src["dataset"] + (f"@{src['revision']}" if src["revision"] else "")
                    first_line = str(e).splitlines()[0] if str(e) else ""
                    self._qa[kind] = (None, f"datasets could not load {kind}_dataset {where!r}: "
                                            + f"{type(e).__name__}: {first_line}")
            else:
                self._qa[kind] = (None, f"no {what} data: set task.{kind}_path to a local {filename} or "
                                        + f"task.{kind}_dataset (e.g. {hub_id})")
        return self._qa[kind]

    def _qa_data(self, kind: str):
        data, reason = self._qa_status(kind)
        if data is None:
            raise FileNotFoundError(reason)
        return data

    # -- the Task interface ---------------------------------------------------------------------------------------

    def check(self) -> None:
        try:
            import wonderwords  # noqa: F401  (the word lists of niah keys and cwe)
        except ImportError as e:
            raise ImportError("RULER needs the wonderwords package for its word lists: pip install wonderwords") from e
        if any(s in ESSAY_SUBTASKS for s in self.subtasks):
            if self.essay["path"] and not Path(self.essay["path"]).expanduser().exists():
                raise FileNotFoundError(f"RULER essay_path {str(self.essay['path'])!r} does not exist")
            self._essay_stream()  # a bad file, dataset id or field fails here, before the model loads
        if "cwe" in self.subtasks and self.cwe_words_path:
            from sparsebench.tasks.ruler import _words

            _words.load_word_file(self.cwe_words_path)
        missing = self.unavailable()
        if len(missing) == len(self.subtasks):
            raise FileNotFoundError("no requested RULER subtask can run: "
                                    + "; ".join(f"{s}: {r}" for s, r in missing.items()))

    def unavailable(self) -> dict[str, str]:
        out = {}
        for s in self.subtasks:
            if s in QA_SUBTASKS:
                _, reason = self._qa_status(QA_SUBTASKS[s])
                if reason:
                    out[s] = reason
        return out

    def skipped(self) -> dict[str, int]:
        return dict(self._skipped)

    def samples(self, tokenizer, seq_len: int, n: int, seed: int) -> Iterator[Sample]:
        """n samples per subtask, subtask by subtask; unavailable subtasks are left out."""
        missing = self.unavailable()
        self._skipped = {}
        for sub in self.subtasks:
            if sub in missing:
                continue
            gen = self._generators[sub]
            budget = self.max_new_tokens[sub]
            for i in range(n):
                draft = gen.draft(tokenizer, seq_len, seed, i, budget)
                if isinstance(draft, Skip):
                    self._skipped[sub] = self._skipped.get(sub, 0) + 1
                    log.warning("ruler/%s sample %d skipped: %s", sub, i, draft.reason)
                    continue
                total = draft.input_tokens + budget
                if total > seq_len or total < LENGTH_FLOOR * seq_len:
                    raise ValueError(f"ruler/{sub} sample {i}: {total} tokens (prompt + max_new_tokens={budget}) "
                                     f"is outside [{LENGTH_FLOOR:.0%}, 100%] of seq_len={seq_len}")
                yield Sample(
                    id=f"ruler/{sub}/L{seq_len}/s{seed}/{i}",
                    subtask=sub,
                    prompt=draft.prompt,
                    targets=draft.targets,
                    max_new_tokens=budget,
                    input_tokens=draft.input_tokens,
                    meta={**draft.meta, "answer_prefix": draft.answer_prefix, "metric": gen.metric,
                          "family": gen.family, "truncation": "none"},
                )

    def score(self, sample: Sample, output: str) -> dict[str, float]:
        """Upstream's metric of the subtask (string_match_all or string_match_part) on the cleaned prediction."""
        metric = sample.meta.get("metric") or METRIC_OF[sample.subtask]
        return {"accuracy": METRICS[metric](postprocess_pred(output), sample.targets)}
