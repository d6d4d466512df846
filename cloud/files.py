"""Where frames and face crops go on disk: below the data folder, never anywhere else.

Every path is built from validated parts (device ids checked by the
contract, dates and numbers we format ourselves) and then checked once more
after resolving, so no topic or payload can steer a write outside the folder.
"""

from __future__ import annotations

import errno
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from contract.topics import check_device_id


class UnsafePath(ValueError):
    pass


def _check_file_name(name: str) -> None:
    """A plain file name: no folders, not hidden, no NUL (the folder part is checked separately)."""
    if not name or "/" in name or name.startswith(".") or "\x00" in name:
        raise UnsafePath(f"bad file name {name!r}")


_MAX_MEMOISED_DIRECTORIES = 10_000
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK}


def _link_new(temporary: str, target: Path, data: bytes) -> bool:
    """Give the finished temporary file its name; False if that name exists."""
    try:
        os.link(temporary, target)
        return True
    except FileExistsError:
        return False
    except OSError as error:
        if error.errno not in _NO_HARD_LINKS:
            raise
    # A file system without hard links: an exclusive create still never replaces a file.
    try:
        handle = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(handle, "wb") as stream:
        stream.write(data)
    return True


class DataFolder:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()
        # Folders already checked, and created: a day's frames share one, so
        # resolving symlinks and creating the folder happen once, not per frame.
        self._resolved: dict[Path, Path] = {}
        self._ready: dict[Path, Path] = {}

    def _inside(self, relative: Path) -> Path:
        target = (self.root / relative).resolve()
        if not target.is_relative_to(self.root):
            raise UnsafePath(f"{relative} resolves outside the data folder")
        return target

    def relative_path(self, kind: str, device_id: str, captured_at: float, name: str) -> Path:
        """``<kind>/<device>/<YYYY-MM-DD>/<name>``, checked."""
        check_device_id(device_id)
        _check_file_name(name)
        day = datetime.fromtimestamp(captured_at, timezone.utc).strftime("%Y-%m-%d")
        relative = Path(kind) / device_id / day / name
        self._checked(relative.parent)
        return relative

    def write(self, relative: Path, data: bytes) -> bool:
        """Write a new file, atomically and never over an existing one; False if the name is taken.

        The data goes to a temporary file first, then gets its name with a hard
        link, which (unlike a rename) refuses to replace a file: a crash never
        leaves half a JPEG behind, and no message can overwrite another's frame.
        """
        _check_file_name(relative.name)
        try:
            return self._write_in(self._folder(relative.parent), relative.name, data)
        except FileNotFoundError:  # the folder was removed behind our back: check and create it again
            self._ready.pop(relative.parent, None)
            self._resolved.pop(relative.parent, None)
            return self._write_in(self._folder(relative.parent), relative.name, data)

    def _checked(self, relative: Path) -> Path:
        """The absolute folder, checked to lie inside (resolving symlinks costs a system call per level)."""
        folder = self._resolved.get(relative)
        if folder is None:
            folder = self._inside(relative)
            if len(self._resolved) >= _MAX_MEMOISED_DIRECTORIES:
                self._resolved.clear()
            self._resolved[relative] = folder
        return folder

    def _folder(self, relative: Path) -> Path:
        """The checked folder, created if needed."""
        folder = self._ready.get(relative)
        if folder is None:
            folder = self._checked(relative)
            folder.mkdir(parents=True, exist_ok=True)
            if len(self._ready) >= _MAX_MEMOISED_DIRECTORIES:
                self._ready.clear()
            self._ready[relative] = folder
        return folder

    @staticmethod
    def _write_in(folder: Path, name: str, data: bytes) -> bool:
        target = folder / name
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-")
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
            return _link_new(temporary, target, data)
        finally:
            Path(temporary).unlink(missing_ok=True)

    def delete(self, relative: str | Path) -> int:
        """Remove a stored file; returns the bytes freed (0 if it was already gone)."""
        target = self._inside(Path(relative))
        try:
            size = target.stat().st_size
            target.unlink()
            return size
        except FileNotFoundError:
            return 0

    def absolute(self, relative: str | Path) -> Path:
        return self._inside(Path(relative))
