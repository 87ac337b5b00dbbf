"""Fault injection for tests: a loopback TCP proxy that can stop answering.

``StallingProxy`` forwards a loopback port to a server the test started (moto's S3, say).
``pause()`` makes it an endpoint that accepts connections and never answers: it still
accepts, but forwards no byte either way, so a client waits until its own timeouts fire.
``resume()`` forwards again. A connection that had bytes held back is closed at resume
(its client sees a reset), so nothing sent during the pause reaches the server late;
``resume(deliver_held=True)`` delivers them instead, as a server that wakes up would.
Use it as a context manager, so its sockets and threads end with the test::

    with StallingProxy("http://127.0.0.1:5000") as proxy:
        client = make_client(endpoint=proxy.url)
        proxy.pause()  # calls now hang at the network level
        proxy.resume()  # and succeed again

The ``stalling_s3`` fixture (tests/conftest.py) puts one in front of moto's server.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["StallingProxy", "StallingS3"]

CHUNK = 64 * 1024


class StallingProxy:
    """A TCP proxy from ``127.0.0.1:<port>`` to ``target`` (``http://host:port``)."""

    def __init__(self, target: str):
        parts = urlsplit(target)
        self.target = (parts.hostname, parts.port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._forwarding = threading.Event()
        self._forwarding.set()
        self._deliver_held = False
        self._stopped = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]

    @property
    def paused(self) -> bool:
        return not self._forwarding.is_set()

    def pause(self) -> None:
        """Accept connections but forward nothing, on open connections and new ones."""
        self._forwarding.clear()

    def resume(self, deliver_held: bool = False) -> None:
        """Forward again. Connections holding bytes from the pause are closed, unless
        ``deliver_held``: then those bytes go on, late."""
        self._deliver_held = deliver_held
        self._forwarding.set()

    def __enter__(self) -> StallingProxy:
        self._threads[0].start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Close the listener and every connection; the threads end with them."""
        self._stopped.set()
        self._forwarding.set()
        self._close(self._listener)
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            self._close(sock)
        for thread in self._threads:
            thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:  # the listener was closed by stop()
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                self._close(client)
                continue
            with self._lock:
                self._sockets.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=self._pump, args=(source, sink), daemon=True)
                self._threads.append(thread)
                thread.start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        """Copy bytes from ``source`` to ``sink``, holding each chunk while paused."""
        try:
            while True:
                data = source.recv(CHUNK)
                if not data:
                    break
                if not self._forwarding.is_set():
                    self._forwarding.wait()  # stop() sets it too
                    if self._stopped.is_set() or not self._deliver_held:
                        break
                sink.sendall(data)
        except OSError:
            pass  # either side went away
        finally:
            self._close(source)
            self._close(sink)

    def _close(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)
        with contextlib.suppress(OSError):  # already shut down by the other pump
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


@dataclass
class StallingS3:
    """A bucket on moto's server reached through ``proxy`` (fixture ``stalling_s3``).

    ``root`` is the storage root (``s3://<bucket>/prefix``, also set as ``TOOLKIT_ROOT``);
    ``env`` the AWS variables naming the proxy as endpoint, set in this process and ready
    for ``helpers.toolkit_env(root, **env)``; ``endpoint`` the proxy's URL, which error
    messages name.
    """

    root: str
    env: dict[str, str]
    proxy: StallingProxy

    @property
    def endpoint(self) -> str:
        return self.proxy.url

    def pause(self) -> None:
        self.proxy.pause()

    def resume(self, deliver_held: bool = False) -> None:
        self.proxy.resume(deliver_held)
