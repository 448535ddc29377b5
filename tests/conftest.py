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
