"""`clbench load`'s client: a complete 200 counts, anything else (another status, no Content-Length, a closed or
cut connection) fails, answers split over many packets and pipelined leftovers are read exactly."""

from __future__ import annotations

import itertools
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from clbench.load import Connection, Driver

OK = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{"a": true}'


@pytest.fixture
def scripted() -> Iterator[Callable[[Callable[[socket.socket], None]], tuple[str, int]]]:
    """A loopback server that runs ``script`` on each connection it accepts."""
    listeners: list[socket.socket] = []

    def start(script: Callable[[socket.socket], None]) -> tuple[str, int]:
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)

        def serve() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                threading.Thread(target=_run, args=(script, conn), daemon=True).start()

        threading.Thread(target=serve, daemon=True).start()
        return "127.0.0.1", listener.getsockname()[1]

    yield start
    for listener in listeners:
        listener.close()


def _run(script: Callable[[socket.socket], None], conn: socket.socket) -> None:
    with conn:
        script(conn)


def _requests(conn: socket.socket, answer: Callable[[int], bytes], count: int = 1000) -> None:
    """Answer each request (headers and a 2-byte body) with ``answer(i)``."""
    buffer = b""
    for i in range(count):
        while b"\r\n\r\n" not in buffer or len(buffer.split(b"\r\n\r\n", 1)[1]) < 2:
            data = conn.recv(65536)
            if not data:
                return
            buffer += data
        buffer = buffer.split(b"\r\n\r\n", 1)[1][2:]
        conn.sendall(answer(i))


def test_answers_split_over_packets_are_read_whole(scripted) -> None:  # type: ignore[no-untyped-def]
    def script(conn: socket.socket) -> None:
        def answer(i: int) -> bytes:
            if i == 0:  # one byte at a time
                for byte in OK:
                    conn.sendall(bytes([byte]))
                return b""
            return OK + b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}" if i == 1 else b""

        _requests(conn, answer, 3)

    connection = Connection(scripted(script))
    request = b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"
    assert connection.exchange(request) == 200
    assert connection.exchange(request) == 200
    assert connection.exchange(request) == 404  # already in the buffer: read after the previous answer's body
    connection.close()


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", ValueError),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\n{}", ConnectionError),  # closed before the body ended
        (b"", ConnectionError),  # closed without an answer
    ],
)
def test_incomplete_answers_fail(scripted, answer: bytes, error: type[Exception]) -> None:  # type: ignore[no-untyped-def]
    connection = Connection(scripted(lambda conn: _requests(conn, lambda _: answer, 1)))
    with pytest.raises(error):
        connection.exchange(b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
    connection.close()


def test_driver_counts_what_did_not_answer_200(scripted) -> None:  # type: ignore[no-untyped-def]
    teapot = b"HTTP/1.1 418 I'm a teapot\r\nContent-Length: 2\r\n\r\n{}"
    served = itertools.count()  # over all connections (next() on a count is atomic in CPython)
    host, port = scripted(lambda conn: _requests(conn, lambda _: teapot if next(served) % 4 == 3 else OK))
    driver = Driver(f"http://{host}:{port}", "/x", b"{}", concurrency=4, requests=400, deadline_s=30).run()
    assert len(driver.latencies) == 400 and driver.failed == 100
    assert driver.cpu_s >= 0 and driver.seconds > 0
