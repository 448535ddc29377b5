"""The default NIAH/RULER prose is a vendored snapshot: the same sentences on every Python version."""
import platform

import pytest

from sparsebench.tasks._haystack import PYDOC_SNAPSHOT, live_pydoc_prose, pydoc_prose

# sha256 of the snapshot's sentences (Python 3.11.7's pydoc topics through the sentence filter)
SNAPSHOT_SHA256 = "997fbc33a9af6e877e3906db629e47168c9dfacb82ec242d654c326c234d4d13"


def test_snapshot_is_fixed_and_large_enough():
    prose = pydoc_prose()
    assert prose.sha256 == SNAPSHOT_SHA256
    assert PYDOC_SNAPSHOT in prose.source and "vendored" in prose.source
    assert len(prose.sentences) > 2000 and all(s and "\n" not in s for s in prose.sentences)
    assert sum(len(s) for s in prose.sentences) > 250_000  # ~70K gemma tokens before the haystack repeats


@pytest.mark.skipif(platform.python_version() != PYDOC_SNAPSHOT, reason="the snapshot was taken on Python 3.11.7")
def test_snapshot_equals_the_live_text_of_its_python():
    assert live_pydoc_prose().sentences == pydoc_prose().sentences
