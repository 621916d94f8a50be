"""A time limit on a whole exchange with a peer over the network (an SMTP session, a webhook
POST), whatever the library that speaks the protocol.

A socket timeout bounds each read and write, not the exchange: a peer that answers a byte at a
time, or an SMTP server that keeps sending continuation lines (a tarpit), stays under it with
every read and holds the exchange for hours. The outbox claims a delivery for a few minutes
(``mail.worker.CLAIM_LEASE``); past that another worker sends the message again. ``Deadline``
shuts down the connections it watches when its time is up, so the read or write under way fails
at once (an OSError) and the delivery is retried later like any other failure.

Only the name lookup comes before there is a connection to watch: it is bounded by the
resolver's own timeouts (resolv.conf), not by this.
"""

from __future__ import annotations

import http.client
import socket
import threading
import urllib.request
from collections.abc import Callable
from contextlib import suppress
from types import TracebackType
from typing import Any

# The longest any delivery to the outside may take, connection and TLS included. The outbox's
# claim on a message (5 minutes, renewed past half) outlasts it by far.
EXCHANGE_SECONDS = 60.0


class Deadline:
    """Within ``with Deadline(seconds) as deadline:``, connections opened through
    ``deadline.create_connection`` are shut down ``seconds`` after the block was entered."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._lock = threading.Lock()
        self._watched: list[socket.socket] = []
        self._expired = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    @property
    def expired(self) -> bool:
        """Whether the time ran out (and the connections were shut down)."""
        return self._expired

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self._timer.cancel()
        with self._lock:
            for watched in self._watched:
                watched.close()
            self._watched.clear()

    def create_connection(
        self,
        address: tuple[str, int],
        timeout: float | None,
        source_address: Any = None,
    ) -> socket.socket:
        """``socket.create_connection``, watched (its signature, as http.client and smtplib
        call it)."""
        sock = socket.create_connection(address, timeout, source_address)
        with self._lock:
            # A duplicate of the descriptor: shutting it down ends the connection for every
            # holder, also after a library wrapped the socket in TLS (which detaches the
            # original object).
            watched = sock.dup()
            self._watched.append(watched)
            if self._expired:
                _shut(watched)
        return sock

    def url_handlers(self) -> list[urllib.request.BaseHandler]:
        """urllib handlers whose HTTP and HTTPS connections this deadline watches, for
        ``urllib.request.build_opener`` (they replace its defaults)."""
        return [_WatchedHttpHandler(self), _WatchedHttpsHandler(self)]

    def _expire(self) -> None:
        with self._lock:
            self._expired = True
            for watched in self._watched:
                _shut(watched)


def _shut(sock: socket.socket) -> None:
    with suppress(OSError):  # already closed by the peer
        sock.shutdown(socket.SHUT_RDWR)


def _watched_connections(
    deadline: Deadline, http_class: Callable[..., http.client.HTTPConnection]
) -> Callable[..., http.client.HTTPConnection]:
    def make(host: str, **kwargs: Any) -> http.client.HTTPConnection:
        connection = http_class(host, **kwargs)
        # The hook http.client opens its socket through (HTTPS wraps it afterwards).
        connection._create_connection = deadline.create_connection  # type: ignore[attr-defined]
        return connection

    return make


class _WatchedHttpHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def do_open(self, http_class: Any, req: urllib.request.Request, **kwargs: Any) -> Any:
        return super().do_open(_watched_connections(self._deadline, http_class), req, **kwargs)


class _WatchedHttpsHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def do_open(self, http_class: Any, req: urllib.request.Request, **kwargs: Any) -> Any:
        return super().do_open(_watched_connections(self._deadline, http_class), req, **kwargs)
