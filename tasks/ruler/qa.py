"""RULER's question answering over many documents: qa_1 (SQuAD v2 dev) and qa_2 (HotpotQA dev, distractor setting).

Recipe of NVIDIA/RULER `scripts/data/synthetic/qa.py` (commit c3f5e3b4f87f). Data: SQuAD v2 dev — answerable
questions only, answers = every annotator span, documents = the unique paragraphs (sorted), distractors first from
the other paragraphs of the same article; HotpotQA dev distractor — documents "Title\\n" + the joined sentences of
every context paragraph (sorted, unique), gold = all of the question's own context paragraphs (its ten in the
distractor setting, distractors included, as upstream's code does). Sample i asks question i.
A prompt holds the gold documents, then distractors (same article first, then random others) up to the largest
count that fits; when that count reaches the corpus size the corpus is repeated in order, as upstream does. The
documents are shuffled with `Random(seed)`, written "Document {i}:\\n{text}" and joined by blank lines. Scored with
string_match_part (1 if any reference answer occurs in the prediction).

Sources: a local file in the upstream format (`dev-v2.0.json`, `hotpot_dev_distractor_v1.json`), or `datasets`
(`rajpurkar/squad_v2`; `hotpotqa/hotpot_qa` config `distractor`; or the json/parquet builders with `data_files`)
whose rows use those hub datasets' schemas; both are turned into the upstream layout and read by one reader.
"""
from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparsebench.tasks.ruler._fit import Draft, PerTokenizer, Skip, fit_largest, piece_lengths, stable_rng
from sparsebench.tasks.ruler._templates import QA_DOCUMENT, TASKS

TEMPLATE = TASKS["qa"]["template"]
ANSWER_PREFIX = TASKS["qa"]["answer_prefix"]
# When the best prefix of the document order ends below 90% of seq_len (one long next document), this many later
# documents are looked at, in order, for the remaining gap.
_FILL_WINDOW = 2000
_PACKAGED = frozenset({"json", "parquet", "csv", "arrow", "text"})


@dataclass(frozen=True)
class QAData:
    qas: tuple[dict, ...]  # {"query", "outputs", "context": [doc ids], "more_context": [doc ids]}
    docs: tuple[str, ...]
    source: str


def read_squad(data: Mapping) -> tuple[list[dict], list[str]]:
    """RULER's read_squad on the parsed SQuAD v2 json ({"data": [{"title", "paragraphs": [...]}]})."""
    total_docs = sorted({p["context"] for d in data["data"] for p in d["paragraphs"]})
    doc_id = {c: i for i, c in enumerate(total_docs)}
    qas = []
    for d in data["data"]:
        article = [doc_id[p["context"]] for p in d["paragraphs"]]
        for p in d["paragraphs"]:
            own = doc_id[p["context"]]
            for qa in p["qas"]:
                if not qa["is_impossible"]:
                    qas.append({"query": qa["question"], "outputs": [a["text"] for a in qa["answers"]],
                                "context": [own], "more_context": [i for i in article if i != own]})
    return qas, total_docs


def read_hotpotqa(data: Sequence[Mapping]) -> tuple[list[dict], list[str]]:
    """RULER's read_hotpotqa on the parsed dev distractor json ([{"question", "answer", "context": [[t, [s]]]}])."""
    def doc(title: str, sentences: Sequence[str]) -> str:
        return f"{title}\n{''.join(sentences)}"

    total_docs = sorted({doc(t, p) for d in data for t, p in d["context"]})
    doc_id = {c: i for i, c in enumerate(total_docs)}
    qas = [{"query": d["question"], "outputs": [d["answer"]],
            "context": [doc_id[doc(t, p)] for t, p in d["context"]]} for d in data]
    return qas, total_docs


def squad_rows_to_upstream(rows: Sequence[Mapping]) -> dict:
    """Rows of `rajpurkar/squad_v2` (id, title, context, question, answers{text, answer_start}) -> the SQuAD json.
    Articles keep the order of their first row, paragraphs and questions the row order, as in dev-v2.0.json."""
    articles: dict[str, dict[str, list]] = {}
    for r in rows:
        paragraphs = articles.setdefault(r["title"], {})
        answers = r["answers"]
        texts = answers["text"] if isinstance(answers, Mapping) else [a["text"] for a in answers]
        paragraphs.setdefault(r["context"], []).append(
            {"question": r["question"], "id": r.get("id"), "answers": [{"text": t} for t in texts],
             "is_impossible": len(texts) == 0})
    return {"data": [{"title": t, "paragraphs": [{"context": c, "qas": q} for c, q in ps.items()]}
                     for t, ps in articles.items()]}


