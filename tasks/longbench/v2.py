"""LongBench v2 (503 four-choice questions over long contexts): see the package docstring."""
from __future__ import annotations

from collections.abc import Iterator, Sequence

from sparsebench.task import Sample
from sparsebench.tasks.longbench import common
from sparsebench.tasks.longbench.metrics import extract_v2_answer
from sparsebench.tasks.longbench.prompts import V2_MAX_NEW_TOKENS, V2_TEMPLATES

# THUDM/LongBench-v2 on the hub: one JSON file of 503 rows (split "train"), read by datasets' json builder without a
# loading script. Unverified here: the hub cannot be reached from this machine; pin `revision` to a commit sha.
DEFAULT_HF_ID = "THUDM/LongBench-v2"
DEFAULT_REVISION = "main"
DIFFICULTIES = ("easy", "hard")
LENGTHS = ("short", "medium", "long")
GROUP_BY = ("none", "difficulty", "length", "domain")
FIELDS = ("_id", "domain", "sub_domain", "difficulty", "length", "question", "choice_A", "choice_B", "choice_C",
          "choice_D", "answer", "context")


def build_prompt(template: str, row: dict) -> str:
    """Upstream pred.py's chain of replacements (in its order, so text inside the context is treated the same)."""
    return (template.replace("$DOC$", row["context"].strip()).replace("$Q$", row["question"].strip())
            .replace("$C_A$", row["choice_A"].strip()).replace("$C_B$", row["choice_B"].strip())
            .replace("$C_C$", row["choice_C"].strip()).replace("$C_D$", row["choice_D"].strip()))


