"""The floor: what the benchmarked work costs on this machine when written by hand with
nothing between Flask and the wire, so that a target can be checked against what any
implementation could reach here.

- :func:`create_stack_app`: the stack's layers with nothing of this project: a request id
  (the header when well-formed, else random), one JSON access line to stderr, a JSON error
  handler, an exact fixed-window count in Redis (one ``EVAL`` over a raw socket, replies
  parsed by hiredis) with the ``RateLimit-*`` headers, and ``/ping-auth`` verifying an
  HS256 bearer token with PyJWT.
- :func:`create_list_app`: the list query (page and total in one statement) over one
  psycopg connection in autocommit (so prepared after five runs), rows turned into JSON by
  hand; ``layers=True`` adds the stack's layers above.

It skips everything a real service needs beyond that (argument validation beyond
``int()``, the envelope of every error, cursors, reconnection, revocation, per-user keys,
the Redis-down fallback): its figures are a ceiling, not an alternative.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import re
import socket
import sys
import time
import typing as t

import hiredis
import jwt
import psycopg
from flask import Flask
from flask import g
from flask import request
from flask import Response

LIMIT = 100_000_000
WINDOW = 60
_COUNT = (
    "local c = redis.call('incr', KEYS[1]) "
    "if c == 1 then redis.call('expire', KEYS[1], ARGV[1]) end "
    "return {c, redis.call('pttl', KEYS[1])}"
)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_random = random.Random(os.urandom(16))
_LIST_SQL = (
    "SELECT id, name, description, status, volume, creator_id, created_at, updated_at,"
    " (SELECT coalesce(sum(total), 0) FROM market_status_counts WHERE status = %s)"
    " FROM markets WHERE status = %s ORDER BY volume DESC, id DESC LIMIT %s"
)


def _command(*args: t.Any) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Redis:
    """One raw connection per process."""

    def __init__(self) -> None:
        self.pid = 0
        self.sock: socket.socket | None = None
        self.reader = hiredis.Reader()

    def call(self, command: bytes) -> t.Any:
        if self.pid != os.getpid():
            url = os.environ["BENCH_REDIS_URL"]  # redis://host:port/db
            host_port, _, db = url.removeprefix("redis://").partition("/")
            host, _, port = host_port.partition(":")
            self.sock = socket.create_connection((host, int(port or 6379)))
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.reader, self.pid = hiredis.Reader(), os.getpid()
            self.sock.sendall(_command("SELECT", db or "0"))
            self._reply()
        assert self.sock is not None
        self.sock.sendall(command)
        return self._reply()

    def _reply(self) -> t.Any:
        assert self.sock is not None
        while True:
            reply = self.reader.gets()
            if reply is not False:
                return reply
            self.reader.feed(self.sock.recv(65536))


def _add_layers(app: Flask) -> None:
    redis = _Redis()
    out = sys.stderr

    @app.before_request
    def before() -> t.Any:
        incoming = request.headers.get("X-Request-ID")
        g.rid = (
            incoming if incoming and _REQUEST_ID.fullmatch(incoming) else f"{_random.getrandbits(128):032x}"
        )
        g.started = time.perf_counter()
        key = f"floor/ip:{request.remote_addr}/{request.endpoint}/{WINDOW}"
        g.count, g.ttl_ms = redis.call(_command("EVAL", _COUNT, 1, key, WINDOW))
        if g.count > LIMIT:
            return Response('{"success": false, "code": "rate_limited"}', 429, mimetype="application/json")
        return None

    @app.after_request
    def after(response: Response) -> Response:
        headers = response.headers
        headers["X-Request-ID"] = g.rid
        headers["RateLimit-Limit"] = str(LIMIT)
        headers["RateLimit-Remaining"] = str(max(0, LIMIT - g.count))
        headers["RateLimit-Reset"] = str(max(0, g.ttl_ms) // 1000)
        line = {
            "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            "level": "INFO",
            "message": f"{request.method} {request.path} {response.status_code}",
            "logger": "access",
            "request_id": g.rid,
            "method": request.method,
            "path": request.path,
            "status": response.status_code,
            "duration_ms": round((time.perf_counter() - g.started) * 1000, 3),
            "remote_addr": request.remote_addr,
            "user_id": g.get("user_id"),
        }
        out.write(json.dumps(line) + "\n")
        out.flush()
        return response

    @app.errorhandler(Exception)
    def error(_exc: Exception) -> Response:
        body = json.dumps({"success": False, "error": "Internal server error", "code": "internal_error"})
        return Response(body, 500, mimetype="application/json")


def create_stack_app() -> Flask:
    """``/ping`` behind the floor's layers; ``/ping-auth`` also verifies the bearer."""
    secret = os.environ["BENCH_JWT_SECRET"]
    app = Flask(__name__)
    _add_layers(app)

    @app.get("/ping")
    def ping() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/ping-auth")
    def ping_auth() -> t.Any:
        header = request.headers.get("Authorization", "")
        try:
            claims = jwt.decode(header[7:], secret, algorithms=["HS256"], options={"require": ["exp"]})
        except jwt.InvalidTokenError:
            return Response('{"success": false, "code": "unauthorized"}', 401, mimetype="application/json")
        g.user_id = claims["sub"]
        return {"ok": True}

    return app


def create_list_app(layers: bool = True) -> Flask:
    """``GET /api/markets?status=&limit=`` by hand; with or without the floor's layers."""
    app = Flask(__name__)
    if layers:
        _add_layers(app)
    connections: dict[int, psycopg.Connection[t.Any]] = {}
    url = os.environ["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")

    @app.get("/api/markets")
    def markets() -> Response:
        status = request.args.get("status", "active")
        limit = int(request.args.get("limit", "20"))
        conn = connections.get(os.getpid())
        if conn is None:
            conn = connections[os.getpid()] = psycopg.connect(url, autocommit=True)
        rows = conn.execute(_LIST_SQL, (status, status, limit)).fetchall()
        data = [
            {
                "id": r[0],
                "name": r[1],
                "description": r[2],
                "status": r[3],
                "volume": r[4],
                "creator_id": r[5],
                "created_at": r[6].isoformat(),
                "updated_at": r[7].isoformat(),
            }
            for r in rows
        ]
        meta = {"total": int(rows[0][8]) if rows else 0, "limit": limit, "offset": 0}
        body = json.dumps({"success": True, "data": data, "meta": meta})
        return Response(body, mimetype="application/json")

    return app
