"""Keys, owners and roles over real HTTP: every route against every kind of caller.

The table below is the one in docs/security.md. Columns: no key, a wrong key, another
owner's key (bob's, on alice's job), the owner's own key (alice), an admin key (ops).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.routing import Mount, Route

from dlaas.jobs import layout
from dlaas.keys import add_key, hash_key, revoke_owner
from dlaas.model import ModelSpec
from dlaas.web.security.auth import is_public
from tests.service import Service
from tests.support import ServeProcess
from tests.web.live import LiveServer

CALLERS = ("none", "wrong", "other", "own", "admin")
PUBLIC = (200, 200, 200, 200, 200)
ADMIN = (401, 401, 403, 403, 200)
# (method, path, expected status per caller); {job} is a job of alice's.
TABLE: list[tuple[str, str, tuple[int, ...]]] = [
    ("POST", "/v1/jobs", (401, 401, 202, 202, 202)),
    ("POST", "/v1/classify", (401, 401, 200, 200, 200)),
    ("POST", "/", (401, 401, 200, 200, 200)),
    ("GET", "/v1/jobs/{job}", (401, 401, 404, 200, 404)),
    ("GET", "/v1/jobs/{job}/events", (401, 401, 404, 200, 404)),
    ("GET", "/v1/stats", ADMIN),
    ("GET", "/v1/stats/events", ADMIN),
    ("GET", "/metrics", ADMIN),
    ("GET", "/healthz", PUBLIC),
    ("GET", "/readyz", PUBLIC),
    ("GET", "/v1/whoami", PUBLIC),
    ("GET", "/", PUBLIC),
    ("GET", "/static/main.js", PUBLIC),
    ("GET", "/docs", PUBLIC),
    ("GET", "/docs/static/swagger-ui-bundle.js", PUBLIC),
    ("GET", "/openapi.json", PUBLIC),
]
UPLOAD_FIELD = {"/v1/jobs": "files", "/v1/classify": "file", "/": "myfile"}


class Keyed:
    """A service with a keys file, served over HTTP, and a key per caller kind."""

    def __init__(
        self, spec: ModelSpec, tmp_path: Path, *, with_worker: bool = True, **overrides: Any
    ) -> None:
        self.keys_file = tmp_path / "keys"
        self.keys = {
            "alice": add_key(self.keys_file, "alice"),
            "bob": add_key(self.keys_file, "bob"),
            "ops": add_key(self.keys_file, "ops", "admin"),
        }
        self.service = Service(
            spec, with_worker=with_worker, api_keys_file=self.keys_file, **overrides
        )
        self.live = LiveServer(self.service.app)

    def headers(self, caller: str) -> dict[str, str]:
        key = {
            "none": None,
            "wrong": "dlaas_" + "x" * 43,
            "other": self.keys["bob"],
            "own": self.keys["alice"],
            "admin": self.keys["ops"],
        }.get(caller, self.keys.get(caller))
        return {"Authorization": f"Bearer {key}"} if key else {}


@pytest.fixture
def keyed(tiny_spec: ModelSpec, tmp_path: Path) -> Iterator[Keyed]:
    svc = Keyed(tiny_spec, tmp_path)
    with svc.live:
        yield svc
    svc.service.close()


def call(url: str, method: str, path: str, headers: dict[str, str], jpeg: bytes) -> int:
    """The status of one request; a stream is closed as soon as its status is known."""
    files = None
    if method == "POST" and path in UPLOAD_FIELD:
        files = {UPLOAD_FIELD[path]: ("a.jpg", jpeg, "image/jpeg")}
    with httpx.Client(base_url=url, timeout=30) as client:
        request = client.build_request(method, path, headers=headers, files=files)
        response = client.send(request, stream=True)
        try:
            if response.status_code in (401, 403):
                body = response.read()
                assert set(httpx.Response(200, content=body).json()) >= {"error", "detail"}
            if response.status_code == 401:
                assert response.headers["www-authenticate"].startswith("Bearer")
            return response.status_code
        finally:
            response.close()


def alice_job(keyed: Keyed, jpeg: bytes) -> str:
    response = httpx.post(
        keyed.live.url + "/v1/jobs",
        headers=keyed.headers("own"),
        files={"files": ("mine.jpg", jpeg, "image/jpeg")},
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    return job_id


def test_every_route_for_every_caller(keyed: Keyed, small_jpeg: bytes) -> None:
    job = alice_job(keyed, small_jpeg)
    seen: dict[tuple[str, str], tuple[int, ...]] = {}
    for method, path, _ in TABLE:
        seen[method, path] = tuple(
            call(keyed.live.url, method, path.format(job=job), keyed.headers(c), small_jpeg)
            for c in CALLERS
        )
    assert seen == {(m, p): expected for m, p, expected in TABLE}


def all_routes(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(method, path) of every route, inside included routers and mounts too."""
    for route in routes:
        if isinstance(route, Route):
            for method in sorted((route.methods or set()) - {"HEAD"}):
                yield method, prefix + route.path
        elif isinstance(route, Mount):
            yield from all_routes(route.routes, prefix + route.path)
        elif hasattr(route, "original_router"):  # FastAPI's include_router
            inner = getattr(route.include_context, "prefix", "") or ""
            yield from all_routes(route.original_router.routes, prefix + inner)


