"""The ingest's JPEG header reader, held to imageio's full decode (pure logic on real and hostile bytes)."""

from __future__ import annotations

import io

import cv2
import imageio.v3 as iio
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from cloud.jpeg import NotAJpeg, jpeg_size
from edge.perception.codec import encode_jpeg


def photo(width: int, height: int, channels: int = 3) -> np.ndarray:
    gradient = np.linspace(0, 255, width * height * channels, dtype=np.float32)
    return gradient.reshape(height, width, channels).astype(np.uint8) if channels > 1 else gradient.reshape(height, width).astype(np.uint8)


def pillow_jpeg(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **options)
    return buffer.getvalue()


def real_jpegs() -> dict[str, bytes]:
    colour = photo(640, 360)
    ok, progressive = cv2.imencode(".jpg", colour, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok
    pil = Image.fromarray(photo(321, 123))
    exif = Image.Exif()
    exif[0x010F] = "emotion-mqtt test"
    return {
        "edge frame": encode_jpeg(colour, 80, 640),
        "edge frame shrunk": encode_jpeg(photo(1280, 720), 80, 640),
        "greyscale": encode_jpeg(photo(64, 48, 1), 90),
        "progressive": progressive.tobytes(),
        "pillow with EXIF and ICC": pillow_jpeg(pil, exif=exif.tobytes(), icc_profile=b"\0" * 600, quality=70),
        "pillow CMYK": pillow_jpeg(pil.convert("CMYK")),
    }


@pytest.mark.parametrize("name", list(real_jpegs()))
def test_size_matches_imageio_full_decode(name):
    jpeg = real_jpegs()[name]
    pixels = iio.imread(jpeg, extension=".jpg")
    assert jpeg_size(jpeg) == (pixels.shape[1], pixels.shape[0])


@pytest.mark.parametrize("broken, reason", [
    (b"", "start-of-image"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "start-of-image"),
    (b"\xff\xd8\xff\xe0" + b"\x00" * 64 + b"\xff\xd9", "bad length"),
    (b"\xff\xd8\xff\xda\x00\x02" + b"\x11" * 16 + b"\xff\xd9", "no frame header"),
    (b"\xff\xd8\xff\xc0\x00\x0b\x08\x00\x00\x00\x10\x01\x01\x11\x00" + b"\xff\xd9", "16x0"),  # 16 wide, 0 high
])
def test_broken_jpegs_are_refused_with_a_reason(broken, reason):
    with pytest.raises(NotAJpeg, match=reason):
        jpeg_size(broken)


def test_a_truncated_frame_is_refused():
    jpeg = real_jpegs()["edge frame"]
    with pytest.raises(NotAJpeg, match="truncated"):
        jpeg_size(jpeg[: len(jpeg) // 2])


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_hostile_bytes_only_ever_raise_not_a_jpeg(data):
    jpeg = real_jpegs()["edge frame"]
    mutated = bytearray(jpeg)
    for _ in range(data.draw(st.integers(1, 8))):
        mutated[data.draw(st.integers(0, 400))] = data.draw(st.integers(0, 255))  # corrupt the headers
    for candidate in (bytes(mutated), data.draw(st.binary(max_size=300)), b"\xff\xd8" + data.draw(st.binary(max_size=300)) + b"\xff\xd9"):
        try:
            width, height = jpeg_size(candidate)
        except NotAJpeg:
            continue
        assert 1 <= width <= 65535 and 1 <= height <= 65535
