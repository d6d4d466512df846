"""Remote commands: received on ``…/<device>/cmd``, executed between frames, answered on ``…/cmd/reply``.

The MQTT handler only parses and enqueues (it runs on paho's network
thread); the agent loop drains the queue between frames, so a command never
races the pipeline. Every command gets exactly one reply; a malformed or
disallowed one gets ``ok: false`` with the reason, and the agent carries on.
"""

from __future__ import annotations

import json
import logging
import queue
from dataclasses import dataclass
from typing import Any, Callable

from comms.transport import Message
from contract.messages import Command, Reply
from contract.validation import ContractError, parse_command

log = logging.getLogger(__name__)

MAX_PENDING = 100


@dataclass(frozen=True)
class Incoming:
    command: Command | None
    error: str | None = None
    raw_id: str = ""


class CommandError(Exception):
    """A valid command that cannot be carried out now (e.g. no model to roll back to)."""


def _salvage_id(payload: bytes) -> str:
    """Best effort: echo the sender's id even in a reply to a malformed command."""
    try:
        value = json.loads(payload).get("id", "")
    except (ValueError, AttributeError, RecursionError):
        return ""
    return value[:64] if isinstance(value, str) else ""


class CommandInbox:
    def __init__(self, allowed: list[str] | tuple[str, ...]) -> None:
        self.allowed = frozenset(allowed)
        self._queue: queue.Queue[Incoming] = queue.Queue(MAX_PENDING)

    def on_message(self, message: Message) -> None:
        """paho thread: parse, check, enqueue. Never raises."""
        try:
            command = parse_command(message.payload)
        except ContractError as error:
            incoming = Incoming(None, f"invalid command: {error.reason}", _salvage_id(message.payload))
        else:
            if command.command in self.allowed:
                incoming = Incoming(command, raw_id=command.id)
            else:
                incoming = Incoming(None, f"command {command.command!r} is not allowed on this device", command.id)
        try:
            self._queue.put_nowait(incoming)
        except queue.Full:
            log.warning("command queue full; dropped a command (id %r)", incoming.raw_id)

    def drain(self) -> list[Incoming]:
        items = []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                return items


Executor = Callable[[Command], dict[str, Any] | None]


def execute(incoming: Incoming, device_id: str, executors: dict[str, Executor]) -> Reply:
    """Run one command and build its reply."""
    if incoming.command is None:
        return Reply(id=incoming.raw_id, device_id=device_id, ok=False, error=incoming.error)
    command = incoming.command
    try:
        result = executors[command.command](command)
    except CommandError as error:
        return Reply(id=command.id, device_id=device_id, ok=False, error=str(error)[:1024])
    except Exception as error:  # a failing command must not stop the agent
        log.exception("command %s failed", command.command)
        return Reply(id=command.id, device_id=device_id, ok=False, error=f"internal error: {error}"[:1024])
    return Reply(id=command.id, device_id=device_id, ok=True, result=result)