def test_every_route_of_the_app_needs_a_key_unless_public(keyed: Keyed, small_jpeg: bytes) -> None:
    """Routes added later (job lifecycle, /v2) are covered without a row in the table."""
    job = alice_job(keyed, small_jpeg)
    routes = sorted(set(all_routes(keyed.service.app.routes)))
    assert {("GET", "/v1/jobs/{job_id}"), ("GET", "/metrics"), ("POST", "/")} <= set(routes)
    for method, route_path in routes:
        path = re.sub(r"\{job_id[^}]*\}", job, route_path)
        path = re.sub(r"\{[^}]+\}", "x", path)
        for caller in ("none", "wrong"):
            status = call(keyed.live.url, method, path, keyed.headers(caller), small_jpeg)
            if is_public(route_path, method):
                assert status != 401, (method, route_path)
            else:
                assert status == 401, (method, route_path, caller)


def test_x_api_key_works_and_whoami_says_who(keyed: Keyed) -> None:
    url = keyed.live.url + "/v1/whoami"
    assert httpx.get(url).json() == {"auth_required": True, "owner": None, "role": None}
    mine = httpx.get(url, headers={"X-API-Key": keyed.keys["alice"]}).json()
    assert mine == {"auth_required": True, "owner": "alice", "role": "user"}
    stats = httpx.get(keyed.live.url + "/v1/stats", headers={"X-API-Key": keyed.keys["ops"]})
    assert stats.status_code == 200


def test_health_says_only_ok_or_unavailable_to_callers_without_an_admin_key(
    keyed: Keyed,
) -> None:
    url = keyed.live.url
    for caller in ("none", "wrong", "own"):
        assert httpx.get(url + "/readyz", headers=keyed.headers(caller)).json() == {"status": "ok"}
        assert httpx.get(url + "/healthz", headers=keyed.headers(caller)).json() == {"status": "ok"}
    detailed = httpx.get(url + "/readyz", headers=keyed.headers("admin")).json()
    assert detailed["checks"]["storage"] == "ok"


def test_jobs_record_their_owner(keyed: Keyed, small_jpeg: bytes) -> None:
    job = alice_job(keyed, small_jpeg)
    manifest = keyed.service.storage.get_json(layout.manifest_key(job))
    assert manifest["owner"] == "alice"


def test_a_new_key_works_and_a_revoked_one_stops_within_seconds(keyed: Keyed) -> None:
    url = keyed.live.url + "/v1/stats"
    carol = add_key(keyed.keys_file, "carol", "admin")
    revoke_owner(keyed.keys_file, "ops")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        new = httpx.get(url, headers={"Authorization": f"Bearer {carol}"}).status_code
        old = httpx.get(url, headers=keyed.headers("admin")).status_code
        if (new, old) == (200, 401):
            break
        time.sleep(0.2)
    assert (new, old) == (200, 401)


