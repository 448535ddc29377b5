"""Haystack text for needle-in-a-haystack tasks: the RULER noise line and offline English prose.

RULER (Hsieh et al., arXiv:2404.06654) fills its haystacks either with a repeated five-sentence "noise" line or with
Paul Graham essays split into sentences by nltk. Here the essays are optional (a local file/folder or a `datasets`
id); the default prose is Python's own documentation text from the standard library (`pydoc_data.topics`), as
Python 3.11.7 ships it, vendored in `tasks/assets/` so that a run needs no download and every Python version builds
the same haystack. Sentences are split by a regular expression, so no nltk data is needed either.

Every loader returns a `Prose`: the sentences in order plus a `source` string that says where they came from. The
source names the snapshot and `sha256` fingerprints the sentences: two runs compare prompt for prompt only when both
match (rows made before the snapshot, from the live text of Python 3.12.3, show that version in their source).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

NOISE_LINE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

# Periods after these words rarely end a sentence; splitting there would cut "e.g. the ..." style phrases in two.
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "prof", "st", "vs", "e.g", "i.e", "cf", "fig"})
_SENTENCE_END = re.compile(r"([.!?][\"'\u201d\u2019)\]]*)\s+(?=[\"'\u201c\u2018(\[]?[A-Z0-9])")
_SPLIT_MARK = "\x00"

# The pydoc topics are reStructuredText rendered to plain text: headings underlined with one repeated character,
# grid tables, indented code/grammar blocks, *emphasis* and numbered footnote references.
_UNDERLINE = re.compile(r"^([*=\-~^#+])\1{2,}\s*$")
_STRONG = re.compile(r"(?<![\w*\"])\*\*(\w[^*\n]*?)\*\*")
_EMPHASIS = re.compile(r"(?<![\w*\"])\*(\w[^*\n]*?)\*")
_FOOTNOTE_REF = re.compile(r"\s*\[\d+\]")
_BULLET = re.compile(r"^(?:[*\-]|\d+\.|\(\d+\))\s+")
# Long "sentences" in the docs are almost always enumerations of names; a cap also keeps every unit small enough
# that the fitted prompt lands close to seq_len even at short lengths (the 90% floor at 512 tokens is 51 tokens).
_MAX_WORDS_PER_DOC_SENTENCE = 50


@dataclass(frozen=True)
class Prose:
    sentences: tuple[str, ...]
    source: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256("\n".join(self.sentences).encode()).hexdigest()


def normalize_whitespace(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def split_sentences(text: str) -> list[str]:
    """Split prose into sentences at ., ! or ? followed by whitespace and a capital letter, digit or opening quote."""
    text = normalize_whitespace(text)
    if not text:
        return []
    pieces = _SENTENCE_END.sub(lambda m: m.group(1) + _SPLIT_MARK, text).split(_SPLIT_MARK)
    sentences: list[str] = []
    for piece in pieces:
        piece = piece.strip()
        if not piece:
            continue
        if sentences and sentences[-1].rsplit(" ", 1)[-1].rstrip(".").lower() in _ABBREVIATIONS:
            sentences[-1] = f"{sentences[-1]} {piece}"
        else:
            sentences.append(piece)
    return sentences


def _doc_paragraphs(text: str) -> list[str]:
    """Prose paragraphs of one rendered pydoc topic, without headings, tables, interactive sessions and markup.

    Method and definition bodies are indented under their signature line, so each run of lines with one
    indentation is its own paragraph; code that survives this is dropped later by the sentence filter.
    """
    paragraphs = []
    for block in re.split(r"\n[ \t]*\n", text):
        lines = [line.rstrip() for line in block.split("\n") if line.strip()]
        if not lines or any(_UNDERLINE.match(line.strip()) for line in lines):
            continue  # headings (and table rules)
        first = lines[0].lstrip()
        if first.startswith(("+", "|", ">>>", "...")) or "::=" in block:
            continue  # tables, interactive sessions, grammar
        runs: list[list[str]] = []
        indent = None
        for line in lines:
            this = len(line) - len(line.lstrip())
            if indent is None or abs(this - indent) > 2:
                runs.append([])
                indent = this
            runs[-1].append(line.strip())
        for run in runs:
            paragraph = _BULLET.sub("", " ".join(run))
            paragraph = _EMPHASIS.sub(r"\1", _STRONG.sub(r"\1", paragraph))
            paragraphs.append(_FOOTNOTE_REF.sub("", paragraph))
    return paragraphs


def _is_doc_prose(sentence: str) -> bool:
    words = sentence.split()
    return (4 <= len(words) <= _MAX_WORDS_PER_DOC_SENTENCE and (sentence[0].isupper() or sentence[0] == '"')
            and sentence.endswith((".", "!", "?")) and sum(c.isalpha() for c in sentence) > 0.6 * len(sentence))


PYDOC_SNAPSHOT = "3.11.7"  # the Python whose pydoc topics were vendored into tasks/assets/
_PYDOC_ASSET = Path(__file__).resolve().parent / "assets" / f"pydoc_prose_{PYDOC_SNAPSHOT}.txt.gz"


def live_pydoc_prose() -> Prose:
    """English prose from this interpreter's documentation topics (the text behind `help('if')`).

    The text changes between Python versions (3.11.7 and 3.12.3 give different haystacks), which is why
    `pydoc_prose()` reads a vendored snapshot instead; this function rebuilds one.
    """
    from pydoc_data.topics import topics

    sentences = []
    for name in sorted(topics):
        for paragraph in _doc_paragraphs(topics[name]):
            sentences.extend(s for s in split_sentences(paragraph) if _is_doc_prose(s))
    return Prose(tuple(sentences), f"pydoc_data.topics (Python {platform.python_version()})")


@lru_cache(maxsize=1)
def pydoc_prose() -> Prose:
    """The default prose: `live_pydoc_prose()` as Python 3.11.7 builds it, read from the vendored snapshot
    (one sentence a line, gzip), so every machine and Python version builds the same prompts."""
    import gzip

    with gzip.open(_PYDOC_ASSET, "rt", encoding="utf-8") as f:
        sentences = tuple(line.rstrip("\n") for line in f)
    return Prose(sentences, f"pydoc_data.topics (Python {PYDOC_SNAPSHOT}, vendored)")


def _texts_from_json(obj, field: str, where: str) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, Mapping):
        if field not in obj:
            raise ValueError(f"{where}: no field {field!r} (fields: {', '.join(map(str, obj))}); set essay_field")
        return _texts_from_json(obj[field], field, where)
    if isinstance(obj, list):
        return [text for item in obj for text in _texts_from_json(item, field, where)]
    raise ValueError(f"{where}: expected text, a list or an object with field {field!r}, got {type(obj).__name__}")


def load_path_prose(path: str | os.PathLike, field: str = "text") -> Prose:
    """Essays from a .txt, .json or .jsonl file, or from every .txt file of a folder (in sorted name order)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"essay_path {str(path)!r} does not exist")
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise ValueError(f"essay_path {str(path)!r} is a folder without .txt files")
        texts = [f.read_text(encoding="utf-8") for f in files]
    elif path.suffix == ".txt":
        texts = [path.read_text(encoding="utf-8")]
    elif path.suffix == ".json":
        texts = _texts_from_json(json.loads(path.read_text(encoding="utf-8")), field, str(path))
    elif path.suffix == ".jsonl":
        texts = []
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    texts.extend(_texts_from_json(json.loads(line), field, f"{path}:{lineno}"))
    else:
        raise ValueError(f"essay_path {str(path)!r}: expected a .txt, .json or .jsonl file or a folder of .txt files")
    return _prose_from_texts(texts, f"file:{path.resolve()}")


def load_dataset_prose(dataset: str, split: str = "train", field: str = "text",
                       data_files: str | list | Mapping | None = None) -> Prose:
    """Essays from `datasets.load_dataset(dataset, data_files=..., split=...)[field]`, rows in dataset order."""
    import datasets

    if isinstance(data_files, Mapping):
        data_files = {str(k): v if isinstance(v, str) else list(v) for k, v in data_files.items()}
    elif data_files is not None and not isinstance(data_files, str):
        data_files = list(data_files)
    ds = datasets.load_dataset(dataset, data_files=data_files, split=split)
    if field not in ds.column_names:
        raise ValueError(f"dataset {dataset!r} split {split!r} has no column {field!r} "
                         f"(columns: {', '.join(ds.column_names)}); set essay_field")
    source = f"datasets:{dataset}" + (f"[data_files={data_files}]" if data_files else "") + f":{split}:{field}"
    return _prose_from_texts([t for t in ds[field] if t], source)


def _prose_from_texts(texts: list[str], source: str) -> Prose:
    sentences = tuple(s for text in texts for s in split_sentences(text))
    if not sentences:
        raise ValueError(f"{source}: no text found")
    return Prose(sentences, source)
