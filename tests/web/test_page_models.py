"""The page's model picker in a real browser: the served models, the default first, and
each result naming the model and version that classified it.

Two small models in a repository keep it fast: ``tiny-a`` (3 classes, the default) and
``tiny-b`` (5 classes), both added with ``add_model`` as ``dlaas model add`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from dlaas.model import build_tiny_model
from dlaas.model.repository import ModelConfig, add_model
from dlaas.model.spec import Preprocessing
from tests.support import ServeProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    root = tmp_path_factory.mktemp("repo")
    for name, classes in (("tiny-a", 3), ("tiny-b", 5)):
        spec = build_tiny_model(tmp_path_factory.mktemp(name), num_classes=classes)
        labels = spec.onnx_path.parent / "labels.txt"
        add_model(root, name, spec.onnx_path, labels, ModelConfig(Preprocessing()))
    serve = ServeProcess(
        tmp_path_factory.mktemp("serve"),
        ["--model-dir", str(root), "--model", "tiny-a", "--max-workers", "1"],
    )
    try:
        serve.wait_ready()
        yield serve
    finally:
        serve.stop()


def test_the_picker_offers_the_models_and_each_result_names_its_model(
    browser: Browser, server: ServeProcess, tmp_path: Path, photo: Callable[[str], bytes]
) -> None:
    errors: list[str] = []
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    page.goto(server.url + "/")
    picker = page.locator("#model-select")
    expect(page.locator("#model-picker")).to_be_visible()
    expect(picker.locator("option")).to_have_text(["tiny-a v1 (default)", "tiny-b v1"])
    expect(picker).to_have_value("tiny-a")

    cat = tmp_path / "chelsea.jpg"
    cat.write_bytes(photo("chelsea"))
    page.set_input_files("#file-input", [str(cat)])
    first = page.locator(".card").nth(0)
    expect(first).to_have_attribute("data-state", "done", timeout=60_000)
    expect(first.locator(".model-used")).to_have_text("tiny-a · version 1")
    expect(first.locator(".pred")).to_have_count(3)

    picker.select_option("tiny-b")
    page.set_input_files("#file-input", [str(cat)])
    expect(page.locator(".job")).to_have_count(2)
    second = page.locator(".job").nth(0).locator(".card")  # the newest job is on top
    expect(second).to_have_attribute("data-state", "done", timeout=60_000)
    expect(second.locator(".model-used")).to_have_text("tiny-b · version 1")
    expect(second.locator(".pred")).to_have_count(5)
    older = page.locator(".job").nth(1).locator(".card .model-used")
    expect(older).to_have_text("tiny-a · version 1")
    page.close()
    assert not errors, errors
