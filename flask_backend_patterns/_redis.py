"""A lean path for the one or two Redis commands a request makes.

:class:`DirectConnection` sends a command without redis-py's per-command layers, and
:meth:`DirectConnection.prefetch` lets one part of a request put a read on the round trip another part
makes anyway: the response cache's ``MGET`` rides with the rate limiter's count when
both use the same Redis server and database, so a cached response costs the request one
round trip, not two.
"""

from __future__ import annotations

import os
import threading
import typing as t
import weakref

from flask import has_request_context
from flask import request

_PREFETCH_ENVIRON_KEY = "flask_backend_patterns.redis.prefetch"
#: connection settings that change how a connection waits or retries, not where a
#: command goes or how its reply reads: two clients that differ only in these share.
_NOT_SERVER_KEYS = frozenset(
    {
        "socket_timeout",
        "socket_connect_timeout",
        "socket_keepalive",
        "socket_keepalive_options",
        "retry",
        "retry_on_timeout",
        "retry_on_error",
        "health_check_interval",
        "client_name",
        "lib_name",
        "lib_version",
        "driver_info",
        "event_dispatcher",
    }
)


class Prefetch:
    """A command waiting to ride along with the request's next round trip to its server."""

    __slots__ = ("args", "done", "reply", "server")

    def __init__(self, server: tuple[t.Any, ...], args: tuple[t.Any, ...]) -> None:
        self.server, self.args = server, args
        self.done = False
        #: the reply, or the ``redis.ResponseError`` Redis answered with.
        self.reply: t.Any = None


def _server_of(pool: t.Any) -> tuple[t.Any, ...]:
    """What two DirectConnections must share to carry each other's commands: the
    connection class and every setting but :data:`_NOT_SERVER_KEYS` (objects, such as
    a credential provider or an SSL context, by identity)."""
    # A setting left at None is the same as one not given (redis.Redis(...) passes
    # them, from_url does not).
    settings = sorted(
        (name, _identity(value))
        for name, value in pool.connection_kwargs.items()
        if name not in _NOT_SERVER_KEYS and value is not None
    )
    return (pool.connection_class, *settings)


def _identity(value: t.Any) -> t.Any:
    return (
        value if value is None or isinstance(value, str | int | float | bool | bytes) else ("id", id(value))
    )


class DirectConnection:
    """One connection per thread and process to the server of a redis-py ``client``.

    :meth:`execute` sends a command and reads its reply with redis-py's own connection
    and parser, without the client's per-command layers (pool checkout and release,
    retry wrapper, telemetry hooks), which cost about as much as Redis's work on a
    simple command. The connection is made outside the client's pool, with its
    settings (address, timeouts, TLS, credentials, RESP version), so it never counts
    against the pool's ``max_connections``; a forked worker or a new thread makes its
    own. A connection that Redis closed (a restart, an idle timeout) fails on first
    use: the command is sent once more on a new connection. A connection lost after
    Redis ran the command (killed by ``CLIENT KILL``, a network cut) is retried too,
    so the command may run twice (a rate limit counts one request twice); a timeout is
    not retried.
    """

    def __init__(self, client: t.Any) -> None:
        self.pool = client.connection_pool
        self.server = _server_of(self.pool)
        self._local = threading.local()
        self._made: weakref.WeakSet[t.Any] = weakref.WeakSet()

    def connection(self) -> t.Any:
        """This thread's connection (made on first use, and again after a fork)."""
        local, pid = self._local, os.getpid()
        if getattr(local, "pid", None) != pid:
            local.connection = self.pool.connection_class(**self.pool.connection_kwargs)
            local.pid = pid
            self._made.add(local.connection)
        return local.connection

    def close(self) -> None:
        """Close every connection this object made (a thread that uses it again
        reconnects)."""
        for connection in list(self._made):
            connection.disconnect()

    def prefetch(self, *args: t.Any) -> Prefetch | None:
        """Queue ``args`` (a read) for the current request's next :meth:`execute` on any
        DirectConnection to the same server and database; None outside a request.

        Take the reply with :meth:`take`; if no command went to that server meanwhile,
        :meth:`take` finds nothing and the caller sends the read itself.
        """
        if not has_request_context():
            return None
        item = Prefetch(self.server, args)
        request.environ.setdefault(_PREFETCH_ENVIRON_KEY, []).append(item)
        return item

    def take(self, *args: t.Any) -> Prefetch | None:
        """The prefetch of exactly ``args`` in this request, removed; returned if it was
        answered, else None (then the caller sends the read itself)."""
        pending = _pending()
        for i, item in enumerate(pending):
            if item.server == self.server and item.args == args:
                del pending[i]
                return item if item.done and not isinstance(item.reply, Exception) else None
        return None

    def execute(self, *args: t.Any) -> t.Any:
        """Send ``args`` (``"EVALSHA", ...``) with the request's prefetches for this
        server, and return the reply to ``args``.

        :raises redis.ResponseError: Redis answered with an error (the connection stays).
        :raises redis.RedisError: Redis could not be reached or did not answer.
        """
        import redis

        riders = self._riders()
        connection = self.connection()
        for attempt in (1, 2):
            try:
                if not riders:
                    connection.send_command(*args, check_health=False)
                    return connection.read_response()
                commands = [args, *(item.args for item in riders)]
                connection.send_packed_command(connection.pack_commands(commands), check_health=False)
                reply = _read_one(connection)
                break
            except redis.ResponseError:
                raise  # a whole reply was read: the connection is fine
            except redis.ConnectionError:
                connection.disconnect()
                if attempt == 2:
                    raise
            except BaseException:
                connection.disconnect()  # a reply may be half read
                raise
        else:
            raise AssertionError("unreachable")
        # The command's own reply is in. A rider that cannot be read (a timeout on a
        # large value) costs its owner a read of its own, not the command its reply.
        try:
            for item in riders:
                item.reply, item.done = _read_one(connection), True
        except (redis.RedisError, OSError):
            connection.disconnect()
            for item in riders:
                item.done = False
        if isinstance(reply, redis.ResponseError):
            raise reply
        return reply

    def _riders(self) -> list[Prefetch]:
        return [item for item in _pending() if not item.done and item.server == self.server]


def _pending() -> list[Prefetch]:
    """The current request's queued reads ([] outside a request or with none)."""
    if not has_request_context():
        return []
    pending: list[Prefetch] = request.environ.get(_PREFETCH_ENVIRON_KEY) or []
    return pending


def _read_one(connection: t.Any) -> t.Any:
    import redis

    try:
        return connection.read_response()
    except redis.ResponseError as error:
        return error
