"""A TCP relay on loopback in front of a real server that a test can stall: the upstream
that is slow to answer. Stalled, it stops reading from either side (so the kernel's
buffers fill and the peer's writes block, as with a server that hangs), and it can
accept new connections without relaying a byte of them (a dial that never completes
its startup)."""

from __future__ import annotations

import contextlib
import socket
import threading


class StallProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        self._flowing = threading.Event()  # cleared: existing connections stall
        self._flowing.set()
        self.stall_new = False  # new connections are accepted and never relayed
        self.accepted = 0  # connections accepted so far
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, name="stall-proxy", daemon=True).start()

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._closed = True
        self._flowing.set()
        for sock in [self._listener, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> StallProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._sockets.append(client)
            self.accepted += 1
            if self.stall_new:
                continue  # held open, never read, never answered
            server = socket.create_connection(self._target)
            self._sockets.append(server)
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                self._flowing.wait()
                data = src.recv(65536)
                if not data or self._closed:
                    break
                dst.sendall(data)
        for sock in (src, dst):  # either side gone: the other is closed too
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
