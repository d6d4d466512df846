"""The Server-Sent-Event stream one browser tab holds open.

It sends the hub's snapshot, then whatever its mailbox collects, batched into
one write per wake-up. Idle streams get a ``tick`` event every
``keepalive_s`` (the server's clock and hub counters), which also tells a
proxy the connection is alive and lets the server notice a vanished client
(the write fails). Streams end after ``max_age_s``; the browser's
EventSource reconnects by itself, and so re-checks its session.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from webui.live import LiveHub, encode_event
from webui.mailbox import Mailbox

RECONNECT_DELAY_MS = 2000


def hello_event(hub: LiveHub, settings: dict[str, Any]) -> bytes:
    """The first event: the server's clock, the stream's settings and the hub counters (as in ``tick``).

    The counters and the settings share one flat object, so their names must
    differ: the hub's ``devices`` (a count) once overwrote the settings' list of
    device ids and the page failed on every connect.
    """
    counters = hub.counters()
    clashing = sorted(settings.keys() & (counters.keys() | {"now"}))
    if clashing:
        raise ValueError(f"hello settings would overwrite hub counters: {', '.join(clashing)}")
    return encode_event("hello", {"now": int(time.time() * 1000), **settings, **counters})


def tick_event(hub: LiveHub) -> bytes:
    return encode_event("tick", {"now": int(time.time() * 1000), **hub.counters()})


def live_events(
    hub: LiveHub,
    mailbox: Mailbox,
    *,
    hello: bytes,
    keepalive_s: float,
    max_age_s: float,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[bytes]:
    """Yield SSE bytes until the stream is old, the hub closes, or the client goes (GeneratorExit)."""
    deadline = clock() + max_age_s
    try:
        yield f"retry: {RECONNECT_DELAY_MS}\n\n".encode() + hello
        while clock() < deadline:
            events = mailbox.take(timeout=min(keepalive_s, max(deadline - clock(), 0.0)))
            if mailbox.closed:
                return
            yield b"".join(events) if events else tick_event(hub)
    finally:
        hub.close_stream(mailbox)
