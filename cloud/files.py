"""Where frames and face crops go on disk: below the data folder, never anywhere else.

Every path is built from validated parts (device ids checked by the
contract, dates and numbers we format ourselves) and then checked once more
after resolving, so no topic or payload can steer a write outside the folder.
"""

from __future__ import annotations

import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from contract.topics import check_device_id


class UnsafePath(ValueError):
    pass


class DataFolder:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()

    def _inside(self, relative: Path) -> Path:
        target = (self.root / relative).resolve()
        if not target.is_relative_to(self.root):
            raise UnsafePath(f"{relative} resolves outside the data folder")
        return target

    def relative_path(self, kind: str, device_id: str, captured_at: float, name: str) -> Path:
        """``<kind>/<device>/<YYYY-MM-DD>/<name>``, checked."""
        check_device_id(device_id)
        if "/" in name or name.startswith(".") or "\x00" in name:
            raise UnsafePath(f"bad file name {name!r}")
        day = datetime.fromtimestamp(captured_at, timezone.utc).strftime("%Y-%m-%d")
        relative = Path(kind) / device_id / day / name
        self._inside(relative)
        return relative

    def write(self, relative: Path, data: bytes) -> Path:
        """Atomic write (temp + rename): a crash never leaves half a JPEG behind."""
        target = self._inside(relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return target

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
