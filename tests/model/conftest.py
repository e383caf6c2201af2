"""Fixtures for the model tests: the real built-in models, each built once per session."""

from __future__ import annotations

from collections.abc import Callable
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


@pytest.fixture(scope="session")
def builtin_spec(model_cache_dir: Path) -> Callable[[str], ModelSpec]:
    """``builtin_spec("efficientnet-lite1")``: that model, built on first use (about 1 s)
    into the session's model cache beside Lite0."""
    return lambda name: ensure_model(model_cache_dir, name)
