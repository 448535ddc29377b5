"""Tests of The Sparse Frontier's story tasks: vendored templates, narrative invariants, length rule, answers,
determinism, and the scorers (upstream's rules, without its dropped-sample bug)."""
from __future__ import annotations

import hashlib
import random
import re
import time

import pytest
from sparsebench.tasks import TASKS
from sparsebench.tasks.story import (
    SUBTASKS,
    Story,
    filtering_ids,
    normalize_answer,
    retrieval_answers,
    score_filtering,
    score_multihop,
    score_retrieval,
)
from sparsebench.tasks.story import narrative as N
from sparsebench.tasks.story import templates as T

from sparsebench.task import LENGTH_FLOOR, Sample, count_tokens

# sha256 of upstream's strings (sparse-frontier 31d86c1: the PROMPT / QUESTION constants of story/retrieval.py,
# multihop.py and filtering.py, built from abstract_prompt.py and story/templates.py).
UPSTREAM_SHA256 = {
    "RETRIEVAL_PROMPT": "37fa0a217305c7560e31949c2e7291acd43df7ac16efe079eb1a381b5b3cc70d",
    "MULTIHOP_PROMPT": "9b85dd5715e7e9d1960885e823a2cb8e120580eecf72820fe4a67d1aca99d614",
    "FILTERING_PROMPT": "fd4cf4f8a56952b8ac057a7d8b676960d66675ad556a0c99963ae91d8b21ca83",
    "MULTIHOP_QUESTION": "1b0e66024b5700ab7298e53b79969ac2951b0f14f81d10ab493b24a3ee97e479",
    "FILTERING_QUESTION": "32ccd0069a938abf9e7cd360f51bdc7d3948067a297371a5225dcc47fe0d0b24",
}


@pytest.mark.parametrize("name", sorted(UPSTREAM_SHA256))
def test_templates_are_upstreams(name):
    assert hashlib.sha256(getattr(T, name).encode()).hexdigest() == UPSTREAM_SHA256[name]


def test_word_list_sizes():
    assert len(set(N.LOCATIONS)) == len(N.LOCATIONS) == 64
    assert len(set(N.CHARACTERS)) == len(N.CHARACTERS) == 49
    assert (len(set(N.ITEM_ADJECTIVES)), len(set(N.ITEM_MATERIALS)), len(set(N.ITEM_TYPES))) == (18, 15, 21)
    assert len(set(N.CONVERSATIONS)) == len(N.CONVERSATIONS) >= 3


# -- the narrative ----------------------------------------------------------------------------------------------


FIELDS = {"{item}": r"an? (?P<item>[a-z]+ [a-z]+ [a-z]+)", "{p}": "Arion", "{c}": r"\w+"}


def _template_regex(template: str) -> re.Pattern:
    return re.compile("".join(FIELDS.get(part, re.escape(part)) for part in re.split(r"(\{\w+\})", template)))


PURCHASE_RES = [_template_regex(t) for t in N.PURCHASES]


def purchases(text: str) -> list[str]:
    """Items bought in a chapter's text, read back with the purchase templates."""
    return [m.group("item") for r in PURCHASE_RES for m in r.finditer(text)]


