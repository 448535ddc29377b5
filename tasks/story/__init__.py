"""The Sparse Frontier's three story tasks: story_retrieval, story_multihop and story_filtering.

From Nawrot et al., "The Sparse Frontier: Sparse Attention Trade-offs in Transformer LLMs" (arXiv:2504.17768),
code PiotrNawrot/sparse-frontier (commit 31d86c1), `sparse_frontier/tasks/story/{narrative,templates,retrieval,
multihop,filtering}.py` and `sparse_frontier/tasks/abstract_prompt.py`. One task, three subtasks
(`subtasks=[retrieval, multihop, filtering]`), each on a generated narrative (`narrative.py`) that fills the prompt:

- retrieval: `num_queries` (16) distinct chapters, each asked for its location, character or acquired item (one
  random kind per question; with exactly 3 questions one of each kind, as upstream); score = per-sample accuracy
  over the numbered answers.
- multihop: a target chapter (any but the first purchase chapter) is named by the item bought in it; the answer is
  the item bought in the previous purchase chapter; score = exact match.
- filtering: the purchase sentences of `chapters_in_question` (3) random chapters are removed; the answer is their
  ids; score = IoU of the id sets.

Prompts use upstream's shared template verbatim (`templates.py`): task introduction, the question(s) before and
after a `<context>` block, and instructions to answer as `<explanation>...</explanation><answer>...</answer>`.
Scoring follows upstream's `evaluate` functions: the first `<answer>...</answer>` block (case-insensitive; for
retrieval the whole output when there is none), answers lower-cased, whitespace collapsed and a leading "the", "a"
or "an" removed; retrieval reads lines `N. answer` (or `N:` / `N)`), first line per N wins; filtering reads
"Chapter N" mentions, else every number.

Length: chapters are added until the token budget is full, as upstream, but token-exact: the largest number of
chapters whose full prompt (BOS and any chat template included) plus `max_new_tokens` fits `seq_len` is found from
per-chapter token counts and confirmed by tokenising; it must reach 90% of `seq_len`.

Deviations from upstream:

- The scoring bug is fixed: upstream `story_multihop` drops samples whose `<answer>` tag is missing or empty, and
  `story_filtering` drops samples with an empty prediction, from the mean (inflating scores exactly when generation
  degrades). Here every sample counts; an unparsable or empty answer scores 0.
- The narrative's word lists and sentence templates are sparsebench's own (same list sizes); prompts are therefore
  not byte-identical to upstream's, though the question and instruction strings are.
- Randomness comes from a sha256 of (subtask, seq_len, seed, sample index) instead of `Random(43 + index)`; the
  chapters asked about are drawn after the chapter count is known.
- Upstream reserves 64 tokens for the chat template and generates up to 1024 tokens outside its input budget; here
  the template is counted exactly and `max_new_tokens` lies inside `seq_len` (sparsebench's length rule).
- When fewer chapters than `num_queries` fit (short lengths), retrieval asks about every chapter instead of
  failing; the number asked is recorded in `meta["num_queries"]`. Filtering keeps at least one chapter with a
  purchase (n > chapters_in_question).
- When whole chapters cannot reach 90% of `seq_len` (a chapter is wider than the 10% slack at short lengths or with
  byte-level tokenizers), atmosphere sentences (`narrative.EXTRAS`, which change no answer) are appended to the last
  chapter; their number is recorded in `meta["fill_sentences"]` (0 almost always at 8K and beyond).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence

from sparsebench.tasks.story import templates as T
from sparsebench.tasks.story.narrative import EXTRAS, Chapter, Narrative

from sparsebench.task import LENGTH_FLOOR, Sample, count_tokens
from sparsebench.tasks._fit import fit_largest, stable_rng

SUBTASKS = ("retrieval", "multihop", "filtering")
QUERY_KINDS = ("location", "character", "item")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_NUMBERED = re.compile(r"^(\d+)[\.:\)]\s*(.+?)\s*$")


# ------------------------------------------------------------------------------------------------ scoring
def normalize_answer(text: str) -> str:
    """Upstream's normalisation: lower-case, collapse whitespace, drop one leading "the", "a" or "an"."""
    text = re.sub(r"\s+", " ", text.lower().strip())
    return re.sub(r"^(the|a|an)\s+", "", text)


