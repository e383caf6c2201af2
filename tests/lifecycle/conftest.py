"""Services for the lifecycle tests: memory backends, the tiny model, a worker to start."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from dlaas.model import ModelSpec
from tests.service import Service


@pytest.fixture
def idle(tiny_spec: ModelSpec) -> Iterator[Service]:
    """A service whose worker is not running: jobs stay queued until the test runs it."""
    svc = Service(tiny_spec, with_worker=False)
    yield svc
    svc.close()


@pytest.fixture
def idle_client(idle: Service) -> Iterator[TestClient]:
    with TestClient(idle.app) as c:
        yield c


@pytest.fixture
def live(tiny_spec: ModelSpec) -> Iterator[Service]:
    svc = Service(tiny_spec)
    yield svc
    svc.close()


@pytest.fixture
def live_client(live: Service) -> Iterator[TestClient]:
    with TestClient(live.app) as c:
        yield c
