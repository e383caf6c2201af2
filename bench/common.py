"""Shared bench helpers: a photo set, the bare decode+ORT baseline, a lean HTTP client.

Every bench prints ratios measured side by side in one run, because the machines are
shared and noisy: absolute numbers drift, ratios much less.
"""

from __future__ import annotations

import http.client
import io
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tests.support import ServeProcess  # noqa: E402  (needs the path above)

__all__ = ["ServeProcess"]

PHOTO_NAMES = (
    "astronaut", "chelsea", "coffee", "rocket", "cat", "hubble_deep_field",
    "immunohistochemistry", "colorwheel", "retina", "motorcycle_left",
)  # fmt: skip


def _sources() -> list[Image.Image]:
    from skimage import data

    sources = []
    for name in PHOTO_NAMES:
        try:
            arr = getattr(data, name)()
        except Exception:  # some datasets are optional downloads; use what ships
            continue
        if arr.ndim == 3 and arr.shape[2] >= 3:
            sources.append(Image.fromarray(arr[:, :, :3]))
    return sources


def photo_set(
    n: int,
    *,
    size: tuple[int, int] = (640, 480),
    sizes: tuple[int, int] | None = None,
    seed: int = 0,
) -> list[bytes]:
    """``n`` distinct JPEGs cut from scikit-image's real photos (random crops, resized).

    ``size`` gives every photo the same ``(w, h)``. ``sizes=(lo, hi)`` gives mixed sizes
    instead, as users upload them: each long side is drawn uniformly in ``[lo, hi]`` px and
    the aspect ratio is that of the random crop. Same ``seed``, same bytes.
    """
    rng = np.random.default_rng(seed)
    sources = _sources()
    out = []
    for i in range(n):
        src = sources[i % len(sources)]
        w, h = src.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = src.crop((x, y, x + cw, y + ch))
        if sizes is None:
            img = crop.resize(size)
        else:
            long_side = int(rng.integers(sizes[0], sizes[1] + 1))
            scale = long_side / max(cw, ch)
            img = crop.resize((max(1, round(cw * scale)), max(1, round(ch * scale))))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(rng.integers(80, 95)))
        out.append(buf.getvalue())
    return out


def ensure_model_dir() -> Path:
    from dlaas.model import ensure_model

    model_dir = ROOT / ".dlaas" / "models"
    ensure_model(model_dir)
    return model_dir


def bare_loop_img_s(
    model_dir: Path, images: list[bytes], processes: int = 2, batch_size: int = 8
) -> float:
    """The bare decode+ORT loop's images per second (bench/peers.py has the details)."""
    from peers import bare_run

    return bare_run(model_dir, images, processes, batch_size).img_s


def multipart(field: str, files: Sequence[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, data in files:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


class LeanClient:
    """One keep-alive HTTP/1.1 connection; cheap enough not to steal the server's CPU."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)

    def post(self, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        self.conn.request("POST", path, body=body, headers={"Content-Type": content_type})
        response = self.conn.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        self.conn.close()


def post_all(
    port: int, path: str, bodies: Sequence[tuple[bytes, str]], threads: int, expect: int
) -> float:
    """Post every body from ``threads`` keep-alive clients; return requests per second."""

    def send(chunk: Sequence[tuple[bytes, str]]) -> None:
        client = LeanClient(port)
        for body, content_type in chunk:
            status, text = client.post(path, body, content_type)
            assert status == expect, (status, text[:200])
        client.close()

    chunks = [bodies[i::threads] for i in range(threads)]
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(send, chunks))
    return len(bodies) / (time.perf_counter() - started)


def post_all_as_user(
    port: int, path: str, bodies: Sequence[tuple[bytes, str]], threads: int, expect: int
) -> float:
    """``post_all`` as a user's program does it: ``requests``, one keep-alive Session per
    thread, and every answer parsed (JSON, or text for ``POST /``). Its CPU is the
    client's real cost, which shares the box with the server under test."""
    import requests

    url = f"http://127.0.0.1:{port}{path}"

    def send(chunk: Sequence[tuple[bytes, str]]) -> None:
        with requests.Session() as session:
            for body, content_type in chunk:
                response = session.post(url, data=body, headers={"Content-Type": content_type})
                assert response.status_code == expect, (response.status_code, response.text[:200])
                answer = response.json() if path != "/" else response.text
                assert answer, "an empty answer"

    chunks = [bodies[i::threads] for i in range(threads)]
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(send, chunks))
    return len(bodies) / (time.perf_counter() - started)


def interleaved_rates(
    runs: dict[str, Callable[[np.ndarray], object]],
    inputs: np.ndarray,
    batch_sizes: Sequence[int],
    repeats: int,
) -> dict[tuple[str, int], float]:
    """images/s of each run per (name, batch) on prepared input: every pair is timed once
    per round, round after round, so a noisy moment hits all alike; medians of rounds."""
    for run in runs.values():  # warm-up: first runs allocate and pick kernels
        for b in batch_sizes:
            run(inputs[:b])
    samples: dict[tuple[str, int], list[float]] = {(n, b): [] for n in runs for b in batch_sizes}
    for _ in range(repeats):
        for (name, batch), values in samples.items():
            run = runs[name]
            started = time.perf_counter()
            for i in range(0, len(inputs), batch):
                run(inputs[i : i + batch])
            values.append(len(inputs) / (time.perf_counter() - started))
    return {key: statistics.median(values) for key, values in samples.items()}


def end_to_end_rates(
    classifiers: dict[str, Any], jpegs: list[bytes], repeats: int, batch: int = 8
) -> dict[str, float]:
    """images/s of each classifier from JPEG bytes to top-5, decode and preprocessing
    included, timed in turns round after round; medians of the rounds."""
    samples: dict[str, list[float]] = {name: [] for name in classifiers}
    for _ in range(repeats):
        for name, values in samples.items():
            clf = classifiers[name]
            started = time.perf_counter()
            for i in range(0, len(jpegs), batch):
                clf.predict(np.stack([clf.preprocess(b) for b in jpegs[i : i + batch]]))
            values.append(len(jpegs) / (time.perf_counter() - started))
    return {name: statistics.median(values) for name, values in samples.items()}


def median_of(runs: int, fn: Callable[[], float]) -> tuple[float, list[float]]:
    values = [fn() for _ in range(runs)]
    return statistics.median(values), values


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))
