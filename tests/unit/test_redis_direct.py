"""The lean Redis path: one connection per thread and process, and reads riding along."""

from __future__ import annotations

import os
import threading

import fakeredis
import pytest
import redis
from flask import Flask

from flask_backend_patterns._redis import DirectConnection


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


def client(server: fakeredis.FakeServer, **kwargs: object) -> redis.Redis:
    return fakeredis.FakeRedis(server=server, host="fake", **kwargs)


def connected(*directs: DirectConnection) -> None:
    """Connect now: a new connection's handshake commands are not the test's."""
    for direct in directs:
        direct.execute("PING")


def test_one_connection_per_thread_and_a_new_one_after_a_fork(server):
    direct = DirectConnection(client(server))
    direct.execute("SET", "k", "v")
    mine = direct.connection()
    assert direct.connection() is mine and direct.execute("GET", "k") == b"v"
    other: list[object] = []
    thread = threading.Thread(target=lambda: other.append(direct.connection()))
    thread.start()
    thread.join()
    assert other[0] is not mine
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, b"new" if direct.connection() is not mine else b"same")
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    assert os.read(read, 8) == b"new"
    os.close(read)


def test_a_read_rides_along_with_the_next_command_to_the_same_server(server, redis_trips):
    limiter, cache = DirectConnection(client(server)), DirectConnection(client(server, socket_timeout=3))
    other = DirectConnection(fakeredis.FakeRedis(server=fakeredis.FakeServer(), host="fake"))
    connected(limiter, cache, other)
    cache.execute("SET", "k", "v")
    app = Flask(__name__)
    with app.test_request_context("/"):
        cache.prefetch("MGET", "k", "missing")
        redis_trips.clear()
        other.execute("PING")  # another server: carries nothing
        assert redis_trips == [["PING"]]
        assert cache.take("MGET", "k", "missing") is None  # not answered: the owner sends it
    with app.test_request_context("/"):
        cache.prefetch("MGET", "k", "missing")
        redis_trips.clear()
        assert limiter.execute("INCR", "n") == 1
        assert redis_trips == [["INCR", "MGET"]]
        taken = cache.take("MGET", "k", "missing")
        assert taken is not None and taken.reply == [b"v", None]
        assert cache.take("MGET", "k", "missing") is None  # taken once


def test_a_prefetch_nobody_carried_is_dropped_and_sent_by_its_owner(server, redis_trips):
    cache = DirectConnection(client(server))
    connected(cache)
    app = Flask(__name__)
    with app.test_request_context("/"):
        cache.prefetch("GET", "k")
        assert cache.take("GET", "k") is None  # nothing carried it: the owner sends it now
        redis_trips.clear()
        assert cache.execute("GET", "k") is None
        assert redis_trips == [["GET"]]  # alone: the dropped prefetch does not ride along


def test_an_error_reply_to_a_rider_is_not_taken_and_the_carrier_still_gets_its_reply(server):
    limiter, cache = DirectConnection(client(server)), DirectConnection(client(server))
    limiter.execute("SET", "s", "text")
    app = Flask(__name__)
    with app.test_request_context("/"):
        cache.prefetch("INCR", "s")  # an error reply: not an integer
        assert limiter.execute("GET", "s") == b"text"
        assert cache.take("INCR", "s") is None


def test_a_connection_closed_under_a_batch_is_retried_once(server, monkeypatch):
    limiter, cache = DirectConnection(client(server)), DirectConnection(client(server))
    limiter.execute("SET", "k", "v")
    connection = limiter.connection()
    real = connection.send_packed_command
    failures: list[int] = []

    def closed_once(*args, **kwargs):
        if not failures:
            failures.append(1)
            raise redis.ConnectionError("Connection closed by server.")
        return real(*args, **kwargs)

    monkeypatch.setattr(connection, "send_packed_command", closed_once)
    app = Flask(__name__)
    with app.test_request_context("/"):
        cache.prefetch("GET", "k")
        assert limiter.execute("GET", "k") == b"v"
        taken = cache.take("GET", "k")
        assert failures == [1] and taken is not None and taken.reply == b"v"


def test_outside_a_request_nothing_is_queued(server, redis_trips):
    direct = DirectConnection(client(server))
    connected(direct)
    assert direct.prefetch("GET", "k") is None and direct.take("GET", "k") is None
    redis_trips.clear()
    direct.execute("GET", "k")
    assert redis_trips == [["GET"]]


def test_a_rider_that_cannot_be_read_leaves_the_command_its_reply(server, monkeypatch):
    limiter, cache = DirectConnection(client(server)), DirectConnection(client(server))
    connected(limiter, cache)
    limiter.execute("SET", "k", "v")
    connection = limiter.connection()
    real_read = connection.read_response
    reads: list[int] = []

    def second_read_times_out(*args, **kwargs):
        reads.append(1)
        if len(reads) == 2:  # the rider's reply
            raise redis.TimeoutError("Timeout reading from socket")
        return real_read(*args, **kwargs)

    monkeypatch.setattr(connection, "read_response", second_read_times_out)
    app = Flask(__name__)
    with app.test_request_context("/"):
        cache.prefetch("GET", "k")
        assert limiter.execute("INCR", "n") == 1  # the count stands
        assert cache.take("GET", "k") is None  # its owner reads it itself
        assert cache.execute("GET", "k") == b"v"


def test_close_disconnects_every_connection_made():
    server = fakeredis.FakeServer()
    direct = DirectConnection(client(server))
    connected(direct)
    connection = direct.connection()
    assert connection._sock is not None
    direct.close()
    assert connection._sock is None
    assert direct.execute("PING") == b"PONG"  # used again: reconnects
