"""Tests of the RULER suite: knobs, vendored templates, scorers, every subtask's prompts under the length rule with the
real gemma3 tokenizer, determinism, answers present (and really the most frequent for cwe/fwe), QA data sources and
the missing-data semantics of a default run."""
from __future__ import annotations

import collections
import json
import re
import time
from pathlib import Path

import pytest

from sparsebench.task import LENGTH_FLOOR, Sample, count_tokens
from sparsebench.tasks import TASKS
from sparsebench.tasks.ruler import QA_SUBTASKS, SUBTASKS, Ruler
from sparsebench.tasks.ruler import _scoring, _templates
from sparsebench.tasks.ruler import niah as rniah

ASSETS = Path(__file__).resolve().parents[1] / "assets"
SQUAD = ASSETS / "ruler_squad_tiny.json"
HOTPOT = ASSETS / "ruler_hotpotqa_tiny.json"
BUDGETS = {"niah": 128, "vt": 30, "cwe": 120, "fwe": 50, "qa": 32}


@pytest.fixture(scope="module")
def tok(gemma_tokenizer):
    return gemma_tokenizer


@pytest.fixture(scope="module")
def suite():
    return Ruler(squad_path=str(SQUAD), hotpotqa_path=str(HOTPOT))


@pytest.fixture(scope="module")
def generated(tok, suite):
    """Two samples of every subtask at 2K and 8K, generated once for the module."""
    return {seq_len: list(suite.samples(tok, seq_len, 2, seed=0)) for seq_len in (2048, 8192)}


def assert_length_rule(tok, s: Sample, seq_len: int):
    assert s.input_tokens == count_tokens(tok, s.prompt)
    assert LENGTH_FLOOR * seq_len <= s.input_tokens + s.max_new_tokens <= seq_len, (s.id, s.input_tokens, seq_len)


def family_budget(subtask: str) -> int:
    return BUDGETS["niah" if subtask.startswith("niah") else "qa" if subtask.startswith("qa") else subtask]


# -- construction, knobs, registry ----------------------------------------------------------------------------------


def test_registry_and_subtask_list():
    assert TASKS.get("ruler") is Ruler
    assert len(SUBTASKS) == 13 and Ruler().subtasks == SUBTASKS


def test_unknown_subtask_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"'niah_single_4'.*valid subtasks: niah_single_1, .*qa_2"):
        Ruler(subtasks=["niah_single_1", "niah_single_4"])
    with pytest.raises(ValueError, match="valid subtasks"):
        Ruler(subtasks=[])
    with pytest.raises(ValueError, match="twice"):
        Ruler(subtasks=["vt", "vt"])


def test_bad_knobs():
    with pytest.raises(ValueError, match=r"max_new_tokens names unknown subtask\(s\) \['cwee'\]"):
        Ruler(max_new_tokens={"cwee": 10})
    with pytest.raises(ValueError, match="at least 1"):
        Ruler(max_new_tokens={"cwe": 0})
    with pytest.raises(ValueError, match="squad_path and squad_dataset"):
        Ruler(squad_path="a.json", squad_dataset="rajpurkar/squad_v2")
    with pytest.raises(TypeError):
        Ruler(["vt"])  # type: ignore[misc]


def test_budgets_are_upstream_unless_overridden():
    r = Ruler(max_new_tokens={"cwe": 256})
    assert r.max_new_tokens == {s: (256 if s == "cwe" else family_budget(s)) for s in SUBTASKS}


# -- vendored strings -----------------------------------------------------------------------------------------------


