"""Peers that are slow on purpose, for tests of time limits on network exchanges.

    with Trickler(b"220-") as peer:          # an SMTP tarpit: a greeting that never ends
        send_to(f"smtp://127.0.0.1:{peer.port}")

``Trickler`` accepts every connection, sends ``opening`` and then one byte every ``every``
seconds for as long as the connection lasts, and never reads: each read of a client gets
something well within any socket timeout, and the exchange never ends on its own.
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType

HOST = "127.0.0.1"


class Trickler:
    def __init__(self, opening: bytes, *, byte: bytes = b"x", every: float = 0.1) -> None:
        self._opening = opening
        self._byte = byte
        self._every = every
        self._stop = threading.Event()
        self._listener = socket.create_server((HOST, 0))
        self.port: int = self._listener.getsockname()[1]
        self.connections = 0
        self.closed_by_client = threading.Event()  # a client hung up on a trickle

    def __enter__(self) -> Trickler:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _address = self._listener.accept()
            except OSError:  # closed
                return
            self.connections += 1
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.sendall(self._opening)
                while not self._stop.wait(self._every):
                    conn.sendall(self._byte)
            except OSError:  # the client hung up
                self.closed_by_client.set()
