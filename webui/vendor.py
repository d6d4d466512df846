"""Third-party browser code the dashboard serves itself (no CDN: the machine may be offline).

The history chart uses plotly.js, which the ``plotly`` wheel ships as
``plotly/package_data/plotly.min.js``. It is located without importing
plotly (whose Python side the dashboard does not need) and served from
``/vendor/plotly.min.js`` behind the login.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import re
from pathlib import Path

PLOTLY_RELATIVE_PATH = Path("package_data") / "plotly.min.js"
INSTALL_HINT = "install the web UI's dependencies: pip install -e '.[webui]' (or re-run scripts/setup.sh)"


# plotly.js adds <style> elements by script: an empty one it then fills through the CSSOM
# (insertRule, which the CSP does not govern), and bundled stylesheets (maplibre's) written
# out as one quoted string right after the element is created.
INJECTED_STYLESHEET = re.compile(r"""createElement\("style"\);[^;']{0,200}?\.textContent='([^'\\]*)'""")


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


def csp_hash(text: str) -> str:
    """The CSP source that allows exactly a <style> element with this text."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def plotly_style_hashes(path: Path) -> list[str]:
    """CSP hashes of the <style> elements plotly.js creates: the empty one and each bundled stylesheet.

    Read from the served file itself, so an upgraded plotly.js brings its own
    hashes; a stylesheet this does not find shows up as a CSP error in the
    every-page browser test.
    """
    text = path.read_text(encoding="utf-8", errors="replace")
    return [csp_hash("")] + sorted({csp_hash(css) for css in INJECTED_STYLESHEET.findall(text)})