def test_vendored_templates_golden():
    t = _templates.TASKS
    assert t["variable_tracking"]["answer_prefix"] == (
        " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are assigned "
        "the value {query}, they are: ")
    assert "assgined" not in json.dumps(t)  # lm-evaluation-harness's typo
    assert t["qa"]["answer_prefix"] == " Answer:"
    assert t["common_words_extraction"]["answer_prefix"] == (
        " Answer: The top 10 words that appear most often in the list are:")
    assert {k: v["tokens_to_generate"] for k, v in t.items()} == {
        "niah": 128, "variable_tracking": 30, "common_words_extraction": 120, "freq_words_extraction": 50, "qa": 32}
    template, prefix, shown = rniah.templates(rniah.SPECS["niah_single_1"])
    assert template.format(type_needle_v=shown, context="C", query="k") == (
        "A special magic number is hidden within the following text. Make sure to memorize it. I will quiz you "
        "about the number afterwards.\nC\nWhat is the special magic number for k mentioned in the provided text?")
    assert prefix.format(type_needle_v=shown, query="k") == (
        " The special magic number for k mentioned in the provided text is")
    template, prefix, shown = rniah.templates(rniah.SPECS["niah_multivalue"])
    assert template.startswith("Some special magic {type_needle_v} are hidden") and shown == "numbers"
    assert prefix.endswith("mentioned in the provided text are")
    assert rniah.DEPTHS[:4] == (0, 3, 5, 8) and rniah.DEPTHS[-1] == 100 and len(rniah.DEPTHS) == 40


# -- scorers --------------------------------------------------------------------------------------------------------


def upstream_string_match_all(preds, refs):  # scripts/eval/synthetic/constants.py, verbatim
    score = sum([sum([1.0 if r.lower() in pred.lower() else 0.0 for r in ref]) / len(ref) for pred, ref in zip(preds, refs)]) / len(preds) * 100
    return round(score, 2)


def upstream_string_match_part(preds, refs):  # scripts/eval/synthetic/constants.py, verbatim
    score = sum([max([1.0 if r.lower() in pred.lower() else 0.0 for r in ref]) for pred, ref in zip(preds, refs)]) / len(preds) * 100
    return round(score, 2)


@pytest.mark.parametrize("pred, refs, expected", [
    ("The numbers are 1234567 and 7654321.", ["1234567", "7654321"], 1.0),
    ("1234567, then nothing", ["1234567", "7654321", "1111111", "2222222"], 0.25),
    ("ABCDE bcdef", ["abcde", "BCDEF", "XYZQW"], 2 / 3),  # case-insensitive
    ("", ["1234567"], 0.0),
])
def test_string_match_all(pred, refs, expected):
    assert _scoring.string_match_all(pred, refs) == pytest.approx(expected)


@pytest.mark.parametrize("pred, refs, upstream, lm_eval", [
    # SQuAD lists every annotator's span; one match is a full score upstream, a fraction in lm-eval's port.
    ("Four hours, every time.", ["every four hours", "four hours"], 1.0, 0.5),
    ("the Broncos", ["Denver Broncos", "Broncos", "Denver"], 1.0, 1 / 3),
    ("Denver Broncos", ["Denver Broncos", "Broncos", "Denver"], 1.0, 1.0),
    ("Carolina Panthers", ["Denver Broncos", "Broncos"], 0.0, 0.0),
])
def test_string_match_part_is_max_not_lm_evals_mean(pred, refs, upstream, lm_eval):
    assert _scoring.string_match_part(pred, refs) == upstream
    assert _scoring.lm_eval_string_match_part(pred, refs) == pytest.approx(lm_eval)


def test_per_sample_means_equal_upstream_corpus_metrics():
    preds = ["alpha beta", "gamma", "", "Delta and ALPHA"]
    refs = [["alpha", "beta"], ["beta", "gamma", "zeta"], ["alpha"], ["alpha", "delta", "omega"]]
    ours_all = sum(_scoring.string_match_all(p, r) for p, r in zip(preds, refs)) / len(preds)
    ours_part = sum(_scoring.string_match_part(p, r) for p, r in zip(preds, refs)) / len(preds)
    assert round(ours_all * 100, 2) == upstream_string_match_all(preds, refs)
    assert round(ours_part * 100, 2) == upstream_string_match_part(preds, refs)


