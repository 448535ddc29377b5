"""Tests of joint recall (HAX) and MQAR (zoology): token-level generators against upstream, their invariants, and the
text tasks (length rule, determinism, answers present, scoring)."""
from __future__ import annotations

import hashlib
import re
import time

import numpy as np
import pytest
from sparsebench.tasks import TASKS
from sparsebench.tasks.joint_recall import (
    ANSWER_PREFIX,
    BOS,
    KEYS,
    MQAR,
    OFFSET,
    PAD,
    SEP,
    VALUES,
    JointRecall,
    convert_to_hf_dataset,
    iter_joint_recall_splits,
    joint_recall_accuracy,
    joint_recall_pad_len,
    joint_recall_tokens,
    mqar_accuracy,
    mqar_tokens,
    normalize_answer,
    parse_numbered_answers,
    power_law_draw,
    score_numbered,
    write_joint_recall_text,
)

from sparsebench.task import LENGTH_FLOOR, Sample, count_tokens


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _ids_text(a) -> str:
    return " ".join(map(str, a.tolist()))


# -- token level: HAX joint recall ------------------------------------------------------------------------------

# sha256 of the space-joined inputs/mask lines that HAX's own `generate_data_item` (scripts/create_dataset.py at
# 73d3c18) writes after `np.random.seed(seed)` with max_n_context = max_n_key = n_value = 16.
HAX_GOLDEN = {
    (5, 5, 1): ("d03e96337d70eb686ef90f7b82a13ae31bbed488ed08a262b795d227c6a71107",
                "82df2f9abe5252d9d91adccc5eaf3dcc2e8852d79d9f084f2e0189d3ae6b3cff"),
    (16, 16, 7): ("fe5252557129e357fe8ff490471bd824a9c1f7fb175f7b48664129b8056664ce",
                  "6ace6ab1740075cca53f7fffd706332d641e1e0f476ccc7eb8f4b6c86bf82bd3"),
}
# sha256 of HAX's six text files (train/valid/test x inputs/mask, in that order) from `prepare_data` with
# max_n_context=6, max_n_key=6, n_value=4, n_train_per_context_key=2, n_test_per_context_key=1, seed=3.
HAX_SPLITS_GOLDEN = "747e65ae68c85aaec53ac6574cba9b6960df3159deb04fafe7e023fb7b88525a"


@pytest.mark.parametrize("n_context, n_key, seed", list(HAX_GOLDEN))
def test_joint_recall_tokens_equal_upstream(n_context, n_key, seed):
    inputs, mask = joint_recall_tokens(n_context, n_key, 16, seed=seed)
    assert (_sha(_ids_text(inputs)), _sha(_ids_text(mask))) == HAX_GOLDEN[(n_context, n_key, seed)]


def decode_jr(inputs, mask, n_value=16, max_n_key=16):
    """Parse a joint-recall sequence back into (first-pass table, second-pass rows, masked positions)."""
    ctx0, key0 = OFFSET + n_value + max_n_key, OFFSET + n_value
    seq = inputs.tolist()
    assert seq[0] == BOS and mask[0] == 0
    sep = seq.index(SEP)
    table, second, masked = {}, [], []
    for part, (lo, hi) in enumerate(((1, sep), (sep + 1, len(seq)))):
        c = None
        t = lo
        while t < hi and seq[t] != PAD:
            tok = seq[t]
            if tok >= ctx0:
                c = tok - ctx0
                assert mask[t] == 0
                t += 1
                continue
            assert key0 <= tok < ctx0 and OFFSET <= seq[t + 1] < key0, (t, tok, seq[t + 1])
            k, v = tok - key0, seq[t + 1] - OFFSET
            if part == 0:
                assert (c, k) not in table
                table[(c, k)] = v
            else:
                second.append((c, k, v))
                masked.append(t)
            assert mask[t + 1] == 0
            t += 2
        end = t
    return table, second, masked, sep, end


@pytest.mark.parametrize("n_context, n_key, n_value, seed", [(5, 5, 16, 0), (16, 16, 16, 1), (7, 11, 4, 2),
                                                             (1, 1, 16, 3), (16, 5, 16, 4)])
