"""The revocation memory of RedisRevocationStore against a real, private Redis.

Each store stands for one process: it has its own client and its own watch
connection. EXISTS lookups are counted on the private server (INFO commandstats).
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
import warnings

import pytest
import redis
from flask import Flask

from flask_backend_patterns.auth import Auth
from flask_backend_patterns.auth import create_access_token
from flask_backend_patterns.auth import decode_token
from flask_backend_patterns.auth import get_bearer_token
from flask_backend_patterns.auth import get_state
from flask_backend_patterns.auth import RedisRevocationStore
from flask_backend_patterns.auth import require_auth
from flask_backend_patterns.auth import revoke_token
from flask_backend_patterns.errors import ErrorHandler
from flask_backend_patterns.errors import ServiceUnavailableError
from tests.e2e.servers import private_redis  # noqa: F401  (a fixture)

SECRET = "integration-test-secret-0123456789abcdef-0123456789"
PREFIX = "test:revoked:"


@pytest.fixture
def admin(private_redis):  # noqa: F811
    client = redis.Redis.from_url(private_redis.url, socket_timeout=5)
    yield client
    client.close()


@pytest.fixture
def make_store(private_redis):  # noqa: F811
    """``make_store(**kw)``: a store on a client of its own, like one process's."""
    made: list[RedisRevocationStore] = []

    def make(**kwargs) -> RedisRevocationStore:
        kwargs.setdefault("prefix", PREFIX)
        # No timed liveness PINGs unless a test asks: a test reads more plainly without.
        kwargs.setdefault("check_interval", 3600.0)
        made.append(RedisRevocationStore.from_url(private_redis.url, **kwargs))
        return made[-1]

    yield make
    for store in made:
        store.close()
        store.client.close()


def exists_calls(admin) -> int:
    return int(admin.info("commandstats").get("cmdstat_exists", {}).get("calls", 0))


def soon() -> int:
    return int(time.time()) + 300


def test_repeat_lookups_make_no_exists_and_a_revocation_elsewhere_is_seen_next(admin, make_store):
    revoker, reader = make_store(), make_store()
    admin.config_resetstat()
    assert [reader.is_revoked("j1") for _ in range(5)] == [False] * 5
    assert exists_calls(admin) == 1
    revoker.revoke("j1", soon())
    assert reader.is_revoked("j1") is True
    # The revoked answer is remembered too.
    before = exists_calls(admin)
    assert [reader.is_revoked("j1") for _ in range(5)] == [True] * 5
    assert exists_calls(admin) == before
    # Other jtis are not touched by the invalidation of j1.
    reader.is_revoked("j2")
    before = exists_calls(admin)
    revoker.revoke("j3", soon())
    assert reader.is_revoked("j2") is False
    assert exists_calls(admin) == before


def test_the_revoker_sees_its_own_revocation_at_once(admin, make_store):
    store = make_store()
    assert store.is_revoked("j1") is False
    store.revoke("j1", soon())
    assert store.is_revoked("j1") is True


def test_cache_off_asks_redis_every_time(admin, make_store):
    store = make_store(cache=False)
    admin.config_resetstat()
    for _ in range(3):
        assert store.is_revoked("j1") is False
    assert exists_calls(admin) == 3
    assert [c["sub"] for c in admin.client_list()] == ["0", "0"]  # no watch: admin and store


def test_an_expired_revocation_is_forgotten(admin, make_store):
    revoker, reader = make_store(), make_store()
    revoker.revoke("j1", int(time.time()) + 1)  # a TTL of 1 s
    assert reader.is_revoked("j1") is True
    assert reader.is_revoked("j1") is True  # remembered
    deadline = time.monotonic() + 10
    while admin.exists(revoker.key("j1")):  # this lookup expires the key if Redis has not yet
        assert time.monotonic() < deadline, "the key did not expire"
        time.sleep(0.1)
    assert reader.is_revoked("j1") is False


