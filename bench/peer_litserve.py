"""The LitServe peer: LitServe's own batching server around the same model code.

As its documentation suggests for a CPU box: one inference worker per core
(``workers_per_device=2`` on 2 cores), dynamic batching of up to 8 requests within
10 ms, and the same top-5 JSON as ``/v1/classify`` (bench/peer_model.py).

    .venv/bin/python bench/peer_litserve.py --port 8002 [--model-dir .dlaas/models]
"""

import argparse
import os
from pathlib import Path
from typing import Any

import litserve as ls
import numpy as np

from peer_model import PeerModel


class ClassifyAPI(ls.LitAPI):  # type: ignore[misc]
    def __init__(self, model_dir: Path, max_batch_size: int, batch_timeout_s: float) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout_s)
        self.model_dir = model_dir

    def setup(self, device: str) -> None:
        self.model = PeerModel(self.model_dir)

    def decode_request(self, request):  # type: ignore[no-untyped-def]  # LitServe reads it
        # No annotation: LitServe then hands over the parsed form (multipart).
        upload = request["file"]
        return str(upload.filename), upload.file.read()

    def batch(self, inputs: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
        return inputs

    def predict(self, inputs: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
        arrays = np.stack([self.model.preprocess(data) for _, data in inputs])
        return [
            {"filename": name, "status": "done", "predictions": top5}
            for (name, _), top5 in zip(inputs, self.model.top5(arrays), strict=True)
        ]

    def unbatch(self, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return output

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--model-dir", type=Path, default=Path(".dlaas/models"))
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-timeout-s", type=float, default=0.01)
    args = parser.parse_args()
    api = ClassifyAPI(args.model_dir, args.max_batch_size, args.batch_timeout_s)
    api.api_path = "/v1/classify"
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=args.workers)
    server.run(port=args.port, host="127.0.0.1", generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
