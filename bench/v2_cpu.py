"""Web-tier CPU per image: the Open Inference Protocol (``/v2``) next to ``/v1/classify``.

One ``dlaas serve --workers N``; the same photos posted one per request (and 32 per
request for the batched form) through each route from the same lean keep-alive client,
in blocks that alternate, round after round. The figure is the CPU time of the web
process alone (workers are its children and are not counted) over each block, per image.
The goal: ``/v2`` costs at most 0.2 ms more per image than ``/v1/classify`` (median of
the pairs measured in the same round).

    .venv/bin/python bench/v2_cpu.py [--images 320] [--repeats 5] [--threads 16] [--only binary]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import statistics
import struct
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import ServeProcess, cpu_count, ensure_model_dir, multipart, photo_set

GOAL_MS = 0.2
MODEL = "efficientnet-lite0"
V2 = f"/v2/models/{MODEL}/infer"

Body = tuple[bytes, dict[str, str]]


def v1_body(image: bytes) -> Body:
    body, content_type = multipart("file", [("photo.jpg", image)])
    return body, {"Content-Type": content_type}


def v2_binary(images: list[bytes], output: dict[str, object]) -> Body:
    """What Triton's client sends with binary data on: JSON, then length-prefixed bytes."""
    raw = b"".join(struct.pack("<I", len(i)) + i for i in images)
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [len(images)],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [output],
        }
    ).encode()
    return head + raw, {"Inference-Header-Content-Length": str(len(head))}


def v2_json(images: list[bytes], output: dict[str, object]) -> Body:
    tensor = {
        "name": "image",
        "datatype": "BYTES",
        "shape": [len(images)],
        "data": [base64.b64encode(i).decode("ascii") for i in images],
    }
    body = json.dumps({"inputs": [tensor], "outputs": [output]}).encode()
    return body, {"Content-Type": "application/json"}


def web_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` itself (its threads, not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def post_all(port: int, path: str, bodies: list[Body], threads: int) -> int:
    """Post every body from ``threads`` keep-alive clients; return how many 503s were retried
    (a 503 says "try again shortly", and a client does)."""

    def send(chunk: list[Body]) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        retried = 0
        for body, headers in chunk:
            for _attempt in range(5):
                conn.request("POST", path, body=body, headers=headers)
                response = conn.getresponse()
                text = response.read()
                if response.status != 503:
                    break
                retried += 1
            assert response.status == 200, (response.status, text[:300])
        conn.close()
        return retried

    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(send, [bodies[i::threads] for i in range(threads)]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=320, help="per block")
    parser.add_argument("--repeats", type=int, default=5, help="rounds")
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--workers", type=int, default=cpu_count())
    parser.add_argument("--sizes", type=int, nargs=2, default=[320, 1600], metavar=("MIN", "MAX"))
    parser.add_argument(
        "--only", nargs="+", default=[], help="modes whose names contain one of these words"
    )
    args = parser.parse_args()

    images = photo_set(args.images, sizes=(args.sizes[0], args.sizes[1]))
    top5 = {"name": "probabilities", "parameters": {"classification": 5, "binary_data": True}}
    every = {"name": "probabilities", "parameters": {"binary_data": True}}
    top5_json = {"name": "probabilities", "parameters": {"classification": 5}}
    batches = [images[i : i + 32] for i in range(0, len(images), 32)]
    modes: dict[str, tuple[str, list[Body]]] = {
        "v1 /v1/classify multipart": ("/v1/classify", [v1_body(i) for i in images]),
        "v2 binary, top-5": (V2, [v2_binary([i], top5) for i in images]),
        "v2 JSON base64, top-5": (V2, [v2_json([i], top5_json) for i in images]),
        "v2 binary, FP32 [1, 1000]": (V2, [v2_binary([i], every) for i in images]),
        "v2 binary, 32 per request, top-5": (V2, [v2_binary(b, top5) for b in batches]),
    }
    baseline = "v1 /v1/classify multipart"
    modes = {
        m: v for m, v in modes.items() if m == baseline or any(w in m for w in args.only or [m])
    }
    print(
        f"{cpu_count()} CPUs; {len(images)} photos per block, long side {args.sizes[0]}.."
        f"{args.sizes[1]} px, {statistics.mean(map(len, images)) / 1e3:.0f} kB avg; "
        f"{args.threads} client threads; dlaas serve --workers {args.workers}"
    )
    per_image_ms: dict[str, list[float]] = {m: [] for m in modes}
    retried = dict.fromkeys(modes, 0)
    with tempfile.TemporaryDirectory() as tmp:
        flags = ["--workers", str(args.workers), "--model-dir", str(ensure_model_dir())]
        server = ServeProcess(Path(tmp), [*flags, "--log-level", "warning"])
        try:
            server.wait_ready()
            for path, bodies in modes.values():  # warm-up: every route and shape once
                post_all(server.port, path, bodies[: args.threads], args.threads)
            names = list(modes)
            for r in range(args.repeats):
                for mode in names[r % len(names) :] + names[: r % len(names)]:
                    path, bodies = modes[mode]
                    before = web_cpu_s(server.proc.pid)
                    retried[mode] += post_all(server.port, path, bodies, args.threads)
                    spent_s = web_cpu_s(server.proc.pid) - before
                    per_image_ms[mode].append(spent_s * 1000 / len(images))
                print(f"  round {r + 1}: " + ", ".join(
                    f"{m.split(',')[0] if m.startswith('v1') else m} {v[-1]:.2f}"
                    for m, v in per_image_ms.items()
                ), flush=True)  # fmt: skip
        except BaseException:
            print(server.log(), file=sys.stderr)
            raise
        finally:
            server.stop()

    print("\nweb-tier CPU per image (ms), median over rounds; extra = median of same-round pairs")
    for mode, values in per_image_ms.items():
        med = statistics.median(values)
        if mode == baseline:
            print(f"  {mode:36s} {med:6.3f}   rounds {[round(v, 3) for v in values]}")
            continue
        pairs = [v - b for v, b in zip(values, per_image_ms[baseline], strict=True)]
        extra = statistics.median(pairs)
        verdict = "PASS" if extra <= GOAL_MS else "FAIL"
        print(
            f"  {mode:36s} {med:6.3f}   extra {extra:+.3f}  pairs {[round(p, 3) for p in pairs]}"
            f"  (goal <= +{GOAL_MS}) {verdict}"
        )
    if any(retried.values()):
        print(f"503s retried (requests): {retried}")


if __name__ == "__main__":
    main()
