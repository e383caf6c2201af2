"""Decoding untrusted bytes: colour modes, orientation, animation, draft, and malformed files."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from dlaas.errors import ImageError
from dlaas.model import Preprocessing
from dlaas.model.preprocess import _request_draft, crop_to_input, prepare_image, to_array

PP = Preprocessing()


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


def rgb_at_centre(data: bytes) -> tuple[int, int, int]:
    pixel = crop_to_input(data, PP).getpixel((112, 112))
    assert isinstance(pixel, tuple)
    return (int(pixel[0]), int(pixel[1]), int(pixel[2]))


def test_normalises_to_the_reference_scale_in_nchw() -> None:
    # given a uniform image of value 255 in red, 127 in green and 0 in blue
    data = encode(Image.new("RGB", (300, 260), (255, 127, 0)), "PNG")

    array = prepare_image(data, PP)

    assert array.shape == (3, 224, 224)
    assert array.dtype == np.float32
    np.testing.assert_allclose(array[:, 100, 100], [128 / 128, 0.0, -127 / 128], atol=1e-6)


def test_nhwc_layout_and_custom_mean_std() -> None:
    pp = Preprocessing(
        input_size=64, resize_size=64, mean=(10, 20, 30), std=(2, 4, 5), layout="NHWC"
    )
    data = encode(Image.new("RGB", (80, 64), (50, 60, 80)), "PNG")

    array = prepare_image(data, pp)

    assert array.shape == (64, 64, 3)
    np.testing.assert_allclose(array[5, 5], [20, 10, 10], atol=1e-5)


def test_short_side_resize_then_centre_crop() -> None:
    # given a wide image: a green centre square, red margins left and right beyond the crop
    image = Image.new("RGB", (512, 256), (255, 0, 0))
    image.paste((0, 255, 0), (128, 0, 384, 256))
    out = crop_to_input(encode(image, "PNG"), PP)

    assert out.size == (224, 224)
    # the crop is the centre 224/256 of the short side: all of it inside the green square
    corners = [out.getpixel(p) for p in [(0, 0), (223, 0), (0, 223), (223, 223)]]
    assert all(c == (0, 255, 0) for c in corners)


@pytest.mark.parametrize(
    ("mode", "colour", "expected"),
    [
        ("L", 100, (100, 100, 100)),
        ("1", 1, (255, 255, 255)),
        ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
        ("P", 3, None),
        ("RGBA", (0, 0, 255, 255), (0, 0, 255)),
        ("RGBA", (255, 0, 0, 0), (255, 255, 255)),  # fully transparent: white background
        ("LA", (0, 128), (127, 127, 127)),  # half-transparent black on white
        ("I;16", 65535, (255, 255, 255)),
        ("I;16", 32896, (128, 128, 128)),
        ("I", 1000, (255, 255, 255)),
        ("F", 0.5, (0, 0, 0)),
    ],
)
def test_colour_modes_become_rgb(
    mode: str, colour: object, expected: tuple[int, int, int] | None
) -> None:
    image = Image.new(mode, (64, 64), colour)  # type: ignore[arg-type]
    if mode == "P":
        image.putpalette([0, 0, 0, 10, 20, 30, 40, 50, 60, 70, 80, 90] + [0] * 756)
        expected = (70, 80, 90)
    fmt = "TIFF" if mode in ("CMYK", "I", "F") else "PNG"

    got = rgb_at_centre(encode(image, fmt))

    assert got == pytest.approx(expected, abs=1)


def test_palette_transparency_is_composited_on_white() -> None:
    image = Image.new("P", (64, 64), 1)
    image.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    data = encode(image, "PNG", transparency=1)

    assert rgb_at_centre(data) == (255, 255, 255)


def test_cmyk_jpeg() -> None:
    data = encode(Image.new("CMYK", (300, 300), (0, 255, 255, 0)), "JPEG", quality=95)

    assert rgb_at_centre(data) == pytest.approx((255, 0, 0), abs=4)


def _quadrants() -> Image.Image:
    """Red top-left, green top-right, blue bottom-left, white bottom-right; 400x300."""
    image = Image.new("RGB", (400, 300), (255, 255, 255))
    image.paste((255, 0, 0), (0, 0, 200, 150))
    image.paste((0, 255, 0), (200, 0, 400, 150))
    image.paste((0, 0, 255), (0, 150, 200, 300))
    return image


@pytest.mark.parametrize(
    ("orientation", "top_left", "top_right"),
    [
        (1, (255, 0, 0), (0, 255, 0)),
        (3, (255, 255, 255), (0, 0, 255)),  # rotated 180
        (6, (0, 0, 255), (255, 0, 0)),  # camera held rotated: turn 90 clockwise
        (8, (0, 255, 0), (255, 255, 255)),
        (2, (0, 255, 0), (255, 0, 0)),  # mirrored
    ],
)
def test_exif_orientation_is_applied(
    orientation: int, top_left: tuple[int, int, int], top_right: tuple[int, int, int]
) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(_quadrants(), "JPEG", quality=95, exif=exif.tobytes())

    out = crop_to_input(data, PP)

    assert out.getpixel((20, 20)) == pytest.approx(top_left, abs=8)
    assert out.getpixel((203, 20)) == pytest.approx(top_right, abs=8)


def test_animated_images_use_their_first_frame() -> None:
    frames = [Image.new("RGB", (64, 64), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    webp = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)

    assert rgb_at_centre(gif.getvalue()) == pytest.approx((255, 0, 0), abs=2)
    assert rgb_at_centre(webp) == pytest.approx((255, 0, 0), abs=2)


def test_draft_decodes_large_jpegs_at_reduced_scale() -> None:
    # a 4032x3024 JPEG only needs a short side >= 256: scale 1/8 gives 504x378
    data = encode(Image.new("RGB", (4032, 3024), (10, 200, 30)), "JPEG")
    image = Image.open(io.BytesIO(data))

    _request_draft(image, 256)
    image.load()

    assert image.size == (504, 378)


def test_draft_is_skipped_when_even_half_scale_would_be_too_small() -> None:
    image = Image.open(io.BytesIO(encode(Image.new("RGB", (640, 480)), "JPEG")))

    _request_draft(image, 256)
    image.load()

    assert image.size == (640, 480)


def test_draft_changes_results_little(photo: Callable[[str], bytes]) -> None:
    big = Image.open(io.BytesIO(photo("coffee"))).resize((2400, 1600))
    data = encode(big, "JPEG", quality=92)

    with_draft = prepare_image(data, PP, use_draft=True)
    without = prepare_image(data, PP, use_draft=False)

    # normalised units: 1/128 per grey level; a few levels on average
    assert float(np.abs(with_draft - without).mean()) < 4 / 128


def test_small_images_are_upscaled() -> None:
    assert prepare_image(encode(Image.new("RGB", (10, 7), (1, 2, 3)), "PNG"), PP).shape == (
        3,
        224,
        224,
    )


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` but whose pixel data is a few bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _truncated_jpeg() -> bytes:
    data = encode(Image.effect_noise((256, 256), 64).convert("RGB"), "JPEG", quality=90)
    return data[: len(data) // 2]


def _corrupt_middle_jpeg() -> bytes:
    data = bytearray(encode(Image.effect_noise((128, 128), 64).convert("RGB"), "JPEG"))
    data[200:600] = b"\xff" * 400
    return bytes(data)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"hello, I am a text file\n" * 10, "not an image"),
        (bytes(range(256)) * 4, "not an image"),
        (png_claiming(60_000, 60_000), "too many pixels"),
        (png_claiming(9_000, 9_000), "more than the"),
        (png_claiming(300, 200), "corrupt"),
        (_truncated_jpeg(), "corrupt or truncated"),
        (_corrupt_middle_jpeg(), "corrupt"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 50, "corrupt|not an image"),
        (b"GIF89a" + b"\x00" * 20, "corrupt|not an image"),
    ],
    ids=[
        "empty",
        "text",
        "random",
        "bomb",
        "over-limit",
        "short-pixel-data",
        "truncated-jpeg",
        "corrupt-jpeg",
        "jpeg-magic-only",
        "gif-magic-only",
    ],
)
def test_malformed_input_raises_image_error(data: bytes, reason: str) -> None:
    with pytest.raises(ImageError, match=reason):
        prepare_image(data, PP, max_pixels=50_000_000)


def test_max_pixels_is_configurable() -> None:
    data = encode(Image.new("RGB", (200, 100)), "PNG")

    with pytest.raises(ImageError, match="200x100 pixels, more than the 10000 allowed"):
        prepare_image(data, PP, max_pixels=10_000)
    assert prepare_image(data, PP, max_pixels=20_000).shape == (3, 224, 224)


def test_rgb_and_grey_jpegs_take_libjpeg_turbo_with_scaling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the decoder behind the fast path, watched
    import simplejpeg

    from dlaas.model import preprocess

    calls: list[tuple[int, int]] = []
    real = simplejpeg.decode_jpeg

    def watched(data: bytes, **kw: object) -> np.ndarray:
        out: np.ndarray = real(data, **kw)
        calls.append((out.shape[1], out.shape[0]))
        return out

    monkeypatch.setattr(preprocess.simplejpeg, "decode_jpeg", watched)

    # When a large RGB JPEG, a grey one and a CMYK one are prepared
    rgb = prepare_image(encode(Image.new("RGB", (2048, 1536), (200, 30, 60)), "JPEG"), PP)
    grey = prepare_image(encode(Image.new("L", (800, 600), 90), "JPEG"), PP)
    prepare_image(encode(Image.new("CMYK", (300, 200), (0, 255, 255, 0)), "JPEG"), PP)

    # Then the first two were decoded by it at a reduced scale, short side still >= 256,
    # and the CMYK one was left to Pillow; colours come out as Pillow gives them
    assert len(calls) == 2
    (w1, h1), (w2, h2) = calls
    assert 256 <= h1 < 1536 and w1 < 2048
    assert 256 <= h2 < 600 and w2 < 800
    assert np.allclose(rgb[:, 112, 112], (np.array([200, 30, 60]) - 127) / 128, atol=3 / 128)
    assert np.allclose(grey[:, 112, 112], (90 - 127) / 128, atol=2 / 128)


def test_turbo_and_pillow_decodes_agree_on_photos(photo: Callable[[str], bytes]) -> None:
    for name in ("coffee", "chelsea", "astronaut"):
        big = Image.open(io.BytesIO(photo(name))).resize((1800, 1350))
        for progressive in (False, True):
            data = encode(big, "JPEG", quality=90, progressive=progressive)

            fast = prepare_image(data, PP)  # scale-on-decode by libjpeg-turbo
            full = prepare_image(data, PP, use_draft=False)  # Pillow, full size

            assert float(np.abs(fast - full).mean()) < 4 / 128, (name, progressive)


def test_normalisation_matches_the_textbook_formula() -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    pp = Preprocessing(mean=(123.7, 116.3, 103.5), std=(58.4, 57.1, 57.4))

    got = to_array(Image.fromarray(pixels), pp)

    expected = (pixels.astype(np.float64) - pp.mean) / pp.std
    np.testing.assert_allclose(got, expected.transpose(2, 0, 1), atol=1e-5)
