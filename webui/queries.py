"""The dashboard's query shapes: history filters and chart bucket sizes (the SQL is :mod:`cloud.store`'s)."""

from __future__ import annotations

from dataclasses import dataclass


# "Nice" chart bucket sizes, in seconds: 1 s … 1 day.
BUCKET_SIZES_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 2 * 3600, 6 * 3600, 12 * 3600, 24 * 3600)
TARGET_BUCKETS = 60


@dataclass(frozen=True)
class ResultFilter:
    """The history filters; None means "any"."""

    device_id: str | None = None
    label: str | None = None
    since: float | None = None
    until: float | None = None

    def as_store_arguments(self) -> dict:
        return {"device_id": self.device_id, "label": self.label, "since": self.since, "until": self.until}


def choose_bucket(span_s: float) -> int:
    """The smallest nice bucket that keeps a chart at or under ~60 points."""
    for size in BUCKET_SIZES_S:
        if span_s / size <= TARGET_BUCKETS:
            return size
    return BUCKET_SIZES_S[-1]
