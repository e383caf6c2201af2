"""Safe defaults: the refusal to listen beyond loopback without keys, browser headers,
CORS off unless asked, docs served from the package, and the fairness parts on their own."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dlaas.assemble import build_app
from dlaas.errors import ConfigError
from dlaas.jobs import messages
from dlaas.keys import KeyRing, add_key
from dlaas.queue import open_queue
from dlaas.settings import load_settings
from dlaas.storage import open_storage
from dlaas.web.security import check_exposure
from dlaas.web.security.auth import AuthMiddleware
from dlaas.web.security.tenancy import OwnerBacklog, RateLimiter
from tests.support import free_port


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def client_for(**overrides: object) -> TestClient:
    name = uuid.uuid4().hex[:8]
    app = build_app(
        load_settings(**overrides),
        open_storage(f"memory://{name}"),
        open_queue(f"memory://{name}", name="input"),
    )
    return TestClient(app)


def test_serve_on_all_interfaces_without_keys_refuses_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            *(sys.executable, "-m", "dlaas", "serve", "--host", "0.0.0.0"),
            *("--port", str(free_port()), "--data-dir", str(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "--api-keys-file" in lines[0] and "--allow-anonymous" in lines[0]
    assert not (tmp_path / "models").exists(), "it should refuse before building anything"


def test_exposure_rules(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_exposure(load_settings(host=host))
    with pytest.raises(ConfigError, match="--allow-anonymous to accept the risk"):
        check_exposure(load_settings(host="::"))
    keys = tmp_path / "keys"
    add_key(keys, "alice")
    check_exposure(load_settings(host="0.0.0.0", api_keys_file=keys))
    with caplog.at_level(logging.WARNING, logger="dlaas.web"):
        check_exposure(load_settings(host="0.0.0.0", allow_anonymous=True))
    assert [r.getMessage() for r in caplog.records] == ["anonymous_access"]


def test_the_page_and_api_send_strict_headers() -> None:
    with client_for() as client:
        for path in ("/", "/v1/stats", "/static/main.js", "/no-such-page"):
            headers = client.get(path).headers
            csp = headers["content-security-policy"]
            assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
            assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
            assert headers["x-content-type-options"] == "nosniff"
            assert headers["referrer-policy"] == "no-referrer"


def test_docs_come_from_the_package_and_reach_no_other_host() -> None:
    with client_for() as client:
        page = client.get("/docs")
        assert page.status_code == 200
        assert "http://" not in page.text and "https://" not in page.text
        assert "<script>" not in page.text  # no inline script: the CSP forbids it
        assert "unsafe-inline" not in page.headers["content-security-policy"]
        bundle = client.get("/docs/static/swagger-ui-bundle.js")
        assert bundle.status_code == 200 and b"SwaggerUIBundle" in bundle.content
        assert (
            client.get("/docs/static/swagger-ui.css").headers["content-type"].startswith("text/css")
        )
        assert client.get("/docs/static/../../keys").status_code == 404
        assert client.get("/redoc").status_code == 404  # it would load from a CDN


def test_cors_is_off_by_default_and_on_for_the_named_origins(tmp_path: Path) -> None:
    preflight = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    with client_for() as client:
        assert (
            "access-control-allow-origin"
            not in client.options("/v1/jobs", headers=preflight).headers
        )
        got = client.get("/healthz", headers={"Origin": "https://app.example"})
        assert "access-control-allow-origin" not in got.headers
    keys = tmp_path / "keys"
    add_key(keys, "alice")
    with client_for(cors_origins="https://app.example", api_keys_file=keys) as client:
        answer = client.options("/v1/jobs", headers=preflight)
        assert answer.status_code == 200  # a preflight carries no key, and needs none
        assert answer.headers["access-control-allow-origin"] == "https://app.example"
        assert "authorization" in answer.headers["access-control-allow-headers"].lower()
        other = client.options("/v1/jobs", headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        refused = client.get("/v1/stats", headers={"Origin": "https://app.example"})
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == "https://app.example"


def test_openapi_declares_the_key_only_where_it_is_needed(tmp_path: Path) -> None:
    with client_for() as client:
        schema = client.get("/openapi.json").json()
        assert "securitySchemes" not in schema["components"]
    keys = tmp_path / "keys"
    add_key(keys, "alice")
    with client_for(api_keys_file=keys) as client:
        schema = client.get("/openapi.json").json()
    assert set(schema["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    assert "security" in schema["paths"]["/v1/jobs"]["post"]
    assert "security" in schema["paths"]["/"]["post"]
    assert "security" not in schema["paths"]["/healthz"]["get"]


def test_token_bucket_spends_a_burst_then_follows_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(2.0, burst=3, clock=clock)
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5)
    assert limiter.take("b") == 0.0  # owners do not share a bucket
    clock.now += 0.5
    assert limiter.take("a") == 0.0
    assert limiter.take("a") == pytest.approx(0.5)
    clock.now += 60
    assert [limiter.take("a") for _ in range(4)][:3] == [0.0, 0.0, 0.0]  # capped at the burst


def test_owner_backlog_counts_until_the_final_reply_or_the_horizon() -> None:
    clock = Clock()
    backlog = OwnerBacklog(3, horizon_s=60, clock=clock)
    backlog.accepted("a", ["i1", "i2"])
    backlog.check("a", 1)
    with pytest.raises(Exception, match="2 of your images are still waiting") as info:
        backlog.check("a", 2)
    assert getattr(info.value, "status_code", None) == 429
    backlog.check("b", 3)
    backlog.check("b", 50)  # a first job always fits, however big

    backlog.observe_reply(messages.Progress("j", "i1"))
    assert backlog.waiting("a") == 2
    backlog.observe_reply(messages.Cancelled("j", "i1"))
    assert backlog.waiting("a") == 1
    clock.now += 61
    assert backlog.waiting("a") == 0  # dead-lettered or cancelled: no reply will come


def test_admin_routes_stay_admin_behind_a_proxy_prefix(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    user = add_key(keys, "alice")
    answers: list[int] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            answers.append(message["status"])

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    app = AuthMiddleware(inner, KeyRing(keys))
    headers = [(b"authorization", f"Bearer {user}".encode())]
    for path in ("/api/metrics", "/api/v1/stats/", "/api/v1/whoami"):
        scope = {"type": "http", "method": "GET", "root_path": "/api", "path": path}
        asyncio.run(app({**scope, "headers": headers}, receive, send))
    assert answers == [403, 403, 200]
