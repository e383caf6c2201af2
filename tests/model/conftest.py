"""Fixtures for the model tests: the real EfficientNet-Lite0, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlaas.model import Classifier, ModelSpec, ensure_model


@pytest.fixture(scope="session")
def lite0_spec(model_cache_dir: Path) -> ModelSpec:
    """The session's build, re-read through the cache's validity check (no rebuild)."""
    return ensure_model(model_cache_dir)


@pytest.fixture(scope="session")
def lite0(lite0_spec: ModelSpec) -> Classifier:
    return Classifier(lite0_spec)