def test_flushdb_clears_the_memory(admin, make_store):
    revoker, reader = make_store(), make_store()
    revoker.revoke("j1", soon())
    assert reader.is_revoked("j1") is True
    assert reader.is_revoked("j2") is False
    admin.flushdb()
    admin.config_resetstat()
    assert reader.is_revoked("j1") is False
    assert reader.is_revoked("j2") is False
    assert exists_calls(admin) == 2


def test_an_invalidation_read_while_the_lookup_runs_is_not_overwritten(admin, make_store, monkeypatch):
    revoker, reader = make_store(), make_store()
    reader.is_revoked("warm-up")  # the watch is set up
    real_exists = reader.client.exists

    def exists_then_revoked_elsewhere(*keys):
        answer = real_exists(*keys)
        revoker.revoke("j1", soon())
        # Wait until the invalidation reached the reader's watch, so that the reader
        # reads it after its lookup and before it decides what to remember.
        assert reader._watch.can_read(timeout=5)
        return answer

    monkeypatch.setattr(reader.client, "exists", exists_then_revoked_elsewhere)
    assert reader.is_revoked("j1") is False  # true when Redis answered
    monkeypatch.setattr(reader.client, "exists", real_exists)
    assert reader.is_revoked("j1") is True


def test_redis_down_is_a_503_not_a_remembered_answer_and_the_watch_comes_back(
    admin,
    make_store,
    private_redis,  # noqa: F811
):
    store = make_store(check_interval=0.2)
    assert store.is_revoked("j1") is False
    assert store.is_revoked("j1") is False  # remembered
    private_redis.stop()
    for _ in range(2):
        with pytest.raises(ServiceUnavailableError):
            store.is_revoked("j1")
    private_redis.start()
    admin.close()
    assert store.is_revoked("j1") is False  # asked again: the memory is gone
    time.sleep(0.25)  # past check_interval: the watch may be set up again
    assert store.is_revoked("j1") is False
    admin.config_resetstat()
    assert [store.is_revoked("j1") for _ in range(3)] == [False] * 3
    assert exists_calls(admin) == 0  # remembered again: the watch was rebuilt
    make_store().revoke("j1", soon())
    assert store.is_revoked("j1") is True


def ping_calls(admin) -> int:
    return int(admin.info("commandstats").get("cmdstat_ping", {}).get("calls", 0))


def test_past_check_interval_a_lookup_pings_the_watch(admin, make_store):
    store = make_store(check_interval=0.05)
    assert store.is_revoked("j1") is False
    time.sleep(0.1)  # past check_interval
    admin.config_resetstat()
    assert store.is_revoked("j1") is False
    assert ping_calls(admin) == 1


def test_a_lookup_that_read_invalidations_reads_on_to_a_ping_reply(admin, make_store):
    revoker, reader = make_store(), make_store()  # check_interval: an hour
    assert reader.is_revoked("j1") is False
    revoker.revoke("j1", soon())
    admin.config_resetstat()
    assert reader.is_revoked("j1") is True
    assert ping_calls(admin) == 1
    assert reader.is_revoked("j1") is True  # nothing new read: no PING
    assert ping_calls(admin) == 1


def test_a_watch_that_does_not_answer_its_ping_is_dropped_not_trusted(admin, make_store):
    store = make_store(check_interval=0.05, timeout=0.2)
    assert store.is_revoked("j1") is False
    assert store.is_revoked("j1") is False  # remembered
    admin.client_pause(2000)  # Redis answers no client for 2 s, as if the link were cut
    time.sleep(0.1)  # past check_interval
    with pytest.raises(ServiceUnavailableError):
        store.is_revoked("j1")  # the PING times out, the memory goes; EXISTS times out: 503
    assert store._watch is None


def test_a_watch_connection_lost_without_an_error_is_not_reconnected_silently(admin, make_store):
    revoker, reader = make_store(), make_store()
    assert reader.is_revoked("j1") is False  # remembered
    # As if redis-py closed the socket on its own: a new connection would track nothing.
    reader._watch.disconnect()
    revoker.revoke("j1", soon())
    assert reader.is_revoked("j1") is True


