"""Load through Triton's own Python client (``tritonclient[http]``), for bench/throughput.py.

The same photos as the multipart client, one per request, from the same number of
threads, each with its own ``InferenceServerClient`` (one client is not meant to be
shared by threads): raw bytes with the binary data extension, the top 5 back as
``"score:index:label"``, as Triton's image client asks for them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

MODEL = "efficientnet-lite0"


def triton_img_s(port: int, images: Sequence[bytes], threads: int) -> float:
    """Classify every image through Triton's client; return images per second."""
    import tritonclient.http as triton

    def send(chunk: Sequence[bytes]) -> None:
        client = triton.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=300.0)
        output = triton.InferRequestedOutput("probabilities", binary_data=True, class_count=5)
        try:
            for image in chunk:
                tensor = triton.InferInput("image", [1], "BYTES")
                tensor.set_data_from_numpy(np.array([image], dtype=np.object_))
                result = client.infer(MODEL, [tensor], outputs=[output])
                assert result.as_numpy("probabilities").shape == (1, 5)
        finally:
            client.close()

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(send, [images[i::threads] for i in range(threads)]))
    return len(images) / (time.perf_counter() - started)