class LongBenchV2(common.DataKnobs):
    """LongBench v2, generate-and-extract protocol: the model answers in free text and "The correct answer is (X)" is
    parsed from it; accuracy = parsed letter equals the gold letter (unparsable answers count as wrong).

    `n` in `samples()` counts samples per subtask: the first n rows in file order (`sampling="first"`) or a seeded
    subset kept in file order (`sampling="random"`). Each sample's meta records domain, sub_domain, difficulty and
    length, so Overall/Easy/Hard/Short/Medium/Long (upstream result.py) can be broken down from samples.jsonl;
    `group_by` makes one of them the subtask instead (rows per group).

    Args:
        prompt: "0shot" (upstream prompts/0shot.txt) or "no_context" (prompts/0shot_no_context.txt: the question
            and choices only, a memorisation baseline).
        difficulties, lengths, domains: keep only rows with these values (empty: all).
        group_by: "none" (one subtask, longbench_v2), "difficulty", "length" or "domain".
        max_new_tokens: generation budget (upstream 128).
        data_dir: a local folder with `data.json` or `data.jsonl` (upstream's file) or `longbench_v2.jsonl`.
        hf_id, revision: the `datasets` hub id and revision (used when data_dir and data_files are unset).
        data_files: files for `load_dataset(hf_id, data_files=...)`, with hf_id a builder such as "json".
        split: the split to read ("train" on the hub).
        sampling: "first" or "random".
    """

    name = "longbench_v2"
    version = 1

    def __init__(self, *, prompt: str = "0shot", difficulties: Sequence[str] = (), lengths: Sequence[str] = (),
                 domains: Sequence[str] = (), group_by: str = "none", max_new_tokens: int = V2_MAX_NEW_TOKENS,
                 data_dir: str | None = None, hf_id: str = DEFAULT_HF_ID, revision: str | None = DEFAULT_REVISION,
                 data_files: str | None = None, split: str = "train", sampling: str = "first"):
        if prompt not in V2_TEMPLATES:
            raise ValueError(f"unknown LongBench v2 prompt {prompt!r}; valid prompts: {', '.join(V2_TEMPLATES)} "
                             f"(the chain-of-thought variant needs two generation calls and is not provided)")
        for knob, values, valid in (("difficulties", difficulties, DIFFICULTIES), ("lengths", lengths, LENGTHS)):
            bad = [v for v in values if v not in valid]
            if bad:
                raise ValueError(f"unknown LongBench v2 {knob} {bad}; valid choices: {', '.join(valid)}")
        if group_by not in GROUP_BY:
            raise ValueError(f"unknown group_by {group_by!r}; valid choices: {', '.join(GROUP_BY)}")
        if int(max_new_tokens) < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        self._set_data_knobs(data_dir=data_dir, hf_id=hf_id, revision=revision, data_files=data_files, split=split,
                             sampling=sampling)
        self.prompt = prompt
        self.template = V2_TEMPLATES[prompt]
        self.difficulties = tuple(difficulties)
        self.lengths = tuple(lengths)
        self.domains = tuple(domains)
        self.group_by = group_by
        self.max_new_tokens = int(max_new_tokens)
        self._table = None  # datasets.Dataset
        self._source = ""

    # -- data -----------------------------------------------------------------------------------------------------

    def _source_args(self) -> dict:
        local = [("data", (".json", ".jsonl", ".parquet")), ("longbench_v2", (".jsonl", ".json", ".parquet"))]
        return self._load_args(local, "no data.json, data.jsonl or longbench_v2.jsonl in LongBench v2 data_dir")

    def _load(self):
        if self._table is None:
            try:
                args = self._source_args()
                source = common.describe_source(**args)
                table = common.load_table(**args)
            except FileNotFoundError:
                raise
            except Exception as e:
                raise FileNotFoundError(f"LongBench v2 data could not be loaded (hf_id={self.hf_id!r}, "
                                        f"revision={self.revision!r}, data_files={self.data_files!r}): "
                                        f"{type(e).__name__}: {e}") from e
            common.check_fields(table, FIELDS, source, "LongBench v2")
            present = sorted(set(table["domain"]))
            bad = [d for d in self.domains if d not in present]
            if bad:
                raise ValueError(f"unknown LongBench v2 domains {bad}; domains in the data: {', '.join(present)}")
            self._table, self._source = table, source
        return self._table

    def check(self) -> None:
        self._load()

    def _keep(self, row: dict) -> bool:
        return ((not self.difficulties or row["difficulty"] in self.difficulties)
                and (not self.lengths or row["length"] in self.lengths)
                and (not self.domains or row["domain"] in self.domains))

    def _subtask(self, row: dict) -> str:
        return self.name if self.group_by == "none" else str(row[self.group_by])

    # -- samples --------------------------------------------------------------------------------------------------

    def samples(self, tokenizer, seq_len: int, n: int, seed: int) -> Iterator[Sample]:
        table = self._load()
        keys = table.select_columns(["difficulty", "length", "domain"]).to_list()  # no contexts read here
        groups: dict[str, list[int]] = {}
        for i, row in enumerate(keys):
            if self._keep(row):
                groups.setdefault(self._subtask(row), []).append(i)
        order = {"difficulty": DIFFICULTIES, "length": LENGTHS}.get(self.group_by, sorted(groups))
        for subtask in [g for g in order if g in groups]:
            for i in common.select(groups[subtask], n, self.sampling, seed, "v2", subtask):
                yield self._sample(tokenizer, seq_len, subtask, dict(table[i]))

    def _sample(self, tokenizer, seq_len: int, subtask: str, row: dict) -> Sample:
        prompt = build_prompt(self.template, row)
        fit = common.fit_middle(tokenizer, prompt, seq_len, self.max_new_tokens, raw=False, halves="floor_ceil")
        meta = {"row_id": row["_id"], "domain": row["domain"], "sub_domain": row["sub_domain"],
                "difficulty": row["difficulty"], "length": row["length"], "answer": row["answer"],
                "prompt_variant": self.prompt, **fit.sample_meta(self._source)}
        return Sample(id=f"longbench_v2/{row['_id']}", subtask=subtask, prompt=fit.prompt,
                      targets=(str(row["answer"]),), max_new_tokens=self.max_new_tokens,
                      input_tokens=fit.input_tokens, meta=meta)

    def score(self, sample: Sample, output: str) -> dict[str, float]:
        """accuracy: the extracted letter equals the gold one; answer_parsed: a letter could be extracted."""
        pred = extract_v2_answer(output.strip())
        return {"accuracy": float(pred == sample.targets[0]), "answer_parsed": float(pred is not None)}
