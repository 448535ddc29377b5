"""Word lists: the wonderwords noun, adjective and verb lists that RULER draws from, read offline from the package.

RULER (`scripts/data/synthetic/niah.py`, `common_words_extraction.py`) reads them with
`wonderwords.random_word._get_words_from_text_file("nounlist.txt")` etc.; here the same bundled files are read through
`importlib.resources`, one word a line, stripped, blank lines dropped. wonderwords ships them inside its wheel, so
nothing is downloaded. CWE's second list, RULER's `json/english_words.json` (8.5 MB, stored with git-LFS and not
on PyPI), is optional here: `load_word_file` reads it (or any list of words) from a local path.
"""
from __future__ import annotations

import json
from functools import cache, lru_cache
from pathlib import Path


@cache
def wonderwords_list(name: str) -> tuple[str, ...]:
    """One of wonderwords' bundled lists: "nounlist.txt", "adjectivelist.txt" or "verblist.txt" (file order)."""
    from importlib import resources

    text = resources.files("wonderwords.assets").joinpath(name).read_text(encoding="utf-8")
    return tuple(w for w in (line.rstrip() for line in text.splitlines()) if w)


def wonderwords_version() -> str:
    from importlib.metadata import version

    return version("wonderwords")


@lru_cache(maxsize=1)
def key_words() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(adjectives, nouns), each sorted and unique: NIAH keys are "{adjective}-{noun}"."""
    return (tuple(sorted(set(wonderwords_list("adjectivelist.txt")))),
            tuple(sorted(set(wonderwords_list("nounlist.txt")))))


@lru_cache(maxsize=1)
def cwe_words() -> tuple[str, ...]:
    """CWE's vocabulary before its seeded shuffle: sorted(set(nouns + adjectives + verbs))."""
    return tuple(sorted(set(wonderwords_list("nounlist.txt") + wonderwords_list("adjectivelist.txt")
                            + wonderwords_list("verblist.txt"))))


@lru_cache(maxsize=4)
def load_word_file(path: str) -> tuple[str, ...]:
    """Words from a local file: RULER's english_words.json (an object whose values are the words), a JSON list, or
    a text file with one word a line. Duplicates are dropped, first occurrence kept."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"cwe_words_path {str(p)!r} does not exist")
    if p.suffix == ".json":
        data = json.loads(p.read_text(encoding="utf-8"))
        words = list(data.values()) if isinstance(data, dict) else data
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise ValueError(f"cwe_words_path {str(p)!r}: expected a JSON object or list of words")
    else:
        words = p.read_text(encoding="utf-8").splitlines()
    out = tuple(dict.fromkeys(w.strip() for w in words if w.strip()))
    if not out:
        raise ValueError(f"cwe_words_path {str(p)!r} holds no words")
    return out
