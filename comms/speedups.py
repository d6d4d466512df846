"""Opt-in speed-ups of paho-mqtt's receive path, for a process that receives thousands of messages a second.

This module and :mod:`comms.mqtt` are the only ones that import paho; this one
is also the only one that *changes* paho, process-wide, and only when
:func:`enable` is called. The cloud ingest calls it at start-up
(``cloud/cli.py``); nothing else does, so importing ``comms`` or the edge
leaves paho as shipped. Two speed-ups:

* **shared property tables.** paho 2.x builds two 27-entry lookup tables in
  every ``Properties`` instance, and ``clear()`` probes all 27 names; every
  MQTT 5 message received creates and clears one. That was a third of the
  receive path. The tables are constants that paho never modifies, so every
  instance can share one copy; ``clear()`` then only drops the properties
  actually set.
* **batched PUBACKs.** paho's ``ack()`` queues each PUBACK as its own packet,
  written as its own TLS record with its own system call (and wakes the
  network thread each time): a fifth of the receive path. :func:`queue_pubacks`
  queues a batch's PUBACKs, byte for byte what ``ack()`` sends, as one buffer
  through paho's private packet queue, the path ``ack()`` itself takes.

Both lean on paho internals, so :func:`enable` refuses, with a WARNING saying
why, on a paho version outside :data:`TESTED_PAHO` or with another layout;
the transport then acknowledges message by message with ``ack()``, which is
slower and otherwise identical.
"""

from __future__ import annotations

import logging
import struct
import threading

import paho.mqtt as paho_mqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

log = logging.getLogger(__name__)

# The paho versions these were tested with (2.1.0 and 2.2.0, by tests/test_comms_speedups.py and the
# broker tests): from the first up to, not including, the second.
TESTED_PAHO = ((2, 1), (2, 3))
_TABLES = frozenset({"types", "names", "properties"})
_OWN_FIELDS = frozenset({"packetType"} | _TABLES)
# PUBACK: fixed header 0x40, remaining length 2, packet id (MQTT 5 lets a success omit the reason code).
_PUBACK = struct.Struct("!BBH")
_PUBACK_HEADER = 0x40

_lock = threading.Lock()
_paho_own = {"__init__": Properties.__init__, "clear": Properties.clear}
_enabled = False


def enable() -> bool:
    """Apply both speed-ups, process-wide; returns whether they are on. Safe to call again."""
    global _enabled
    with _lock:
        if _enabled:
            return True
        refusal = _refusal()
        if refusal is not None:
            log.warning("paho-mqtt speed-ups not applied: %s; acknowledging message by message", refusal)
            return False
        _share_property_tables()
        _enabled = True
    log.info("paho-mqtt %s speed-ups on: shared property tables, batched PUBACKs", paho_mqtt.__version__)
    return True


def disable() -> None:
    """Give paho back its own ``Properties`` and per-message acks (for tests)."""
    global _enabled
    with _lock:
        Properties.__init__ = _paho_own["__init__"]
        Properties.clear = _paho_own["clear"]
        _enabled = False


def enabled() -> bool:
    return _enabled


def queue_pubacks(client: paho.Client, mids: list[int]) -> bool:
    """Queue the PUBACKs of ``mids`` on ``client`` as one write; False (nothing queued) when disabled."""
    if not _enabled:
        return False
    pubacks = b"".join(_PUBACK.pack(_PUBACK_HEADER, 2, mid) for mid in mids)
    client._packet_queue(_PUBACK_HEADER, pubacks, 0, 1)  # (command, bytes, mid, qos) as paho's own acks
    return True


def paho_version() -> tuple[int, ...] | None:
    """paho's version as numbers, e.g. (2, 2, 0); None if it does not read as one."""
    try:
        return tuple(int(part) for part in str(paho_mqtt.__version__).split(".")[:3])
    except (AttributeError, ValueError):
        return None


def _refusal() -> str | None:
    """Why the speed-ups must not apply to the paho installed, or None."""
    version = paho_version()
    low, high = TESTED_PAHO
    if version is None or not low <= version[:2] < high:
        tested = f"{'.'.join(map(str, low))} to below {'.'.join(map(str, high))}"
        return f"paho-mqtt {getattr(paho_mqtt, '__version__', '?')} is outside the versions they were tested with ({tested})"
    layout = set(vars(_paho_properties(PacketTypes.PUBLISH)))
    if layout != _OWN_FIELDS:
        return f"paho's Properties holds {sorted(layout)}, not the {sorted(_OWN_FIELDS)} they were written for"
    if (Properties.__init__, Properties.clear) != (_paho_own["__init__"], _paho_own["clear"]):
        return "paho's Properties was already changed by other code"
    if not callable(getattr(paho.Client, "_packet_queue", None)):
        return "paho's Client has no _packet_queue"
    return None


def _paho_properties(packet_type: int) -> Properties:
    """A ``Properties`` built by paho's own code, whatever is applied now."""
    properties = object.__new__(Properties)
    _paho_own["__init__"](properties, packet_type)
    return properties


def _share_property_tables() -> None:
    tables = {name: value for name, value in vars(_paho_properties(PacketTypes.PUBLISH)).items() if name in _TABLES}

    def __init__(self, packetType):
        object.__setattr__(self, "packetType", packetType)
        self.__dict__.update(tables)

    def clear(self):
        for name in [name for name in vars(self) if name not in _OWN_FIELDS]:
            delattr(self, name)

    Properties.__init__ = __init__
    Properties.clear = clear
