"""Typed configs (dataclasses stored in Hydra's ConfigStore under `schema/<group>`).

A YAML in `conf/<group>/` extends its schema explicitly (`- /schema/method/streaming@_here_`), so a misspelled key
(`method.treshold=0.5`) or a wrong type fails when the config is composed, naming the key. No torch import here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


# ------------------------------------------------------------------------------------------------ methods
@dataclass
class MethodConfig:
    name: str = MISSING
    layers: Any = "full_attention"  # full_attention | all | [layer indices]
    executor: str = "auto"  # auto | reference | flex | triton
    target_density: Optional[float] = None  # tune the method's budget knob to this density (calibrated, stored)


@dataclass
class DenseConfig(MethodConfig):
    name: str = "dense"
    block_size: int = 128


@dataclass
class StreamingConfig(MethodConfig):
    name: str = "streaming"
    n_init: int = 128
    n_local: int = 3968
    block_size: int = 128


@dataclass
class XAttentionConfig(MethodConfig):
    name: str = "xattn"
    stride: int = 8
    threshold: float = 0.9
    block_size: int = 128
    norm: float = 1.0
    thresholds_file: Optional[str] = None  # per-layer x per-head thresholds (scripts/calibrate_xattn.py)
    chunk_size: Optional[int] = None  # query tokens estimated at once (memory only)
    use_triton: str = "auto"  # auto | true | false


@dataclass
class MInferenceConfig(MethodConfig):
    name: str = "minference"
    pattern: str = "vertical_slash"  # a_shape | vertical_slash | block_sparse | config
    last_q: int = 64
    vertical_size: int = 1000
    slash_size: int = 6096
    n_init: int = 128
    n_local: int = 3968
    top_k: int = 100
    block_size: int = 64
    forced_columns: int = 30
    forced_diagonals: int = 100
    min_vertical: int = 30
    min_slash: int = 50
    budget_scale: float = 1.0
    pattern_file: Optional[str] = None  # pattern=config only: per-head JSON in the calibration store
    scores_kernel: str = "auto"  # auto (triton on CUDA) | torch | triton (fused kernels/last_q_scores)


@dataclass
class FlexPrefillConfig(MethodConfig):
    name: str = "flexprefill"
    gamma: float = 0.95
    tau: float = 0.1
    min_budget: Optional[int] = 1024
    max_budget: Optional[int] = None
    block_size: int = 128
    variant: str = "official"  # official | sparse_frontier
    approximation_size: Optional[int] = None  # sparse_frontier only (None: 512)
    scores_kernel: str = "auto"  # auto (triton on CUDA) | torch | triton (fused kernels/last_q_scores)


@dataclass
class PBSConfig(MethodConfig):
    name: str = "pbs"
    block_size: int = 128
    segment_size: int = 256  # a multiple of block_size
    threshold: float = 0.9  # (0, 1]; 1 keeps every block
    force_first_block: bool = True
    last_q: int = 128
    scores_kernel: str = "auto"  # auto (triton on CUDA) | torch (official, exact) | triton (fused last_q_scores)


# ------------------------------------------------------------------------------------------------ tasks
@dataclass
class TaskConfig:
    name: str = MISSING


@dataclass
class NIAHConfig(TaskConfig):
    name: str = "niah"
    haystack: str = "essay"  # essay | noise
    depths: List[float] = field(default_factory=lambda: [0.0, 25.0, 50.0, 75.0, 100.0])
    max_new_tokens: int = 16
    essay_path: Optional[str] = None
    essay_dataset: Optional[str] = None
    essay_data_files: Optional[str] = None
    essay_split: str = "train"
    essay_field: str = "text"


@dataclass
class JointRecallConfig(TaskConfig):
    name: str = "joint_recall"
    max_n_key: int = 16  # keys per context (HAX max_n_key)
    min_n_key: int = 5  # fewest keys per context, used only when whole blocks cannot fill a short prompt
    n_value: int = 16  # distinct values (HAX n_value), at most 32
    num_queries: int = 16  # (context, key) cells asked
    max_new_tokens: int = 128


@dataclass
class MQARConfig(TaskConfig):
    name: str = "mqar"
    num_queries: int = 16  # keys asked
    power_a: float = 0.01  # zoology's power law over the distance from the questions; 1.0 = uniform
    max_new_tokens: int = 192


@dataclass
class StoryConfig(TaskConfig):
    name: str = "story"
    subtasks: List[str] = field(default_factory=lambda: ["retrieval", "multihop", "filtering"])
    num_queries: int = 16  # retrieval questions
    chapters_in_question: int = 3  # filtering: chapters without a purchase
    protagonist: str = "Arion"
    conversation_extensions: int = 3
    max_new_tokens: int = 1024  # upstream's output budget (explanation + answer), inside seq_len here


@dataclass
class LMEvalConfig(TaskConfig):
    name: str = "lm_eval"
    tasks: List[str] = field(default_factory=list)  # lm-eval task/group/tag names (required)
    include_path: Optional[str] = None  # folder of local task YAMLs
    num_fewshot: Optional[int] = None
    gen_kwargs: Optional[str] = None  # lm-eval's "key=value,..." generation overrides
    system_instruction: Optional[str] = None
    bootstrap_iters: int = 100000
    metadata: Any = field(default_factory=dict)  # passed to lm-eval tasks (e.g. RULER: pretrained, max_seq_lengths)


@dataclass
class RulerConfig(TaskConfig):
    name: str = "ruler"
    subtasks: List[str] = field(default_factory=lambda: [
        "niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2", "niah_multikey_3",
        "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe", "qa_1", "qa_2"])
    max_new_tokens: Dict[str, int] = field(default_factory=dict)  # per-subtask overrides of upstream's budgets
    essay_path: Optional[str] = None  # Paul Graham essays (.txt/.json/.jsonl/folder); default: offline pydoc prose
    essay_dataset: Optional[str] = None
    essay_data_files: Optional[str] = None
    essay_split: str = "train"
    essay_field: str = "text"
    squad_path: Optional[str] = None  # SQuAD v2 dev-v2.0.json (qa_1)
    squad_dataset: Optional[str] = None  # e.g. rajpurkar/squad_v2 (hub; not reachable from here)
    squad_revision: Optional[str] = "3ffb306f725f7d2ce8394bc1873b24868140c412"  # unverified pin of squad_v2
    squad_split: str = "validation"
    squad_data_files: Optional[str] = None
    hotpotqa_path: Optional[str] = None  # hotpot_dev_distractor_v1.json (qa_2)
    hotpotqa_dataset: Optional[str] = None  # e.g. hotpotqa/hotpot_qa (hub; not reachable from here)
    hotpotqa_config: Optional[str] = "distractor"
    hotpotqa_revision: Optional[str] = "1908d6afbbead072334abe2965f91bd2709910ab"  # unverified pin of hotpot_qa
    hotpotqa_split: str = "validation"
    hotpotqa_data_files: Optional[str] = None
    cwe_words_path: Optional[str] = None  # RULER's english_words.json, used only past wonderwords' 8,166 words


@dataclass
class LongBenchConfig(TaskConfig):
    name: str = "longbench"
    variant: str = "v1"  # v1 (21 datasets) | e (LongBench-E: 13 datasets x length buckets 0-4k, 4-8k, 8k+)
    datasets: List[str] = field(default_factory=list)  # empty: all datasets of the variant
    data_dir: Optional[str] = None  # local <config>.jsonl files (config = dataset, or <dataset>_e for E)
    hf_id: str = "Xnhyacinth/LongBench"  # parquet mirror of THUDM/LongBench (unverified from here)
    revision: Optional[str] = "main"  # pin a commit sha for reproducible runs
    data_files: Optional[str] = None  # with hf_id=json/parquet: a pattern with {config}
    split: str = "test"
    sampling: str = "first"  # first (file order) | random (seeded subset): n per dataset (per bucket for E)


@dataclass
class LongBenchV2Config(TaskConfig):
    name: str = "longbench_v2"
    prompt: str = "0shot"  # 0shot | no_context
    difficulties: List[str] = field(default_factory=list)  # easy, hard (empty: all)
    lengths: List[str] = field(default_factory=list)  # short, medium, long (empty: all)
    domains: List[str] = field(default_factory=list)  # empty: all
    group_by: str = "none"  # none | difficulty | length | domain: the subtask
    max_new_tokens: int = 128
    data_dir: Optional[str] = None  # local data.json / data.jsonl / longbench_v2.jsonl
    hf_id: str = "THUDM/LongBench-v2"  # (unverified from here)
    revision: Optional[str] = "main"  # pin a commit sha for reproducible runs
    data_files: Optional[str] = None  # with hf_id=json/parquet
    split: str = "train"
    sampling: str = "first"  # first | random


# ------------------------------------------------------------------------------------------------ models
@dataclass
class ModelConfig:
    name: str = MISSING
    source: str = "hub"  # gguf_package | hub | random
    hf_id: Optional[str] = None
    revision: Optional[str] = None
    gguf_package: Optional[str] = None
    quant: str = "none"
    max_context: int = MISSING
    dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    chat_template: str = "none"  # auto | none
    seed: int = 0  # random weights only
    arch: Any = field(default_factory=dict)  # random weights only: model_type + config fields


# ------------------------------------------------------------------------------------------------ others
@dataclass
class PathsConfig:
    root_dir: str = "."
    results_dir: str = "${paths.root_dir}/results"
    raw_dir: str = "${paths.results_dir}/raw"
    table_dir: str = "${paths.results_dir}/tables"
    figure_dir: str = "${paths.results_dir}/figures"
    cache_dir: str = "${oc.env:SPARSEBENCH_CACHE,${oc.env:HOME}/.cache/sparsebench}"
    data_dir: str = "${paths.root_dir}/data"
    calib_dir: str = "${paths.cache_dir}/calib"


@dataclass
class LoggerConfig:
    name: str = "none"  # none | wandb
    project: str = "sparsebench"
    entity: Optional[str] = None
    mode: str = "online"  # online | offline | disabled
    tags: List[str] = field(default_factory=list)


@dataclass
class RunConfig:
    method: Any = MISSING
    task: Any = MISSING
    model: Any = MISSING
    paths: Any = MISSING
    logger: Any = MISSING
    experiment: Any = None
    debug: Any = None
    experiment_name: str = "default"
    seq_len: int = 4096
    seed: int = 0
    n_samples: int = 1  # per task grid point (NIAH: per depth)
    diagnostics: bool = False  # attention recall and output error on sampled rows
    diag_rows: int = 64
    figures: bool = True  # draw the task's figure after a run or sweep
    warmup: bool = True  # one untimed prefill of the first prompt first, so timings exclude compilation
    # with warmup, also one before the first prompt of every other token count (GPU timing runs: kernels compile
    # per shape specialisation, and a compile inside a timed sample spoils its estimation_ms / attention_ms)
    warmup_each_length: bool = False
    progress: bool = True


def _leaves(base: type) -> list[type]:
    out = []
    for cls in base.__subclasses__():
        out.append(cls)
        out.extend(_leaves(cls))
    return out


def store() -> None:
    """Store every config dataclass: method and task schemas under their `name` default, found by subclassing."""
    cs = ConfigStore.instance()
    cs.store(group="schema", name="run", node=RunConfig)
    for group, base in (("schema/method", MethodConfig), ("schema/task", TaskConfig)):
        for cls in _leaves(base):
            cs.store(group=group, name=cls.name, node=cls)
    cs.store(group="schema/model", name="model", node=ModelConfig)
    cs.store(group="schema/paths", name="paths", node=PathsConfig)
    cs.store(group="schema/logger", name="logger", node=LoggerConfig)
