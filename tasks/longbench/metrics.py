"""LongBench metrics, written to reproduce THUDM/LongBench `LongBench/metrics.py` and `LongBench/eval.py` (v1, E) and
`pred.py`'s `extract_answer` (v2) exactly (commit 2e00731f8d0bff23dc4325161044d0ed8af94c1e, MIT licence).

Every per-answer metric returns a fraction in [0, 1]; `score_prediction` applies upstream's scorer rules: the first
line of the prediction only for trec, triviaqa, samsum and lsht (after removing leading newlines), then the maximum
over the gold answers. Predictions are used as generated (upstream strips nothing else).

Upstream behaviour kept on purpose, because published LongBench numbers were computed with it:

* `classification_score` removes items from the list it is iterating over, so of two adjacent matches that are
  substrings of the gold class only the first is dropped (spec §(d)); kept for parity.
* ROUGE-L is the `rouge` package (pltrdy, 1.0.1), as upstream: summary-level union LCS over sentences split at '.',
  words counted as sets; any exception (an empty hypothesis, or a RecursionError in the package's recursive LCS
  back-trace for sentence pairs longer than about a thousand words, which happens on Chinese summaries that have no
  '.') scores 0.0, as upstream's bare `except` does.
* `code_sim_score` is fuzzywuzzy's `fuzz.ratio` as installed by upstream's requirements (fuzzywuzzy without
  python-Levenshtein): difflib's `SequenceMatcher` ratio rounded to an integer percent. With python-Levenshtein (or
  rapidfuzz) the ratio is the normalised indel similarity instead, which differs on some strings (a test pins one).

Where lm-evaluation-harness's port (`lm_eval/tasks/longbench/metrics.py`) differs: it strips the prediction, stops
generation at "\n" for the first-line datasets (so a prediction starting with a newline becomes empty, where
upstream skips leading newlines), and its code_sim skips blank lines. Tests pin upstream's values for those cases.
"""
from __future__ import annotations

import difflib
import logging
import re
import string
from collections import Counter
from collections.abc import Sequence

from sparsebench.tasks.longbench.prompts import FIRST_LINE_ONLY

_CN_PUNCTUATION = ("！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿"
                   "–—‘’‛“”„‟…‧﹏.")
_EN_PUNCT = frozenset(string.punctuation)
_ALL_PUNCT = frozenset(string.punctuation + _CN_PUNCTUATION)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _jieba():
    import jieba

    jieba.setLogLevel(logging.WARNING)  # silence the "Building prefix dict" chatter
    return jieba


