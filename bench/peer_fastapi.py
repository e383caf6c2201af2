"""The FastAPI peer dlaas must beat: what a competent engineer writes in a dozen lines.

One uvicorn process (same uvicorn, httptools and uvloop as dlaas), one ORT session loaded
at start, and a sync handler, so Starlette runs decode + ORT in its threadpool, where
PIL and ORT release the GIL and both cores get used. It answers the same top-5 JSON as
``/v1/classify`` (bench/peer_model.py), so a client parses the same content.

    .venv/bin/python bench/peer_fastapi.py --port 8001 [--model-dir .dlaas/models]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI, File, UploadFile

from peer_model import PeerModel


def create_app(model_dir: Path) -> FastAPI:
    model = PeerModel(model_dir)
    app = FastAPI()

    @app.post("/v1/classify")
    def classify(file: UploadFile = File(...)) -> dict[str, Any]:  # noqa: B008  (FastAPI idiom)
        top5 = model.top5(np.stack([model.preprocess(file.file.read())]))[0]
        return {"filename": file.filename, "status": "done", "predictions": top5}

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        return {"status": "ready"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--model-dir", type=Path, default=Path(".dlaas/models"))
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.model_dir),
        host=args.host,
        port=args.port,
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