def hotpotqa_rows_to_upstream(rows: Sequence[Mapping]) -> list[dict]:
    """Rows of `hotpotqa/hotpot_qa` (question, answer, context{title, sentences}) -> the dev distractor json."""
    out = []
    for r in rows:
        ctx = r["context"]
        pairs = list(zip(ctx["title"], ctx["sentences"])) if isinstance(ctx, Mapping) else [tuple(c) for c in ctx]
        out.append({"question": r["question"], "answer": r["answer"], "context": pairs})
    return out


READERS: dict[str, tuple[Callable, Callable, tuple[str, ...]]] = {
    "squad": (read_squad, squad_rows_to_upstream, ("title", "context", "question", "answers")),
    "hotpotqa": (read_hotpotqa, hotpotqa_rows_to_upstream, ("question", "answer", "context")),
}


def _finish(kind: str, parsed: Any, source: str) -> QAData:
    reader = READERS[kind][0]
    try:
        qas, docs = reader(parsed)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{source}: not in the upstream {kind} layout ({type(e).__name__}: {e})") from e
    if not qas:
        raise ValueError(f"{source}: no answerable questions")
    return QAData(tuple(qas), tuple(docs), source)


def load_path(kind: str, path: str) -> QAData:
    """The upstream json file (SQuAD `dev-v2.0.json` or HotpotQA `hotpot_dev_distractor_v1.json`)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{kind}_path {str(p)!r} does not exist")
    return _finish(kind, json.loads(p.read_text(encoding="utf-8")), f"file:{p.resolve()}")


def load_dataset(kind: str, dataset: str, config: str | None, split: str, revision: str | None,
                 data_files: Any = None) -> QAData:
    """`datasets.load_dataset(dataset, config, split=split, revision=revision, data_files=data_files)` with rows in
    the hub dataset's schema. Unreachable data raises OSError (ConnectionError, FileNotFoundError, ...)."""
    import datasets

    if isinstance(data_files, Mapping):
        data_files = {str(k): v if isinstance(v, str) else list(v) for k, v in data_files.items()}
    elif data_files is not None and not isinstance(data_files, str):
        data_files = list(data_files)
    ds = datasets.load_dataset(dataset, config, split=split, revision=revision, data_files=data_files)
    columns = READERS[kind][2]
    if dataset in _PACKAGED:  # config and revision do not apply to datasets' packaged builders
        source = f"datasets:{dataset}[data_files={data_files}]:{split}"
    else:
        source = (f"datasets:{dataset}" + (f"/{config}" if config else "") + (f"@{revision}" if revision else "")
                  + (f"[data_files={data_files}]" if data_files else "") + f":{split}")
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise ValueError(f"{source}: no column(s) {', '.join(missing)} (columns: {', '.join(ds.column_names)}); "
                         f"expected the schema of {'rajpurkar/squad_v2' if kind == 'squad' else 'hotpotqa/hotpot_qa'}")
    return _finish(kind, READERS[kind][1](ds.to_list()), source)


