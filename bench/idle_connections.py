#!/usr/bin/env python3
"""Resident memory per idle client connection of a running scopegate.

  idle_connections.py PORT PID N h1|h2|plain

h1: N TLS connections (ALPN http/1.1), each makes one request (`GET /contacts`, answered without
an upstream) and stays open, kept alive. h2: N TLS connections (ALPN h2), each sends the
connection preface and its SETTINGS, reads the server's SETTINGS and stays open. plain: h1
without TLS. Prints the process's RSS before and with all N open, and the difference per
connection.
"""
import socket
import ssl
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit("no VmRSS")


def read_some(sock, want):
    got = b""
    while want not in got:
        chunk = sock.recv(4096)
        if not chunk:
            raise SystemExit(f"closed after {got[:80]!r}")
        got += chunk
    return got


def open_one(ctx, port, mode):
    raw = socket.create_connection(("127.0.0.1", port))
    s = raw if mode == "plain" else ctx.wrap_socket(raw, server_hostname="localhost")
    if mode in ("h1", "plain"):
        s.sendall(b"GET /contacts HTTP/1.1\r\nHost: localhost\r\n\r\n")
        head = read_some(s, b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        body = head.split(b"\r\n\r\n", 1)[1]
        while len(body) < length:
            body += s.recv(4096)
    else:
        assert s.selected_alpn_protocol() == "h2", s.selected_alpn_protocol()
        # Preface, an empty SETTINGS frame; the server's SETTINGS (type 4) comes first.
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        frame = b""
        while len(frame) < 9:
            frame += s.recv(9 - len(frame))
        assert frame[3] == 4, frame
        s.sendall(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")  # SETTINGS ACK
    return s


def main():
    port, pid, n, mode = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"] if mode == "h2" else ["http/1.1"])
    # Warm up: the first connections allocate what every later one reuses.
    warm = [open_one(ctx, port, mode) for _ in range(100)]
    for s in warm:
        s.close()
    time.sleep(1)
    before = rss_kib(pid)
    held = [open_one(ctx, port, mode) for _ in range(n)]
    time.sleep(1)
    after = rss_kib(pid)
    print(
        f"{n} idle { {'h2': 'HTTP/2', 'h1': 'HTTPS/1.1', 'plain': 'plain HTTP/1.1'}[mode] } connections: RSS {before / 1024:.1f} -> "
        f"{after / 1024:.1f} MB, {(after - before) * 1024 / n / 1024:.1f} KiB per connection"
    )
    for s in held:
        s.close()


if __name__ == "__main__":
    main()
