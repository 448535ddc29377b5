"""A lazy name -> "module:attr" registry with did-you-mean errors (lm-evaluation-harness style).

Entries are import paths, so `import sparsebench` and `--help` never import torch, transformers or triton.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Any


class Registry:
    def __init__(self, kind: str, entries: dict[str, str]):
        self.kind = kind
        self._entries = dict(entries)
        self._loaded: dict[str, Any] = {}

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def check(self, name: str) -> None:
        """Raise a KeyError naming the valid choices (and the closest one) if `name` is unknown."""
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise KeyError(f"unknown {self.kind} {name!r}; valid {self.kind}s: {', '.join(self.names())}.{hint}")

    def get(self, name: str) -> Any:
        self.check(name)
        if name not in self._loaded:
            module, attr = self._entries[name].split(":")
            self._loaded[name] = getattr(importlib.import_module(module), attr)
        return self._loaded[name]
