"""A TCP forwarder on a loopback port, for tests that take a server away and bring it back: `stop()`
closes the port and every connection through it (the host is gone: connects are refused, open
connections end), `start()` listens on the same port again."""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.conftest import free_port


class TcpProxy:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = free_port()
        self._server: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> TcpProxy:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            _close(self._server)  # wakes accept() with an error
            self._server = None
        with self._lock:
            for sock in self._open:
                _close(sock)
            self._open.clear()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(source, sink), daemon=True).start()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        _close(sink)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # not connected (any more)
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class CuttingProxy:
    """A loopback forwarder that cuts its first connection once `cut_after` bytes came back through
    it (in the middle of a download: the client sees a body shorter than its Content-Length), and
    records what clients sent (`sent_text()`). Every later connection passes untouched."""

    def __init__(self, target_port: int, cut_after: int) -> None:
        self.cut_after, self.sent, self.cuts = cut_after, [], 0
        self.port = free_port()
        self.server = socket.create_server(("127.0.0.1", self.port))
        self.target = target_port
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def sent_text(self) -> bytes:
        """Everything clients sent, lower-cased (header names are case-insensitive)."""
        return b"".join(self.sent).lower()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._up, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client), daemon=True).start()

    def _up(self, client: socket.socket, upstream: socket.socket) -> None:
        try:
            while data := client.recv(65536):
                self.sent.append(data)
                upstream.sendall(data)
        except OSError:
            pass

    def _down(self, upstream: socket.socket, client: socket.socket) -> None:
        passed = 0
        try:
            while data := upstream.recv(4096):
                if self.cuts == 0 and passed + len(data) > self.cut_after:
                    self.cuts += 1
                    client.sendall(data[: self.cut_after - passed])
                    break
                passed += len(data)
                client.sendall(data)
        except OSError:
            pass
        for sock in (client, upstream):
            _close(sock)  # a shutdown wakes the other direction's recv

    def close(self) -> None:
        _close(self.server)
