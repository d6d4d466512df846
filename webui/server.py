"""The production WSGI server for the dashboard: waitress, one process, a thread per request.

Why waitress: the live page holds a Server-Sent-Event response open for as
long as a tab is open, and the live state lives in this one process (one
broker subscription, fanned out in memory). Waitress runs that as plain
threads with no fork and no worker timeouts to fight: each open stream
occupies one thread of a pool sized ``max_streams + request_threads``, so
pages and API calls always have threads left (the hub refuses streams past
``max_streams`` with 503). Its I/O loop buffers what a thread writes and
sends it at once (waitress 3 flushes each write, so events are not
delayed); ``outbuf_high_watermark`` bounds what a slow client can pile up,
after which its stream waits and its mailbox skips frames. It is pure
Python (nothing to compile on a Jetson-class box) and runs in a thread
inside the tests exactly as in production. Gunicorn's gthread worker would
also do, but it forks: several workers would each need their own broker
subscription and a browser's stream and its commands could land in
different processes.
"""

from __future__ import annotations

import logging
import threading

from flask import Flask
from waitress import wasyncore
from waitress.server import create_server

from webui.config import ServerSettings
from webui.services import Services

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 5.0


class WebServer:
    """Waitress serving ``app`` on a background thread; :meth:`stop` ends streams first, then the server."""

    def __init__(self, app: Flask, settings: ServerSettings, *, host: str | None = None, port: int | None = None) -> None:
        self.app = app
        self.services: Services = app.extensions["emq"]
        proxy_options = {}
        if settings.trusted_proxy:
            proxy_options = {
                "trusted_proxy": settings.trusted_proxy,
                "trusted_proxy_headers": {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"},
                "clear_untrusted_proxy_headers": True,
            }
        self._server = create_server(
            app,
            host=host if host is not None else settings.host,
            port=port if port is not None else settings.port,
            threads=settings.threads,
            connection_limit=settings.connection_limit,
            outbuf_high_watermark=settings.client_buffer_bytes,
            ident="emq-webui",
            expose_tracebacks=False,
            asyncore_use_poll=True,  # select() breaks past file descriptor 1024
            **proxy_options,
        )
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def host(self) -> str:
        return str(self._server.effective_host)

    @property
    def port(self) -> int:
        return int(self._server.effective_port)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> "WebServer":
        self._thread = threading.Thread(target=self._serve, name="waitress", daemon=True)
        self._thread.start()
        log.info("serving on %s (%d threads)", self.url, self._server.adj.threads)
        return self

    def _serve(self) -> None:
        """Waitress's I/O loop, one poll at a time so that :meth:`stop` can end it from another thread."""
        adjustments = self._server.adj
        while not self._stopping.is_set():
            wasyncore.loop(timeout=adjustments.asyncore_loop_timeout, use_poll=True, map=self._server._map, count=1)
        wasyncore.close_all(self._server._map)  # on this thread: no socket closed under a running poll

    def stop(self) -> None:
        """End live streams (they hold threads), let requests finish, stop the I/O loop, then the services."""
        self.services.hub.close()
        self._server.task_dispatcher.shutdown(timeout=SHUTDOWN_TIMEOUT_S)
        self._stopping.set()
        try:
            self._server.pull_trigger()  # wake the poll now rather than after its timeout
        except OSError:
            # The loop saw _stopping at the end of a poll and closed every socket, the trigger too,
            # before this line ran: there is nothing left to wake.
            pass
        if self._thread is not None:
            self._thread.join(SHUTDOWN_TIMEOUT_S)
        self.services.stop()
