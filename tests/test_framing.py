"""Request framing against a live gunicorn: a body cut short, a malformed chunked body or a
chunked body past the size limit is refused whole, and nothing of it is stored."""

from __future__ import annotations

import json
import socket

import pytest
from sqlalchemy import create_engine

from tests.helpers import LiveServer, count_events, empty_tables

pytestmark = pytest.mark.live

MALFORMED_BODY = "Malformed request body"
LIMIT = 1024 * 1024


@pytest.fixture(scope="module")
def server(sqlite_url):
    server = LiveServer(sqlite_url, workers=1).start()
    yield server
    server.stop()


@pytest.fixture
def stored_count(sqlite_url):
    engine = create_engine(sqlite_url)

    yield lambda: count_events(engine)
    engine.dispose()
    empty_tables(sqlite_url)


def exchange(server, head: bytes, body: bytes, half_close: bool = True) -> tuple[int, dict]:
    """Send raw bytes, optionally half-close, and read the answer: (status, JSON body)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head + body)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head_text, _, payload = answer.partition(b"\r\n\r\n")
    status = int(head_text.split(b" ", 2)[1])
    assert b"content-type: application/json" in head_text.lower(), answer[:500]
    return status, json.loads(payload)


def request_head(path: str, content_type: str, **headers: str) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: localhost",
        f"Content-Type: {content_type}",
        "Connection: close",
        *(f"{name.replace('_', '-')}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunked(data: bytes, size: int = 8192) -> bytes:
    pieces = [data[i : i + size] for i in range(0, len(data), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


def ndjson_lines(count: int, pad: int = 0) -> bytes:
    return b"".join(
        json.dumps({"event": "play", "user_id": f"u{n}", "metadata": {"pad": "x" * pad}}).encode()
        + b"\n"
        for n in range(count)
    )


def test_a_chunked_batch_past_the_limit_is_413_and_stores_nothing(server, stored_count):
    body = ndjson_lines(900, pad=2400)  # about 2 MiB, fewer events than the batch cap
    assert len(body) > 2 * LIMIT
    status, answer = exchange(
        server,
        request_head("/track/batch", "application/x-ndjson", Transfer_Encoding="chunked"),
        chunked(body),
    )
    assert status == 413, answer
    assert answer["status"] == "error"
    assert stored_count() == 0


def test_a_chunked_event_past_the_limit_is_413(server, stored_count):
    body = json.dumps({"event": "play", "user_id": "u", "metadata": {"pad": "x" * (LIMIT + 10)}})
    status, answer = exchange(
        server,
        request_head("/track", "application/json", Transfer_Encoding="chunked"),
        chunked(body.encode()),
    )
    assert status == 413, answer
    assert stored_count() == 0


def test_a_chunked_body_within_the_limit_is_stored(server, stored_count):
    status, answer = exchange(
        server,
        request_head("/track/batch", "application/x-ndjson", Transfer_Encoding="chunked"),
        chunked(ndjson_lines(5), size=7),
    )
    assert (status, answer["accepted"]) == (200, 5)
    assert stored_count() == 5


def test_a_body_shorter_than_its_content_length_is_400_and_stores_nothing(server, stored_count):
    whole = ndjson_lines(30)
    sent = ndjson_lines(10)
    status, answer = exchange(
        server,
        request_head("/track/batch", "application/x-ndjson", Content_Length=str(len(whole))),
        sent,
    )
    assert (status, answer["message"]) == (400, MALFORMED_BODY)
    single = json.dumps({"event": "play", "user_id": "u"}).encode()
    status, answer = exchange(
        server,
        request_head("/track", "application/json", Content_Length=str(len(single) + 5)),
        single,
    )
    assert (status, answer["message"]) == (400, MALFORMED_BODY)
    assert stored_count() == 0


@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\n{}\r\n0\r\n\r\n",  # a chunk size that is not hexadecimal
        b"5\r\n{\"a\":1}\r\n0\r\n\r\n",  # a chunk longer than its size
        b"7\r\n{\"a\":1}",  # the stream ends inside the chunks
    ],
    ids=["invalid-size", "missing-terminator", "no-last-chunk"],
)
@pytest.mark.parametrize("path", ["/track", "/track/batch"])
def test_a_malformed_chunked_body_is_400(server, stored_count, path, body):
    status, answer = exchange(
        server, request_head(path, "application/json", Transfer_Encoding="chunked"), body
    )
    assert (status, answer["message"]) == (400, MALFORMED_BODY)
    assert stored_count() == 0