def test_narrative_invariants():
    story = N.Narrative(random.Random(3), "Arion", 3)
    chapters = story.chapters(300)
    assert [c.chapter_id for c in chapters] == list(range(1, 301))
    assert len({(c.location, c.character) for c in chapters}) == 300  # unique pairs
    assert len({c.bought for c in chapters}) == 300  # one new unique item per chapter
    inventory: list[str] = []
    sales = 0
    for c in chapters:
        text = c.text()
        assert text.startswith(f"Chapter {c.chapter_id}:\n") and c.location in text and c.character in text
        assert c.event in text
        assert c.sentences[c.purchase].count(c.bought) == 1 and text.count(c.bought) == 1
        assert sum(bool(re.search(r"\b(bought|purchased|paid|acquired|obtained|took home)\b", s))
                   for s in c.sentences) >= 1
        assert len(c.sentences) == 11 + (c.sold is not None)  # 3 scene + intro + 3 talk + buy [+ sell] + 3 closing
        assert purchases(text) == [c.bought]
        inventory.append(c.bought)
        if c.sold is not None:
            sales += 1
            assert c.sold in inventory[:-1]  # only an older item that is still owned is sold
            inventory.remove(c.sold)
            assert f"the {c.sold}" in text
    assert 100 < sales < 200  # probability 0.5 once the inventory is non-empty
    # chapter i does not depend on how many chapters follow it
    assert [c.text() for c in N.Narrative(random.Random(3)).chapters(5)] == [c.text() for c in chapters[:5]]
    assert "Chapter 2:" not in chapters[0].text(without_purchase=True)
    assert chapters[0].bought not in chapters[0].text(without_purchase=True)


def test_narrative_bad_conversation_count():
    with pytest.raises(ValueError, match="conversation_extensions=21"):
        N.Narrative(random.Random(0), conversation_extensions=21)


# -- construction -----------------------------------------------------------------------------------------------


def test_registry_and_keyword_only():
    assert TASKS.get("story") is Story
    with pytest.raises(TypeError):
        Story(["retrieval"])  # type: ignore[misc]


@pytest.mark.parametrize("kw, match", [
    (dict(subtasks=["retreival"]), r"retreival.*retrieval, multihop, filtering"), (dict(subtasks=[]), "subtasks"),
    (dict(subtasks=["multihop", "multihop"]), "distinct"), (dict(num_queries=0), "num_queries"),
    (dict(chapters_in_question=0), "chapters_in_question"), (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(protagonist=" "), "protagonist")])
def test_bad_knobs(kw, match):
    with pytest.raises(ValueError, match=match):
        Story(**kw)


def test_seq_len_too_small(gemma_tokenizer):
    with pytest.raises(ValueError, match="seq_len=1024 is too small for story_retrieval"):
        next(Story().samples(gemma_tokenizer, 1024, 1, 0))


# -- prompts ----------------------------------------------------------------------------------------------------


def chapters_of(prompt: str) -> dict[int, str]:
    context = prompt.split("<context>\n", 1)[1].split("\n</context>", 1)[0]
    parts = re.split(r"(?:^|\n\n)Chapter (\d+):\n", context)
    return {int(parts[i]): parts[i + 1] for i in range(1, len(parts), 2)}


def check_sample(s: Sample, task: Story):
    chapters = chapters_of(s.prompt)
    n = s.meta["n_chapters"]
    assert sorted(chapters) == list(range(1, n + 1))
    assert s.prompt.startswith(T.TASK_INTRO) and "\n<context>\nChapter 1:\n" in s.prompt
    if s.subtask == "retrieval":
        q = s.meta["num_queries"]
        assert q == min(task.num_queries, n) and len(s.targets) == q
        for i, (ch, kind, answer) in enumerate(zip(s.meta["query_chapters"], s.meta["query_kinds"], s.targets), 1):
            question = T.RETRIEVAL_QUESTIONS[kind].format(i=i, chapter=ch)
            assert s.prompt.count(question) == 2  # asked before and after the context
            assert answer in chapters[ch]
        assert len(set(s.meta["query_chapters"])) == q
    elif s.subtask == "multihop":
        target, answer_ch = s.meta["target_chapter"], s.meta["answer_chapter"]
        assert answer_ch == target - 1 >= 1
        question = T.MULTIHOP_QUESTION.format(target_item=s.meta["target_item"])
        assert s.prompt.count(question) == 2
        assert purchases(chapters[target]) == [s.meta["target_item"]]
        assert purchases(chapters[answer_ch]) == [s.targets[0]]  # the purchase right before the target's
    else:
        ids = s.meta["filtered_chapters"]
        assert s.targets == tuple(str(i) for i in ids) and len(ids) == task.chapters_in_question < n
        assert s.prompt.count(T.FILTERING_QUESTION.format(num_chapters=len(ids))) == 2
        for c, text in chapters.items():
            assert len(purchases(text)) == (0 if c in ids else 1), c


