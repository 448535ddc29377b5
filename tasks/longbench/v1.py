"""LongBench v1 (21 datasets) and LongBench-E (13 datasets in three length buckets): see the package docstring."""
from __future__ import annotations

from collections.abc import Iterator, Sequence

from sparsebench.task import Sample
from sparsebench.tasks.longbench import common
from sparsebench.tasks.longbench.metrics import DATASET2METRIC, score_prediction
from sparsebench.tasks.longbench.prompts import DATASET2MAXLEN, DATASET2PROMPT, DATASETS, E_DATASETS, NO_CHAT_TEMPLATE

VARIANTS = ("v1", "e")
# Upstream LongBench/eval.py scorer_e: length < 4000, < 8000, >= 8000 (the `length` field: words, or characters for
# Chinese).
E_BUCKETS = ("0-4k", "4-8k", "8k+")
# Xnhyacinth/LongBench: the parquet mirror of THUDM/LongBench that lm-evaluation-harness uses since THUDM/LongBench's
# loading script stopped working with datasets>=4 (configs "<dataset>" and "<dataset>_e", split "test"). Unverified
# here: the hub cannot be reached from this machine; pin `revision` to a commit sha for reproducible runs.
DEFAULT_HF_ID = "Xnhyacinth/LongBench"
DEFAULT_REVISION = "main"
FIELDS = ("input", "context", "answers", "length", "_id")


def length_bucket(length: int) -> str:
    return E_BUCKETS[0] if length < 4000 else E_BUCKETS[1] if length < 8000 else E_BUCKETS[2]