def test_postprocess_and_run_on_outputs():
    assert _scoring.postprocess_pred("  a\tb\x00c \n") == "a\nb\nc"
    r = Ruler()
    qa = Sample(id="x", subtask="qa_1", prompt="p", targets=("every four hours", "four hours"), max_new_tokens=32,
                input_tokens=1, meta={"metric": "string_match_part"})
    # base models run on: upstream scores the whole output, not its first line
    assert r.score(qa, " four\n\nQuestion: when? Answer: four hours") == {"accuracy": 1.0}
    assert r.score(qa, " Four hours.") == {"accuracy": 1.0}
    assert r.score(qa, " five hours") == {"accuracy": 0.0}
    niah = Sample(id="y", subtask="niah_multivalue", prompt="p", targets=("1234567", "7654321"), max_new_tokens=128,
                  input_tokens=1)  # no meta: the subtask decides the metric
    assert r.score(niah, "1234567\x007654321") == {"accuracy": 1.0}
    assert r.score(niah, "1234\x00567") == {"accuracy": 0.0}  # a control character splits the number
    assert r.score(niah, " 7654321 and more") == {"accuracy": 0.5}


# -- every subtask at 2K and 8K with the gemma tokenizer ----------------------------------------------------------


@pytest.mark.parametrize("seq_len", [2048, 8192])
def test_every_subtask_generates_within_the_length_rule(tok, generated, seq_len):
    samples = generated[seq_len]
    assert [s.subtask for s in samples] == [s for s in SUBTASKS for _ in range(2)]
    for s in samples:
        assert_length_rule(tok, s, seq_len)
        assert s.max_new_tokens == family_budget(s.subtask)
        assert s.id == f"ruler/{s.subtask}/L{seq_len}/s0/{s.id.rsplit('/', 1)[1]}"
        assert s.prompt.endswith(s.meta["answer_prefix"]) and s.meta["answer_prefix"]
        assert s.meta["metric"] == ("string_match_part" if s.subtask in QA_SUBTASKS else "string_match_all")
        assert s.meta["haystack_source"] and s.meta["truncation"] == "none"
        if s.subtask != "vt":  # vt's answers are variable names that also appear in the chain, tested below
            body = s.prompt[: -len(s.meta["answer_prefix"])]
            assert any(t in body for t in s.targets), s.id
        # a perfect answer scores 1, an empty one 0
        assert Ruler().score(s, " " + ", ".join(s.targets)) == {"accuracy": 1.0}
        assert Ruler().score(s, "") == {"accuracy": 0.0}
    assert len({s.prompt_sha256 for s in samples}) == len(samples)


def test_deterministic_given_the_seed(tok, generated):
    again = list(Ruler(squad_path=str(SQUAD), hotpotqa_path=str(HOTPOT)).samples(tok, 2048, 2, seed=0))
    assert [s.prompt for s in again] == [s.prompt for s in generated[2048]]
    assert [s.meta for s in again] == [s.meta for s in generated[2048]]
    other = list(Ruler(subtasks=["niah_single_1", "vt", "cwe", "fwe", "qa_1"], squad_path=str(SQUAD))
                 .samples(tok, 2048, 2, seed=1))
    assert not {s.prompt_sha256 for s in other} & {s.prompt_sha256 for s in generated[2048]}


