"""Third-party browser code the dashboard serves itself (no CDN: the machine may be offline).

The history chart uses plotly.js, which the ``plotly`` wheel ships as
``plotly/package_data/plotly.min.js``. It is located without importing
plotly (whose Python side the dashboard does not need) and served from
``/vendor/plotly.min.js`` behind the login.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PLOTLY_RELATIVE_PATH = Path("package_data") / "plotly.min.js"
INSTALL_HINT = "install the web UI's dependencies: pip install -e '.[webui]' (or re-run scripts/setup.sh)"


class VendorAssetMissing(RuntimeError):
    """A browser library the dashboard needs is not installed."""


def plotly_js_path() -> Path:
    """Path of plotly.min.js inside the installed plotly package, or :class:`VendorAssetMissing`."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        raise VendorAssetMissing(f"the history chart needs plotly.js, but the plotly package is not installed: {INSTALL_HINT}")
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / PLOTLY_RELATIVE_PATH
        if candidate.is_file():
            return candidate
    raise VendorAssetMissing(f"plotly is installed but has no {PLOTLY_RELATIVE_PATH}: {INSTALL_HINT}")


def plotly_version(path: Path) -> str:
    """The version in plotly.min.js's banner (used to bust browser caches after an upgrade)."""
    with path.open("r", encoding="utf-8", errors="replace") as handle:
        banner = handle.read(200)
    marker = "plotly.js v"
    start = banner.find(marker)
    if start < 0:
        return "unknown"
    return banner[start + len(marker):].split()[0]
