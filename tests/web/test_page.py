"""The page in a real browser: upload photos by keyboard, see their labels, watch the scaling.

Playwright drives Debian's ``chromium`` (``apt-get install -y chromium``); no browser is
downloaded. The screenshot lands in ``test-output/page.png``.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, expect
from prometheus_client.parser import text_string_to_metric_families

from dlaas.jobs import records
from dlaas.keys import add_key
from dlaas.model import ModelSpec
from tests.support import ServeProcess

OUTPUT_DIR = Path(__file__).resolve().parents[2] / "test-output"

# Accepted top-1 labels (short names) for each scikit-image photo.
EXPECTED = {
    "chelsea": {"tabby", "tiger cat", "Egyptian cat"},
    "coffee": {"espresso", "cup", "coffee mug"},
    "rocket": {"missile", "projectile", "space shuttle"},
}

# Pixels clearly in the hue of the "running workers" series (green), in RGBA data.
COUNT_GREEN_PIXELS = """(id) => {
  const canvas = document.getElementById(id);
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let n = 0;
  for (let i = 0; i < data.length; i += 4) {
    const [r, g, b, a] = [data[i], data[i + 1], data[i + 2], data[i + 3]];
    if (a > 100 && g > r + 40 && g > b + 20) n += 1;
  }
  return n;
}"""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, model_cache_dir: Path
) -> Iterator[ServeProcess]:
    serve = ServeProcess(
        tmp_path_factory.mktemp("serve"),
        ["--model-dir", str(model_cache_dir), "--max-workers", "2"],
    )
    try:
        serve.wait_ready()
        yield serve
    finally:
        serve.stop()


def write_photos(
    directory: Path, photo: Callable[[str], bytes], names: Iterable[str]
) -> list[Path]:
    paths = []
    for name in names:
        path = directory / f"{name}.jpg"
        path.write_bytes(photo(name))
        paths.append(path)
    return paths


def counters(server: ServeProcess) -> dict[str, float]:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    names = ("dlaas_images_accepted_total", "dlaas_images_done_total", "dlaas_images_failed_total")
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name in names
    }


def test_upload_three_photos_through_the_page(
    browser: Browser, server: ServeProcess, photo: Callable[[str], bytes], tmp_path: Path
) -> None:
    uploads = write_photos(tmp_path, photo, EXPECTED)
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("shopping list, not a photo\n" * 20)
    uploads.append(not_an_image)

    urls: list[str] = []
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(f"console: {message.text}")

    page = browser.new_page(viewport={"width": 1360, "height": 1000})
    # Playwright turns file-chooser interception on without waiting for it, when the first
    # "filechooser" listener is added; added only by expect_file_chooser, it can lose the
    # race with the key press right after (no chooser event, a 30 s timeout once in six
    # suite runs). A listener from the start has it on long before the press.
    page.on("filechooser", lambda _chooser: None)
    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    page.on("request", lambda request: urls.append(request.url))
    before = counters(server)
    page.goto(server.url + "/")
    expect(page.locator("#live")).to_have_attribute("data-state", "live")

    # When a person tabs to the file picker and presses Space...
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "file-input":
            break
    assert page.evaluate("document.activeElement.id") == "file-input"
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Space")
    chooser.value.set_files([str(p) for p in uploads])

    # ...every file gets a card at once, and the photos their labels.
    cards = page.locator(".card")
    expect(cards).to_have_count(4)
    done = page.locator('.card[data-state="done"]')
    expect(done).to_have_count(3, timeout=90_000)
    for name, accepted in EXPECTED.items():
        card = cards.filter(has=page.locator(".filename", has_text=f"{name}.jpg"))
        expect(card.locator(".pred")).to_have_count(5)
        top = card.locator(".pred").first.get_attribute("title") or ""
        assert records.short_label(top) in accepted, (name, top)
        assert card.locator(".thumb img").evaluate("img => img.naturalWidth") > 0

    # The file the API refused (415) says why, on its own card.
    refused = cards.filter(has=page.locator(".filename", has_text="notes.txt"))
    expect(refused).to_have_attribute("data-state", "failed")
    expect(refused.locator(".error")).to_contain_text("415")
    summary = page.locator(".job-counts")
    expect(summary).to_contain_text("3 done")
    expect(summary).to_contain_text("1 failed")
    expect(page.locator(".job-elapsed")).to_contain_text("took")

    # The CSV download holds every image with its top-5.
    with page.expect_download() as download:
        page.locator(".job-csv").click()
    with download.value.path().open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["filename"] for r in rows) == sorted(p.name for p in uploads)
    by_name = {r["filename"]: r for r in rows}
    assert records.short_label(by_name["coffee.jpg"]["label_1"]) in EXPECTED["coffee"]
    assert by_name["notes.txt"]["status"] == "failed"

    # The scaling chart drew the workers that rose for this job (the area grows by
    # a few pixels a second while they keep running).
    workers = page.locator("#chart-workers")
    expect(workers).to_have_attribute("data-peak", re.compile(r"^[1-9]"), timeout=15_000)
    assert int(page.locator("#chart-queue").get_attribute("data-points") or 0) >= 2
    for _ in range(40):
        if page.evaluate(COUNT_GREEN_PIXELS, "chart-workers") > 300:
            break
        page.wait_for_timeout(500)
    assert page.evaluate(COUNT_GREEN_PIXELS, "chart-workers") > 300

    OUTPUT_DIR.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT_DIR / "page.png"), full_page=True)
    page.close()

    own = (server.url + "/", f"blob:{server.url}/")
    assert urls, "the page made no requests at all"
    assert [u for u in urls if not u.startswith(own)] == []
    assert errors == []

    # The page's job moved the server's counters the same way.
    after = counters(server)
    assert {name: after[name] - before[name] for name in after} == {
        "dlaas_images_accepted_total": 3,
        "dlaas_images_done_total": 3,
        "dlaas_images_failed_total": 0,
    }


def test_a_refused_upload_says_why_on_each_image_and_can_be_retried(
    browser: Browser, server: ServeProcess, photo: Callable[[str], bytes], tmp_path: Path
) -> None:
    uploads = write_photos(tmp_path, photo, ["chelsea", "coffee"])
    errors: list[str] = []
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    page.goto(server.url + "/")

    # Given a service answering the documented 429 (the queue is over --max-backlog)...
    busy = {"error": "busy", "detail": "150000 images are waiting; retry in a few seconds"}
    page.route(
        "**/v1/jobs?partial=true",
        lambda route: route.fulfill(status=429, json=busy, headers={"Retry-After": "5"}),
    )
    page.set_input_files("#file-input", [str(p) for p in uploads])

    # ...each image says it was not uploaded, and the job says why and offers a retry.
    expect(page.locator('.card[data-state="failed"]')).to_have_count(2)
    expect(page.locator(".card .error").first).to_have_text("Not uploaded: Service busy (429)")
    job_error = page.locator(".job-error")
    expect(job_error).to_contain_text("150000 images are waiting")
    expect(job_error).to_contain_text("retry after 5 s")
    retry = page.locator(".job-retry")
    expect(retry).to_be_visible()

    # When the service has room again, the retry goes through to results.
    page.unroute("**/v1/jobs?partial=true")
    retry.click()
    expect(page.locator('.card[data-state="done"]')).to_have_count(2, timeout=90_000)
    expect(job_error).to_be_hidden()
    page.close()
    assert errors == []


def test_200_images_through_the_page_and_the_workers_rise_and_fall(
    browser: Browser,
    model_cache_dir: Path,
    photo: Callable[[str], bytes],
    tmp_path: Path,
) -> None:
    """All 200 results show, and the chart shows workers going up to max and back to 0."""
    serve = ServeProcess(
        tmp_path / "serve",
        [
            "--model-dir", str(model_cache_dir), "--max-workers", "2",
            "--downscale-delay-s", "2", "--idle-timeout-s", "5",
        ],
    )  # fmt: skip
    try:
        serve.wait_ready()
        sources = [photo(n) for n in ("chelsea", "coffee", "rocket", "astronaut")]
        uploads = []
        for i in range(200):
            path = tmp_path / f"photo-{i:03d}.jpg"
            path.write_bytes(sources[i % len(sources)])
            uploads.append(path)
        errors: list[str] = []
        page = browser.new_page(viewport={"width": 1360, "height": 1000})
        page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
        page.goto(serve.url + "/")
        expect(page.locator("#live")).to_have_attribute("data-state", "live")
        page.set_input_files("#file-input", [str(p) for p in uploads])

        done = page.locator("#jobs .card[data-state='done']")
        expect(done).to_have_count(200, timeout=180_000)
        # Rising: the workers chart saw both workers; falling: the live count is back at 0.
        expect(page.locator("#chart-workers")).to_have_attribute("data-peak", "2")
        expect(page.locator("#v-running")).to_have_text("0", timeout=60_000)
        OUTPUT_DIR.mkdir(exist_ok=True)
        page.screenshot(path=str(OUTPUT_DIR / "page-200.png"))
        page.close()
        assert errors == []
    finally:
        assert serve.stop() == 0, serve.log()


def test_with_keys_on_the_page_asks_for_a_key_then_uploads_and_shows_results(
    browser: Browser, tiny_spec: ModelSpec, photo: Callable[[str], bytes], tmp_path: Path
) -> None:
    keys_file = tmp_path / "keys"
    key = add_key(keys_file, "alice")
    labels = tiny_spec.onnx_path.parent / "labels.txt"
    serve = ServeProcess(
        tmp_path / "serve",
        [
            "--model", str(tiny_spec.onnx_path), "--labels", str(labels),
            "--api-keys-file", str(keys_file), "--max-workers", "1",
        ],
    )  # fmt: skip
    try:
        serve.wait_ready()
        uploads = write_photos(tmp_path, photo, ["chelsea", "coffee"])
        errors: list[str] = []
        urls: list[str] = []
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on(
            "console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None
        )
        page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
        page.on("request", lambda request: urls.append(request.url))
        response = page.goto(serve.url + "/")
        assert response is not None
        csp = response.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp

        # The page asks for the key, and says so when a wrong one is given...
        form = page.locator("#key-form")
        expect(form).to_be_visible()
        page.fill("#key-input", "dlaas_not-a-real-key")
        page.keyboard.press("Enter")
        expect(page.locator("#key-error")).to_contain_text("not accepted")
        page.fill("#key-input", key)
        page.locator("#key-form button[type=submit]").click()
        expect(form).to_be_hidden()
        expect(page.locator("#identity-owner")).to_have_text("alice (user)")
        assert page.evaluate("sessionStorage.getItem('dlaas-api-key')") == key

        # ...then uploads with it and streams the results in.
        page.set_input_files("#file-input", [str(p) for p in uploads])
        expect(page.locator('.card[data-state="done"]')).to_have_count(2, timeout=60_000)
        for card in page.locator(".card").all():
            expect(card.locator(".pred")).to_have_count(5)
        # A user key sees no scaling stats: the page does not ask for them.
        expect(page.locator("#live")).to_have_attribute("data-state", "down")

        # The key survives a reload of the tab.
        page.reload()
        expect(page.locator("#identity-owner")).to_have_text("alice (user)")
        expect(form).to_be_hidden()
        page.close()

        assert [u for u in urls if not u.startswith((serve.url + "/", f"blob:{serve.url}/"))] == []
        assert not any("/v1/stats" in u for u in urls)
        assert errors == [], errors  # a CSP violation would show here
    finally:
        assert serve.stop() == 0, serve.log()
    assert key not in serve.log()


def test_api_docs_load_from_this_server_only(browser: Browser, server: ServeProcess) -> None:
    errors: list[str] = []
    urls: list[str] = []
    page = browser.new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    page.on("request", lambda request: urls.append(request.url))
    page.goto(server.url + "/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("dlaas")
    expect(page.locator(".opblock-summary-path").first).to_be_visible()
    # Opening an operation draws its schemas and examples; the CSP must allow all of it.
    page.locator(".opblock-summary").first.click()
    page.locator(".try-out__btn").first.click()
    expect(page.locator(".opblock-body").first).to_be_visible()
    page.wait_for_timeout(500)
    page.close()
    assert [u for u in urls if not u.startswith(server.url + "/")] == []
    assert errors == [], errors
