"""The floor for any HTTP service on this machine: the bare loop behind the thinnest server.

No framework and no queue: a raw ASGI app on the same uvicorn, httptools and uvloop as
dlaas, the upload's file part cut out of the multipart body by hand, and the bare loop's
own code (``dlaas.model.Classifier``: the same decode, preprocessing and ORT session on
one thread) run inline, one image at a time, in as many processes as there are cores,
all accepting on one listening socket: no thread hand-over, no GIL shared. It answers the
same top-5 JSON as the FastAPI peer, written with orjson.
Nothing a real service must do (validation, limits, logs, durability) is done, so what it
costs above the bare loop is only HTTP and the client: the ceiling for dlaas and for
every other server measured here.

    .venv/bin/python bench/peer_minimal.py --port 8003 [--model-dir .dlaas/models]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import uvicorn

from common import ROOT  # noqa: F401  (puts src/ on sys.path)
from dlaas.model import Classifier, ensure_model

Send = Any
Receive = Any


def file_part(body: bytes, content_type: bytes) -> tuple[bytes, bytes]:
    """(filename, bytes) of the first part of a multipart body; no checks at all."""
    boundary = b"--" + content_type.split(b"boundary=", 1)[1].strip(b'"')
    start = body.index(boundary) + len(boundary)
    head_end = body.index(b"\r\n\r\n", start)
    head = body[start:head_end]
    name = head.split(b'filename="', 1)[1].split(b'"', 1)[0] if b'filename="' in head else b""
    return name, body[head_end + 4 : body.index(b"\r\n" + boundary, head_end)]


def create_app(model_dir: Path) -> Any:
    clf = Classifier(ensure_model(model_dir), intra_op_num_threads=1)
    clf.predict(np.stack([clf.preprocess(_warm_image())]))

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        if scope["path"] == "/readyz":
            await _answer(send, b'{"status":"ready"}')
            return
        content_type = dict(scope["headers"]).get(b"content-type", b"")
        name, data = file_part(b"".join(chunks), content_type)
        # Inline, blocking this process's loop: it does one image at a time, like the
        # bare loop's process, and the other processes keep the other cores busy.
        top5 = clf.predict(np.stack([clf.preprocess(data)]))[0]
        answer = {"filename": name.decode(), "status": "done", "predictions": top5}
        await _answer(send, orjson.dumps(answer))

    return app


async def _answer(send: Send, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _warm_image() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (320, 240), (120, 80, 40)).save(buffer, "JPEG")
    return buffer.getvalue()


def _serve(sock: socket.socket, model_dir: Path) -> None:
    config = uvicorn.Config(
        create_app(model_dir),
        access_log=False,
        log_level="warning",
        server_header=False,
        date_header=False,
    )
    uvicorn.Server(config).run(sockets=[sock])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8003)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--model-dir", type=Path, default=Path(".dlaas/models"))
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(256)  # forked children accept on it
    children = [
        mp.get_context("fork").Process(target=_serve, args=(sock, args.model_dir))
        for _ in range(args.processes)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join()


if __name__ == "__main__":
    main()
