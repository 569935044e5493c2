"""Run a `TransportServer` on its own event-loop thread (embedding, notebooks, tests, benchmarks)."""

from __future__ import annotations

import asyncio
import threading

from protocol.transport.server import TransportServer


class BackgroundServer:
    """Context manager: starts the server on 127.0.0.1 (ephemeral port by default), stops it on exit."""

    def __init__(self, server: TransportServer, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = server
        self._host, self._port = host, port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="transport-server", daemon=True)
        self.address: tuple[str, int] | None = None

    def __enter__(self) -> "BackgroundServer":
        self._thread.start()
        self.address = self._call(self.server.start(self._host, self._port))
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Close the server (connections, in-flight work, files) and end the loop thread."""
        if not self._thread.is_alive():
            return
        self._call(self.server.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def _call(self, coroutine):  # noqa: ANN001, ANN202 - awaits any coroutine on the server's loop
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()
