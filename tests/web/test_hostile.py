"""Hostile bodies on the synchronous endpoints: every one gets a 2xx or a 4xx, never a 5xx.

The one-file fast path slices bodies by hand, so it is attacked here with truncations,
boundary tricks, odd headers and random bytes; Starlette's parser judges what it passes on.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from dlaas.model import ModelSpec
from tests.service import Service


def _part(field: str, filename: str, data: bytes, boundary: str = "B0undary") -> bytes:
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
        f'filename="{filename}"\r\nContent-Type: image/jpeg\r\n\r\n'
    ).encode() + data


def hostile_bodies(jpeg: bytes, field: str = "file", seed: int = 7) -> Iterator[tuple[str, bytes]]:
    """(content type, body) pairs, endless and deterministic; the first is valid."""
    rng = random.Random(seed)
    ct = "multipart/form-data; boundary=B0undary"
    good = _part(field, "a.jpg", jpeg) + b"\r\n--B0undary--\r\n"
    yield ct, good
    for cut in sorted(rng.sample(range(len(good)), 40)):  # truncated anywhere
        yield ct, good[:cut]
    for _ in range(40):  # bytes flipped anywhere
        body = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            body[rng.randrange(len(body))] = rng.randrange(256)
        yield ct, bytes(body)
    for _ in range(20):  # random bytes, with and without the boundary
        noise = rng.randbytes(rng.randint(0, 4000))
        yield ct, noise
        yield ct, b"--B0undary\r\n" + noise
    tricks = [
        _part(field, "a.jpg", jpeg) + b"\r\n--B0undary--",
        _part(field, "a.jpg", b"--B0undary\r\n") + b"\r\n--B0undary--\r\n",
        _part(field, "../../etc/passwd", jpeg) + b"\r\n--B0undary--\r\n",
        _part(field, "a\r\nX-Evil: 1.jpg", jpeg) + b"\r\n--B0undary--\r\n",
        _part(field, "\u00e9\u4e2d.jpg", jpeg).replace(b"a.jpg", "é中.jpg".encode())
        + b"\r\n--B0undary--\r\n",
        _part(field, "a.jpg", jpeg) + b"\r\n--B0undary\r\n" + _part(field, "b.jpg", jpeg)[12:],
        _part(field, "", b"") + b"\r\n--B0undary--\r\n",
        _part(field, "a.jpg", b"") + b"\r\n--B0undary--\r\n",
        _part(field, "a.jpg", b"GIF89a" + rng.randbytes(50)) + b"\r\n--B0undary--\r\n",
        b"--B0undary\r\n" + b"X" * 20000 + b"\r\n\r\n" + jpeg + b"\r\n--B0undary--\r\n",
        b"--B0undary--\r\n",
        b"",
    ]
    for body in tricks:
        yield ct, body
    odd_types = [
        "multipart/form-data",
        "multipart/form-data; boundary=",
        'multipart/form-data; boundary="unterminated',
        "multipart/form-data; boundary=" + "x" * 300,
        "multipart/form-data; boundary=other",
        "application/json",
        "image/jpeg",
        "",
    ]
    for content_type in odd_types:
        yield content_type, good
    while True:  # pad to 200 with mixed mutations of the tricks
        body = bytearray(rng.choice(tricks) or b"-")
        body[rng.randrange(len(body))] = rng.randrange(256)
        yield ct, bytes(body)


@pytest.mark.parametrize("path", ["/v1/classify", "/"])
def test_hostile_bodies_never_get_a_5xx(path: str, tiny_spec: ModelSpec) -> None:
    from PIL import Image

    from tests.conftest import jpeg_bytes

    jpeg = jpeg_bytes(Image.new("RGB", (40, 30), (10, 200, 30)))
    svc = Service(tiny_spec, classify_timeout_s=10)
    statuses: dict[int, int] = {}
    try:
        with TestClient(svc.app, raise_server_exceptions=False) as client:
            bodies = hostile_bodies(jpeg, field="file" if path == "/v1/classify" else "myfile")
            for _ in range(200):
                content_type, body = next(bodies)
                headers = {"content-type": content_type} if content_type else {}
                response = client.post(path, content=body, headers=headers)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                assert response.status_code < 500, (content_type, body[:120], response.text)
            assert client.get("/healthz").status_code == 200
    finally:
        svc.close()
    assert statuses.get(200, 0) >= 1 and sum(statuses.values()) == 200
