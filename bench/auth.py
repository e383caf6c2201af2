"""What API keys cost: extra CPU per synchronous request with keys on, next to keys off.

Two measurements, both as interleaved pairs (keys off, keys on) in one run, medians:

1. the security middleware alone (key parsing, SHA-256, lookup, role check, headers),
   driven straight through ASGI with a do-nothing app inside, so the figure is exact;
2. whole ``POST /v1/classify`` requests in process (memory backends, a worker thread,
   the tiny model), CPU time of the process per request: the same cost seen end to end.

Limit: keys on may add at most 0.1 ms of CPU to a synchronous request.

    .venv/bin/python bench/auth.py
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from common import photo_set  # also puts src/ on sys.path
from dlaas.assemble import build_app
from dlaas.keys import KeyRing, add_key
from dlaas.model import Classifier, build_tiny_model
from dlaas.queue import open_queue
from dlaas.settings import load_settings
from dlaas.storage import open_storage
from dlaas.web.security.auth import AuthMiddleware
from dlaas.web.security.headers import SecurityHeadersMiddleware
from dlaas.worker import Worker, WorkerOptions

LIMIT_MS = 0.1
OTHER_OWNERS = 200  # a realistic keys file, so the lookup is not a one-entry dict


def keys_file(directory: Path) -> tuple[Path, str]:
    path = directory / "keys"
    for n in range(OTHER_OWNERS):
        add_key(path, f"owner{n}")
    return path, add_key(path, "bench")


def middleware_ms(keys: KeyRing | None, headers: list[tuple[bytes, bytes]], n: int) -> float:
    """CPU ms per request through auth + headers, around an app that answers at once."""

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    app = SecurityHeadersMiddleware(AuthMiddleware(inner, keys))

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        return None

    async def run() -> float:
        started = time.process_time()
        for _ in range(n):
            scope = {"type": "http", "method": "POST", "path": "/v1/classify", "headers": headers}
            await app(scope, receive, send)
        return (time.process_time() - started) * 1000 / n

    return asyncio.run(run())


class Service:
    """Two apps, keys off and keys on, over the same memory backends and worker thread
    (the tiny model), so that the keys are the only difference between them."""

    def __init__(self, model_dir: Path, keys: Path) -> None:
        name = uuid.uuid4().hex[:8]
        storage = open_storage(f"memory://{name}")
        queue = open_queue(f"memory://{name}", name="input")
        self.off = build_app(load_settings(log_level="warning"), storage, queue)
        self.on = build_app(load_settings(log_level="warning", api_keys_file=keys), storage, queue)
        self.worker = Worker(
            storage=storage,
            queue=queue,
            classifier=Classifier(build_tiny_model(model_dir)),
            worker_id="bench",
            options=WorkerOptions(idle_timeout_s=3600, receive_wait_s=0.05, max_batch_delay_ms=0),
        )
        self.thread = threading.Thread(target=self.worker.run, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.worker.stop()
        self.thread.join(timeout=10)


def classify_ms(client: TestClient, jpeg: bytes, headers: dict[str, str], n: int) -> float:
    started = time.process_time()
    for _ in range(n):
        response = client.post(
            "/v1/classify", files={"file": ("a.jpg", jpeg, "image/jpeg")}, headers=headers
        )
        assert response.status_code == 200, response.text
    return (time.process_time() - started) * 1000 / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=15)
    parser.add_argument("--requests", type=int, default=100, help="sync requests per sample")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        path, key = keys_file(directory)
        ring = KeyRing(path)
        bearer = [(b"authorization", f"Bearer {key}".encode())]
        off, on = [], []
        for _ in range(args.pairs):
            off.append(middleware_ms(None, [], 20_000))
            on.append(middleware_ms(ring, bearer, 20_000))
        extra_mw = statistics.median(b - a for a, b in zip(off, on, strict=True))
        print(f"security middleware, CPU per request ({args.pairs} interleaved pairs, medians):")
        print(f"  keys off {statistics.median(off) * 1000:7.1f} us")
        ratio = statistics.median(on) / statistics.median(off)
        print(
            f"  keys on  {statistics.median(on) * 1000:7.1f} us"
            f"  ({OTHER_OWNERS + 1} keys; ratio {ratio:.2f}x)"
        )
        print(f"  extra    {extra_mw * 1000:7.1f} us")

        jpeg = photo_set(1, size=(320, 240))[0]
        service = Service(directory / "model", path)
        try:
            with TestClient(service.off) as c_off, TestClient(service.on) as c_on:
                auth = {"Authorization": f"Bearer {key}"}
                classify_ms(c_off, jpeg, {}, 20)  # warm up both
                classify_ms(c_on, jpeg, auth, 20)
                whole_off, whole_on = [], []
                for n in range(args.pairs):  # alternate which goes first
                    if n % 2:
                        whole_on.append(classify_ms(c_on, jpeg, auth, args.requests))
                        whole_off.append(classify_ms(c_off, jpeg, {}, args.requests))
                    else:
                        whole_off.append(classify_ms(c_off, jpeg, {}, args.requests))
                        whole_on.append(classify_ms(c_on, jpeg, auth, args.requests))
        finally:
            service.close()
        extra_whole = statistics.median(b - a for a, b in zip(whole_off, whole_on, strict=True))
        m_off, m_on = statistics.median(whole_off), statistics.median(whole_on)
        print("POST /v1/classify in process, CPU of the process per request:")
        print(f"  keys off {m_off:7.3f} ms")
        print(f"  keys on  {m_on:7.3f} ms  (ratio {m_on / m_off:.3f}x)")
        print(f"  extra    {extra_whole:7.3f} ms (noisy: the whole request, worker included)")
    verdict = "OK" if extra_mw <= LIMIT_MS else "OVER"
    print(
        f"extra CPU per sync request with keys: {extra_mw:.4f} ms; limit {LIMIT_MS} ms: {verdict}"
    )


if __name__ == "__main__":
    main()
