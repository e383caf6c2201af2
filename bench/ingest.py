"""How fast the web tier accepts uploads, next to how fast the model classifies.

Runs ``dlaas serve --workers 0`` (nothing consumes, so only the web tier, storage and
queue are measured), posts small JPEGs through ``POST /v1/jobs`` and prints accepted
uploads per second beside the bare model throughput measured in the same run.
Target: ingest >= 5x the model, so the web tier is never the bottleneck.

    .venv/bin/python bench/ingest.py
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common import (
    ServeProcess,
    bare_loop_img_s,
    cpu_count,
    ensure_model_dir,
    multipart,
    photo_set,
    post_all,
)


def ingest_rate(port: int, images: list[bytes], files_per_request: int, threads: int) -> float:
    requests = [images[i : i + files_per_request] for i in range(0, len(images), files_per_request)]
    bodies = [multipart("files", [(f"{n}.jpg", b) for n, b in enumerate(r)]) for r in requests]
    per_s = post_all(port, "/v1/jobs", bodies, threads, expect=202)
    return per_s * len(images) / len(bodies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model_dir = ensure_model_dir()
    small = photo_set(args.images, size=(320, 240))
    print(
        f"{cpu_count()} CPUs; {len(small)} JPEGs of 320x240, "
        f"{statistics.mean(map(len, small)) / 1e3:.0f} kB avg"
    )

    model_rates = [
        bare_loop_img_s(model_dir, photo_set(400, size=(640, 480), seed=1), processes=cpu_count())
        for _ in range(args.repeats)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        server = ServeProcess(
            Path(tmp), ["--workers", "0", "--model-dir", str(model_dir), "--log-level", "warning"]
        )
        try:
            server.wait_ready()
            modes = {"50 files/request, 8 threads": (50, 8), "1 file/request, 64 threads": (1, 64)}
            results: dict[str, list[float]] = {m: [] for m in modes}
            for _ in range(args.repeats):
                for mode, (per_request, threads) in modes.items():
                    n = len(small) if per_request > 1 else len(small) // 2
                    results[mode].append(ingest_rate(server.port, small[:n], per_request, threads))
        finally:
            server.stop()

    model = statistics.median(model_rates)
    print(
        f"\nmodel (bare decode+ORT, {cpu_count()} processes x 1 thread): {model:7.0f} img/s"
        f"  runs {[round(r) for r in model_rates]}"
    )
    print(f"{'ingest through POST /v1/jobs':40s} {'img/s':>8s} {'x model':>8s}")
    for mode, rates in results.items():
        med = statistics.median(rates)
        print(f"  {mode:38s} {med:8.0f} {med / model:8.1f}   runs {[round(r) for r in rates]}")
    print("target: >= 5.0x model")


if __name__ == "__main__":
    main()
