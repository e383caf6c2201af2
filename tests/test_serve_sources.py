"""``dlaas classify file:///dir/ --output file:///out/`` on the embedded default: a real
``dlaas serve`` (SQLite queue, ``file://`` store, two local workers, the tiny model)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from dlaas.model import ModelSpec
from tests.support import ServeProcess

pytestmark = pytest.mark.slow


def test_the_cli_classifies_a_folder_where_it_is(
    tmp_path: Path, tiny_spec: ModelSpec, photo: Callable[[str], bytes]
) -> None:
    photos, out = tmp_path / "data" / "photos", tmp_path / "data" / "labels"
    keys = []
    for n in range(40):
        key = f"day{n % 3}/img {n:02d}.jpg"
        (photos / key).parent.mkdir(parents=True, exist_ok=True)
        (photos / key).write_bytes(photo(("chelsea", "coffee", "rocket")[n % 3]))
        keys.append(key)
    (photos / "day0" / "readme.txt").write_text("not an image")
    keys = sorted([*keys, "day0/readme.txt"])
    labels = tiny_spec.onnx_path.parent / "labels.txt"
    serve = ServeProcess(
        tmp_path / "serve",
        [
            "--model", str(tiny_spec.onnx_path), "--labels", str(labels), "--workers", "2",
            "--source-allow", f"file://{tmp_path / 'data'}/",
        ],
    )  # fmt: skip
    try:
        serve.wait_ready()
        cmd = [sys.executable, "-m", "dlaas", "classify", f"file://{photos}/", "--url", serve.url]
        refused = subprocess.run(
            [*cmd, "--output", f"file://{tmp_path}/"], capture_output=True, text=True, timeout=60
        )
        assert refused.returncode == 2 and "source_refused" in refused.stderr
        run = subprocess.run(
            [*cmd, "--output", f"file://{out}/"], capture_output=True, text=True, timeout=120
        )
    finally:
        assert serve.stop() == 0, serve.log()
    assert run.returncode == 1, run.stderr  # one file is not an image
    assert "40 done, 1 failed of 41" in run.stderr
    written = Path(run.stdout.strip().removeprefix("file://"))
    assert written.parent == out and written.name.endswith(".jsonl")
    lines = [json.loads(line) for line in written.read_text().splitlines()]
    assert [line["key"] for line in lines] == keys
    assert [line["status"] for line in lines].count("done") == 40
    assert (
        sorted(p.relative_to(photos).as_posix() for p in photos.rglob("*") if p.is_file()) == keys
    )