def retrieval_answers(text: str) -> dict[int, str]:
    """Numbered answers from the first `<answer>` block (or the whole text without one); first line per N wins."""
    m = _ANSWER_TAG.search(text)
    if m:
        text = m.group(1)
    answers: dict[int, str] = {}
    for line in text.split("\n"):
        mm = _NUMBERED.match(line.strip())
        if mm:
            answers.setdefault(int(mm.group(1)), normalize_answer(mm.group(2)))
    return answers


def score_retrieval(targets: Sequence[str], output: str) -> float:
    """Fraction of the numbered questions whose answer equals the gold one after normalisation."""
    pred = retrieval_answers(output)
    return sum(pred.get(i) == normalize_answer(t) for i, t in enumerate(targets, start=1)) / len(targets)


def score_multihop(target: str, output: str) -> float:
    """1 if the first `<answer>` block equals the gold item after normalisation; no block or an empty one is 0."""
    m = _ANSWER_TAG.search(output)
    pred = normalize_answer(m.group(1)) if m else ""
    return float(bool(pred) and pred == normalize_answer(target))


def _ids(text: str) -> set[int]:
    """Upstream's number reading: keep digits, commas and whitespace, split, read integers."""
    text = re.sub(r"[^0-9,\s]", "", text.strip())
    return {int(p) for p in re.split(r"[,\s]+", text) if p.strip()}


def filtering_ids(output: str) -> set[int]:
    """Chapter ids from the first `<answer>` block: its "Chapter N" mentions, else every number; none without one."""
    m = _ANSWER_TAG.search(output)
    if not m:
        return set()
    chapters = re.findall(r"Chapter\s+(\d+)", m.group(1), re.IGNORECASE)
    return {int(x) for x in chapters} if chapters else _ids(m.group(1))


def score_filtering(targets: Sequence[str], output: str) -> float:
    """IoU of the predicted and gold chapter-id sets (an unparsable or empty answer is the empty set: 0)."""
    gold = {int(t) for t in targets}
    pred = filtering_ids(output)
    union = gold | pred
    return len(gold & pred) / len(union) if union else 1.0


