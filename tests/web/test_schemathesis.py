"""Schemathesis against ``/openapi.json`` over real HTTP: no 5xx, every answer as the
schema says, and every schema-valid request accepted (but for the upload refusals that
the repository's ``schemathesis.toml`` names), in three set-ups: a laptop (no keys), keys
with an admin key, keys and none. And every path answers a method it does not list with
405 and an ``Allow`` naming exactly the methods it does.

No 5xx is allowed: a synchronous call whose own ``timeout_s`` runs out (a fuzzer picks
1e-300 s) answers 202 with the job to poll, which must then be pollable.

Event streams never end by design, so for them the test reads what the first second
brings, then hands that (status, headers, body so far) to the same checks.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.config import SchemathesisConfig

from dlaas.keys import add_key
from dlaas.model import ModelSpec
from tests.service import Service
from tests.web.live import LiveServer

CONFIG = Path(__file__).resolve().parents[2] / "schemathesis.toml"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    positive_data_acceptance,
]
OTHER_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
STREAM_READ_S = 1.0
FUZZ = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


class Served:
    def __init__(self, spec: ModelSpec, headers: dict[str, str], **overrides: Any) -> None:
        self.service = Service(spec, **overrides)
        self.live = LiveServer(self.service.app)
        self.headers = headers


@pytest.fixture(scope="module")
def laptop_server(tiny_spec: ModelSpec) -> Iterator[Served]:
    served = Served(tiny_spec, {}, classify_timeout_s=5)
    with served.live:
        yield served
    served.service.close()


@pytest.fixture(scope="module")
def keyed_server(
    tiny_spec: ModelSpec, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    keys = tmp_path_factory.mktemp("keys") / "keys"
    admin = add_key(keys, "ops", "admin")
    served = Served(
        tiny_spec, {"Authorization": f"Bearer {admin}"}, api_keys_file=keys, classify_timeout_s=5
    )
    with served.live:
        yield served
    served.service.close()


def check_pollable(response: Any, served: Served, headers: dict[str, str]) -> None:
    """A synchronous call answered 202: the job it names can be polled."""
    location = response.headers["location"]  # schemathesis keeps each header's values
    if isinstance(location, list):
        (location,) = location
    poll = httpx.get(served.live.url + location, headers=headers)
    assert poll.status_code == 200, poll.text


def call_and_check(case: Any, served: Served, headers: dict[str, str]) -> None:
    if not case.path.endswith("/events"):
        response = case.call(base_url=served.live.url, headers=headers)
        if response.status_code == 202 and "location" in response.headers:
            check_pollable(response, served, headers)
        case.validate_response(response, checks=CHECKS)
        return
    kwargs = case.as_transport_kwargs(base_url=served.live.url, headers=headers)
    body = b""
    with httpx.stream(
        kwargs["method"],
        kwargs["url"],
        params=kwargs.get("params"),
        headers={k: str(v).strip() for k, v in (kwargs.get("headers") or {}).items()},
        timeout=10,
    ) as response:
        deadline = time.monotonic() + STREAM_READ_S
        for chunk in response.iter_raw():
            body += chunk
            if time.monotonic() > deadline or b"\n\n" in body:
                break
        status, answer_headers, request = response.status_code, response.headers, response.request
    partial = httpx.Response(status, headers=answer_headers, content=body, request=request)
    partial.elapsed = timedelta(seconds=STREAM_READ_S)
    case.validate_response(partial, checks=CHECKS)


def fuzz(served: Served, headers: dict[str, str]) -> None:
    """Every operation of the schema, each with its own Hypothesis run; all failures told."""
    config = SchemathesisConfig.from_path(CONFIG)
    schema = schemathesis.openapi.from_url(served.live.url + "/openapi.json", config=config)
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @FUZZ
        @given(case=operation.as_strategy())
        def run(case: Any) -> None:
            call_and_check(case, served, headers)

        try:
            run()
        except Exception as exc:  # collected, so one run reports every operation that fails
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert operations >= 10
    assert not failures, "\n\n".join(failures)


def test_laptop_without_keys(laptop_server: Served) -> None:
    fuzz(laptop_server, {})


def test_keys_on_with_an_admin_key(keyed_server: Served) -> None:
    fuzz(keyed_server, keyed_server.headers)


def test_keys_on_without_a_key(keyed_server: Served) -> None:
    fuzz(keyed_server, {})


def test_a_method_a_path_does_not_take_is_405_with_allow_naming_those_it_does(
    laptop_server: Served,
) -> None:
    spec = httpx.get(laptop_server.live.url + "/openapi.json").json()
    for path, operations in spec["paths"].items():
        listed = {method.upper() for method in operations}
        url = laptop_server.live.url + path.replace("{", "").replace("}", "")
        for method in sorted(set(OTHER_METHODS) - listed):
            response = httpx.request(method, url)
            assert response.status_code == 405, f"{method} {path}: {response.status_code}"
            allowed = {m.strip() for m in response.headers["allow"].split(",")}
            assert allowed == listed, f"{method} {path}: Allow {allowed}, schema {listed}"