def test_joint_recall_layout_mask_padding(n_context, n_key, n_value, seed):
    inputs, mask = joint_recall_tokens(n_context, n_key, n_value, seed=seed)
    pad_len = joint_recall_pad_len()
    assert pad_len == 1058 and inputs.shape == mask.shape == (pad_len,)
    table, second, masked, sep, end = decode_jr(inputs, mask, n_value)
    block = 1 + 2 * n_key
    assert sep == 1 + n_context * block and end == sep + 1 + n_context * block
    # the value table is complete and the second pass asks every cell once, answered with V[c, k]
    assert set(table) == {(c, k) for c in range(n_context) for k in range(n_key)}
    assert sorted((c, k) for c, k, _ in second) == sorted(table)
    assert all(v == table[(c, k)] for c, k, v in second)
    assert all(0 <= v < n_value for v in table.values())
    # the mask is 1 exactly on the second pass's key tokens: the next token is the value to recall
    assert np.flatnonzero(mask).tolist() == masked and mask.sum() == n_context * n_key
    assert all(inputs[t + 1] == OFFSET + table[(c, k)] for t, (c, k, _) in zip(masked, second))
    # padding
    assert (inputs[end:] == PAD).all() and (mask[end:] == 0).all()
    assert (inputs[:end] != PAD).all()


def test_joint_recall_full_size_fills_pad_len_exactly():
    inputs, _ = joint_recall_tokens(16, 16, seed=0)
    assert PAD not in inputs.tolist()


def test_joint_recall_value_depends_on_context():
    """Across contexts the same key takes different values: the key alone does not determine the answer."""
    inputs, mask = joint_recall_tokens(16, 16, seed=5)
    table = decode_jr(inputs, mask)[0]
    assert sum(len({table[(c, k)] for c in range(16)}) > 1 for k in range(16)) == 16


def test_joint_recall_bad_args():
    with pytest.raises(ValueError, match="n_context=17"):
        joint_recall_tokens(17, 5)
    with pytest.raises(ValueError, match="n_key=0"):
        joint_recall_tokens(5, 0)
    with pytest.raises(ValueError, match="min_n=7"):
        next(iter_joint_recall_splits(max_n_context=6, max_n_key=6, min_n=7))


def test_joint_recall_splits_equal_upstream(tmp_path):
    kwargs = dict(max_n_context=6, max_n_key=6, n_value=4, n_train_per_context_key=2, n_test_per_context_key=1,
                  seed=3)
    paths = write_joint_recall_text(tmp_path, **kwargs)
    h = hashlib.sha256()
    for split in ("train", "valid", "test"):
        for p in paths[split]:
            h.update(p.read_bytes())
    assert h.hexdigest() == HAX_SPLITS_GOLDEN
    assert paths["train"][0].name == "max_n_context_6_max_n_key_6_seed_3_train_inputs.txt"


def test_joint_recall_splits_reject_duplicates(monkeypatch):
    """No sequence repeats across splits, in a space small enough (64 sequences) that draws collide."""
    import sparsebench.tasks.joint_recall as jr

    calls = []
    item = jr.joint_recall_item
    monkeypatch.setattr(jr, "joint_recall_item", lambda *a, **k: calls.append(1) or item(*a, **k))
    seqs = [(split, _ids_text(x)) for split, x, _ in iter_joint_recall_splits(
        max_n_context=2, max_n_key=2, n_value=1, n_train_per_context_key=20, n_test_per_context_key=5, min_n=2)]
    assert [sp for sp, _ in seqs] == ["train"] * 20 + ["valid"] * 5 + ["test"] * 5
    assert len({x for _, x in seqs}) == 30
    assert len(calls) > 30  # duplicates were drawn and rejected


def test_joint_recall_exhausted_space_raises(monkeypatch):
    import sparsebench.tasks.joint_recall as jr

    monkeypatch.setattr(jr, "_MAX_DUPLICATE_DRAWS", 200)
    # n_context = n_key = 1 with two values: only two distinct sequences exist
    with pytest.raises(ValueError, match="duplicates in a row"):
        list(iter_joint_recall_splits(max_n_context=1, max_n_key=1, n_value=2, n_train_per_context_key=3,
                                      n_test_per_context_key=0, min_n=1))