# ------------------------------------------------------------------------------------------------ the task
class Story:
    """The Sparse Frontier's story tasks; `n` in `samples()` counts samples per subtask.

    Args:
        subtasks: any of retrieval, multihop, filtering.
        num_queries: retrieval questions per prompt (upstream 16).
        chapters_in_question: chapters without a purchase in filtering (upstream 3).
        protagonist: the protagonist's name (upstream "Arion").
        conversation_extensions: conversation sentences per chapter (upstream 3).
        max_new_tokens: generation budget (explanation and answer), counted inside seq_len.
    """

    name = "story"
    version = 1

    def __init__(self, *, subtasks: Sequence[str] = SUBTASKS, num_queries: int = 16, chapters_in_question: int = 3,
                 protagonist: str = "Arion", conversation_extensions: int = 3, max_new_tokens: int = 1024):
        subtasks = tuple(subtasks)
        bad = [s for s in subtasks if s not in SUBTASKS]
        if bad or not subtasks or len(set(subtasks)) != len(subtasks):
            raise ValueError(f"story subtasks {list(subtasks)} must be distinct names from: {', '.join(SUBTASKS)}")
        if int(num_queries) < 1:
            raise ValueError(f"num_queries must be at least 1, got {num_queries}")
        if int(chapters_in_question) < 1:
            raise ValueError(f"chapters_in_question must be at least 1, got {chapters_in_question}")
        if not str(protagonist).strip():
            raise ValueError("protagonist must be a non-empty name")
        if not 0 <= int(conversation_extensions) <= 20:
            raise ValueError(f"conversation_extensions={conversation_extensions} must be in [0, 20]")
        if int(max_new_tokens) < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        self.subtasks = subtasks
        self.num_queries = int(num_queries)
        self.chapters_in_question = int(chapters_in_question)
        self.protagonist = str(protagonist)
        self.conversation_extensions = int(conversation_extensions)
        self.max_new_tokens = int(max_new_tokens)

    def check(self) -> None:
        """Nothing to load: the task is synthetic."""

    # -- prompts --------------------------------------------------------------------------------------------------

    @staticmethod
    def _context(chapters: Sequence[Chapter], without_purchase: frozenset[int] = frozenset(), tail: str = "") -> str:
        return "\n\n".join(ch.text(ch.chapter_id in without_purchase) for ch in chapters) + tail

    def _retrieval(self, base: tuple, chapters: Sequence[Chapter], tail: str) -> tuple[str, tuple[str, ...], dict]:
        rng = stable_rng(*base, "questions", len(chapters))
        q = min(self.num_queries, len(chapters))
        asked = rng.sample(list(chapters), q)
        if q == 3:
            kinds = list(QUERY_KINDS)
            rng.shuffle(kinds)
        else:
            kinds = [rng.choice(QUERY_KINDS) for _ in asked]
        questions, answers = [], []
        for i, (ch, kind) in enumerate(zip(asked, kinds), start=1):
            questions.append(T.RETRIEVAL_QUESTIONS[kind].format(i=i, chapter=ch.chapter_id))
            answers.append({"location": ch.location, "character": ch.character, "item": ch.bought}[kind])
        prompt = T.RETRIEVAL_PROMPT.format(context=self._context(chapters, tail=tail), questions="\n".join(questions))
        meta = {"num_queries": q, "query_chapters": [ch.chapter_id for ch in asked], "query_kinds": kinds}
        return prompt, tuple(answers), meta

    @staticmethod
    def _multihop(base: tuple, chapters: Sequence[Chapter], tail: str) -> tuple[str, tuple[str, ...], dict]:
        rng = stable_rng(*base, "target", len(chapters))
        target = rng.choice(list(chapters[1:]))  # every chapter has one purchase: the first purchase chapter is 1
        previous = chapters[target.chapter_id - 2]
        prompt = T.MULTIHOP_PROMPT.format(context=Story._context(chapters, tail=tail),
                                          question=T.MULTIHOP_QUESTION.format(target_item=target.bought))
        meta = {"target_chapter": target.chapter_id, "target_item": target.bought,
                "answer_chapter": previous.chapter_id}
        return prompt, (previous.bought,), meta

    def _filtering(self, base: tuple, chapters: Sequence[Chapter], tail: str) -> tuple[str, tuple[str, ...], dict]:
        rng = stable_rng(*base, "filtered", len(chapters))
        ids = sorted(rng.sample(range(1, len(chapters) + 1), self.chapters_in_question))
        prompt = T.FILTERING_PROMPT.format(context=self._context(chapters, frozenset(ids), tail),
                                           question=T.FILTERING_QUESTION.format(num_chapters=len(ids)))
        return prompt, tuple(str(i) for i in ids), {"filtered_chapters": ids}

    def _min_chapters(self, subtask: str) -> int:
        return {"retrieval": 1, "multihop": 2, "filtering": self.chapters_in_question + 1}[subtask]

    # -- fitting --------------------------------------------------------------------------------------------------

    def _sample(self, tokenizer, subtask: str, seq_len: int, seed: int, i: int) -> Sample:
        base = ("story", subtask, seq_len, seed, i)
        story = Narrative(stable_rng(*base, "narrative"), self.protagonist, self.conversation_extensions)
        build: Callable[[tuple, Sequence[Chapter], str], tuple[str, tuple[str, ...], dict]] = {
            "retrieval": self._retrieval, "multihop": self._multihop, "filtering": self._filtering}[subtask]
        budget = seq_len - self.max_new_tokens
        n_min = self._min_chapters(subtask)
        cum = [0]  # cum[n]: tokens of the first n chapters with their separators
        while cum[-1] < budget or len(cum) <= n_min:
            start = len(cum) - 1
            chapters = story.chapters(start + max(8, start))
            pieces = ["\n\n" + ch.text() for ch in chapters[start:]]
            if getattr(tokenizer, "is_fast", False):
                lengths = [len(ids) for ids in tokenizer(pieces, add_special_tokens=False)["input_ids"]]
            else:
                lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in pieces]
            for length in lengths:
                cum.append(cum[-1] + length)
        built: dict[int, tuple[str, tuple[str, ...], dict]] = {}

        def render(n: int) -> str:
            if n not in built:
                built[n] = build(base, story.chapters(n), "")
            return built[n][0]

        fixed = count_tokens(tokenizer, render(n_min)) - cum[n_min]
        if fixed + cum[n_min] > budget:
            raise ValueError(f"seq_len={seq_len} is too small for story_{subtask}: the instructions and {n_min} "
                             f"chapter(s) take {fixed + cum[n_min]} tokens plus max_new_tokens="
                             f"{self.max_new_tokens}")
        n, prompt, total = fit_largest(render, cum.__getitem__, tokenizer, budget, n_min, len(cum) - 1)
        _, targets, meta = built[n]
        fill = 0
        if total + self.max_new_tokens < LENGTH_FLOOR * seq_len:
            # Deviation (upstream stops at whole chapters): a chapter can be wider than the 10% slack at short
            # lengths, so atmosphere sentences, which change no answer, are appended to the last chapter.
            order = list(EXTRAS)
            stable_rng(*base, "fill", n).shuffle(order)

            def tail(k: int) -> str:
                return "".join(" " + order[j % len(order)] for j in range(k))

            lo, hi = 0, 64
            while lo < hi:  # the most sentences that still fit
                mid = (lo + hi + 1) // 2
                if count_tokens(tokenizer, build(base, story.chapters(n), tail(mid))[0]) <= budget:
                    lo = mid
                else:
                    hi = mid - 1
            if lo:
                fill = lo
                prompt, targets, meta = build(base, story.chapters(n), tail(lo))
                total = count_tokens(tokenizer, prompt)
        if total + self.max_new_tokens < LENGTH_FLOOR * seq_len:
            raise ValueError(f"story_{subtask} cannot reach {LENGTH_FLOOR:.0%} of seq_len={seq_len}: the closest fit "
                             f"has {total + self.max_new_tokens} tokens")
        return Sample(
            id=f"story/{subtask}/L{seq_len}/s{seed}/{i}",
            subtask=subtask,
            prompt=prompt,
            targets=targets,
            max_new_tokens=self.max_new_tokens,
            input_tokens=total,
            meta={"n_chapters": n, "fill_sentences": fill, **meta},
        )

    def samples(self, tokenizer, seq_len: int, n: int, seed: int) -> Iterator[Sample]:
        """n samples per subtask, subtask by subtask; sample i is a pure function of (subtask, seq_len, seed, i)."""
        for subtask in self.subtasks:
            for i in range(n):
                yield self._sample(tokenizer, subtask, seq_len, seed, i)

    def score(self, sample: Sample, output: str) -> dict[str, float]:
        """retrieval: accuracy over the numbered answers; multihop: exact match (as accuracy); filtering: IoU."""
        if sample.subtask == "retrieval":
            return {"accuracy": score_retrieval(sample.targets, output)}
        if sample.subtask == "multihop":
            return {"accuracy": score_multihop(sample.targets[0], output)}
        return {"iou": score_filtering(sample.targets, output)}
