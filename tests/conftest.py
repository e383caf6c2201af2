"""Fixtures shared by the whole suite: real photos, a tiny model, CI strictness."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from PIL import Image

if TYPE_CHECKING:
    from fastapi.testclient import TestClient
    from playwright.sync_api import Browser

    from dlaas.model import ModelSpec
    from tests.service import Service

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(available: bool, reason: str) -> None:
    """Skip locally when an outside service is missing; fail under CI=true."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{reason} (required because CI=true)")
    pytest.skip(reason)


CHROMIUM = Path("/usr/bin/chromium")  # Debian's (apt-get install -y chromium); none is downloaded
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Debian's chromium driven by Playwright, for the page tests."""
    from playwright.sync_api import sync_playwright

    need(CHROMIUM.exists(), f"{CHROMIUM} is missing; install it with apt-get install -y chromium")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def jpeg_bytes(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="session")
def photo() -> Callable[[str], bytes]:
    """``photo("chelsea")`` -> a real camera photo from scikit-image, as JPEG bytes."""
    from skimage import data

    cache: dict[str, bytes] = {}

    def get(name: str) -> bytes:
        if name not in cache:
            cache[name] = jpeg_bytes(Image.fromarray(getattr(data, name)()))
        return cache[name]

    return get


@pytest.fixture(scope="session")
def small_jpeg() -> bytes:
    return jpeg_bytes(Image.new("RGB", (64, 48), (200, 30, 30)))


@pytest.fixture(scope="session")
def tiny_spec(tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    """A tiny ONNX classifier with the real input contract, for fast pipeline tests."""
    from dlaas.model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def slow_spec(tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    """The tiny model plus tens of milliseconds of convolutions per image, for tests that act
    while a job runs: a worker cannot finish the job before the test's next step."""
    from tests.slow_model import build_slow_model

    return build_slow_model(tmp_path_factory.mktemp("slow-model"), convolutions=20)


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real EfficientNet-Lite0, converted once per test session (pass as --model-dir)."""
    from dlaas.model import ensure_model

    directory = tmp_path_factory.mktemp("models")
    ensure_model(directory)
    return directory


@pytest.fixture
def service(tiny_spec: ModelSpec) -> Iterator[Service]:
    """The app with a worker thread on fresh memory backends (``tests.service``)."""
    from tests.service import Service

    svc = Service(tiny_spec)
    yield svc
    svc.close()


@pytest.fixture
def client(service: Service) -> Iterator[TestClient]:
    """A client of ``service``'s app, its lifespan (reply reader) running."""
    from fastapi.testclient import TestClient

    with TestClient(service.app) as c:
        yield c