def test_convert_to_hf_dataset_takes_its_argument(tmp_path):
    kwargs = dict(max_n_context=5, max_n_key=6, n_value=16, n_train_per_context_key=2, n_test_per_context_key=1,
                  seed=2)
    write_joint_recall_text(tmp_path, **kwargs)
    ds = convert_to_hf_dataset(tmp_path, max_n_context=5, max_n_key=6, seed=2)
    assert set(ds) == {"train", "validation", "test"}
    assert (len(ds["train"]), len(ds["validation"]), len(ds["test"])) == (4, 2, 2)
    assert ds["train"].features["inputs"].feature.dtype == "int32"
    assert ds["train"].features["mask"].feature.dtype == "int8"
    first = next(iter_joint_recall_splits(**kwargs))
    assert ds["train"][0]["inputs"] == first[1].tolist() and ds["train"][0]["mask"] == first[2].tolist()
    from datasets import load_from_disk

    assert load_from_disk(str(tmp_path))["test"][1]["inputs"] == ds["test"][1]["inputs"]
    with pytest.raises(FileNotFoundError, match="seed_9"):
        convert_to_hf_dataset(tmp_path, max_n_context=5, max_n_key=6, seed=9, save=False)


def test_joint_recall_accuracy_is_haxs_masked_mean():
    a_in, a_mask = joint_recall_tokens(5, 5, seed=0)
    b_in, b_mask = joint_recall_tokens(6, 5, seed=1)
    inputs, mask = np.stack([a_in, b_in]), np.stack([a_mask, b_mask])
    perfect = np.concatenate([inputs[:, 1:], np.full((2, 1), PAD)], axis=1)
    assert joint_recall_accuracy(perfect, inputs, mask) == 1.0
    wrong = perfect.copy()
    wrong[1, np.flatnonzero(b_mask)[:3]] = 0  # 3 of sequence b's 30 masked answers wrong
    assert joint_recall_accuracy(wrong, inputs, mask) == pytest.approx((1.0 + 27 / 30) / 2)


# -- token level: zoology MQAR ----------------------------------------------------------------------------------

# sha256 of inputs / labels (int64 bytes) from zoology's `multiquery_ar` (d88d6f5), random_non_queries=False
# (with it True upstream draws from torch's unseeded global RNG).
ZOO_GOLDEN = ("9ae546a633c20db72ef643c3fd19b9f4cd75811e0baa43b057e6cebbead0ee33",
              "85f36775ae7128389280b7ca73f80f01e6804a8da573457343c4b300d5af3526")


def test_mqar_tokens_equal_upstream():
    inputs, labels = mqar_tokens(vocab_size=8192, num_examples=20, input_seq_len=256, seed=11, power_a=0.01,
                                 num_kv_pairs=16, random_non_queries=False)
    assert (hashlib.sha256(inputs.tobytes()).hexdigest(), hashlib.sha256(labels.tobytes()).hexdigest()) == ZOO_GOLDEN


