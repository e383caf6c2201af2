"""Upload checks: each bad input gets its documented status and a message saying what to do."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import ExifTags, Image

from dlaas.errors import WebError
from dlaas.web.uploads.validate import check_image, sniff_format

MAX_BYTES = 1_000_000
MAX_PIXELS = 40_000_000


def encode(fmt: str, size: tuple[int, int] = (32, 24), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 128).save(buf, format=fmt)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width x height`` but which holds no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    body = struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return b"\x89PNG\r\n\x1a\n" + body


def refused(data: bytes, name: str = "x.jpg") -> WebError:
    with pytest.raises(WebError) as info:
        check_image(data, name, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)
    return info.value


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_accepts_every_documented_format(fmt: str) -> None:
    info = check_image(encode(fmt), "img", max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)
    assert (info.format, info.width, info.height) == (fmt, 32, 24)


def test_format_is_sniffed_from_bytes_not_the_name() -> None:
    assert sniff_format(encode("PNG")) == "PNG"
    info = check_image(encode("PNG"), "photo.jpg", max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)
    assert info.format == "PNG"


def test_empty_file_is_400() -> None:
    err = refused(b"")
    assert (err.status_code, err.error) == (400, "empty_file")


def test_text_named_jpg_is_415() -> None:
    err = refused(b"hello, I am not a picture\n" * 10, "cat.jpg")
    assert err.status_code == 415
    assert "JPEG, PNG" in err.detail


def test_truncated_jpeg_is_422() -> None:
    noisy = Image.effect_noise((400, 300), 80).convert("RGB")
    buf = io.BytesIO()
    noisy.save(buf, format="JPEG")
    whole = buf.getvalue()
    err = refused(whole[: len(whole) // 2])
    assert (err.status_code, err.error) == (422, "truncated_image")
    err = refused(whole[:200])  # cut inside the headers
    assert err.status_code == 422


def test_truncated_png_is_422() -> None:
    whole = encode("PNG", (200, 150))
    err = refused(whole[:-30], "x.png")
    assert err.status_code == 422


def test_huge_png_header_is_422_without_decoding() -> None:
    err = refused(png_header_only(100_000, 100_000), "bomb.png")
    assert (err.status_code, err.error) == (422, "image_too_large")
    assert "MP" in err.detail


def test_pixel_limit_is_a_setting() -> None:
    data = encode("PNG", (100, 100))
    with pytest.raises(WebError) as info:
        check_image(data, "x.png", max_bytes=MAX_BYTES, max_pixels=5_000)
    assert info.value.status_code == 422
    check_image(data, "x.png", max_bytes=MAX_BYTES, max_pixels=10_000)


def test_oversize_is_413() -> None:
    err = refused(b"\xff\xd8\xff" + b"\0" * MAX_BYTES)
    assert (err.status_code, err.error) == (413, "file_too_large")
    assert "--max-upload-mb" in err.detail


def exif_with_thumbnail(thumbnail: bytes) -> bytes:
    """An EXIF block (little-endian TIFF) whose IFD1 carries ``thumbnail``, a whole JPEG."""
    ifd0_at = 8
    ifd1_at = ifd0_at + 2 + 12 + 4  # one entry (orientation), then the next-IFD offset
    thumb_at = ifd1_at + 2 + 2 * 12 + 4
    tiff = b"II*\x00" + struct.pack("<I", ifd0_at)
    tiff += struct.pack("<H", 1) + struct.pack("<HHII", 0x0112, 3, 1, 1)
    tiff += struct.pack("<I", ifd1_at)
    tiff += struct.pack("<H", 2)
    tiff += struct.pack("<HHII", 0x0201, 4, 1, thumb_at)  # JPEGInterchangeFormat
    tiff += struct.pack("<HHII", 0x0202, 4, 1, len(thumbnail))  # ...Length
    tiff += struct.pack("<I", 0)
    return b"Exif\x00\x00" + tiff + thumbnail


def test_jpeg_with_exif_thumbnail_is_not_mistaken_for_truncated() -> None:
    # Given a JPEG whose EXIF carries a thumbnail, with its own scan and end markers...
    img = Image.new("RGB", (300, 200), (10, 200, 30))
    thumb = io.BytesIO()
    img.resize((60, 40)).save(thumb, format="JPEG")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif_with_thumbnail(thumb.getvalue()))
    whole = buf.getvalue()
    assert thumb.getvalue() in whole
    ifd1 = Image.open(io.BytesIO(whole)).getexif().get_ifd(ExifTags.IFD.IFD1)
    assert ifd1[0x0202] == len(thumb.getvalue())

    # ...the whole file is accepted, sized by the main image...
    info = check_image(whole, "x.jpg", max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)
    assert (info.format, info.width, info.height) == ("JPEG", 300, 200)

    # ...and cut just after the main image's scan starts, the thumbnail's end marker
    # (the only one left) does not pass for the main image's.
    main_scan = whole.rindex(b"\xff\xda")
    assert whole.index(b"\xff\xd9") < main_scan
    err = refused(whole[: main_scan + 64])
    assert (err.status_code, err.error) == (422, "truncated_image")
