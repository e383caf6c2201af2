"""Photos to calibrate the int8 model on: a folder the user gives, or the seven dlaas ships.

Nothing is downloaded and no extra package is needed: without ``--calibration-dir`` the
build uses ``calibration_photos/`` inside this package, seven public-domain camera photos
(460 KB; their sources and licences are in its NOTICE.txt). A few photos go a long way:
random crops and flips of each, prepared exactly as serving prepares uploads.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from dlaas.errors import ImageError, ModelError
from dlaas.model.preprocess import prepare_image
from dlaas.model.spec import Preprocessing

log = logging.getLogger("dlaas.model")

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
BUNDLED_FOLDER = "calibration_photos"  # in this package; package data in pyproject.toml
NO_PHOTOS_HINT = (
    "pass --calibration-dir DIR, a folder of 20 to 200 of your own photos (JPEG, PNG), or "
    "leave --calibration-dir out to use the photos that ship with dlaas"
)


@dataclass(frozen=True)
class CalibrationSource:
    """Where the calibration photos come from, and the files themselves."""

    description: str
    paths: tuple[Path, ...]

    def fingerprint(self) -> str:
        """Changes when a photo is added, removed or rewritten; cheap (stat only)."""
        digest = hashlib.sha256()
        for path in self.paths:
            st = path.stat()
            digest.update(f"{path.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return digest.hexdigest()


def find_calibration_photos(directory: Path | None) -> CalibrationSource:
    """The photos in ``directory`` (searched recursively), or, without one, dlaas's own."""
    if directory is not None:
        directory = Path(directory)
        if not directory.is_dir():
            raise ModelError(f"calibration folder {directory} does not exist; {NO_PHOTOS_HINT}")
        paths = tuple(sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES))
        if not paths:
            raise ModelError(f"calibration folder {directory} holds no images; {NO_PHOTOS_HINT}")
        return CalibrationSource(str(directory.resolve()), paths)
    return bundled_photos()


def bundled_photos() -> CalibrationSource:
    """The public-domain photos installed with dlaas (``calibration_photos/``)."""
    folder = Path(str(resources.files("dlaas.model").joinpath(BUNDLED_FOLDER)))
    paths = tuple(sorted(folder.glob("*.jpg")))
    if not paths:
        raise ModelError(
            f"the calibration photos that ship with dlaas are missing from {folder}; "
            "reinstall dlaas, or pass --calibration-dir DIR, a folder of your own photos"
        )
    return CalibrationSource(f"the {len(paths)} public-domain photos that ship with dlaas", paths)


def calibration_inputs(
    source: CalibrationSource, count: int, preprocessing: Preprocessing, *, seed: int
) -> np.ndarray:
    """``count`` model inputs: random crops and flips of the photos, prepared as for serving."""
    if count < 1:
        raise ModelError(f"the calibration needs at least one sample, got {count}")
    rng = np.random.default_rng(seed)
    step = max(1, len(source.paths) // count)  # a big folder: every step-th photo is enough
    photos = [p for p in (_open(path) for path in source.paths[::step]) if p is not None]
    if not photos:
        raise ModelError(f"none of the photos in {source.description} could be read")
    largest = 2 * preprocessing.resize_size  # crops are shrunk to this first: faster, same input
    inputs = []
    for i in range(count):
        photo = photos[i % len(photos)]
        width, height = photo.size
        crop_w = max(1, int(width * rng.uniform(0.5, 1.0)))
        crop_h = max(1, int(height * rng.uniform(0.5, 1.0)))
        left = int(rng.integers(0, width - crop_w + 1))
        top = int(rng.integers(0, height - crop_h + 1))
        crop = photo.crop((left, top, left + crop_w, top + crop_h))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if min(crop.size) > largest:
            shrink = largest / min(crop.size)
            size = (round(crop.width * shrink), round(crop.height * shrink))
            crop = crop.resize(size, Image.Resampling.BOX)
        buffer = io.BytesIO()
        crop.save(buffer, format="BMP")  # lossless and instant; decoded again below
        inputs.append(prepare_image(buffer.getvalue(), preprocessing))
    return np.stack(inputs).astype(np.float32)


def _open(path: Path) -> Image.Image | None:
    """An upright RGB photo, decoded at a reduced scale when it is large; None if unreadable."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (1024, 1024))  # JPEG only: decode at 1/2..1/8 scale
            upright = ImageOps.exif_transpose(image)
            return _to_rgb(upright)
    except (OSError, ValueError, ImageError) as exc:
        log.warning("calibration_photo_skipped", extra={"path": str(path), "reason": str(exc)})
        return None


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with transparency composited onto white as serving does."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