def test_niah_needles_queries_and_haystacks(generated):
    for s in generated[8192]:
        if not s.subtask.startswith("niah"):
            continue
        spec = rniah.SPECS[s.subtask]
        body = s.prompt[: -len(s.meta["answer_prefix"])]
        needles = re.findall(r"One of the special magic (\w+) for (\S+?) is: (\S+?)\.(?=\s|$)", body)
        real = [n for n in needles if n[1] in s.meta["needle_keys"]]
        assert len(real) == max(spec.num_k, spec.num_q) * spec.num_v
        assert {n[0] for n in needles} == {spec.type_v}
        answers = [v for _, k, v in real if k in s.meta["query_keys"]]
        assert sorted(answers) == sorted(s.targets) and len(s.targets) == spec.num_q * spec.num_v
        for k in s.meta["query_keys"]:
            assert k in s.meta["answer_prefix"]
        value = {"numbers": r"[1-9]\d{6}", "uuids": r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"}
        assert all(re.fullmatch(value[spec.type_v], t) for t in s.targets)
        if spec.type_k == "words":
            assert all("-" in k for k in s.meta["needle_keys"])
        lines = body.split("\n")
        if spec.haystack == "noise":
            assert collections.Counter(lines[1:-1]) [_templates.NOISE_HAYSTACK] == s.meta["haystack_units"]
        elif spec.haystack == "needle":
            assert len(needles) == s.meta["haystack_units"] + len(real)  # every other line is a distractor needle
            assert len({k for _, k, _ in needles}) == len(needles)
        else:
            assert s.meta["haystack_source"].startswith("pydoc_data.topics")
            assert len(lines) == 3 and len(s.meta["needle_depths"]) == len(real)
            assert set(s.meta["needle_depths"]) <= set(rniah.DEPTHS)
        singular = spec.num_q * spec.num_v == 1
        assert s.prompt.startswith("A special magic" if singular else "Some special magic")
        assert s.prompt.endswith("provided text is" if singular else "provided text are")
        assert body[s.meta["answer_char_offset"]:].startswith(s.targets[0])


def test_vt_chain_and_in_context_example(generated):
    for s in (x for x in generated[8192] if x.subtask == "vt"):
        value = s.meta["value"]
        names = list(s.targets)
        assert len(names) == 5 and all(re.fullmatch(r"[A-Z]{5}", n) for n in names)
        task = s.prompt[s.prompt.rindex("Memorize and track"):]
        chain = [line for line in task.split("\n") if line.startswith("VAR ")]
        assert chain == [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(4)]
        assert s.meta["answer_prefix"] == (f" Answer: According to the chain(s) of variable assignment in the text "
                                           f"above, 5 variables are assigned the value {value}, they are: ")
        example = s.prompt[: s.prompt.rindex("Memorize and track")]
        assert example.startswith("Memorize and track") and example.endswith("\n\n")
        answer = re.search(r"they are:  ((?:[A-Z]{3} ){4}[A-Z]{3})\n\n$", example).group(1).split()
        ex_chain = [line for line in example.split("\n") if line.startswith("VAR ")]
        assert [line.split()[1] for line in ex_chain] == answer  # the example's chain is answered in order
        assert "12345" not in example  # re-drawn value


def test_cwe_answers_are_the_most_common_words(generated):
    for seq_len, (cr, ucr) in ((2048, (6, 1)), (8192, (30, 3))):
        for s in (x for x in generated[seq_len] if x.subtask == "cwe"):
            task = s.prompt[s.prompt.rindex("Below is a numbered list"):]
            listing = task.split("\n")[1]
            entries = re.findall(r"(\d+)\. (.+?)(?= \d+\. |$)", listing)
            assert [int(i) for i, _ in entries] == list(range(1, len(entries) + 1))
            counts = collections.Counter(w for _, w in entries)
            top = [w for w, _ in counts.most_common(10)]
            assert sorted(top) == sorted(s.targets)
            assert {counts[w] for w in s.targets} == {cr} and set(counts.values()) - {cr} == {ucr}
            assert s.prompt.count("Answer: The top 10 words") == 2  # the answered few-shot example, then the task
            assert s.meta["haystack_units"] == len(counts)


def test_fwe_answers_are_the_most_frequent_words(generated):
    for s in (x for x in generated[8192] if x.subtask == "fwe"):
        text = s.prompt.split("coded words. ", 1)[1].split("\nQuestion:", 1)[0]
        counts = collections.Counter(text.split(" "))
        ranked = [w for w, _ in counts.most_common()]
        assert ranked[0] == "..."
        assert ranked[1:4] == list(s.targets)
        assert counts[ranked[3]] > counts[ranked[4]]
        assert all(re.fullmatch(r"[a-z]{6}", w) for w in ranked[1:])


def test_qa_gold_documents_and_question(generated):
    squad = json.loads(SQUAD.read_text())
    for s in (x for x in generated[8192] if x.subtask in QA_SUBTASKS):
        body = s.prompt[: -len(" Answer:")]
        question = body.rsplit("Question: ", 1)[1]
        docs = re.findall(r"Document (\d+):\n(.*?)(?=\n\nDocument \d+:\n|\n\nAnswer the question)", body, re.DOTALL)
        assert [int(i) for i, _ in docs] == list(range(1, len(docs) + 1)) == list(range(1, s.meta["haystack_units"]
                                                                                         + 1))
        assert s.meta["gold_documents"] and all(1 <= g <= len(docs) for g in s.meta["gold_documents"])
        gold_text = "\n".join(docs[g - 1][1] for g in s.meta["gold_documents"])
        assert any(t in gold_text for t in s.targets)
        if s.subtask == "qa_1":
            qas = [q for d in squad["data"] for p in d["paragraphs"] for q in p["qas"] if not q["is_impossible"]]
            assert question == qas[s.meta["question_index"]]["question"]


# -- QA data: absent, paths, datasets -------------------------------------------------------------------------------


def test_default_run_without_qa_data_runs_the_other_eleven(compose, tok):
    """`python -m sparsebench task=ruler model=gemma3_270m seq_len=4096 n_samples=5`, up to the model load."""
    from sparsebench.run import prepare

    job = prepare(compose(["task=ruler", "model=gemma3_270m", "seq_len=4096", "n_samples=5",
                           "paths.root_dir=/tmp/sb_ruler_test"]))
    task = job.task
    missing = task.unavailable()
    assert set(missing) == {"qa_1", "qa_2"}
    assert "squad_path" in missing["qa_1"] and "hotpotqa_path" in missing["qa_2"]
    samples = list(task.samples(tok, 4096, 5, 0))
    assert collections.Counter(s.subtask for s in samples) == {s: 5 for s in SUBTASKS if s not in QA_SUBTASKS}
    for s in samples:
        assert_length_rule(tok, s, 4096)
    assert task.skipped() == {}


def test_only_qa_requested_without_data_fails_in_check(tmp_path):
    with pytest.raises(FileNotFoundError, match="squad_path.*hotpotqa_path"):
        Ruler(subtasks=["qa_1", "qa_2"]).check()
    missing = tmp_path / "dev-v2.0.json"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        Ruler(subtasks=["qa_1"], squad_path=str(missing)).check()
    task = Ruler(subtasks=["vt", "qa_1"], squad_path=str(missing))
    task.check()  # vt can run
    assert str(missing) in task.unavailable()["qa_1"]


def test_unreachable_dataset_is_missing_data(tmp_path):
    task = Ruler(subtasks=["fwe", "qa_2"], hotpotqa_dataset="json", hotpotqa_data_files=str(tmp_path / "no.jsonl"))
    task.check()
    assert "datasets could not load hotpotqa_dataset 'json" in task.unavailable()["qa_2"]


def test_malformed_qa_file_raises(tmp_path):
    bad = tmp_path / "squad.json"
    bad.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [{"text": "no context key"}]}]}))
    with pytest.raises(ValueError, match="not in the upstream squad layout"):
        Ruler(subtasks=["qa_1"], squad_path=str(bad)).check()


