"""RULER's prediction post-processing and its two metrics, per sample, as fractions in [0, 1].

From NVIDIA/RULER `scripts/eval/evaluate.py` (`postprocess_pred`) and `scripts/eval/synthetic/constants.py`
(`string_match_all`, `string_match_part`), Apache-2.0, rewritten per sample. Upstream averages the per-sample values
over a subtask and multiplies by 100; the harness does the averaging and keeps fractions.

- `string_match_all`: the fraction of reference strings that occur, case-insensitively, in the prediction
  (NIAH, VT, CWE, FWE).
- `string_match_part`: 1 if any reference occurs, else 0 — the MAX over references (QA). lm-evaluation-harness's
  port (`lm_eval/tasks/ruler/common_utils.py`) instead computes the fraction of references found, i.e. the mean over
  references, which under-scores a correct SQuAD answer whenever annotators wrote different spans; we keep
  upstream's definition (`lm_eval_string_match_part` is here only so the tests can show the difference).

Base models rarely stop: the harness generates up to the budget and upstream scores the whole generated text (no
first-line rule), so run-on outputs are scored as they come, after the clean-up below.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

_CONTROL = re.compile(r"[\x00-\x1f]")


def postprocess_pred(prediction: str) -> str:
    """Strip, turn every character in \\x00-\\x1f into a newline, strip again (RULER `postprocess_pred`)."""
    return _CONTROL.sub("\n", prediction.strip()).strip()


def string_match_all(prediction: str, references: Sequence[str]) -> float:
    pred = prediction.lower()
    return sum(1.0 if r.lower() in pred else 0.0 for r in references) / len(references)


def string_match_part(prediction: str, references: Sequence[str]) -> float:
    pred = prediction.lower()
    return max(1.0 if r.lower() in pred else 0.0 for r in references)


def lm_eval_string_match_part(prediction: str, references: Sequence[str]) -> float:
    """lm-evaluation-harness's `string_match_part` for one sample (a mean over references); not used for scoring."""
    return string_match_all(prediction, references)


METRICS = {"string_match_all": string_match_all, "string_match_part": string_match_part}
