"""Stored frames and face crops, served from the ingest's data folder without path traversal.

Only paths that the store returned are ever opened (routes take numeric ids,
never file names), and even those must resolve, symlinks followed, to a
regular file inside the data folder. The content type comes from the
file's first bytes, not its name.
"""

from __future__ import annotations

from pathlib import Path

JPEG_START = b"\xff\xd8\xff"
PNG_START = b"\x89PNG\r\n\x1a\n"


class MediaUnavailable(LookupError):
    """No such file, or a path the dashboard refuses to serve."""


def resolve_stored_path(data_dir: Path, relative: str | None) -> Path:
    """The file a stored relative path names, or :class:`MediaUnavailable`."""
    if not relative:
        raise MediaUnavailable("nothing stored")
    root = data_dir.resolve()
    candidate = Path(relative)
    if candidate.is_absolute() or ".." in candidate.parts:
        raise MediaUnavailable("stored path leaves the data folder")
    resolved = (root / candidate).resolve()
    if not resolved.is_relative_to(root):
        raise MediaUnavailable("stored path leaves the data folder")
    if not resolved.is_file():
        raise MediaUnavailable("file no longer exists (retention may have removed it)")
    return resolved


def image_type(path: Path) -> str:
    """``image/jpeg`` or ``image/png`` from the file's signature; anything else is refused."""
    with path.open("rb") as handle:
        head = handle.read(8)
    if head.startswith(JPEG_START):
        return "image/jpeg"
    if head.startswith(PNG_START):
        return "image/png"
    raise MediaUnavailable("stored file is not a JPEG or PNG image")