def hub_schema_files(tmp_path):
    """The fixtures rewritten in the schemas of rajpurkar/squad_v2 and hotpotqa/hotpot_qa, as jsonl."""
    squad = json.loads(SQUAD.read_text())
    rows = [{"id": q["id"], "title": d["title"], "context": p["context"], "question": q["question"],
             "answers": {"text": [a["text"] for a in q["answers"]],
                         "answer_start": [a["answer_start"] for a in q["answers"]]}}
            for d in squad["data"] for p in d["paragraphs"] for q in p["qas"]]
    hotpot = json.loads(HOTPOT.read_text())
    hrows = [{"id": d["_id"], "question": d["question"], "answer": d["answer"], "type": d["type"],
              "level": d["level"], "supporting_facts": {"title": [t for t, _ in d["supporting_facts"]],
                                                        "sent_id": [i for _, i in d["supporting_facts"]]},
              "context": {"title": [t for t, _ in d["context"]], "sentences": [s for _, s in d["context"]]}}
             for d in hotpot]
    (tmp_path / "squad.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "hotpot.jsonl").write_text("\n".join(json.dumps(r) for r in hrows))
    return tmp_path / "squad.jsonl", tmp_path / "hotpot.jsonl"


def test_datasets_path_matches_local_files(tmp_path, tok, generated):
    squad_rows, hotpot_rows = hub_schema_files(tmp_path)
    task = Ruler(subtasks=["qa_1", "qa_2"], squad_dataset="json", squad_data_files=str(squad_rows),
                 squad_split="train", hotpotqa_dataset="json", hotpotqa_data_files=str(hotpot_rows),
                 hotpotqa_split="train")
    task.check()
    assert task.unavailable() == {}
    samples = list(task.samples(tok, 2048, 2, seed=0))
    local = [s for s in generated[2048] if s.subtask in QA_SUBTASKS]
    assert [s.prompt for s in samples] == [s.prompt for s in local]
    assert all(s.meta["haystack_source"].startswith("datasets:json[data_files=") for s in samples)
    assert all(s.meta["haystack_source"].startswith("file:") for s in local)


def synthetic_squad(path: Path, articles: list[list[str]]) -> Path:
    data = {"data": [{"title": f"article {a}", "paragraphs": [
        {"context": text, "qas": [{"question": f"What is fact {a}.{p}?", "id": f"{a}.{p}",
                                   "answers": [{"text": f"fact {a}.{p}", "answer_start": 0}], "is_impossible": False}]}
        for p, text in enumerate(paragraphs)]} for a, paragraphs in enumerate(articles)]}
    path.write_text(json.dumps(data))
    return path


def paragraph(a: int, p: int, sentences: int) -> str:
    return f"fact {a}.{p} opens this paragraph. " + " ".join(
        f"Sentence {k} of paragraph {p} in article {a} talks about harbours and weather." for k in range(sentences))


def test_qa_distractors_same_article_first(tmp_path, tok):
    path = synthetic_squad(tmp_path / "squad.json", [[paragraph(a, p, 2) for p in range(6)] for a in range(12)])
    task = Ruler(subtasks=["qa_1"], squad_path=str(path))
    s = next(iter(task.samples(tok, 2048, 1, seed=0)))
    assert_length_rule(tok, s, 2048)
    assert not s.meta["corpus_repeated"] and s.meta["haystack_units"] < 72
    assert all(f"fact 0.{p} opens" in s.prompt for p in range(6))  # the question's article, all of it
    assert s.prompt.count("fact 0.0 opens") == 1 and s.targets == ("fact 0.0",)


def test_qa_fills_the_gap_when_the_next_document_is_long(tmp_path, tok):
    long_article = [paragraph(0, p, 40) for p in range(3)]  # each about 700 tokens
    short = [[paragraph(a, p, 2) for p in range(10)] for a in range(1, 4)]
    path = synthetic_squad(tmp_path / "squad.json", [long_article, *short])
    s = next(iter(Ruler(subtasks=["qa_1"], squad_path=str(path)).samples(tok, 2048, 1, seed=0)))
    assert_length_rule(tok, s, 2048)
    assert s.meta["fill_documents"] > 0


def test_qa_samples_that_cannot_fit_are_skipped(tmp_path, tok):
    long_first = [[paragraph(0, 0, 200)]]  # question 0's own paragraph alone exceeds 2K tokens
    path = synthetic_squad(tmp_path / "squad.json", long_first + [[paragraph(a, p, 2) for p in range(10)]
                                                                  for a in range(1, 6)])
    task = Ruler(subtasks=["qa_1", "fwe"], squad_path=str(path))
    samples = list(task.samples(tok, 2048, 2, seed=0))
    assert [s.subtask for s in samples] == ["qa_1", "fwe", "fwe"]
    assert task.skipped() == {"qa_1": 1}
    assert samples[0].targets == ("fact 1.0",) and "fact 0.0" not in samples[0].prompt
    assert_length_rule(tok, samples[0], 2048)
    # too little text besides the long paragraph to reach 90% of the length: skipped too, never a short prompt
    path = synthetic_squad(tmp_path / "small.json", long_first + [[paragraph(1, p, 2) for p in range(10)]])
    task = Ruler(subtasks=["qa_1"], squad_path=str(path))
    assert list(task.samples(tok, 2048, 2, seed=0)) == [] and task.skipped() == {"qa_1": 2}


# -- cwe word lists, essays, speed ------------------------------------------------------------------------------------


def test_cwe_past_the_wonderwords_list(monkeypatch, tmp_path, tok):
    from sparsebench.tasks.ruler import _words

    small = tuple(sorted(_words.cwe_words())[:120])
    monkeypatch.setattr(_words, "cwe_words", lambda: small)
    task = Ruler(subtasks=["cwe", "vt"])
    samples = list(task.samples(tok, 8192, 2, seed=0))
    assert [s.subtask for s in samples] == ["vt", "vt"] and task.skipped() == {"cwe": 2}
    words = tmp_path / "english_words.json"
    words.write_text(json.dumps({str(i): f"{w}{i}" for i, w in enumerate(["tarn", "fell", "beck"] * 400)}))
    task = Ruler(subtasks=["cwe"], cwe_words_path=str(words))
    task.check()
    for s in task.samples(tok, 8192, 2, seed=0):
        assert_length_rule(tok, s, 8192)
        assert s.meta["haystack_source"] == f"file:{words}" and s.meta["haystack_units"] > 120
    assert task.skipped() == {}
    with pytest.raises(FileNotFoundError, match="cwe_words_path"):
        Ruler(subtasks=["cwe"], cwe_words_path=str(tmp_path / "none.json")).check()


def test_essay_haystack_from_a_file_and_missing_file(tok, tmp_path):
    essays = ASSETS / "essays_tiny.jsonl"
    task = Ruler(subtasks=["niah_single_2"], essay_path=str(essays))
    task.check()
    s = next(iter(task.samples(tok, 2048, 1, seed=0)))
    assert_length_rule(tok, s, 2048)
    assert s.meta["haystack_source"].startswith("file:") and "Most small workshops begin" in s.prompt
    with pytest.raises(FileNotFoundError, match="nope.json"):
        Ruler(subtasks=["niah_single_2", "vt"], essay_path=str(tmp_path / "nope.json")).check()
    Ruler(subtasks=["vt"], essay_path=str(tmp_path / "nope.json")).check()  # no essay subtask requested


def test_32k_generation_speed(tok, suite):
    list(suite.samples(tok, 32768, 1, seed=5))  # per-tokenizer piece counts, first of all
    start = time.perf_counter()
    samples = list(suite.samples(tok, 32768, 1, seed=6))
    per_sample = (time.perf_counter() - start) / len(samples)
    assert len(samples) == 13 and per_sample < 1.0, per_sample
    for s in samples:
        assert_length_rule(tok, s, 32768)