def normalize_answer(s: str) -> str:
    """Lower-case, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace (SQuAD style)."""
    s = "".join(ch for ch in s.lower() if ch not in _EN_PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def normalize_zh_answer(s: str) -> str:
    """Lower-case, drop ASCII and Chinese punctuation, remove all whitespace."""
    return "".join("".join(ch for ch in s.lower() if ch not in _ALL_PUNCT).split())


def f1_score(prediction: Sequence[str], ground_truth: Sequence[str]) -> float:
    """Multiset token F1."""
    num_same = sum((Counter(prediction) & Counter(ground_truth)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction)
    recall = num_same / len(ground_truth)
    return 2 * precision * recall / (precision + recall)


def qa_f1_score(prediction: str, ground_truth: str, **_) -> float:
    return f1_score(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


def qa_f1_zh_score(prediction: str, ground_truth: str, **_) -> float:
    jieba = _jieba()
    pred = [t for t in (normalize_zh_answer(t) for t in jieba.cut(prediction, cut_all=False)) if t]
    gold = [t for t in (normalize_zh_answer(t) for t in jieba.cut(ground_truth, cut_all=False)) if t]
    return f1_score(pred, gold)


# CPython's default recursion limit, under which upstream's scores were computed: the package's recursive LCS
# back-trace overflows on long sentences (then 0.0), and importing torch._dynamo raises the process's limit to 2000+
_UPSTREAM_RECURSION_LIMIT = 1000


def rouge_score(prediction: str, ground_truth: str, **_) -> float:
    """ROUGE-L F of the `rouge` package, as upstream calls it (0.0 on any error), at CPython's default recursion
    limit whatever the process's limit is (the same score whichever libraries were imported)."""
    import sys

    from rouge import Rouge

    old = sys.getrecursionlimit()
    try:
        sys.setrecursionlimit(_UPSTREAM_RECURSION_LIMIT)
        scores = Rouge().get_scores([prediction], [ground_truth], avg=True)
    except Exception:  # noqa: BLE001 - upstream: bare except -> 0.0 (empty hypotheses, RecursionError on long sentences)
        return 0.0
    finally:
        sys.setrecursionlimit(old)
    return float(scores["rouge-l"]["f"])


def rouge_zh_score(prediction: str, ground_truth: str, **_) -> float:
    jieba = _jieba()
    return rouge_score(" ".join(jieba.cut(prediction, cut_all=False)), " ".join(jieba.cut(ground_truth, cut_all=False)))


def classification_score(prediction: str, ground_truth: str, *, all_classes: Sequence[str], **_) -> float:
    """1/#matched classes when the gold class is among the class names found in the prediction, after dropping
    matches that are proper substrings of the gold class."""
    matches = [c for c in all_classes if c in prediction]
    # Upstream removes from the list while iterating over it (so an element right after a removed one is not
    # visited); the same loop is kept on purpose for parity.
    for term in matches:
        if term in ground_truth and term != ground_truth:
            matches.remove(term)
    return 1.0 / len(matches) if ground_truth in matches else 0.0


def _number_hit_rate(prediction: str, gold: str) -> float:
    numbers = re.findall(r"\d+", prediction)
    return 0.0 if not numbers else sum(n == str(gold) for n in numbers) / len(numbers)


def retrieval_score(prediction: str, ground_truth: str, **_) -> float:
    """Fraction of the numbers in the prediction that equal N of the gold "Paragraph N"."""
    return _number_hit_rate(prediction, re.findall(r"Paragraph (\d+)", ground_truth)[0])


def retrieval_zh_score(prediction: str, ground_truth: str, **_) -> float:
    """Fraction of the numbers in the prediction that equal N of the gold "段落N"."""
    return _number_hit_rate(prediction, re.findall(r"段落(\d+)", ground_truth)[0])


def count_score(prediction: str, ground_truth: str, **_) -> float:
    """Fraction of the numbers in the prediction that equal the gold count."""
    return _number_hit_rate(prediction, ground_truth)


def fuzz_ratio(s1: str, s2: str) -> int:
    """fuzzywuzzy 0.18 `fuzz.ratio` without python-Levenshtein: equal strings 100, an empty one 0, otherwise
    round(100 * difflib.SequenceMatcher(None, s1, s2).ratio())."""
    if s1 == s2:
        return 100
    if not s1 or not s2:
        return 0
    return round(100 * difflib.SequenceMatcher(None, s1, s2).ratio())  # fuzzywuzzy utils.intr


def code_sim_score(prediction: str, ground_truth: str, **_) -> float:
    """Similarity of the first prediction line that has no '`', '#' or '//' (after leading newlines) to the gold."""
    line = ""
    for candidate in prediction.lstrip("\n").split("\n"):
        if "`" not in candidate and "#" not in candidate and "//" not in candidate:
            line = candidate
            break
    return fuzz_ratio(line, ground_truth) / 100


METRICS = {
    "qa_f1": qa_f1_score,
    "qa_f1_zh": qa_f1_zh_score,
    "rouge_l": rouge_score,
    "rouge_l_zh": rouge_zh_score,
    "classification": classification_score,
    "retrieval": retrieval_score,
    "retrieval_zh": retrieval_zh_score,
    "count": count_score,
    "code_sim": code_sim_score,
}

# Upstream LongBench/eval.py dataset2metric, by our metric names.
DATASET2METRIC = {
    "narrativeqa": "qa_f1", "qasper": "qa_f1", "multifieldqa_en": "qa_f1", "multifieldqa_zh": "qa_f1_zh",
    "hotpotqa": "qa_f1", "2wikimqa": "qa_f1", "musique": "qa_f1", "dureader": "rouge_l_zh",
    "gov_report": "rouge_l", "qmsum": "rouge_l", "multi_news": "rouge_l", "vcsum": "rouge_l_zh",
    "trec": "classification", "triviaqa": "qa_f1", "samsum": "rouge_l", "lsht": "classification",
    "passage_retrieval_en": "retrieval", "passage_count": "count", "passage_retrieval_zh": "retrieval_zh",
    "lcc": "code_sim", "repobench-p": "code_sim",
}


def score_prediction(dataset: str, prediction: str, answers: Sequence[str],
                     all_classes: Sequence[str] | None = None) -> float:
    """Upstream `scorer()` for one sample: first-line rule where it applies, then max over the gold answers."""
    metric = METRICS[DATASET2METRIC[dataset]]
    if dataset in FIRST_LINE_ONLY:
        prediction = prediction.lstrip("\n").split("\n")[0]
    score = 0.0
    for gold in answers:
        score = max(score, metric(prediction, gold, all_classes=all_classes))
    return float(score)


# ------------------------------------------------------------------------------------------------ v2
_V2_ANSWER = re.compile(r"The correct answer is \(([A-D])\)")
_V2_ANSWER_BARE = re.compile(r"The correct answer is ([A-D])")


def extract_v2_answer(response: str) -> str | None:
    """LongBench v2 `extract_answer`: drop '*', then "The correct answer is (X)", else "The correct answer is X"."""
    response = response.replace("*", "")
    match = _V2_ANSWER.search(response) or _V2_ANSWER_BARE.search(response)
    return match.group(1) if match else None