class QAGenerator:
    family = "qa"
    metric = "string_match_part"
    tokens_to_generate = TASKS["qa"]["tokens_to_generate"]

    def __init__(self, name: str, data: Callable[[], QAData]):
        self.name = name
        self._data = data
        self._doc_tokens = PerTokenizer()

    def _tokens(self, tokenizer, data: QAData, ids: Sequence[int]) -> list[int]:
        known = self._doc_tokens.get(tokenizer, lambda: {"overhead": piece_lengths(
            tokenizer, ["\n\nDocument 10:\n"])[0]})
        new = [i for i in dict.fromkeys(ids) if i not in known]
        known.update(zip(new, piece_lengths(tokenizer, [data.docs[i] for i in new])))
        return [known[i] + known["overhead"] for i in ids]

    def draft(self, tokenizer, seq_len: int, seed: int, i: int, max_new_tokens: int) -> Draft | Skip:
        data = self._data()
        key = ("ruler", self.name, seq_len, seed, i)
        index = i % len(data.qas)
        qa = data.qas[index]
        gold, more = list(qa["context"]), list(qa.get("more_context", []))
        n_docs = len(data.docs)
        budget = seq_len - max_new_tokens
        rng = stable_rng(*key, "docs")
        # The document order: gold, then the same article's other paragraphs, then random others; a prefix of m
        # documents is RULER's choice for num_docs = m (< corpus size), before its shuffle.
        taken = set(gold) | set(more)
        others = [j for j in range(n_docs) if j not in taken]
        order = gold + rng.sample(more, len(more)) + rng.sample(others, min(len(others), budget // 6 + 1))
        cum = [0.0]
        for start in range(0, len(order), 256):
            for t in self._tokens(tokenizer, data, order[start:start + 256]):
                cum.append(cum[-1] + t)
            if cum[-1] > budget:
                break
        whole = None
        if cum[-1] <= budget and len(order) == n_docs:  # the whole corpus fits: RULER repeats it in order
            lengths = self._tokens(tokenizer, data, range(n_docs))
            whole = [0.0]
            for t in lengths:
                whole.append(whole[-1] + t)

        def estimate(m: int) -> float:
            if m < n_docs:
                return cum[m]
            q, r = divmod(m, n_docs)
            return q * whole[-1] + whole[r]

        def ids_of(m: int) -> list[int]:
            return order[:m] if m < n_docs else [j % n_docs for j in range(m)]

        def render_ids(ids: list[int]) -> str:
            docs = [data.docs[j] for j in ids]
            random.Random(seed).shuffle(docs)  # RULER: random.Random(args.random_seed).shuffle(all_docs)
            context = "\n\n".join(QA_DOCUMENT.format(i=k + 1, document=d) for k, d in enumerate(docs))
            return TEMPLATE.format(context=context, query=qa["query"]) + ANSWER_PREFIX

        if whole is None:
            hi = min(len(cum) - 1, n_docs - 1)
        else:
            hi = n_docs
            while estimate(hi) <= budget:
                hi *= 2
        fit = fit_largest(lambda m: render_ids(ids_of(m)), estimate, tokenizer, budget, len(gold), hi, ANSWER_PREFIX)
        if fit is None:
            return Skip(f"{self.name} question {index}: its gold document(s) alone exceed seq_len={seq_len} minus "
                        f"max_new_tokens={max_new_tokens}")
        m, prompt, total = fit
        ids = ids_of(m)
        filled = 0
        if total < 0.9 * seq_len - max_new_tokens and m < n_docs:
            # Deviation: RULER stops at the first document that does not fit; to keep the 90% floor, later
            # documents of the order whose estimates fit the gap are added instead (meta["fill_documents"]).
            window = order[m:m + _FILL_WINDOW]
            extra, extra_cum = [], [0.0]
            for j, est in zip(window, self._tokens(tokenizer, data, window)):
                if extra_cum[-1] + est <= budget - total:
                    extra.append(j)
                    extra_cum.append(extra_cum[-1] + est)
            refit = fit_largest(lambda k: render_ids(ids + extra[:k]), lambda k: extra_cum[k], tokenizer, budget,
                                0, len(extra), ANSWER_PREFIX)
            k, prompt, total = refit  # k = 0 is the prompt above, known to fit
            ids, filled = ids + extra[:k], k
        if total < 0.9 * seq_len - max_new_tokens:
            return Skip(f"{self.name} question {index}: the corpus has too few documents that fit to fill "
                        f"{0.9:.0%} of seq_len={seq_len}")
        perm = list(range(len(ids)))
        random.Random(seed).shuffle(perm)
        gold_positions = sorted({k + 1 for k, p in enumerate(perm) if ids[p] in gold})
        return Draft(prompt=prompt, answer_prefix=ANSWER_PREFIX, targets=tuple(qa["outputs"]), input_tokens=total,
                     meta={"haystack": "documents", "haystack_source": data.source, "haystack_units": len(ids),
                           "haystack_unit": "documents", "question_index": index,
                           "gold_documents": gold_positions, "fill_documents": filled,
                           "corpus_repeated": m >= n_docs})
