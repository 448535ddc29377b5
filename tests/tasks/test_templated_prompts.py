"""Prompts under a chat template: the tokens a task counts (`input_tokens`, the length rule) are the tokens the run
feeds, where `render_prompt` moves the answer prefix out of the user turn into the assistant turn."""
from __future__ import annotations

import pytest

from sparsebench.models import TemplatedTokenizer, byte_tokenizer, render_prompt
from sparsebench.task import LENGTH_FLOOR
from sparsebench.tasks.joint_recall import MQAR, JointRecall
from sparsebench.tasks.niah import NIAH
from sparsebench.tasks.ruler import Ruler

TINY_TEMPLATE = ("{{ bos_token }}<|user|>{{ messages[0]['content'] }}<|end|>"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def fed_tokens(tok, sample) -> int:
    """What sparsebench.run's `encode` feeds the model for a sample when model.chat_template=auto is active."""
    raw = sample.meta.get("raw_prompt", False) or sample.meta.get("chat_template") is False
    text = render_prompt(tok, sample.prompt, sample.meta.get("answer_prefix", ""), "none" if raw else "auto")
    return len(tok(text, add_special_tokens=raw)["input_ids"])


def assert_fed_as_counted(tok, samples, seq_len):
    assert samples
    for s in samples:
        fed = fed_tokens(tok, s)
        assert fed + s.max_new_tokens <= seq_len, (s.id, fed, s.max_new_tokens, seq_len)
        assert fed == s.input_tokens, (s.id, fed, s.input_tokens)


@pytest.fixture(scope="module")
def tiny_chat():
    tok = byte_tokenizer()
    tok.chat_template = TINY_TEMPLATE
    return tok


@pytest.fixture(scope="module")
def gemma_chat(gemma_tokenizer):
    import copy

    tok = copy.deepcopy(gemma_tokenizer)  # the session fixture is shared: leave its (absent) chat template alone
    tok.chat_template = TINY_TEMPLATE
    return tok


def test_answer_prefix_with_a_trailing_space_stays_within_the_budget(tiny_chat):
    """RULER vt's answer prefix ends in a space ("... they are: "). Counted inside the user turn, the template's
    rstrip dropped that space; fed after the assistant header it is kept, one token more than counted: at this
    length the byte-level prompt filled the budget exactly, so the model got seq_len + 1 tokens."""
    samples = list(Ruler(subtasks=("vt",)).samples(TemplatedTokenizer(tiny_chat, "auto"), 2044, 1, 0))
    assert samples[0].meta["answer_prefix"].endswith(": ")
    assert_fed_as_counted(tiny_chat, samples, 2044)


@pytest.mark.parametrize("make", [
    lambda: NIAH(haystack="noise", depths=(0, 50, 100)),
    JointRecall,
    MQAR,
    lambda: Ruler(subtasks=("niah_single_1", "niah_multivalue", "vt", "cwe", "fwe")),
], ids=["niah", "joint_recall", "mqar", "ruler"])
@pytest.mark.parametrize("tokenizer", ["byte", "gemma"])
def test_tasks_count_what_the_run_feeds(request, make, tokenizer):
    """Byte-level tokens differ only where whitespace is stripped; gemma's also where the turn boundary sits between
    the question and the answer prefix (joint recall's "\n\nAnswers:\n1." counted one token too many there)."""
    tok = request.getfixturevalue("tiny_chat" if tokenizer == "byte" else "gemma_chat")
    view = TemplatedTokenizer(tok, "auto")
    for seq_len in (2048, 8192):
        samples = list(make().samples(view, seq_len, 1, 0))
        assert_fed_as_counted(tok, samples, seq_len)
        assert all(s.input_tokens + s.max_new_tokens >= LENGTH_FLOOR * seq_len for s in samples)



@pytest.mark.parametrize("tokenizer", ["byte", "gemma"])
def test_niah_depth_tokens_leave_the_template_out(request, tokenizer):
    """NIAH's `depth_tokens` counts the task's prompt before the needle (BOS included), never the chat template's
    tokens: the same count as without a template, and the needle sits there in the fed ids after the template's
    header."""
    from sparsebench.task import count_tokens
    from sparsebench.tasks.niah import INSTRUCTION

    tok = request.getfixturevalue("tiny_chat" if tokenizer == "byte" else "gemma_chat")
    samples = list(NIAH(haystack="noise", depths=(0, 50, 100)).samples(TemplatedTokenizer(tok, "auto"), 2048, 1, 0))
    for s in samples:
        needle_at = s.prompt.index("One of the special magic numbers")
        assert s.meta["depth_tokens"] == count_tokens(tok, s.prompt[:needle_at].rstrip(" ")), s.id
        text = render_prompt(tok, s.prompt, s.meta["answer_prefix"], "auto")
        ids = tok(text, add_special_tokens=False)["input_ids"]
        header = len(tok(text[:text.index(INSTRUCTION)], add_special_tokens=False)["input_ids"])
        at = header + s.meta["depth_tokens"] - 1  # depth_tokens counts BOS, which the header already holds
        assert tok.decode(ids[at:at + 40]).lstrip().startswith("One of the special magic numbers"), s.id
