"""Real camera photos through the real EfficientNet-Lite0: the answers must be right."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from dlaas.model import Classifier


def top_names(clf: Classifier, data: bytes, k: int = 3) -> list[str]:
    (preds,) = clf.predict(clf.preprocess(data)[None], top_k=k)
    return [p["label"].split(",")[0] for p in preds]


@pytest.mark.parametrize(
    ("name", "accepted"),
    [
        ("chelsea", {"tabby", "tiger cat", "Egyptian cat"}),
        ("coffee", {"espresso", "cup", "coffee mug"}),
        ("rocket", {"missile", "projectile", "space shuttle"}),
    ],
)
def test_photo_top3_contains_the_right_class(
    lite0: Classifier, photo: Callable[[str], bytes], name: str, accepted: set[str]
) -> None:
    names = top_names(lite0, photo(name))

    assert accepted & set(names), f"{name}: top-3 was {names}"


def test_a_12_megapixel_rotated_photo_still_comes_out_right(
    lite0: Classifier, photo: Callable[[str], bytes]
) -> None:
    # given the cat as a 4032x3024 camera JPEG stored sideways with EXIF orientation 8
    upright = Image.open(io.BytesIO(photo("chelsea"))).resize((4032, 3024))
    sideways = upright.transpose(Image.Transpose.ROTATE_270)
    exif = Image.Exif()
    exif[0x0112] = 8  # "rotate 90 degrees counter-clockwise to view"
    buf = io.BytesIO()
    sideways.save(buf, format="JPEG", quality=90, exif=exif.tobytes())

    names = top_names(lite0, buf.getvalue())

    assert {"tabby", "tiger cat", "Egyptian cat"} & set(names), names


def test_a_batch_scores_like_single_images(
    lite0: Classifier, photo: Callable[[str], bytes]
) -> None:
    arrays = [lite0.preprocess(photo(n)) for n in ("chelsea", "coffee", "rocket", "astronaut")]

    together = lite0.logits(np.stack(arrays))
    alone = np.concatenate([lite0.logits(a[None]) for a in arrays])

    np.testing.assert_allclose(together, alone, atol=1e-4)
    assert [int(i) for i in together.argmax(axis=1)] == [int(i) for i in alone.argmax(axis=1)]
