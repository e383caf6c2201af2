"""Build dlaas's container images with podman (or docker), with or without a registry.

``make image`` runs this. It needs nothing but Python's standard library, so a fresh
clone builds before any virtualenv exists. Three things it settles so the user need not:

- the base image: ``--base-image`` (``python:3.11-slim``) when it is here or can be pulled;
  otherwise one made from Debian's own packages with mmdebstrap, as machines that reach
  only package registries need;
- pip's own settings: the index URLs and CA bundle the host's pip uses reach the build as
  build secrets, read at the ``RUN`` that installs and never written into a layer;
- podman's runtime settings on this host, in a containers.conf of the clone's own
  (``build/container``) that every podman call of the Makefile and the tests reads.

``python3 deploy/container/build.py conf`` writes that file and prints ``CONTAINERS_CONF=path``
(``export $(python3 deploy/container/build.py conf)`` before calling podman by hand).
"""

from __future__ import annotations

import argparse
import configparser
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STATE_DIR = ROOT / "build" / "container"
DEFAULT_BASE = "python:3.11-slim"
# Bookworm's python3 is 3.11, the same minor version as the default base image.
DEFAULT_SUITE = "bookworm"
# python-is-python3 gives `python`, and passwd `useradd`, as in the official image.
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates", "passwd")
PULL_TIMEOUT_S = 120
# Keys of the host's pip settings that mean the same inside a build; paths on the host
# (a constraint file, local wheel folders) do not exist there and are left out.
PIP_KEYS = ("index-url", "extra-index-url", "find-links", "trusted-host", "proxy", "timeout",
            "default-timeout", "retries")  # fmt: skip


class BuildError(Exception):
    """The image could not be built; the message says what to install or change."""


def engine() -> str:
    """``CONTAINER_ENGINE`` if set, else podman, else docker."""
    chosen = os.environ.get("CONTAINER_ENGINE") or next(
        (name for name in ("podman", "docker") if shutil.which(name)), None
    )
    if chosen is None:
        raise BuildError("neither podman nor docker is installed (apt-get install podman)")
    return chosen


def podman_conf() -> Path:
    """A containers.conf for this host, written where ``CONTAINERS_CONF`` can name it.

    runc where the cgroup layout is not pure v2 (crun refuses a hybrid one); cgroupfs where
    systemd is not running; and explicit ulimits, because podman's defaults ask for more
    than a host's hard limits may allow, which runc then fails to set.
    """
    nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 65536)
    # runc sets the limit from its own process, whose nproc cap can be far under the shell's.
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 4096)
    lines = [
        "[containers]",
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]',
        "[engine]",
        'events_logger = "file"',
    ]
    if not Path("/sys/fs/cgroup/cgroup.controllers").exists() and shutil.which("runc"):
        lines.append('runtime = "runc"')
    if not Path("/run/systemd/system").is_dir():
        lines.append('cgroup_manager = "cgroupfs"')
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    path = STATE_DIR / "containers.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


def storage_conf(root: Path) -> Path:
    """A storage.conf that keeps podman's images and containers under ``root``.

    CI sets ``DLAAS_CONTAINER_STORAGE`` to a folder in the clone, so that nothing is cached
    outside it and every run builds from nothing, as a new user would.
    """
    root = root.resolve()
    path = STATE_DIR / "storage.conf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{root / "graph"}"\n'
        f'runroot = "{root / "run"}"\n'
    )
    return path


def podman_env() -> dict[str, str]:
    """The variables that point podman at this clone's settings (``conf`` prints them)."""
    env = {"CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF") or str(podman_conf())}
    storage = os.environ.get("DLAAS_CONTAINER_STORAGE")
    if storage:
        env["CONTAINERS_STORAGE_CONF"] = str(storage_conf(Path(storage)))
    return env


def engine_env(name: str) -> dict[str, str]:
    """The environment for one engine call: podman reads the clone's settings."""
    env = dict(os.environ)
    if Path(name).name == "podman":
        env.update(podman_env())
    return env


