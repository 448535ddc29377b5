"""LongBench v1, LongBench-E and LongBench v2: natural long-context tasks read from data, with upstream scoring.

What: LongBench (Bai et al., "LongBench: A Bilingual, Multitask Benchmark for Long Context Understanding",
arXiv:2308.14508) has 21 datasets in six categories (single-document QA, multi-document QA, summarisation, few-shot
learning, synthetic tasks, code) in English and Chinese; LongBench-E re-samples 13 of them with an even length
spread, scored in buckets of < 4000, 4000-8000 and >= 8000 words. LongBench v2 (Bai et al., "LongBench v2: Towards
Deeper Understanding and Reasoning on Realistic Long-context Multitasks", arXiv:2412.15204) has 503 four-choice
questions over contexts of 8K to 2M words, reported as Overall / Easy / Hard / Short / Medium / Long.

Where from: THUDM/LongBench (MIT), commit 2e00731f8d0bff23dc4325161044d0ed8af94c1e: `LongBench/pred.py`,
`LongBench/eval.py`, `LongBench/metrics.py`, `LongBench/config/dataset2prompt.json`, `dataset2maxlen.json` (v1/E);
`pred.py`, `result.py`, `prompts/0shot.txt`, `prompts/0shot_no_context.txt` (v2). Prompts and generation budgets are
vendored verbatim (`prompts.py`), metrics re-implemented to give upstream's values (`metrics.py`).

Recipe (both): format the dataset's prompt; if it does not fit, truncate it in the middle in tokens, keeping the first
and last half of the budget (`common.fit_middle`); generate greedily; score. v1 feeds trec, triviaqa, samsum, lsht,
lcc and repobench-p without a chat template (meta `chat_template: false`, `raw_prompt: true`) and everything else
inside one; v2 always uses the chat template. Data-backed tasks do not fill: prompts shorter than the budget are used
as they are, and `seq_len` is only the truncation budget. Per sample, meta records `truncation` ("none" or
"middle"), `truncated_tokens`, `prompt_tokens` (the untruncated prompt's own tokens) and the kept head/tail tokens.

Data: through `datasets.load_dataset` from pinned, configurable ids and revisions (v1/E: the parquet mirror
`Xnhyacinth/LongBench`, configs `<dataset>` and `<dataset>_e`; v2: `THUDM/LongBench-v2`, which the hub also lists as
`zai-org/LongBench-v2` after the organisation's rename; both unverified from here, the hub being unreachable, but
public code loads them the same way: `load_dataset("Xnhyacinth/LongBench", task)` and
`load_dataset("THUDM/LongBench-v2", split="train")`), or local files through the same call with the json/parquet
builders (`data_dir`, `data_files`).

Deviations from upstream:

* Truncation budget: upstream truncates to a per-model `model2maxlen` (e.g. 31500 for 32K models, 120000 for v2)
  counted with BOS but before the chat wrapper is added; here the budget is `seq_len - max_new_tokens - overhead`
  (overhead = BOS plus chat-template tokens), so the model's input plus the generation budget is at most `seq_len`.
  The halves are counted in the prompt's own tokens (upstream's first half includes the BOS token). A seam that
  re-tokenises longer after decoding shrinks the halves by the overshoot (upstream does not re-check).
* Generation is greedy with the harness's loop, which stops only at EOS: upstream v1 samsum also stops at "\\n" and
  forbids an immediate EOS (`min_length`); here samsum is scored by upstream's first-line rule, which gives the same
  text unless the model starts with a newline. v2 upstream samples at temperature 0.1 through a chat API; here greedy.
* v2 samples with an empty output are scored as wrong (upstream `pred.py` drops them from the file, which raises the
  accuracy); the `answer_parsed` metric reports how many answers could be parsed. The chain-of-thought protocol
  (`0shot_cot.txt` then `0shot_cot_ans.txt`, two generation calls) and RAG are not provided; `prompt=no_context`
  (upstream's `--no_context`) is.
* Prompts end with upstream's "Answer:"-style cue inside the user turn, as upstream's `build_chat` does; no
  `answer_prefix` is set, so a chat template does not move it into the assistant turn.
* The subset: `n` samples per dataset (per dataset and length bucket for LongBench-E, per group for v2), the first n
  in file order or a seeded subset; upstream runs every row. Scores are fractions in [0, 1] (upstream: ×100, rounded).
"""
from sparsebench.tasks.longbench.v1 import LongBench
from sparsebench.tasks.longbench.v2 import LongBenchV2

__all__ = ["LongBench", "LongBenchV2"]
