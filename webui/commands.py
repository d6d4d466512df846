"""Edge commands from the dashboard: build, validate, publish, and match replies to them.

A command is a :class:`contract.messages.Command` published with QoS 1 on
``<prefix>/devices/<id>/cmd`` (the ``webui`` identity may publish only
there). The device answers on ``…/cmd/reply`` with the same ``id``; the live
hub hands such replies to :meth:`CommandLog.record_reply`, and browsers see
them on their stream.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import ValidationError

from contract.messages import JSON_CONTENT_TYPE, Command, Reply
from contract.topics import Topics, check_device_id


class CommandRejected(ValueError):
    """The command is not valid (unknown name, bad arguments, bad device id)."""


class CommandNotSent(RuntimeError):
    """The broker did not accept the command (not connected, or refused)."""


class Publisher(Protocol):
    def publish(self, topic: str, payload: bytes | str, *, qos: int = 0, content_type: str | None = None, **kwargs): ...


@dataclass
class CommandRecord:
    id: str
    device_id: str
    command: str
    args: dict[str, Any]
    user: str
    sent_at: float
    reply: dict[str, Any] | None = None
    replied_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "device": self.device_id, "command": self.command, "args": self.args, "user": self.user,
            "sent_at": self.sent_at, "reply": self.reply, "replied_at": self.replied_at,
        }


@dataclass
class CommandLog:
    """The most recent commands and their replies (bounded)."""

    keep: int
    _records: OrderedDict[str, CommandRecord] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, record: CommandRecord) -> None:
        with self._lock:
            self._records[record.id] = record
            while len(self._records) > self.keep:
                self._records.popitem(last=False)

    def get(self, command_id: str) -> CommandRecord | None:
        with self._lock:
            return self._records.get(command_id)

    def record_reply(self, reply: Reply, at: float) -> CommandRecord | None:
        """Attach a device's reply to the command it answers; None if we did not send it."""
        with self._lock:
            record = self._records.get(reply.id)
            if record is None or record.device_id != reply.device_id:
                return None
            record.reply = {"ok": reply.ok, "error": reply.error, "result": reply.result}
            record.replied_at = at
            return record


def build_command(name: str, args: dict[str, Any] | None) -> Command:
    """A contract-valid command with a fresh id, or :class:`CommandRejected` saying why not."""
    try:
        return Command(id=f"ui-{uuid.uuid4().hex[:16]}", command=name, args=args or {})
    except ValidationError as error:
        reasons = "; ".join(item["msg"] for item in error.errors(include_url=False, include_input=False)[:3])
        raise CommandRejected(reasons) from None


class CommandSender:
    """Publishes commands for a user and remembers them until their reply comes."""

    def __init__(self, publisher: Publisher | None, topics: Topics, log: CommandLog, ack_timeout_s: float) -> None:
        self.publisher = publisher
        self.topics = topics
        self.log = log
        self.ack_timeout_s = ack_timeout_s

    def send(self, device_id: str, name: str, args: dict[str, Any] | None, user: str) -> CommandRecord:
        try:
            check_device_id(device_id)
        except ValueError as error:
            raise CommandRejected(str(error)) from None
        command = build_command(name, args)
        if self.publisher is None or not getattr(self.publisher, "connected", True):
            # Refuse rather than let paho queue it: a pause delivered minutes later surprises everyone.
            raise CommandNotSent("the dashboard is not connected to the broker; try again when it is")
        record = CommandRecord(command.id, device_id, command.command, dict(command.args), user, time.time())
        self.log.add(record)  # before publishing: a fast reply must find it
        delivery = self.publisher.publish(self.topics.command(device_id), command.to_json(), qos=1, content_type=JSON_CONTENT_TYPE)
        if not delivery.wait(self.ack_timeout_s) or not delivery.acknowledged:
            raise CommandNotSent(delivery.reason or f"the broker did not acknowledge the command within {self.ack_timeout_s:g} s")
        return record
