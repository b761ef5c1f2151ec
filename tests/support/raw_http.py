"""HTTP at the socket level, for what httpx will not do: a chunked body that is sent slowly
or never finished, so a test sees whether the server answered before reading it all."""

from __future__ import annotations

import socket
from dataclasses import dataclass


@dataclass
class OpenRequest:
    """A request whose headers are sent and whose chunked body is still open."""

    sock: socket.socket
    sent: int = 0  # body bytes the server accepted before it stopped reading

    def send_chunks(self, chunk: bytes, count: int) -> int:
        """Send up to `count` chunks; stops quietly when the server closes. Returns bytes sent."""
        for _ in range(count):
            try:
                self.sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            except OSError:  # the server refused the rest: what a gate should do
                break
            self.sent += len(chunk)
        return self.sent

    def status(self, timeout: float = 5.0) -> int | None:
        """The response's status code, or None if none came within `timeout` seconds."""
        self.sock.settimeout(timeout)
        try:
            head = self.sock.recv(4096)
        except (TimeoutError, socket.timeout):
            return None
        except OSError:
            return None
        return int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else None

    def close(self) -> None:
        self.sock.close()


def open_chunked(port: int, path: str, *, key: str | None = None,
                 content_type: str = "application/json") -> OpenRequest:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Transfer-Encoding: chunked",
             f"Content-Type: {content_type}"]
    if key:
        lines.append(f"Authorization: Bearer {key}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return OpenRequest(sock)
