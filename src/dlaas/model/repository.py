"""The model repository on disk: one folder per model, its config, labels and versions.

``<repo>/<name>/config.json`` says how to prepare input and which versions to serve,
``<repo>/<name>/labels.txt`` names the classes, and ``<repo>/<name>/<N>/model.onnx`` is
version N (a positive integer). It is Triton's layout with a JSON config, so a folder
made for one is easy to make for the other (docs/model.md). A built-in model's build
folder is an entry too: ``publish_builtin`` adds its config and version 1, a hard link
to the build's model file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dlaas.errors import ConfigError, ModelError
from dlaas.model.custom import load_custom_model
from dlaas.model.labels import read_labels, write_labels
from dlaas.model.spec import ModelSpec, Preprocessing

CONFIG_FILE, LABELS_FILE, VERSION_FILE = "config.json", "labels.txt", "model.onnx"
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
VersionPolicy = Literal["latest", "all"]
DEFAULT_MAX_BATCH_SIZE = 8


@dataclass(frozen=True)
class ModelConfig:
    """One model's ``config.json``: preprocessing, labels, batching, versions served.

    ``version_policy`` "latest" serves the highest version that checks out (Triton's
    ``latest { num_versions: 1 }``); "all" serves every version (requests may name one).
    """

    preprocessing: Preprocessing
    labels_file: str = LABELS_FILE
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    version_policy: VersionPolicy = "latest"

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ModelError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.version_policy not in ("latest", "all"):
            raise ModelError(
                f"version_policy must be 'latest' or 'all', got {self.version_policy!r}"
            )
        if Path(self.labels_file).name != self.labels_file:
            raise ModelError(
                f"labels_file must be a file name in the model's folder, not {self.labels_file!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.preprocessing.to_dict(),
            "labels_file": self.labels_file,
            "max_batch_size": self.max_batch_size,
            "version_policy": self.version_policy,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: Path) -> ModelConfig:
        """The config in ``data``; ModelError naming ``where`` and the field at fault."""
        known = {"input_size", "resize_size", "mean", "std", "layout"}
        known |= {"labels_file", "max_batch_size", "version_policy"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"{where}: unknown field(s) {', '.join(unknown)}; see docs/model.md")
        defaults = Preprocessing().to_dict()
        try:
            preprocessing = Preprocessing.from_dict({**defaults, **data})
            return cls(
                preprocessing=preprocessing,
                labels_file=str(data.get("labels_file", LABELS_FILE)),
                max_batch_size=int(data.get("max_batch_size", DEFAULT_MAX_BATCH_SIZE)),
                version_policy=data.get("version_policy", "latest"),
            )
        except (ConfigError, TypeError, ValueError, IndexError, KeyError) as exc:
            raise ModelError(f"{where}: {exc}") from exc


@dataclass(frozen=True)
class Entry:
    """A model folder of the repository: its name, config and version numbers on disk."""

    name: str
    folder: Path
    config: ModelConfig
    versions: tuple[int, ...]  # ascending

    @property
    def labels_path(self) -> Path:
        return self.folder / self.config.labels_file

    def onnx_path(self, version: int) -> Path:
        return self.folder / str(version) / VERSION_FILE

    def runtime_spec(self, version: int) -> ModelSpec:
        """Version ``version`` as a worker runs it: no ``onnx`` import (the classifier
        checks the output width on its first batch)."""
        path = self.onnx_path(version)
        if not path.is_file():
            raise ModelError(f"{path} is missing; model {self.name} has no version {version}")
        return ModelSpec(self.name, path, read_labels(self.labels_path), self.config.preprocessing)

    def spec(self, version: int) -> ModelSpec:
        """Version ``version`` checked as ``load_custom_model`` checks the user's model."""
        spec = load_custom_model(
            self.onnx_path(version), self.labels_path, self.config.preprocessing
        )
        return ModelSpec(self.name, spec.onnx_path, spec.labels, spec.preprocessing)


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise ModelError(
            f"model name {name!r} must be 1-64 lowercase letters, digits, '-' or '_',"
            " starting with a letter or digit"
        )
    return name


def read_entry(folder: Path) -> Entry:
    """The entry in ``folder``; ModelError if its config is missing or wrong."""
    config_path = folder / CONFIG_FILE
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{config_path} is missing; every model folder needs one") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"{config_path} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{config_path} must hold a JSON object")
    versions = sorted(
        int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0
    )
    return Entry(
        check_name(folder.name), folder, ModelConfig.from_dict(data, config_path), tuple(versions)
    )


def scan(root: Path) -> list[Entry | tuple[str, str]]:
    """Every model folder under ``root`` (one with a config file), sorted by name: its
    entry, or ``(name, reason)`` when its config cannot be read."""
    if not root.is_dir():
        return []
    found: list[Entry | tuple[str, str]] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not (folder / CONFIG_FILE).is_file():
            continue
        try:
            found.append(read_entry(folder))
        except ModelError as exc:
            found.append((folder.name, str(exc)))
    return found


def find_entry(root: Path, name: str) -> Entry | None:
    folder = root / name
    if not NAME_PATTERN.fullmatch(name) or not (folder / CONFIG_FILE).is_file():
        return None
    return read_entry(folder)


def write_config(folder: Path, config: ModelConfig) -> None:
    """Write ``config.json`` by rename, so a reader sees the old or the new file."""
    text = json.dumps(config.to_dict(), indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=".config-", dir=folder)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, folder / CONFIG_FILE)


def publish_builtin(spec: ModelSpec, folder: Path) -> None:
    """Make a built-in model's build folder a repository entry (config, version 1), once."""
    version = folder / "1" / VERSION_FILE
    if not version.is_file():
        version.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(spec.onnx_path, version)
        except FileExistsError:
            pass  # another process published it first
        except OSError:  # a file system without hard links
            shutil.copyfile(spec.onnx_path, version)
    if not (folder / CONFIG_FILE).is_file():
        write_config(folder, ModelConfig(preprocessing=spec.preprocessing))


def add_model(
    root: Path,
    name: str,
    onnx_path: Path,
    labels_path: Path,
    config: ModelConfig,
    version: int | None = None,
) -> tuple[Entry, int]:
    """Check the user's model as ``load_custom_model`` does, then copy it into ``root``
    as ``name``'s next version (or ``version``); returns the entry and the version."""
    check_name(name)
    spec = load_custom_model(onnx_path, labels_path, config.preprocessing)
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    existing = read_entry(folder).versions if (folder / CONFIG_FILE).is_file() else ()
    number = version if version is not None else (max(existing, default=0) + 1)
    if number < 1:
        raise ModelError(f"a version is a positive integer, not {number}")
    target = folder / str(number)
    if target.exists():
        raise ModelError(f"{target} exists already; pass another --version or remove it")
    write_labels(folder / config.labels_file, spec.labels)
    staging = Path(tempfile.mkdtemp(prefix=f".{number}-", dir=folder))
    shutil.copyfile(spec.onnx_path, staging / VERSION_FILE)
    staging.chmod(0o755)
    os.rename(staging, target)  # the version appears whole or not at all
    write_config(folder, config)
    return read_entry(folder), number