def run(argv: list[str], env: dict[str, str] | None = None, timeout_s: float | None = None) -> bool:
    print("+", shlex.join(argv), flush=True)
    try:
        return subprocess.run(argv, env=env, timeout=timeout_s, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        print(f"  (gave up after {timeout_s} s)", flush=True)
        return False


def exists(name: str, image: str) -> bool:
    inspect = [name, "image", "inspect", image]
    return subprocess.run(inspect, env=engine_env(name), capture_output=True).returncode == 0


def available(name: str, image: str) -> bool:
    """Here already, or pulled now; False when no registry answers."""
    pull = [name, "pull", image]
    return exists(name, image) or run(pull, engine_env(name), timeout_s=PULL_TIMEOUT_S)


def firewall_tool() -> str | None:
    """``iptables`` or ``nft``, wherever Debian puts them (``/usr/sbin`` is not on every PATH)."""
    for tool in ("iptables", "nft"):
        found = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
        if found:
            return found
    return None


def check_network(name: str) -> None:
    """Rootful podman gives each build step and container a bridge network that its network
    backend (netavark, or CNI) wires with iptables. Debian's netavark does not depend on
    iptables, so a minimal host can lack it, and then the first ``RUN`` dies with
    "netavark: No such file or directory". Rootless podman uses a user-mode network instead.
    """
    if Path(name).name != "podman" or os.geteuid() != 0 or firewall_tool() is not None:
        return
    raise BuildError(
        "podman runs as root here and wires its container networks with iptables, which is "
        "not installed: apt-get install iptables"
    )


def debian_base(name: str, suite: str) -> str:
    """``localhost/dlaas-base:SUITE`` from Debian's packages, made once and then reused."""
    tag = f"localhost/dlaas-base:{suite}"
    if exists(name, tag):
        return tag
    if shutil.which("mmdebstrap") is None:
        raise BuildError(
            "no registry answers and mmdebstrap is missing to make a base image from Debian's "
            "packages: apt-get install mmdebstrap (or pass BASE_IMAGE=an image you have)"
        )
    env = engine_env(name)
    with tempfile.TemporaryDirectory(prefix="dlaas-base-") as tmp:
        tarball = Path(tmp) / "base.tar"
        include = "--include=" + ",".join(BASE_PACKAGES)
        if not run(["mmdebstrap", "--variant=minbase", include, suite, str(tarball)]):
            raise BuildError(f"mmdebstrap could not make a {suite} base (its output is above)")
        if not run([name, "import", "--change", 'CMD ["python3"]', str(tarball), tag], env):
            raise BuildError(f"{name} import of the {suite} base failed (its output is above)")
    return tag


def pip_settings() -> tuple[str, str | None]:
    """The host's pip settings that apply inside a build (pip.conf text) and its CA bundle.

    Read from ``pip config list`` (files and PIP_* variables alike), so nothing about this
    host is written into the project. Index URLs on the host's own disk are left out.
    """
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    )
    settings: dict[str, str] = {}
    for line in listed.stdout.splitlines():
        key, _, value = line.partition("=")
        settings[key.rpartition(".")[2]] = value.strip().strip("'\"")
    config = configparser.ConfigParser()
    config["global"] = {}
    for key in PIP_KEYS:
        values = [v for v in settings.get(key, "").split() if not _local_path(key, v)]
        if values:
            config["global"][key] = " ".join(values)
    cert = settings.get("cert") or os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with (STATE_DIR / "pip.conf").open("w") as out:
        config.write(out)
    return str(STATE_DIR / "pip.conf"), cert if cert and Path(cert).is_file() else None


def _local_path(key: str, value: str) -> bool:
    in_url = key in ("index-url", "extra-index-url", "find-links")
    return in_url and not value.startswith(("http://", "https://"))


def build(args: argparse.Namespace) -> None:
    name = engine()
    check_network(name)
    base = args.base_image
    if not available(name, base):
        print(f"{base} is not here and cannot be pulled: using a Debian {args.suite} base")
        base = debian_base(name, args.suite)
    pip_conf, cert = pip_settings()
    argv = [name, "build", "-f", args.file, "-t", args.tag, "--build-arg", f"BASE_IMAGE={base}"]
    argv += ["--secret", f"id=pip.conf,src={pip_conf}"]
    if cert is not None:
        argv += ["--secret", f"id=pip-cert,src={cert}"]
    env = engine_env(name)
    if Path(name).name == "docker":
        env.setdefault("DOCKER_BUILDKIT", "1")  # build secrets need BuildKit
    if not run([*argv, args.context], env):
        raise BuildError(f"{name} build of {args.file} failed (its output is above)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    image = sub.add_parser("image", help="build an image from a Containerfile")
    image.add_argument("--file", default=str(ROOT / "Containerfile"))
    image.add_argument("--tag", default="localhost/dlaas:latest")
    image.add_argument("--base-image", default=DEFAULT_BASE)
    image.add_argument("--suite", default=DEFAULT_SUITE, help="Debian suite of a local base")
    image.add_argument("--context", default=str(ROOT))
    sub.add_parser("conf", help="write podman's settings for this host; print them as VAR=path")
    args = parser.parse_args(argv)
    try:
        if args.command == "conf":
            for key, value in podman_env().items():
                print(f"{key}={value}")
        else:
            build(args)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
