"""A lean path for the one or two Redis commands a request makes."""

from __future__ import annotations

import os
import threading
import typing as t


class DirectConnection:
    """One connection per thread and process to the server of a redis-py ``client``.

    :meth:`execute` sends a command and reads its reply with redis-py's own connection
    and parser, without the client's per-command layers (pool checkout and release,
    retry wrapper, telemetry hooks), which cost about as much as Redis's work on a
    simple command. The connection is made outside the client's pool, with its
    settings (address, timeouts, TLS, credentials, RESP version), so it never counts
    against the pool's ``max_connections``; a forked worker or a new thread makes its
    own. A connection that Redis closed (a restart, an idle timeout) fails on first
    use: the command is sent once more on a new connection. A timeout is not retried:
    the command may have run.
    """

    def __init__(self, client: t.Any) -> None:
        self.pool = client.connection_pool
        self._local = threading.local()

    def connection(self) -> t.Any:
        """This thread's connection (made on first use, and again after a fork)."""
        local, pid = self._local, os.getpid()
        if getattr(local, "pid", None) != pid:
            local.connection = self.pool.connection_class(**self.pool.connection_kwargs)
            local.pid = pid
        return local.connection

    def execute(self, *args: t.Any) -> t.Any:
        """Send ``args`` (``"MGET", key, ...``) and return the reply.

        :raises redis.ResponseError: Redis answered with an error (the connection stays).
        :raises redis.RedisError: Redis could not be reached or did not answer.
        """
        import redis

        connection = self.connection()
        for attempt in (1, 2):
            try:
                connection.send_command(*args, check_health=False)
                return connection.read_response()
            except redis.ResponseError:
                raise  # a whole reply was read: the connection is fine
            except redis.ConnectionError:
                connection.disconnect()
                if attempt == 2:
                    raise
            except BaseException:
                connection.disconnect()  # a reply may be half read
                raise
        raise AssertionError("unreachable")