class LongBench(common.DataKnobs):
    """LongBench v1 / LongBench-E: upstream prompts, generation budgets, middle truncation and metrics.

    `n` in `samples()` counts samples per dataset (v1) or per dataset and length bucket (E): the first n rows in file
    order (`sampling="first"`, default) or a seeded subset kept in file order (`sampling="random"`).

    Args:
        variant: "v1" (21 datasets; subtask = dataset) or "e" (LongBench-E, 13 datasets; subtask =
            "<dataset>_e:<bucket>", bucket 0-4k / 4-8k / 8k+ by the `length` field).
        datasets: dataset names to run (empty: all of the variant), without the "_e" suffix.
        data_dir: local folder with `<config>.jsonl` (or .json/.parquet) files, config = dataset (v1) or
            "<dataset>_e" (E), loaded with the datasets "json"/"parquet" builders.
        hf_id, revision: the `datasets` hub id and its revision (used when data_dir and data_files are unset).
        data_files: a file pattern with "{config}" (e.g. "/data/{config}.jsonl"), loaded as
            `load_dataset(hf_id, data_files=...)`; hf_id is then a builder such as "json" or "parquet".
        split: the split to read ("test" upstream).
        sampling: "first" or "random".
    """

    name = "longbench"
    version = 1

    def __init__(self, *, variant: str = "v1", datasets: Sequence[str] = (), data_dir: str | None = None,
                 hf_id: str = DEFAULT_HF_ID, revision: str | None = DEFAULT_REVISION, data_files: str | None = None,
                 split: str = "test", sampling: str = "first"):
        if variant not in VARIANTS:
            raise ValueError(f"unknown LongBench variant {variant!r}; valid variants: {', '.join(VARIANTS)}")
        valid = DATASETS if variant == "v1" else E_DATASETS
        chosen = tuple(d[:-2] if variant == "e" and d.endswith("_e") else d for d in datasets) or valid
        bad = [d for d in chosen if d not in valid]
        if bad:
            raise ValueError(f"unknown LongBench{'-E' if variant == 'e' else ''} dataset(s) {bad}; valid datasets: "
                             f"{', '.join(valid)}")
        if len(set(chosen)) != len(chosen):
            raise ValueError(f"LongBench datasets listed twice: {list(chosen)}")
        self._set_data_knobs(data_dir=data_dir, hf_id=hf_id, revision=revision, data_files=data_files, split=split,
                             sampling=sampling)
        if data_files is not None and "{config}" not in data_files and len(chosen) > 1:
            raise ValueError(f"data_files={data_files!r} needs a '{{config}}' placeholder when several datasets run")
        self.variant = variant
        self.datasets = chosen
        self._tables: dict = {}  # dataset -> datasets.Dataset
        self._sources: dict[str, str] = {}
        self._errors: dict[str, str] = {}
        self._loaded = False

    # -- data -----------------------------------------------------------------------------------------------------

    def _config(self, dataset: str) -> str:
        return f"{dataset}_e" if self.variant == "e" else dataset

    def _subtasks(self, dataset: str) -> list[str]:
        if self.variant == "v1":
            return [dataset]
        return [f"{dataset}_e:{b}" for b in E_BUCKETS]

    def _source_args(self, dataset: str) -> dict:
        config = self._config(dataset)
        return self._load_args([(config, (".jsonl", ".json", ".parquet"))],
                               f"no {config}.jsonl (or .json/.parquet) in LongBench data_dir", config)

    def _load(self) -> None:
        if self._loaded:
            return
        for dataset in self.datasets:
            try:
                args = self._source_args(dataset)
                source = common.describe_source(**args)
                table = common.load_table(**args)
                common.check_fields(table, FIELDS, source, "LongBench")
                self._tables[dataset], self._sources[dataset] = table, source
            except Exception as e:  # noqa: BLE001 - recorded per dataset: the others still run
                self._errors[dataset] = f"{type(e).__name__}: {e}"
        self._loaded = True

    def check(self) -> None:
        self._load()
        if not self._tables:
            where = (f"data_dir={self.data_dir!r}" if self.data_dir else f"data_files={self.data_files!r}"
                     if self.data_files else f"hf_id={self.hf_id!r} revision={self.revision!r}")
            reasons = "; ".join(f"{d}: {r}" for d, r in self._errors.items())
            raise FileNotFoundError(f"no LongBench data could be loaded ({where}): {reasons}")

    def unavailable(self) -> dict[str, str]:
        self._load()
        return {sub: reason for d, reason in self._errors.items() for sub in self._subtasks(d)}

    # -- samples --------------------------------------------------------------------------------------------------

    def samples(self, tokenizer, seq_len: int, n: int, seed: int) -> Iterator[Sample]:
        self.check()
        for dataset in self.datasets:
            if dataset not in self._tables:
                continue
            table = self._tables[dataset]
            if self.variant == "v1":
                groups = [(dataset, list(range(len(table))))]
            else:
                buckets = [length_bucket(int(x)) for x in table["length"]]
                groups = [(f"{dataset}_e:{b}", [i for i, x in enumerate(buckets) if x == b]) for b in E_BUCKETS]
            for subtask, indices in groups:
                for i in common.select(indices, n, self.sampling, seed, self.variant, subtask):
                    yield self._sample(tokenizer, seq_len, dataset, subtask, dict(table[i]))

    def _sample(self, tokenizer, seq_len: int, dataset: str, subtask: str, row: dict) -> Sample:
        raw = dataset in NO_CHAT_TEMPLATE
        max_new = DATASET2MAXLEN[dataset]
        prompt = DATASET2PROMPT[dataset].format(**row)
        fit = common.fit_middle(tokenizer, prompt, seq_len, max_new, raw=raw, halves="equal")
        meta = {
            "dataset": dataset, "variant": self.variant, "row_id": row["_id"], "language": row.get("language"),
            "length": int(row["length"]), "metric": DATASET2METRIC[dataset],
            "all_classes": list(row["all_classes"]) if row.get("all_classes") else None,
            **fit.sample_meta(self._sources[dataset]),
        }
        if self.variant == "e":
            meta["length_bucket"] = length_bucket(int(row["length"]))
        return Sample(id=f"longbench/{subtask}/{row['_id']}", subtask=subtask, prompt=fit.prompt,
                      targets=tuple(str(a) for a in row["answers"]), max_new_tokens=max_new,
                      input_tokens=fit.input_tokens, meta=meta)

    def score(self, sample: Sample, output: str) -> dict[str, float]:
        """Upstream's per-dataset metric (first-line rule, max over answers), as `score` and under its own name."""
        dataset = sample.meta["dataset"]
        value = score_prediction(dataset, output, sample.targets, sample.meta.get("all_classes"))
        return {"score": value, DATASET2METRIC[dataset]: value}