def test_one_owner_flooding_does_not_starve_another(
    tiny_spec: ModelSpec, tmp_path: Path, small_jpeg: bytes
) -> None:
    """Owner A floods uploads; B's single image is still accepted and answered."""
    svc = Keyed(
        tiny_spec,
        tmp_path,
        with_worker=False,
        rate_limit_per_owner=2,
        rate_limit_burst=4,
        max_backlog_per_owner=3,
    )
    flood: list[tuple[float, int, str, str | None]] = []
    stop = threading.Event()

    def flood_as_alice() -> None:
        with httpx.Client(base_url=svc.live.url, headers=svc.headers("own")) as client:
            while not stop.is_set():
                r = client.post("/v1/jobs", files={"files": ("a.jpg", small_jpeg, "image/jpeg")})
                error = r.json().get("error") if r.status_code != 202 else None
                flood.append(
                    (time.monotonic(), r.status_code, error or "", r.headers.get("retry-after"))
                )

    with svc.live:
        flooder = threading.Thread(target=flood_as_alice, daemon=True)
        started = time.monotonic()
        flooder.start()
        while not any(e == "rate_limited" for _, _, e, _ in flood):
            assert time.monotonic() - started < 10, flood
            time.sleep(0.01)
        svc.service.thread.start()  # workers come up while A is being refused
        b_sent = time.monotonic()
        answer = httpx.post(
            svc.live.url + "/v1/classify",
            headers=svc.headers("other"),
            files={"file": ("b.jpg", small_jpeg, "image/jpeg")},
            timeout=30,
        )
        b_done = time.monotonic()
        stop.set()
        flooder.join(timeout=10)
    svc.service.close()

    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "done" and len(answer.json()["predictions"]) == 5
    during = [(s, e) for t, s, e, _ in flood if b_sent <= t <= b_done]
    assert any(s == 429 for s, _ in during), "A was not being refused while B was answered"
    refused = [(s, e, ra) for _, s, e, ra in flood if s == 429]
    assert {e for _, e, _ in refused} >= {"rate_limited", "owner_backlog_full"}
    assert all(ra is not None and int(ra) >= 1 for _, _, ra in refused)
    accepted = sum(1 for _, s, _, _ in flood if s == 202)
    elapsed = flood[-1][0] - started
    assert accepted <= 4 + 2 * elapsed + 1  # the burst, then the rate


def test_no_key_or_hash_reaches_the_logs(
    tiny_spec: ModelSpec, tmp_path: Path, photo: Callable[[str], bytes]
) -> None:
    """A whole job with keys, through the CLI client, with debug logs: every line is read."""
    keys_file = tmp_path / "keys"
    keys = {"alice": add_key(keys_file, "alice"), "ops": add_key(keys_file, "ops", "admin")}
    model = [
        "--model",
        str(tiny_spec.onnx_path),
        "--labels",
        str(tiny_spec.onnx_path.parent / "labels.txt"),
    ]
    serve = ServeProcess(
        tmp_path / "serve",
        [*model, "--api-keys-file", str(keys_file), "--log-level", "debug", "--max-workers", "1"],
    )
    try:
        serve.wait_ready()
        (tmp_path / "in").mkdir()
        (tmp_path / "in" / "cat.jpg").write_bytes(photo("chelsea"))
        client = subprocess.run(
            [sys.executable, "-m", "dlaas", "classify", "--url", serve.url, str(tmp_path / "in")],
            env={**os.environ, "DLAAS_API_KEY": keys["alice"]},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert client.returncode == 0, client.stderr
        assert "cat.jpg" in client.stdout
        refused = httpx.get(serve.url + "/metrics", headers={"X-API-Key": keys["alice"]})
        assert refused.status_code == 403
        wrong = httpx.get(serve.url + "/v1/stats", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert httpx.get(serve.url + "/v1/stats", headers={"X-API-Key": keys["ops"]}).is_success
    finally:
        assert serve.stop() == 0
    text = serve.log_path.read_text() + client.stdout + client.stderr
    assert "image_accepted" in text, "the job left no log lines"
    for key in keys.values():
        assert key not in text and hash_key(key) not in text
    assert "Bearer" not in text and "authorization" not in text.lower()
    assert "x-api-key" not in text.lower()
