"""Just enough of a JPEG reader to accept a frame: its markers, its size, its end.

The ingest checks every frame before writing it (a frame is only stored if
it is a whole JPEG of sane size) but never needs the pixels: the browser and
the retraining job decode what they use. Walking the marker segments to the
frame header costs microseconds; opening the frame through imageio/Pillow
for the same header cost ~50 us uncontended and a fifth of the ingest's main
thread at full speed. Tests hold this reader to imageio's full decode.
"""

from __future__ import annotations

_SOI = b"\xff\xd8"
_EOI = b"\xff\xd9"
# Start-of-frame markers carry the size: SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC).
_START_OF_FRAME = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_START_OF_SCAN = 0xDA
# Markers without a length field: TEM and the restart markers RST0..RST7.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
_COMPONENT_COUNTS = (1, 3, 4)  # greyscale, YCbCr/RGB, CMYK


class NotAJpeg(ValueError):
    """The bytes are not a whole, well-formed JPEG; the message says why."""


def jpeg_size(jpeg: bytes) -> tuple[int, int]:
    """(width, height) of a baseline or progressive JPEG; raises :class:`NotAJpeg`."""
    if not jpeg.startswith(_SOI):
        raise NotAJpeg("no start-of-image marker")
    if not jpeg.rstrip(b"\x00").endswith(_EOI):
        raise NotAJpeg("truncated (no end-of-image marker)")
    position, end = 2, len(jpeg)
    while position + 4 <= end:
        if jpeg[position] != 0xFF:
            raise NotAJpeg(f"no marker at byte {position}")
        marker = jpeg[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker in _STANDALONE:
            position += 2
            continue
        if marker == _START_OF_SCAN or marker == _EOI[1]:
            break
        length = int.from_bytes(jpeg[position + 2 : position + 4], "big")
        if length < 2 or position + 2 + length > end:
            raise NotAJpeg(f"segment {marker:#04x} at byte {position} has a bad length")
        if marker in _START_OF_FRAME:
            return _frame_header_size(jpeg[position + 4 : position + 2 + length])
        position += 2 + length
    raise NotAJpeg("no frame header before the image data")


def _frame_header_size(header: bytes) -> tuple[int, int]:
    if len(header) < 6:
        raise NotAJpeg("frame header too short")
    height = int.from_bytes(header[1:3], "big")
    width = int.from_bytes(header[3:5], "big")
    if width == 0 or height == 0:
        raise NotAJpeg(f"frame header says {width}x{height}")
    if header[5] not in _COMPONENT_COUNTS:
        raise NotAJpeg(f"{header[5]} colour components")
    return width, height
