"""A minimal PostgreSQL client for the benchmark's pollers (not part of pgha).

The lab's pgpool, app and replication-monitoring roles use trust
authentication, so the simple-query protocol without any password exchange
is all the pollers need. One process and a few persistent sockets poll every
10-20 ms far more cheaply than starting psql each time, which would steal CPU
from the failover being measured on a 2-core machine.
"""

import socket
import struct

PROTOCOL_3_0 = 196608


class PgError(Exception):
    """An ErrorResponse from the server, or a connection that broke."""


class Conn:
    """One connection; every socket operation is bounded by `timeout`."""

    def __init__(self, host, port, user, dbname, timeout=1.0, app="pgha-bench"):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        params = b""
        for k, v in (("user", user), ("database", dbname), ("application_name", app)):
            params += k.encode() + b"\0" + v.encode() + b"\0"
        params += b"\0"
        try:
            self.sock.sendall(struct.pack("!ii", 8 + len(params), PROTOCOL_3_0) + params)
            while True:
                kind, body = self._message()
                if kind == b"R":
                    code = struct.unpack("!i", body[:4])[0]
                    if code != 0:
                        raise PgError(f"{host}:{port} asks for authentication method {code}; the bench needs trust")
                elif kind == b"E":
                    raise PgError(_error_text(body))
                elif kind == b"Z":
                    return
        except BaseException:
            self.close()
            raise

    def _exact(self, n):
        chunks = []
        while n:
            b = self.sock.recv(n)
            if not b:
                raise PgError("server closed the connection")
            chunks.append(b)
            n -= len(b)
        return b"".join(chunks)

    def _message(self):
        head = self._exact(5)
        kind, length = head[:1], struct.unpack("!i", head[1:])[0]
        return kind, self._exact(length - 4)

    def query(self, sql, timeout=None):
        """Rows (lists of str or None) of a simple query; PgError on error."""
        if timeout is not None:
            self.sock.settimeout(timeout)
        q = sql.encode() + b"\0"
        self.sock.sendall(b"Q" + struct.pack("!i", 4 + len(q)) + q)
        rows, err = [], None
        while True:
            kind, body = self._message()
            if kind == b"D":
                rows.append(_data_row(body))
            elif kind == b"E":
                err = _error_text(body)
            elif kind == b"Z":
                break
        if err is not None:
            raise PgError(err)
        return rows

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def _data_row(body):
    n = struct.unpack("!h", body[:2])[0]
    pos, row = 2, []
    for _ in range(n):
        ln = struct.unpack("!i", body[pos : pos + 4])[0]
        pos += 4
        if ln < 0:
            row.append(None)
        else:
            row.append(body[pos : pos + ln].decode())
            pos += ln
    return row


def _error_text(body):
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[part[:1]] = part[1:].decode(errors="replace")
    return fields.get(b"M", "error")