def assert_length_rule(tok, s: Sample, seq_len: int):
    assert s.input_tokens == count_tokens(tok, s.prompt)
    assert LENGTH_FLOOR * seq_len <= s.input_tokens + s.max_new_tokens <= seq_len, (s.id, s.input_tokens)


@pytest.mark.parametrize("seq_len", [2048, 8192])
def test_gemma_length_rule_and_answers(gemma_tokenizer, seq_len):
    task = Story()
    samples = list(task.samples(gemma_tokenizer, seq_len, 2, seed=0))
    assert [s.subtask for s in samples] == [sub for sub in SUBTASKS for _ in range(2)]
    for s in samples:
        assert_length_rule(gemma_tokenizer, s, seq_len)
        assert s.max_new_tokens == 1024
        check_sample(s, task)
    if seq_len == 8192:
        assert all(s.meta["num_queries"] == 16 for s in samples if s.subtask == "retrieval")


def test_byte_tokenizer_fills_with_extra_sentences(byte_tok):
    """Byte-level chapters (~700 tokens) are wider than the 10% slack at 4K: atmosphere sentences fill the gap."""
    task = Story(subtasks=["retrieval", "multihop"], max_new_tokens=256)
    samples = list(task.samples(byte_tok, 4096, 3, seed=0))
    for s in samples:
        assert_length_rule(byte_tok, s, 4096)
        check_sample(s, task)
    assert any(s.meta["fill_sentences"] > 0 for s in samples)


def test_deterministic(gemma_tokenizer):
    task = Story(max_new_tokens=256)
    a = [s.prompt_sha256 for s in task.samples(gemma_tokenizer, 4096, 2, seed=1)]
    b = [s.prompt_sha256 for s in Story(max_new_tokens=256).samples(gemma_tokenizer, 4096, 2, seed=1)]
    c = [s.prompt_sha256 for s in task.samples(gemma_tokenizer, 4096, 2, seed=2)]
    assert a == b and len(set(a)) == 6 and not set(a) & set(c)
    ids = [s.id for s in Story(subtasks=["filtering"]).samples(gemma_tokenizer, 4096, 2, seed=1)]
    assert ids == ["story/filtering/L4096/s1/0", "story/filtering/L4096/s1/1"]


def test_three_retrieval_queries_ask_each_kind_once(gemma_tokenizer):
    s = next(Story(subtasks=["retrieval"], num_queries=3).samples(gemma_tokenizer, 8192, 1, seed=0))
    assert sorted(s.meta["query_kinds"]) == ["character", "item", "location"]


def test_gemma_32k_speed(gemma_tokenizer):
    task = Story()
    list(task.samples(gemma_tokenizer, 2048, 1, seed=0))
    start = time.perf_counter()
    samples = list(task.samples(gemma_tokenizer, 32768, 1, seed=0))
    assert (time.perf_counter() - start) / len(samples) < 1.0
    for s in samples:
        assert_length_rule(gemma_tokenizer, s, 32768)


# -- scoring ----------------------------------------------------------------------------------------------------

GOLD3 = ("Athens", "carved bronze bowl", "Dion")


def _s(subtask: str, targets) -> Sample:
    return Sample(id="x", subtask=subtask, prompt="p", targets=tuple(targets), max_new_tokens=8, input_tokens=1)