@pytest.mark.parametrize("passes, rnq", [(1, False), (1, True), (2, False), (3, True)])
def test_mqar_invariants(passes, rnq):
    V, L, K = 512, 128, 8
    inputs, labels = mqar_tokens(vocab_size=V, num_examples=50, input_seq_len=L, seed=5, num_kv_pairs=K,
                                 num_passes=passes, random_non_queries=rnq)
    assert inputs.shape == labels.shape == (50, L) and inputs.dtype == labels.dtype == np.int64
    ctx = 2 * K * passes
    for x, y in zip(inputs, labels):
        keys, values = x[0:2 * K:2], x[1:2 * K:2]
        assert len(set(keys.tolist())) == K and len(set(values.tolist())) == K
        assert ((1 <= keys) & (keys < V // 2)).all() and ((V // 2 <= values) & (values < V)).all()
        assert (x[:ctx] == np.tile(x[:2 * K], passes)).all()
        pos = np.flatnonzero(y != -100)
        assert len(pos) == K and (pos >= ctx).all() and ((pos - ctx) % 2 == 0).all()
        kv = dict(zip(keys.tolist(), values.tolist()))
        assert sorted(x[pos].tolist()) == sorted(keys.tolist())  # every key queried once
        assert all(y[t] == kv[x[t]] for t in pos)  # label at a query = the key's value
        rest = np.setdiff1d(np.arange(ctx, L), pos)
        if not rnq:
            assert (x[rest] == 0).all()
    if rnq:
        assert (inputs[:, ctx:] != 0).mean() > 0.99  # zeros replaced by random tokens
        again = mqar_tokens(vocab_size=V, num_examples=50, input_seq_len=L, seed=5, num_kv_pairs=K,
                            num_passes=passes, random_non_queries=rnq)
        assert (again[0] == inputs).all()  # deterministic: the fill uses the seeded RandomState


def test_mqar_power_law_placement():
    K, L = 16, 1024
    space = (L - 2 * K) // 2

    def gaps(power_a):
        _, labels = mqar_tokens(vocab_size=8192, num_examples=200, input_seq_len=L, seed=0, power_a=power_a,
                                num_kv_pairs=K, random_non_queries=False)
        return (np.argwhere(labels != -100)[:, 1] - 2 * K) // 2

    steep, flat = gaps(0.01), gaps(1.0)
    assert np.median(steep) < space / 8 and (steep < 10).mean() > 0.25  # most queries soon after the pairs
    assert abs(np.median(flat) - space / 2) < space * 0.1  # power_a = 1 is uniform
    assert steep.max() > space / 2  # but long distances still happen


@pytest.mark.parametrize("kw, match", [(dict(input_seq_len=63), "even"), (dict(vocab_size=64), "larger"),
                                       (dict(num_kv_pairs=40), "do not fit"), (dict(power_a=0), "power_a")])
def test_mqar_bad_args(kw, match):
    args = dict(vocab_size=8192, num_examples=2, input_seq_len=128, seed=0, num_kv_pairs=8) | kw
    with pytest.raises(ValueError, match=match):
        mqar_tokens(**args)


def test_mqar_accuracy():
    labels = np.array([[-100, 5, -100, 7], [9, -100, -100, -100]])
    assert mqar_accuracy(np.array([[0, 5, 0, 0], [9, 1, 1, 1]]), labels) == pytest.approx(2 / 3)


def test_power_law_draw_is_distinct_and_skewed():
    import random

    draws = [power_law_draw(random.Random(s), 500, 16, 0.01) for s in range(50)]
    assert all(len(set(d)) == 16 for d in draws)
    flat = [g for d in draws for g in d]
    assert np.median(flat) < 125
    assert sorted(power_law_draw(random.Random(0), 16, 16, 0.01)) == list(range(16))


# -- text tasks: construction -----------------------------------------------------------------------------------


def test_registry_and_keyword_only():
    assert TASKS.get("joint_recall") is JointRecall and TASKS.get("mqar") is MQAR
    with pytest.raises(TypeError):
        JointRecall(16)  # type: ignore[misc]


@pytest.mark.parametrize("cls, kw, match", [
    (JointRecall, dict(max_n_key=65), "max_n_key=65"), (JointRecall, dict(min_n_key=17), "min_n_key=17"),
    (JointRecall, dict(n_value=33), "n_value=33"), (JointRecall, dict(num_queries=0), "num_queries"),
    (MQAR, dict(power_a=1.5), "power_a=1.5"), (MQAR, dict(max_new_tokens=0), "max_new_tokens")])
def test_bad_knobs(cls, kw, match):
    with pytest.raises(ValueError, match=match):
        cls(**kw)


def test_seq_len_too_small(byte_tok):
    with pytest.raises(ValueError, match="seq_len=300 is too small for joint_recall"):
        next(JointRecall().samples(byte_tok, 300, 1, 0))
    with pytest.raises(ValueError, match="seq_len=300 is too small for mqar"):
        next(MQAR().samples(byte_tok, 300, 1, 0))


# -- text tasks: prompts ----------------------------------------------------------------------------------------


def assert_length_rule(tok, s: Sample, seq_len: int):
    assert s.input_tokens == count_tokens(tok, s.prompt)
    assert LENGTH_FLOOR * seq_len <= s.input_tokens + s.max_new_tokens <= seq_len, (s.id, s.input_tokens)


def parse_jr_prompt(prompt: str):
    """contexts in listing order -> {key: value}; and the question section's (number, context, key) in order."""
    facts_part, _, question_part = prompt.partition("Now give the value of each key below")
    contexts = {}
    for block in re.findall(r"Context (\w+):\n((?:[a-z]+: [a-z]+\n?)+)", facts_part):
        name, body = block
        assert name not in contexts
        contexts[name] = dict(line.split(": ") for line in body.strip().split("\n"))
    questions, current = [], None
    for line in question_part.split("\n"):
        if m := re.fullmatch(r"Context (\w+):", line):
            current = m.group(1)
        elif m := re.fullmatch(r"(\d+)\. ([a-z]+)", line):
            questions.append((int(m.group(1)), current, m.group(2)))
    return contexts, questions


def check_jr_sample(s: Sample):
    contexts, questions = parse_jr_prompt(s.prompt)
    meta = s.meta
    assert len(contexts) == meta["n_context"] >= 2
    keysets = {tuple(sorted(kv)) for kv in contexts.values()}
    assert len(keysets) == 1 and len(next(iter(keysets))) == meta["n_key"]  # every context lists the same keys
    assert set(next(iter(keysets))) <= set(KEYS)
    assert {v for kv in contexts.values() for v in kv.values()} <= set(VALUES[: meta["n_value"]])
    assert [q[0] for q in questions] == list(range(1, meta["num_queries"] + 1))
    assert len({(c, k) for _, c, k in questions}) == len(questions)  # distinct cells
    # the question section groups by context: each context's questions are consecutive
    order = [c for _, c, _ in questions]
    assert len(set(order)) == len([c for i, c in enumerate(order) if i == 0 or order[i - 1] != c])
    assert s.targets == tuple(contexts[c][k] for _, c, k in questions)
    assert meta["queries"] == [[c, k] for _, c, k in questions]
    assert s.prompt.endswith(ANSWER_PREFIX) and meta["answer_prefix"] == ANSWER_PREFIX


def check_mqar_sample(s: Sample):
    facts_part, _, question_part = s.prompt.partition("Now give the value of each key below")
    pairs = re.findall(r"^([a-z]+): (\d{5})$", facts_part, re.MULTILINE)
    assert len(pairs) == s.meta["num_kv_pairs"]
    keys = [k for k, _ in pairs]
    assert len(set(keys)) == len(keys) and len({v for _, v in pairs}) == len(pairs)
    kv = dict(pairs)
    asked = re.findall(r"^(\d+)\. ([a-z]+)$", question_part, re.MULTILINE)
    assert [int(i) for i, _ in asked] == list(range(1, s.meta["num_queries"] + 1))
    assert s.targets == tuple(kv[k] for _, k in asked)
    assert s.meta["query_distances"] == [len(keys) - 1 - keys.index(k) for _, k in asked]
    assert s.prompt.endswith(ANSWER_PREFIX)


@pytest.mark.parametrize("seq_len", [2048, 8192])
def test_gemma_length_rule_and_answers(gemma_tokenizer, seq_len):
    for task, check in ((JointRecall(), check_jr_sample), (MQAR(), check_mqar_sample)):
        for s in task.samples(gemma_tokenizer, seq_len, 2, seed=0):
            assert_length_rule(gemma_tokenizer, s, seq_len)
            check(s)


@pytest.mark.parametrize("seq_len", [1024, 1536, 4096])
def test_byte_tokenizer_length_rule(byte_tok, seq_len):
    for task, check in ((JointRecall(), check_jr_sample), (MQAR(num_queries=4), check_mqar_sample)):
        for s in task.samples(byte_tok, seq_len, 2, seed=1):
            assert_length_rule(byte_tok, s, seq_len)
            check(s)


def test_short_prompts_lower_keys_per_context(byte_tok):
    s = next(JointRecall(num_queries=4).samples(byte_tok, 1024, 1, seed=1))
    assert 5 <= s.meta["n_key"] < 16  # whole 16-key blocks are wider than the 10% slack here
    check_jr_sample(s)


@pytest.mark.parametrize("cls", [JointRecall, MQAR])
def test_deterministic(byte_tok, cls):
    a = [s.prompt_sha256 for s in cls().samples(byte_tok, 2048, 3, seed=4)]
    b = [s.prompt_sha256 for s in cls().samples(byte_tok, 2048, 3, seed=4)]
    c = [s.prompt_sha256 for s in cls().samples(byte_tok, 2048, 3, seed=5)]
    assert a == b and len(set(a)) == 3 and not set(a) & set(c)
    ids = [s.id for s in cls().samples(byte_tok, 2048, 2, seed=4)]
    assert ids == [f"{cls.name}/L2048/s4/{i}" for i in range(2)]


def test_mqar_text_power_law(byte_tok):
    steep = [d for s in MQAR(power_a=0.01).samples(byte_tok, 8192, 4, seed=0) for d in s.meta["query_distances"]]
    flat = [d for s in MQAR(power_a=1.0).samples(byte_tok, 8192, 4, seed=0) for d in s.meta["query_distances"]]
    assert np.median(steep) < np.median(flat) / 2


def test_gemma_32k_speed(gemma_tokenizer):
    for task in (JointRecall(), MQAR()):
        list(task.samples(gemma_tokenizer, 1024, 1, seed=0))  # per-tokenizer piece counts are computed once
        start = time.perf_counter()
        samples = list(task.samples(gemma_tokenizer, 32768, 2, seed=0))
        assert (time.perf_counter() - start) / 2 < 1.0
        for s in samples:
            assert_length_rule(gemma_tokenizer, s, 32768)


# -- text tasks: scoring ----------------------------------------------------------------------------------------


def _sample(targets):
    return Sample(id="x", subtask="joint_recall", prompt="p" + ANSWER_PREFIX, targets=tuple(targets),
                  max_new_tokens=8, input_tokens=1)


@pytest.mark.parametrize("output, expected", [
    (" red\n2. blue\n3. green", 1.0),
    (" Red.\n2) BLUE\n3: green!", 1.0),  # case, trailing punctuation, ')' and ':' numbering
    (" lamp: red\n2. Context Ab, river = blue\n3. -> green", 1.0),  # echoed question before ':', '=' or '->'
    (" **red**\n2. \"blue\"\n3. `green`", 1.0),  # markdown and quotes
    (" red\n2. green\n3. blue", 1 / 3),
    (" red\n3. green", 2 / 3),  # question 2 unanswered counts as wrong
    (" red\n2. blue\n2. red\n3. green\n1. blue", 1.0),  # the first line per number wins; run-on lines ignored
    (" red\n2. blue\n3. green\n\nQuestions:\n4. purple", 1.0),
    ("", 0.0),
    (" red blue green", 0.0),  # one answer line: not the value
    ("\n2. blue", 1 / 3),  # "1." followed by nothing: an empty answer to question 1
    (" reddish\n2. blue\n3. green", 2 / 3),  # exact match, not substring
])
def test_score_golden(output, expected):
    s = _sample(["red", "blue", "green"])
    assert JointRecall().score(s, output) == {"accuracy": pytest.approx(expected)}
    assert MQAR().score(s, output) == {"accuracy": pytest.approx(expected)}


def test_score_numbers_and_parsing_helpers():
    assert score_numbered(["48213", "90021"], " 48213\n2. 90,021") == 0.5
    assert parse_numbered_answers("x\n 1. a\n10) b\nno\n3 : c") == {1: "a", 10: "b", 3: "c"}
    assert normalize_answer("  Key -> 'Blue'. ") == "blue"


def test_perfect_answers_score_one(gemma_tokenizer):
    for task in (JointRecall(), MQAR()):
        s = next(task.samples(gemma_tokenizer, 2048, 1, seed=2))
        answer = " " + "\n".join(f"{i}. {t}" if i > 1 else t for i, t in enumerate(s.targets, start=1))
        assert task.score(s, answer) == {"accuracy": 1.0}
