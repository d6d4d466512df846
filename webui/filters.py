"""Reading the history filters (device, emotion, time range, page) from query arguments.

Times are accepted as epoch seconds, ISO-8601 with a zone (``…Z`` or
``+02:00``), or the browser's ``datetime-local`` value (no zone) together
with ``tz``, the browser's ``getTimezoneOffset()`` in minutes, so a person
filters in their own local time. ``range=1h`` (15m, 1h, 6h, 24h, 7d, 30d)
means "the last hour" and overrides ``since``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from contract.emotions import EMOTIONS
from contract.topics import check_device_id
from webui.queries import ResultFilter

RANGES_S = {"15m": 900, "1h": 3600, "6h": 6 * 3600, "24h": 24 * 3600, "7d": 7 * 24 * 3600, "30d": 30 * 24 * 3600}
PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
MAX_TZ_OFFSET_MIN = 16 * 60
MIN_EPOCH_S = 0.0
MAX_EPOCH_S = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc).timestamp()
# Database ids are signed 64-bit (SQLite INTEGER, PostgreSQL BIGINT): larger ones cannot exist.
MAX_ROW_ID = 2**63 - 1


class FilterError(ValueError):
    """A query argument that cannot be understood; the message says which and why."""


@dataclass(frozen=True)
class Page:
    limit: int
    offset: int

    @property
    def number(self) -> int:
        return self.offset // self.limit + 1


def parse_time(text: str, tz_offset_min: int, name: str) -> float:
    """Epoch seconds from any accepted form (see module docstring), between 1970 and the end of 9999."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        seconds = parse_iso_time(text, tz_offset_min, name)
    # Also refuses nan and inf, which float() accepts and which would compare as nonsense in SQL.
    if not (math.isfinite(seconds) and MIN_EPOCH_S <= seconds <= MAX_EPOCH_S):
        raise FilterError(f"{name}: out of range ({text[:40]!r}); use a time between 1970 and 9999")
    return seconds


def parse_iso_time(text: str, tz_offset_min: int, name: str) -> float:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise FilterError(f"{name}: not a time ({text[:40]!r}); use ISO-8601 or epoch seconds") from None
    try:
        if moment.tzinfo is None:
            moment = (moment + timedelta(minutes=tz_offset_min)).replace(tzinfo=timezone.utc)
        return moment.timestamp()
    except (OverflowError, ValueError):  # 9999-12-31T23:59 plus a zone offset is past datetime's year 9999
        raise FilterError(f"{name}: out of range ({text[:40]!r}); use a time between 1970 and 9999") from None


def parse_tz_offset(args: Mapping[str, str]) -> int:
    text = args.get("tz", "").strip()
    if not text:
        return 0
    try:
        offset = int(text)
    except ValueError:
        raise FilterError("tz: must be minutes (the browser's getTimezoneOffset())") from None
    if abs(offset) > MAX_TZ_OFFSET_MIN:
        raise FilterError("tz: offset out of range")
    return offset


def parse_device(args: Mapping[str, str]) -> str | None:
    device = args.get("device", "").strip()
    if not device:
        return None
    try:
        return check_device_id(device)
    except ValueError as error:
        raise FilterError(f"device: {error}") from None


def parse_label(args: Mapping[str, str], name: str = "emotion") -> str | None:
    label = args.get(name, "").strip()
    if not label:
        return None
    if label not in EMOTIONS:
        raise FilterError(f"{name}: must be one of {', '.join(EMOTIONS)}")
    return label


def parse_result_filter(args: Mapping[str, str], now: float | None = None) -> ResultFilter:
    tz_offset = parse_tz_offset(args)
    since = args.get("since", "").strip()
    until = args.get("until", "").strip()
    chosen_range = args.get("range", "").strip()
    if chosen_range and chosen_range not in RANGES_S:
        raise FilterError(f"range: must be one of {', '.join(RANGES_S)}")
    since_s = parse_time(since, tz_offset, "since") if since else None
    until_s = parse_time(until, tz_offset, "until") if until else None
    if chosen_range:
        since_s = (now or time.time()) - RANGES_S[chosen_range]
    if since_s is not None and until_s is not None and until_s <= since_s:
        raise FilterError("until must be after since")
    return ResultFilter(device_id=parse_device(args), label=parse_label(args), since=since_s, until=until_s)


def parse_int(args: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    text = args.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise FilterError(f"{name}: must be a whole number") from None
    if not low <= value <= high:
        raise FilterError(f"{name}: must be between {low} and {high}")
    return value


def parse_page(args: Mapping[str, str]) -> Page:
    """``page`` (1-based, pages) or ``limit``/``offset`` (API)."""
    limit = parse_int(args, "limit", PAGE_SIZE, 1, MAX_PAGE_SIZE)
    if "offset" in args:
        return Page(limit, parse_int(args, "offset", 0, 0, 10**9))
    page = parse_int(args, "page", 1, 1, 10**7)
    return Page(limit, (page - 1) * limit)
