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
from contract.messages import JSON_CONTENT_TYPE, Command, Reply
from contract.validation import ContractError, parse_command
from edge.model import ModelUnavailable

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


class CommandHandlers:
    """What each command does: changes to the loop's control, the model slot, and answers about state."""

    def __init__(self, control, model, updates, outbox) -> None:
        self.control, self.model, self.updates, self.outbox = control, model, updates, outbox

    def executors(self) -> dict[str, Executor]:
        return {"pause": self.pause, "resume": self.resume, "set_fps": self.set_fps, "snapshot": self.snapshot,
                "rollback_model": self.rollback_model, "ping": self.ping}

    def pause(self, command: Command) -> dict:
        self.control.paused = True
        return {"paused": True}

    def resume(self, command: Command) -> dict:
        self.control.paused = False
        return {"paused": False}

    def set_fps(self, command: Command) -> dict:
        self.control.set_fps(float(command.args["fps"]))
        return {"fps": self.control.max_fps}

    def snapshot(self, command: Command) -> dict:
        self.control.snapshot_requested = True
        return {"snapshot": "next frame"}

    def rollback_model(self, command: Command) -> dict:
        rolled_back = self.model.current
        try:
            restored = self.model.rollback()
        except ModelUnavailable as error:
            raise CommandError(str(error)) from None
        self.updates.block(rolled_back)  # or the retained release would install it again
        self.updates.remember(self.model)
        return {"model_version": restored.version}

    def ping(self, command: Command) -> dict:
        return {"model_version": self.model.version, "paused": self.control.paused, "outbox_depth": self.outbox.depth()}


class CommandResponder:
    """Between frames: run what the inbox holds and publish each reply (QoS 1) on ``…/cmd/reply``."""

    def __init__(self, inbox: CommandInbox, handlers: CommandHandlers, transport, reply_topic: str, device_id: str) -> None:
        self.inbox, self.handlers, self.transport = inbox, handlers, transport
        self.reply_topic, self.device_id = reply_topic, device_id

    def handle_pending(self) -> list[Reply]:
        replies = []
        for incoming in self.inbox.drain():
            reply = execute(incoming, self.device_id, self.handlers.executors())
            self.transport.publish(self.reply_topic, reply.to_json(), qos=1, content_type=JSON_CONTENT_TYPE)
            log.info("command %r → %s", incoming.raw_id, "ok" if reply.ok else reply.error)
            replies.append(reply)
        return replies