def test_the_memory_is_bounded_and_drops_the_oldest(admin, make_store):
    store = make_store(cache_size=3)
    for jti in ("j1", "j2", "j3", "j4"):
        store.is_revoked(jti)
    admin.config_resetstat()
    store.is_revoked("j4")
    assert exists_calls(admin) == 0
    store.is_revoked("j1")
    assert exists_calls(admin) == 1


def test_lookups_from_many_threads_see_every_acknowledged_revocation(admin, make_store):
    revoker, reader = make_store(), make_store(check_interval=0.01)
    jtis = [f"j{i}" for i in range(20)]

    def lookups(_: int) -> None:
        for _ in range(20):
            for jti in jtis:
                reader.is_revoked(jti)

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        running = [pool.submit(lookups, n) for n in range(8)]
        for jti in jtis[::2]:
            revoker.revoke(jti, soon())
            assert reader.is_revoked(jti) is True
        for future in running:
            future.result()
    assert [reader.is_revoked(jti) for jti in jtis] == [i % 2 == 0 for i in range(20)]


def test_a_forked_child_sets_up_its_own_watch_and_leaves_the_parents(admin, make_store):
    store = make_store()
    assert store.is_revoked("j1") is False
    parent_watch = store._watch_id
    read_end, write_end = os.pipe()
    # Fork while the store's lock is held, as when another thread is inside a lookup;
    # only the parent releases it.
    store._lock.acquire()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads (3.12+)
        pid = os.fork()
    if pid != 0:
        store._lock.release()
    if pid == 0:  # the child: report and leave without running pytest's teardown
        code = 1
        try:
            signal.alarm(20)  # a lock copied while held would hang the child: end it instead
            os.close(read_end)
            first = store.is_revoked("j1")
            child_watch = store._watch_id
            store.revoke("j1", soon())
            os.write(write_end, f"{first} {child_watch} {store.is_revoked('j1')}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        report = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    first, child_watch, revoked = report.split()
    assert (first, revoked) == ("False", "True")
    assert child_watch not in ("None", str(parent_watch))
    # The parent's watch still works, and saw the child's revocation.
    assert store.is_revoked("j1") is True
    assert store._watch_id == parent_watch


# -- through Auth --------------------------------------------------------------------


def auth_app(url: str, **config) -> Flask:
    app = Flask(__name__)
    app.config.update(
        TESTING=True,
        JWT_SECRET_KEY=SECRET,
        BACKEND_AUTH_REVOCATION_REDIS_URL=url,
        BACKEND_AUTH_REVOCATION_KEY_PREFIX=PREFIX,
        **config,
    )
    ErrorHandler(app)
    Auth(app)

    @app.get("/me")
    @require_auth
    def me():
        return {"ok": True}

    @app.post("/logout")
    @require_auth
    def logout():
        revoke_token(decode_token(get_bearer_token()))
        return {"ok": True}

    return app


def test_a_logout_on_one_app_is_refused_by_the_next_request_to_another(
    admin,
    private_redis,  # noqa: F811
):
    first, second = auth_app(private_redis.url), auth_app(private_redis.url)
    try:
        with first.app_context():
            token = create_access_token("42")
        headers = {"Authorization": f"Bearer {token}"}
        assert second.test_client().get("/me", headers=headers).status_code == 200
        admin.config_resetstat()
        assert second.test_client().get("/me", headers=headers).status_code == 200
        assert exists_calls(admin) == 0
        assert first.test_client().post("/logout", headers=headers).status_code == 200
        assert second.test_client().get("/me", headers=headers).status_code == 401
    finally:
        for app in (first, second):
            store = get_state(app).revocation_store
            store.close()
            store.client.close()


def test_the_config_keys_reach_the_store(private_redis):  # noqa: F811
    app = auth_app(
        private_redis.url,
        BACKEND_AUTH_REVOCATION_CACHE="false",
        BACKEND_AUTH_REVOCATION_CACHE_CHECK_INTERVAL="0.5",
    )
    store = get_state(app).revocation_store
    assert isinstance(store, RedisRevocationStore)
    assert (store.cache, store.check_interval) == (False, 0.5)
    store.client.close()
