"""A TCP proxy in front of a real server that can go silent: it keeps every connection open and
accepts new ones, but stops passing bytes (no RST, no FIN), like a partitioned network or a
stuck load balancer. Bytes held while silent are passed on once it passes again."""

from __future__ import annotations

import socket
import threading
from typing import Self


class BlackholeProxy:
    """127.0.0.1:<port> -> target; `silence()` stops passing bytes, `resume()` passes again."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._passing = threading.Event()
        self._passing.set()
        self._closed = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self.accepted = 0

    def __enter__(self) -> Self:
        threading.Thread(target=self._accept, name="blackhole-accept", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def silence(self) -> None:
        """Stop passing bytes in both directions; connections stay open, new ones are accepted."""
        self._passing.clear()

    def resume(self) -> None:
        self._passing.set()

    def close(self) -> None:
        self._closed = True
        self._passing.set()  # release the pumps, which then see the closed sockets
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.close()
                except OSError:
                    pass

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        self._passing.wait()  # silent: the client's connect succeeds, then nothing comes back
        try:
            upstream = socket.create_connection(self.target)
        except OSError:
            client.close()
            return
        with self._lock:
            self._sockets += [client, upstream]
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self._passing.wait()
                if self._closed:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
