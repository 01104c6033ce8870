"""The blocking client's transport: keep-alive HTTP/1.1 connections over :mod:`http.client`."""

from __future__ import annotations

import builtins
import contextlib
import http.client
import socket
import ssl
import threading

from ingestlayer.sdk._transport import Endpoint

# What a request through _SyncHTTP raises when the server cannot be reached or its answer is not
# HTTP (the client retries those); a kept-alive connection the server closed while idle raises one
# of _STALE_CONNECTION (post() tries once more on a fresh connection).
_NETWORK_ERRORS = (OSError, http.client.HTTPException)
_STALE_CONNECTION = (http.client.RemoteDisconnected, builtins.ConnectionResetError, BrokenPipeError)


class _SyncHTTP:
    """Keep-alive HTTP/1.1 connections over :mod:`http.client`, one per calling thread."""

    def __init__(self, endpoint: Endpoint, timeout: float) -> None:
        self._endpoint = endpoint
        self._timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        # Each open connection and the thread it belongs to (only that thread uses it).
        self._open: dict[http.client.HTTPConnection, threading.Thread] = {}
        self._ssl = ssl.create_default_context() if endpoint.scheme == "https" else None

    def _connect(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if self._ssl is not None:
            conn = http.client.HTTPSConnection(
                self._endpoint.host, self._endpoint.port, timeout=self._timeout, context=self._ssl
            )
        else:
            conn = http.client.HTTPConnection(self._endpoint.host, self._endpoint.port, timeout=self._timeout)
        self._local.conn = conn
        with self._lock:
            # A thread that ended leaves its keep-alive connection behind, and nothing else would
            # close it before close(): with a thread per request (ThreadingHTTPServer, some WSGI
            # servers, to_thread callers) that was one socket leaked per request.
            orphans = [c for c, owner in self._open.items() if not owner.is_alive()]
            for orphan in orphans:
                del self._open[orphan]
            self._open[conn] = threading.current_thread()
        for orphan in orphans:
            orphan.close()
        return conn

    def _drop(self, conn: http.client.HTTPConnection) -> None:
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None
        with self._lock:
            self._open.pop(conn, None)
        conn.close()

    def _once(
        self,
        conn: http.client.HTTPConnection,
        path: str,
        body: bytes,
        headers: dict[str, str],
        timeout: float,
    ) -> tuple[int, dict[str, str], bytes]:
        conn.timeout = timeout  # for connect()
        if conn.sock is not None:  # a kept-alive connection
            conn.sock.settimeout(timeout)
        # The socket timeout bounds each read, not the request: a server trickling a byte now and
        # then held a call for minutes. At the deadline the socket is shut down, which ends the
        # read under way in this thread.
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            sock = conn.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

        timer = threading.Timer(timeout, expire)
        timer.daemon = True
        timer.start()
        try:
            conn.request("POST", self._endpoint.prefix + path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except BaseException as exc:
            self._drop(conn)
            if expired.is_set():
                raise TimeoutError(f"no complete answer within {timeout:g}s") from exc
            raise
        finally:
            timer.cancel()
        if expired.is_set():  # a close-delimited body ends "normally" at the shutdown
            self._drop(conn)
            raise TimeoutError(f"no complete answer within {timeout:g}s")
        if resp.will_close:
            self._drop(conn)
        return resp.status, dict(resp.getheaders()), data

    def post(
        self, path: str, body: bytes, headers: dict[str, str], timeout: float | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """One request; ``timeout`` (default: the client's) bounds it whole, from connecting to
        the last byte of the answer."""
        timeout = self._timeout if timeout is None else timeout
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            return self._once(self._connect(), path, body, headers, timeout)
        try:
            return self._once(conn, path, body, headers, timeout)
        except _STALE_CONNECTION:
            # The server closed the idle keep-alive connection: once more on a fresh one, at once.
            # (Re-sending is safe: the event's idempotency key travels with it.)
            pass
        return self._once(self._connect(), path, body, headers, timeout)

    def close(self) -> None:
        with self._lock:
            conns, self._open = list(self._open), {}
        for conn in conns:
            conn.close()
