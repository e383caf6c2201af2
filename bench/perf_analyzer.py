"""Triton's load generator, ``perf_analyzer``, against ``dlaas serve``, unchanged.

    python bench/perf_analyzer.py --setup VENV      # once: a scratch venv with the tool
    python bench/perf_analyzer.py --venv VENV       # starts dlaas serve, runs, stops it

The tool ships in ``tritonclient[all]==2.51.0`` (the last release whose binary runs on
glibc 2.36); it needs ``libb64-0d`` from Debian (``apt-get install libb64-0d``) and
``libcudart.so.12``, which the ``nvidia-cuda-runtime-cu12`` wheel provides (found in the
venv and put on ``LD_LIBRARY_PATH`` here). The venv is a scratch one, never the
project's: tritonclient 2.51 pins other versions than the test extra does.

The input data is the photos that ship with dlaas (``calibration_photos``), as base64,
one per request (``--shape image:1``).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ServeProcess

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT / "src" / "dlaas" / "model" / "calibration_photos"
PACKAGES = ["tritonclient[all]==2.51.0", "nvidia-cuda-runtime-cu12"]


def setup(venv: Path) -> None:
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *PACKAGES], check=True)


def input_data(path: Path) -> Path:
    """perf_analyzer's ``--input-data`` file: each shipped photo as one BYTES element.

    For a BYTES input, ``b64`` holds the serialized tensor, as Triton's binary data
    extension lays it out: each element a 4-byte little-endian length, then its bytes.
    """
    rows = []
    for photo in sorted(PHOTOS.glob("*.jpg")):
        data = photo.read_bytes()
        tensor = struct.pack("<I", len(data)) + data
        rows.append({"image": {"b64": base64.b64encode(tensor).decode("ascii")}})
    path.write_text(json.dumps({"data": rows}))
    return path


def tool_env(venv: Path) -> dict[str, str]:
    found = sorted(venv.glob("lib/python*/site-packages/nvidia/cuda_runtime/lib"))
    if not found:
        raise SystemExit(f"no libcudart.so.12 under {venv}; run --setup {venv} first")
    paths = [str(found[0]), os.environ.get("LD_LIBRARY_PATH", "")]
    return {**os.environ, "LD_LIBRARY_PATH": ":".join(p for p in paths if p)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--venv", type=Path, required=True, help="the scratch venv")
    parser.add_argument("--setup", action="store_true", help="create the venv, then stop")
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--concurrency", default="4")
    parser.add_argument("--url", default=None, help="a running service (default: start one)")
    parser.add_argument("--workers", default="2", help="fixed workers of the started service")
    args = parser.parse_args(argv)
    if args.setup:
        setup(args.venv)
        return 0
    with tempfile.TemporaryDirectory(prefix="perf-analyzer-") as scratch:
        data = input_data(Path(scratch) / "photos.json")
        server = None
        if args.url is None:
            server = ServeProcess(Path(scratch) / "serve", ["--workers", args.workers])
            server.wait_ready()
        url = (server.url if server is not None else str(args.url)).removeprefix("http://")
        command = [
            str(args.venv / "bin" / "perf_analyzer"), "-m", args.model, "-u", url, "-i", "http",
            "--input-data", str(data), "--shape", "image:1",
            "--concurrency-range", args.concurrency,
        ]  # fmt: skip
        try:
            done = subprocess.run(command, env=tool_env(args.venv), check=False)
        finally:
            if server is not None:
                server.stop()
    return done.returncode


if __name__ == "__main__":
    raise SystemExit(main())
