"""A request whose body is produced while it is sent, over a plain socket, to see *when* the
server answers: before the body is complete (as auth-before-body requires) or after it.

No HTTP library is used for the send, because they all finish writing the body before they
read a response; here every chunk is sent only while the server has not answered yet.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class EarlyAnswer:
    """The server's response and how much of the body had been produced and sent by then."""

    status: int
    headers: dict[str, str]
    body: bytes
    bytes_sent: int
    body_finished: bool
    seconds: float


def stream_request(base_url: str, method: str, path: str, headers: Mapping[str, str],
                   chunks: Iterable[bytes], *, content_length: int | None = None,
                   timeout: float = 60.0) -> EarlyAnswer:
    """Send ``chunks`` as the body (chunked encoding unless ``content_length`` is given),
    one at a time and only while no response byte has arrived; then read the response.

    ``bytes_sent`` counts body bytes handed to the kernel before the first response byte
    was seen; ``body_finished`` says whether the generator ran out first.
    """
    url = urlsplit(base_url)
    assert url.hostname == "127.0.0.1", "tests only ever talk to loopback"
    t0 = time.monotonic()
    sock = socket.create_connection((url.hostname, url.port or 80), timeout=timeout)
    try:
        head = [f"{method} {path} HTTP/1.1", f"Host: {url.netloc}", "Connection: close"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        head.append(f"Content-Length: {content_length}" if content_length is not None
                    else "Transfer-Encoding: chunked")
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        sent, finished = _send_until_answered(sock, iter(chunks), content_length is None,
                                              t0 + timeout)
        raw = _read_all(sock, t0 + timeout)
    finally:
        sock.close()
    status, hdrs, body = _parse(raw)
    return EarlyAnswer(status, hdrs, body, sent, finished, time.monotonic() - t0)


def _send_until_answered(sock: socket.socket, chunks: Iterable[bytes], chunked: bool,
                         deadline: float) -> tuple[int, bool]:
    sent = 0
    pending = b""
    it = iter(chunks)
    while True:
        left = max(0.0, deadline - time.monotonic())
        readable, writable, _ = select.select([sock], [sock], [], left)
        if readable:
            return sent, False
        if time.monotonic() > deadline:
            raise TimeoutError(f"no response after sending {sent} bytes")
        if not writable:
            continue
        if not pending:
            chunk = next(it, None)
            if chunk is None:
                if chunked:
                    sock.sendall(b"0\r\n\r\n")
                return sent, True
            pending = (b"%x\r\n%s\r\n" % (len(chunk), chunk)) if chunked else chunk
        try:
            n = sock.send(pending)
        except (BrokenPipeError, ConnectionResetError):
            return sent, False  # the server answered and closed: read what it said
        sent += n
        pending = pending[n:]


def _read_all(sock: socket.socket, deadline: float) -> bytes:
    data = bytearray()
    while time.monotonic() < deadline:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            part = sock.recv(65536)
        except ConnectionResetError:
            break  # a reset after the response (unread body): keep what arrived
        if not part:
            break
        data += part
        if _complete(bytes(data)):
            break
    return bytes(data)


def _complete(raw: bytes) -> bool:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


def _parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise AssertionError(f"no complete HTTP response head received: {raw[:200]!r}")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def zero_chunks(total: int, size: int = 64 * 1024) -> Iterable[bytes]:
    """``total`` bytes of body in ``size`` pieces, produced lazily (never all in memory)."""
    block = b"0" * size
    left = total
    while left > 0:
        yield block[:min(size, left)]
        left -= size