@pytest.mark.parametrize("output, expected", [
    ("<explanation>x</explanation>\n<answer>\n1. Athens\n2. the Carved  Bronze bowl\n3. dion\n</answer>", 1.0),
    ("1. Athens\n2) carved bronze bowl\n3: Sparta", 2 / 3),  # no <answer> block: the whole output is read
    ("<answer>1. Athens\n1. Sparta\n2. a carved bronze bowl.</answer>", 1 / 3),  # first per number; "bowl." wrong
    ("<ANSWER>\n 1. athens \n</ANSWER><answer>2. carved bronze bowl</answer>", 1 / 3),  # first block only
    ("<answer>\n</answer>\n1. Athens", 0.0),  # an empty first block hides later lines
    ("I do not know.", 0.0),
    ("", 0.0),
])
def test_score_retrieval(output, expected):
    """Cases checked against upstream's RetrievalTask.evaluate (same values)."""
    assert Story().score(_s("retrieval", GOLD3), output) == {"accuracy": pytest.approx(expected)}
    assert score_retrieval(GOLD3, output) == pytest.approx(expected)


@pytest.mark.parametrize("output, expected", [
    ("<answer>Carved Bronze Bowl</answer>", 1.0),
    ("<explanation>..</explanation><answer>the carved bronze bowl</answer>", 1.0),
    ("<answer>a  carved\nbronze bowl</answer>", 1.0),
    ("<answer> carved bronze bowl.</answer>", 0.0),
    ("<answer>jade cup</answer> <answer>carved bronze bowl</answer>", 0.0),
    ("carved bronze bowl", 0.0),  # no answer block: upstream drops the sample, here it is wrong
    ("<answer>\n</answer>", 0.0),  # empty answer: upstream drops the sample, here it is wrong
])
def test_score_multihop(output, expected):
    assert Story().score(_s("multihop", ["carved bronze bowl"]), output) == {"accuracy": expected}


@pytest.mark.parametrize("output, expected", [
    ("<answer>3, 7, 12</answer>", 1.0),
    ("<answer>Chapter 3, Chapter 7 and 9</answer>", 2 / 3),  # "Chapter N" mentions win over bare numbers
    ("<answer>3 7 12 15</answer>", 0.75),
    ("<answer>chapters 3a, 7</answer>", 2 / 3),
    ("3, 7, 12", 0.0),  # no answer block
    ("<answer>none</answer>", 0.0),
    ("", 0.0),  # empty output: upstream drops the sample, here IoU 0
])
def test_score_filtering(output, expected):
    assert Story().score(_s("filtering", ["3", "7", "12"]), output) == {"iou": pytest.approx(expected)}


def test_unparsable_answers_count_as_wrong_in_the_mean():
    """The Sparse Frontier's bug: upstream averages only parsable multihop answers and non-empty filtering outputs,
    so [right, unparsable] scores 1.0 there. Every sample counts here: the mean is 0.5."""
    task = Story()
    mh = [task.score(_s("multihop", ["jade cup"]), o)["accuracy"] for o in ("<answer>jade cup</answer>", "jade cup")]
    fi = [task.score(_s("filtering", ["2", "5", "9"]), o)["iou"] for o in ("<answer>2, 5, 9</answer>", "")]
    assert sum(mh) / len(mh) == 0.5 and sum(fi) / len(fi) == 0.5


def test_scoring_helpers():
    assert normalize_answer("  The   Jade\tCup ") == "jade cup"
    assert normalize_answer("another cup") == "another cup"  # only a whole leading article goes
    assert retrieval_answers("<answer>1) x\n2: y\n 3.z</answer>") == {1: "x", 2: "y", 3: "z"}
    assert filtering_ids("<answer>Chapters: 4, 8</answer>") == {4, 8}
    assert score_multihop("jade cup", "<answer>an jade cup</answer>") == 1.0
    assert score_filtering(["1"], "<answer>1</answer>") == 1.0


def test_perfect_answers_score_one(gemma_tokenizer):
    task = Story()
    for s in task.samples(gemma_tokenizer, 8192, 1, seed=3):
        if s.subtask == "retrieval":
            answer = "<answer>\n" + "\n".join(f"{i}. {t}" for i, t in enumerate(s.targets, 1)) + "\n</answer>"
        else:
            answer = "<answer>" + ", ".join(s.targets) + "</answer>"
        assert set(task.score(s, "<explanation>..</explanation>\n" + answer).values()) == {1.0}
