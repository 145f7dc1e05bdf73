"""CachedRepository and RepositoryCache: read-through, invalidation, stampedes, JSON, outages.

SQLite in a temporary folder with test-local models; the cache is SimpleCache, fakeredis,
or the real Redis at 127.0.0.1:6379 database 5 (flushed before and after each test that
uses it; skipped when it does not answer, a failure under CI=true).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import enum
import json
import logging
import os
import re
import threading
import time
import typing as t
import uuid

import fakeredis
import pytest
import redis
import sqlalchemy as sa
from flask import Flask
from flask_caching.backends import RedisCache
from flask_caching.backends import SimpleCache
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import orm

from flask_backend_patterns import cache as cache_module
from flask_backend_patterns.cache import cache_health
from flask_backend_patterns.cache import CachedRepository
from flask_backend_patterns.cache import get_state
from flask_backend_patterns.cache import ModelCodec
from flask_backend_patterns.cache import RepositoryCache
from flask_backend_patterns.repository import Include
from flask_backend_patterns.repository import SQLAlchemyRepository
from flask_backend_patterns.repository import UtcDateTime
from flask_backend_patterns.transactions import transaction

REAL_REDIS_URL = "redis://127.0.0.1:6379/5"
DOWN_REDIS_URL = "redis://127.0.0.1:1/0"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
KEY_RE = re.compile(
    r"^fbp:(Widget|Owner):(version|v\d+:(item|ids|all|page|count|exists):[0-9a-f]{64}(:lock)?)$"
)


# -- test-local models and repositories ------------------------------------------------------


class Base(orm.DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


class Kind(enum.Enum):
    SMALL = "small"
    LARGE = "large"


class DecimalText(sa.types.TypeDecorator[decimal.Decimal]):
    """Exact decimals on SQLite, whose Numeric goes through float (and warns)."""

    impl = sa.String(40)
    cache_ok = True

    def process_bind_param(self, value: decimal.Decimal | None, dialect: sa.Dialect) -> str | None:
        return None if value is None else str(value)

    def process_result_value(self, value: str | None, dialect: sa.Dialect) -> decimal.Decimal | None:
        return None if value is None else decimal.Decimal(value)


class Owner(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "cache_owners"

    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    name: orm.Mapped[str] = orm.mapped_column(sa.String(100))
    email: orm.Mapped[str | None] = orm.mapped_column(sa.String(100))


class Widget(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "cache_widgets"

    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    name: orm.Mapped[str] = orm.mapped_column(sa.String(100))
    notes: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    active: orm.Mapped[bool] = orm.mapped_column(default=True)
    count: orm.Mapped[int] = orm.mapped_column(default=0)
    ratio: orm.Mapped[float] = orm.mapped_column(sa.Float, default=0.0)
    price: orm.Mapped[decimal.Decimal | None] = orm.mapped_column(DecimalText)
    created_at: orm.Mapped[dt.datetime | None] = orm.mapped_column(UtcDateTime)
    naive_at: orm.Mapped[dt.datetime | None] = orm.mapped_column(sa.DateTime)
    day: orm.Mapped[dt.date | None] = orm.mapped_column(sa.Date)
    at_time: orm.Mapped[dt.time | None] = orm.mapped_column(sa.Time)
    span: orm.Mapped[dt.timedelta | None] = orm.mapped_column(sa.Interval)
    ref: orm.Mapped[uuid.UUID | None] = orm.mapped_column(sa.Uuid)
    kind: orm.Mapped[Kind] = orm.mapped_column(sa.Enum(Kind), default=Kind.SMALL)
    blob: orm.Mapped[bytes | None] = orm.mapped_column(sa.LargeBinary)
    extra: orm.Mapped[t.Any] = orm.mapped_column(sa.JSON, nullable=True)
    owner_id: orm.Mapped[int | None] = orm.mapped_column(sa.ForeignKey("cache_owners.id"))

    owner: orm.Mapped[Owner | None] = orm.relationship(lazy="raise")


class OwnerRepository(SQLAlchemyRepository[Owner]):
    model = Owner
    filter_fields = {"name": {"eq"}}
    sort_fields = {"id", "name"}
    default_sort = "id"


class WidgetRepository(SQLAlchemyRepository[Widget]):
    model = Widget
    filter_fields = {"kind": {"eq", "in"}, "count": {"gte", "lte"}, "name": {"eq", "contains"}}
    sort_fields = {"id", "count", "name"}
    default_sort = "id"
    includes = {"owner": Include("owner", ("id", "name"))}


class GatedRepository:
    """Any repository (no SQLAlchemy session): reads count their calls and wait for a gate."""

    model = Widget

    def __init__(self, name: str = "loaded", *, open_gate: bool = False) -> None:
        self.name = name
        self.calls = 0
        self.gate = threading.Event()
        if open_gate:
            self.gate.set()
        self._lock = threading.Lock()

    def find_by_id(self, id: t.Any, *, fields: t.Any = None, include: t.Any = ()) -> Widget:
        with self._lock:
            self.calls += 1
        assert self.gate.wait(30), "the test never opened the gate"
        return Widget(id=id, name=self.name, count=7)


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def real_redis_url() -> str:
    client = redis.Redis.from_url(REAL_REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        if IN_CI:
            pytest.fail(f"Redis at {REAL_REDIS_URL} does not answer: {exc}")
        pytest.skip(f"no Redis at {REAL_REDIS_URL}")
    finally:
        client.close()
    return REAL_REDIS_URL


@pytest.fixture
def real_redis(real_redis_url: str) -> t.Iterator[redis.Redis]:
    client = redis.Redis.from_url(real_redis_url)
    client.flushdb()  # db 5 belongs to these tests
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def fake_server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


class FakeClock:
    """A monotonic clock that moves only when told (or when ``sleep`` is called)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def make_app(tmp_path: t.Any, fake_server: fakeredis.FakeServer) -> t.Iterator[t.Callable[..., Flask]]:
    """``make_app(cache, clock=None, **config)``: a worker on the shared SQLite file and cache.

    ``cache`` is ``"simple"``, ``"fakeredis"`` (one server for every worker of the test),
    ``"redis"`` (database 5) or ``"down"`` (a port where nothing listens).
    """
    made: list[Flask] = []

    def factory(cache: str = "fakeredis", *, clock: FakeClock | None = None, **config: t.Any) -> Flask:
        app = Flask(f"worker{len(made)}")
        app.config.update(
            TESTING=True,
            SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'cache.db'}",
            SECRET_KEY="cache-test-secret",
            **config,
        )
        client = None
        if cache == "fakeredis":
            client = fakeredis.FakeRedis(server=fake_server, host=FAKE_HOST)
        elif cache == "redis":  # the test asked for the real_redis fixture (through its kind)
            app.config["CACHE_REDIS_URL"] = REAL_REDIS_URL
        elif cache == "down":
            app.config["CACHE_REDIS_URL"] = DOWN_REDIS_URL
        else:
            assert cache == "simple"
        db.init_app(app)
        if clock is None:
            RepositoryCache(app, redis_client=client)
        else:
            RepositoryCache(app, redis_client=client, clock=clock, sleep=clock.sleep)
        with app.app_context():
            db.create_all()
        made.append(app)
        return app

    yield factory
    for app in made:
        get_state(app).close()
        with app.app_context():
            db.engine.dispose()


@pytest.fixture(params=["simple", "fakeredis", "redis"])
def cache_kind(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        request.getfixturevalue("real_redis")
    return t.cast(str, request.param)


@pytest.fixture(params=["fakeredis", "redis"])
def shared_kind(request: pytest.FixtureRequest) -> str:
    """Backends that several workers share."""
    if request.param == "redis":
        request.getfixturevalue("real_redis")
    return t.cast(str, request.param)


def widgets() -> CachedRepository[Widget]:
    return CachedRepository(WidgetRepository())


def owners() -> CachedRepository[Owner]:
    return CachedRepository(OwnerRepository())


def add_widgets(*names: str, **values: t.Any) -> list[int]:
    """Insert and commit widgets (bypassing the cache); their ids."""
    with transaction():
        rows = [WidgetRepository().create({"name": n, **values}) for n in names]
    return [r.id for r in rows]


@contextlib.contextmanager
def count_queries() -> t.Iterator[list[str]]:
    """The SELECTs sent to the current app's database while active."""
    statements: list[str] = []

    def before(conn: t.Any, cursor: t.Any, statement: str, *args: t.Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    sa.event.listen(db.engine, "before_cursor_execute", before)
    try:
        yield statements
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", before)


def wait_until(condition: t.Callable[[], bool]) -> None:
    """Wait (bounded) for other threads to reach a state; fails the test if they never do."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "the threads never got there"
        time.sleep(0.001)


# -- read-through --------------------------------------------------------------------------


def test_second_read_is_served_from_the_cache(make_app: t.Any, cache_kind: str) -> None:
    app = make_app(cache_kind)
    with app.app_context():
        (wid,) = add_widgets("first")
        repo = widgets()
        assert repo.find_by_id(wid).name == "first"
        with count_queries() as queries:
            again = repo.find_by_id(wid)
        assert again.name == "first"
        assert queries == []
        stats = get_state().stats.snapshot()
        assert (stats["hits"], stats["misses"], stats["loads"]) == (1, 1, 1)


def test_write_outside_the_cached_repository_is_not_seen_until_invalidate(
    make_app: t.Any, cache_kind: str
) -> None:
    app = make_app(cache_kind)
    with app.app_context():
        (wid,) = add_widgets("old")
        repo = widgets()
        assert repo.find_by_id(wid).name == "old"
        with transaction():
            WidgetRepository().update(wid, {"name": "new"})
        assert repo.find_by_id(wid).name == "old"  # the cache serves what it stored
        repo.invalidate()
        assert repo.find_by_id(wid).name == "new"


def test_missing_id_is_cached_as_none(make_app: t.Any, cache_kind: str) -> None:
    app = make_app(cache_kind)
    with app.app_context():
        repo = widgets()
        assert repo.find_by_id(404) is None
        with count_queries() as queries:
            assert repo.find_by_id(404) is None
        assert queries == []


def test_null_cache_type_caches_nothing(make_app: t.Any) -> None:
    app = make_app("simple", CACHE_TYPE="NullCache")
    with app.app_context():
        (wid,) = add_widgets("a")
        repo = widgets()
        repo.find_by_id(wid)
        with count_queries() as queries:
            repo.find_by_id(wid)
        assert len(queries) == 1
        assert get_state().backend_kind == "null"


def test_null_cache_reads_without_touching_the_backend(make_app: t.Any, monkeypatch: t.Any) -> None:
    app = make_app("simple", CACHE_TYPE="NullCache")
    with app.app_context():
        (wid,) = add_widgets("a")
        state = get_state()
        assert state.stores_nothing

        def untouched(*args: t.Any, **kwargs: t.Any) -> t.Any:
            raise AssertionError("a NullCache read went to the backend")

        for name in ("get", "get_many", "set", "versions"):
            monkeypatch.setattr(state.store, name, untouched, raising=False)
        monkeypatch.setattr(cache_module, "_canonical", untouched)  # no key is even built
        repo = widgets()
        loads = state.stats.snapshot()["loads"]
        assert repo.find_by_id(wid).name == "a"
        assert [w.name for w in repo.find_all()] == ["a"]
        assert state.stats.snapshot()["loads"] == loads + 2
    calls: list[str] = []
    add_widget_views(app, calls)
    client = app.test_client()
    assert [client.get(f"/widgets/{wid}").get_json()["name"] for _ in range(2)] == ["a", "a"]
    assert calls == [f"one {wid}", f"one {wid}"]  # the view runs every time


# -- invalidation on every write path ---------------------------------------------------------


def fill_reads(repo: CachedRepository[Widget], wid: int | None = None) -> dict[str, t.Any]:
    """Read everything the tests check, so that it is cached."""
    return {
        "item": None if wid is None else repo.find_by_id(wid),
        "all": [w.name for w in repo.find_all()],
        "large": [w.name for w in repo.find_all(filters={"kind": Kind.LARGE})],
        "page": repo.find_page(limit=10),
        "count": repo.count(),
        "count_large": repo.count({"kind": Kind.LARGE}),
        "exists_new": repo.exists({"name": "new"}),
    }


def test_create_invalidates_item_lists_and_counts(make_app: t.Any, cache_kind: str) -> None:
    app = make_app(cache_kind)
    with app.app_context():
        add_widgets("a", "b")
        repo = widgets()
        assert repo.find_by_id(99) is None
        before = fill_reads(repo)
        assert (before["all"], before["count"], before["exists_new"]) == (["a", "b"], 2, False)
        with transaction():
            repo.create({"id": 99, "name": "new", "kind": Kind.LARGE})
        after = fill_reads(repo, 99)
        assert after["item"].name == "new"
        assert after["all"] == ["a", "b", "new"]
        assert after["large"] == ["new"]
        assert after["page"].total == 3
        assert [w.name for w in after["page"].items] == ["a", "b", "new"]
        assert (after["count"], after["count_large"], after["exists_new"]) == (3, 1, True)


def test_update_invalidates_item_lists_and_counts(make_app: t.Any, cache_kind: str) -> None:
    app = make_app(cache_kind)
    with app.app_context():
        wid, _ = add_widgets("a", "b")
        repo = widgets()
        before = fill_reads(repo, wid)
        assert (before["item"].name, before["large"], before["count_large"]) == ("a", [], 0)
        with transaction():
            repo.update(wid, {"name": "new", "kind": Kind.LARGE})
        after = fill_reads(repo, wid)
        assert after["item"].name == "new"
        assert after["all"] == ["new", "b"]
        assert after["large"] == ["new"]
        assert [w.name for w in after["page"].items] == ["new", "b"]
        assert (after["count"], after["count_large"], after["exists_new"]) == (2, 1, True)


def test_delete_invalidates_item_lists_and_counts(make_app: t.Any, cache_kind: str) -> None:
    app = make_app(cache_kind)
    with app.app_context():
        wid, _ = add_widgets("a", "b", kind=Kind.LARGE)
        repo = widgets()
        before = fill_reads(repo, wid)
        assert (before["item"].name, before["count_large"]) == ("a", 2)
        with transaction():
            repo.delete(wid)
        after = fill_reads(repo, wid)
        assert after["item"] is None
        assert after["all"] == after["large"] == ["b"]
        assert (after["page"].total, after["count"], after["count_large"]) == (1, 1, 1)


def test_write_to_an_included_model_invalidates_reads_that_include_it(
    make_app: t.Any, cache_kind: str
) -> None:
    app = make_app(cache_kind)
    with app.app_context():
        with transaction():
            owner = OwnerRepository().create({"name": "Ann"})
        (wid,) = add_widgets("a", owner_id=owner.id)
        repo = widgets()
        assert repo.find_by_id(wid, include=["owner"]).owner.name == "Ann"
        assert repo.find_all(include=["owner"])[0].owner.name == "Ann"
        with transaction():
            owners().update(owner.id, {"name": "Bob"})
        assert repo.find_by_id(wid, include=["owner"]).owner.name == "Bob"
        assert repo.find_all(include=["owner"])[0].owner.name == "Bob"


def version_of(server: fakeredis.FakeServer, namespace: str = "Widget") -> int:
    raw = fakeredis.FakeRedis(server=server).get(f"fbp:{namespace}:version")
    assert raw is not None
    return int(raw)


def test_version_is_bumped_after_the_commit_not_at_the_write(
    make_app: t.Any, fake_server: fakeredis.FakeServer
) -> None:
    writer, reader = make_app(), make_app()
    with writer.app_context():
        (wid,) = add_widgets("old")
        repo = widgets()
        repo.find_by_id(wid)
        start = version_of(fake_server)
        with transaction():
            repo.update(wid, {"name": "new"})
            assert version_of(fake_server) == start
            with reader.app_context():  # another worker, while the write is not committed
                assert widgets().find_by_id(wid).name == "old"
        assert version_of(fake_server) == start + 1
        with reader.app_context():
            assert widgets().find_by_id(wid).name == "new"


def test_rolled_back_write_does_not_bump(make_app: t.Any, fake_server: fakeredis.FakeServer) -> None:
    app = make_app()
    with app.app_context():
        (wid,) = add_widgets("a")
        repo = widgets()
        assert repo.count() == 1
        start = version_of(fake_server)
        with pytest.raises(RuntimeError, match="changed my mind"), transaction():
            repo.create({"name": "b"})
            raise RuntimeError("changed my mind")
        assert version_of(fake_server) == start
        with count_queries() as queries:
            assert repo.count() == 1
        assert queries == []
        with transaction():  # the session still works and the next commit bumps as usual
            repo.update(wid, {"name": "c"})
        assert version_of(fake_server) == start + 1


def test_savepoint_release_waits_for_the_outer_commit(
    make_app: t.Any, fake_server: fakeredis.FakeServer
) -> None:
    app = make_app()
    with app.app_context():
        (wid,) = add_widgets("a")
        repo = widgets()
        repo.find_by_id(wid)
        start = version_of(fake_server)
        with transaction():
            with transaction():  # a SAVEPOINT
                repo.update(wid, {"name": "b"})
            assert version_of(fake_server) == start
            with contextlib.suppress(LookupError), transaction():
                repo.create({"name": "c"})
                raise LookupError("roll back the savepoint only")
            assert version_of(fake_server) == start
        assert version_of(fake_server) == start + 1
        assert repo.find_by_id(wid).name == "b"
        assert repo.count() == 1


def test_reads_in_a_transaction_with_pending_writes_see_them_and_are_not_stored(
    make_app: t.Any, cache_kind: str
) -> None:
    app = make_app(cache_kind)
    with app.app_context():
        (wid,) = add_widgets("a")
        repo = widgets()
        assert repo.count() == 1
        with pytest.raises(RuntimeError), transaction():
            repo.create({"name": "b"})
            assert repo.count() == 2
            assert [w.name for w in repo.find_all()] == ["a", "b"]
            assert repo.find_by_id(wid).name == "a"
            raise RuntimeError("roll back")
        # Nothing read inside the transaction was stored: the rollback did not bump.
        assert repo.count() == 1
        assert [w.name for w in repo.find_all()] == ["a"]


def test_invalidate_inside_a_transaction_bumps_now_and_after_commit(
    make_app: t.Any, fake_server: fakeredis.FakeServer
) -> None:
    app = make_app()
    with app.app_context():
        (wid,) = add_widgets("a")
        repo = widgets()
        repo.find_by_id(wid)  # opens the session's transaction
        start = version_of(fake_server)
        repo.invalidate()
        assert version_of(fake_server) == start + 1
        db.session.commit()
        assert version_of(fake_server) == start + 2


# -- no stale read after a write, across workers ----------------------------------------------------


def test_no_stale_read_after_a_write_on_another_worker(make_app: t.Any, shared_kind: str) -> None:
    first, second = make_app(shared_kind), make_app(shared_kind)
    with first.app_context():
        (wid,) = add_widgets("v1")
        assert widgets().find_by_id(wid).name == "v1"
        assert widgets().count({"name": "v2"}) == 0
    with second.app_context():
        assert widgets().find_by_id(wid).name == "v1"  # the same cache: a hit
        assert get_state().stats.hits == 1
        with transaction():
            widgets().update(wid, {"name": "v2"})
    with first.app_context():
        assert widgets().find_by_id(wid).name == "v2"
        assert widgets().count({"name": "v2"}) == 1


class RacingRepository(WidgetRepository):
    """Runs ``during_load`` after its first ``find_by_id`` read the row, before it returns."""

    during_load: t.Callable[[], None] | None = None

    def find_by_id(self, id: t.Any, **kwargs: t.Any) -> Widget | None:
        row = super().find_by_id(id, **kwargs)
        hook, type(self).during_load = type(self).during_load, None
        if hook is not None:
            hook()
        return row


def test_a_load_that_raced_a_commit_is_never_served_after_it(make_app: t.Any, shared_kind: str) -> None:
    reader, writer = make_app(shared_kind), make_app(shared_kind)
    with writer.app_context():
        (wid,) = add_widgets("v1")

    def write_v2() -> None:
        with writer.app_context(), transaction():
            widgets().update(wid, {"name": "v2"})

    with reader.app_context():
        RacingRepository.during_load = write_v2
        racing = CachedRepository(RacingRepository())
        # The reader loaded v1, then the write committed and bumped, then the reader stored v1:
        # under the version it read before loading, which no later read looks at.
        assert racing.find_by_id(wid).name == "v1"
        assert racing.find_by_id(wid).name == "v2"
    with writer.app_context():
        assert widgets().find_by_id(wid).name == "v2"


# -- stampede protection ----------------------------------------------------------------------------------


def run_readers(
    app: Flask, repo: CachedRepository[Widget], count: int, results: list[str]
) -> list[threading.Thread]:
    def read() -> None:
        with app.app_context():
            results.append(repo.find_by_id(1).name)

    threads = [threading.Thread(target=read) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


def test_concurrent_misses_in_one_process_load_once(make_app: t.Any, cache_kind: str) -> None:
    app = make_app(cache_kind)
    loader = GatedRepository()
    repo = CachedRepository(loader)
    results: list[str] = []
    threads = run_readers(app, repo, 16, results)
    wait_until(lambda: get_state(app).stats.misses == 16)
    loader.gate.set()
    for thread in threads:
        thread.join()
    assert loader.calls == 1
    assert results == ["loaded"] * 16
    stats = get_state(app).stats.snapshot()
    assert (stats["loads"], stats["coalesced"]) == (1, 15)


def test_concurrent_misses_on_two_workers_load_once(make_app: t.Any, shared_kind: str) -> None:
    config = {"BACKEND_CACHE_LOCK_WAIT_MS": 30_000, "BACKEND_CACHE_POLL_INTERVAL_MS": 1}
    first, second = make_app(shared_kind, **config), make_app(shared_kind, **config)
    loader = GatedRepository()
    repo = CachedRepository(loader)
    results: list[str] = []
    threads = run_readers(first, repo, 8, results) + run_readers(second, repo, 8, results)
    wait_until(lambda: get_state(first).stats.misses + get_state(second).stats.misses == 16)
    loader.gate.set()
    for thread in threads:
        thread.join()
    assert loader.calls == 1
    assert results == ["loaded"] * 16


def test_a_miss_loads_itself_when_the_lock_holder_does_not_fill_in_time(
    make_app: t.Any, shared_kind: str
) -> None:
    # Binary-exact seconds (0.125, 0.5), so that the fake clock adds up exactly.
    config = {"BACKEND_CACHE_LOCK_WAIT_MS": 500, "BACKEND_CACHE_POLL_INTERVAL_MS": 125}
    clock = FakeClock()
    holder_app, waiter_app = make_app(shared_kind, **config), make_app(shared_kind, clock=clock, **config)
    stuck = GatedRepository("from the stuck worker")
    holder = run_readers(holder_app, CachedRepository(stuck), 1, [])
    try:
        wait_until(lambda: stuck.calls == 1)  # it holds the key's lock and does not fill
        own = GatedRepository("loaded by the waiter", open_gate=True)
        with waiter_app.app_context():
            assert CachedRepository(own).find_by_id(1).name == "loaded by the waiter"
        assert own.calls == 1
        assert clock.sleeps == [0.125] * 4  # it polled for the lock wait, then loaded
    finally:
        stuck.gate.set()
        holder[0].join()


# -- JSON round trips -----------------------------------------------------------------------------------------


ALL_VALUES: dict[str, t.Any] = {
    "name": "every type",
    "notes": None,
    "active": False,
    "count": 2**40,
    "ratio": 0.1,
    "price": decimal.Decimal("12.340"),
    "created_at": dt.datetime(2026, 11, 25, 15, 1, 9, 970123, tzinfo=dt.UTC),
    "naive_at": dt.datetime(2026, 1, 2, 3, 4, 5, 6),
    "day": dt.date(2026, 2, 28),
    "at_time": dt.time(23, 59, 58, 123456),
    "span": dt.timedelta(days=3, seconds=7, microseconds=11),
    "ref": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "kind": Kind.LARGE,
    "blob": b"\x00\xff\x80binary",
    "extra": {"list": [1, 2.5, "x", None, True], "nested": {"k": "v"}},
}


def test_every_column_type_round_trips(make_app: t.Any, cache_kind: str) -> None:
    app = make_app(cache_kind)
    with app.app_context():
        with transaction():
            owner = OwnerRepository().create({"name": "Ann"})
            wid = WidgetRepository().create({**ALL_VALUES, "owner_id": owner.id}).id
        db.session.expunge_all()
        expected = WidgetRepository().find_by_id(wid)
        repo = widgets()
        repo.find_by_id(wid)
        cached = repo.find_by_id(wid)
        assert get_state().stats.hits == 1
        assert cached is not expected
        assert sa.inspect(cached).detached
        for column in WidgetRepository.column_names():
            value, want = getattr(cached, column), getattr(expected, column)
            assert (column, value, type(value)) == (column, want, type(want))
        assert cached.created_at.tzinfo is not None
        assert cached.naive_at.tzinfo is None


def test_include_round_trips_the_related_row(make_app: t.Any, cache_kind: str) -> None:
    app = make_app(cache_kind)
    with app.app_context():
        with transaction():
            owner_id = OwnerRepository().create({"name": "Ann", "email": "ann@example.com"}).id
        wid, lone = add_widgets("a", "b")
        with transaction():
            WidgetRepository().update(wid, {"owner_id": owner_id})
        repo = widgets()
        for _ in range(2):
            db.session.expunge_all()
            found = repo.find_by_id(wid, include=["owner"])
            assert (found.owner.id, found.owner.name) == (owner_id, "Ann")
            assert repo.find_by_id(lone, include=["owner"]).owner is None
        assert get_state().stats.hits == 2
        # Include("owner", ("id", "name")) stores no email: the cached copy raises for it
        # (an attached row would load it; a detached copy cannot, and never guesses).
        with pytest.raises(sa.exc.SQLAlchemyError):
            _ = found.owner.email


def test_fields_projection_restores_only_those_fields(make_app: t.Any, cache_kind: str) -> None:
    app = make_app(cache_kind)
    with app.app_context():
        (wid,) = add_widgets("a", notes="secret notes")
        repo = widgets()
        for _ in range(2):
            db.session.expunge_all()
            found = repo.find_by_id(wid, fields=["name"])
            assert (found.id, found.name) == (wid, "a")
            # Not loaded: an error on access, as without the cache, never a wrong value.
            with pytest.raises(sa.exc.SQLAlchemyError):
                _ = found.notes
            with pytest.raises(sa.exc.SQLAlchemyError):
                _ = found.owner
        assert get_state().stats.hits == 1
        assert repo.find_by_id(wid).notes == "secret notes"  # a full read is another key


def test_page_round_trips_with_its_cursor(make_app: t.Any, cache_kind: str) -> None:
    app = make_app(cache_kind)
    with app.app_context():
        add_widgets("a", "b", "c")
        repo = widgets()
        first = repo.find_page(limit=2)
        cached = repo.find_page(limit=2)
        assert get_state().stats.hits == 1
        assert (cached.total, cached.limit, cached.offset, cached.next_cursor) == (
            first.total,
            first.limit,
            first.offset,
            first.next_cursor,
        )
        assert [w.name for w in cached.items] == ["a", "b"]
        assert cached.next_cursor is not None
        following = repo.find_page(limit=2, cursor=cached.next_cursor, with_total=False)
        again = repo.find_page(limit=2, cursor=cached.next_cursor, with_total=False)
        assert [w.name for w in again.items] == [w.name for w in following.items] == ["c"]
        assert (again.total, again.offset, again.next_cursor) == (None, None, None)


def test_count_and_exists_round_trip_as_int_and_bool(make_app: t.Any, cache_kind: str) -> None:
    app = make_app(cache_kind)
    with app.app_context():
        add_widgets("a", "b")
        repo = widgets()
        for _ in range(2):
            count, found, missing = repo.count(), repo.exists({"name": "a"}), repo.exists({"name": "z"})
            assert (type(count), count, found, missing) == (int, 2, True, False)
        assert get_state().stats.hits == 3


class RecordingRepository(WidgetRepository):
    """Records the ids each ``find_by_ids`` call asked for."""

    calls: t.ClassVar[list[list[t.Any]]] = []

    def find_by_ids(self, ids: t.Iterable[t.Any]) -> list[Widget]:
        wanted = list(ids)
        self.calls.append(wanted)
        return super().find_by_ids(wanted)


def test_find_by_ids_keeps_order_and_loads_only_the_ids_not_cached(make_app: t.Any, cache_kind: str) -> None:
    app = make_app(cache_kind)
    RecordingRepository.calls = []
    with app.app_context():
        a, b, c = add_widgets("a", "b", "c")
        repo = CachedRepository(RecordingRepository())
        repo.find_by_id(b)
        found = repo.find_by_ids([c, b, 404, c, a])
        assert [w.name for w in found] == ["c", "b", "a"]
        assert RecordingRepository.calls == [[c, 404, a]]
        db.session.expunge_all()
        with count_queries() as queries:
            again = repo.find_by_ids([a, b, c])
        assert [w.name for w in again] == ["a", "b", "c"]
        assert queries == []
        assert repo.find_by_ids([]) == []


def test_codec_rejects_a_value_with_no_json_form() -> None:
    widget = Widget(id=1, name="x", extra={"when": object()})
    with pytest.raises(TypeError, match="cannot be stored"):
        ModelCodec(Widget).dump(widget)


def test_unreadable_value_is_a_miss(make_app: t.Any, fake_server: fakeredis.FakeServer) -> None:
    app = make_app()
    raw = fakeredis.FakeRedis(server=fake_server)
    with app.app_context():
        (wid,) = add_widgets("a")
        repo = widgets()
        repo.find_by_id(wid)
        for key in raw.keys("fbp:Widget:v*"):
            raw.set(key, b'{"f": 0, "d": "another release"}')
        assert repo.find_by_id(wid).name == "a"
        assert get_state().stats.hits == 0
        assert repo.find_by_id(wid).name == "a"
        assert get_state().stats.hits == 1


# -- what Redis holds ------------------------------------------------------------------------------------------


def test_values_in_redis_are_json_never_pickle(make_app: t.Any, shared_kind: str, fake_server: t.Any) -> None:
    app = make_app(shared_kind)
    raw = fakeredis.FakeRedis(server=fake_server) if shared_kind == "fakeredis" else get_state(app).redis
    with app.app_context():
        with transaction():
            owner = OwnerRepository().create({"name": "Ann"})
            wid = WidgetRepository().create({**ALL_VALUES, "owner_id": owner.id}).id
        repo = widgets()
        repo.find_by_id(wid, include=["owner"])
        repo.find_by_ids([wid, 404])
        repo.find_page(limit=5)
        repo.count()
        repo.exists()
        keys = sorted(k.decode() for k in raw.keys("fbp:*"))
        assert len(keys) >= 7
        for key in keys:
            value = raw.get(key)
            if key.endswith(":version"):
                assert value.isdigit()
                continue
            assert not value.startswith((b"!", b"\x80"))  # cachelib's pickle marker, pickle's opcode
            document = json.loads(value)
            assert document["f"] == 1
        item_values = [json.loads(raw.get(k))["d"] for k in keys if ":item:" in k]
        stored = next(v for v in item_values if v is not None and "r" in v)
        assert stored["c"]["kind"] == {"enum": "LARGE", "value": "large"}
        assert stored["c"]["created_at"] == {"dt": "2026-11-25T15:01:09.970123+00:00"}
        assert stored["r"]["owner"]["c"] == {"id": owner.id, "name": "Ann"}


def test_keys_are_namespaced_and_hashed_never_raw_input(
    make_app: t.Any, fake_server: fakeredis.FakeServer
) -> None:
    app = make_app(BACKEND_CACHE_TTL=60)
    raw = fakeredis.FakeRedis(server=fake_server)
    hostile = "x:* \r\nFLUSHALL"
    with app.app_context():
        repo = widgets()
        repo.find_all(filters={"name__contains": hostile})
        repo.count({"name": hostile})
        repo.find_by_id(hostile)
        owners().find_by_id(1)
        keys = [k.decode() for k in raw.keys("*")]
        assert keys
        assert all(KEY_RE.match(k) for k in keys), keys
        assert not any("FLUSHALL" in k for k in keys)
        value_keys = [k for k in keys if not k.endswith(":version")]
        assert all(0 < raw.ttl(k) <= 60 for k in value_keys)
        assert all(raw.ttl(k) == -1 for k in keys if k.endswith(":version"))


def test_equal_queries_share_one_key(make_app: t.Any, cache_kind: str) -> None:
    app = make_app(cache_kind)
    with app.app_context():
        add_widgets("a", "b")
        repo = widgets()
        repo.find_all(filters={"kind": [Kind.SMALL, Kind.LARGE]}, sort="count, name", fields=["name", "id"])
        repo.find_all(
            filters={"kind": (Kind.SMALL, Kind.LARGE)}, sort=["count", "name"], fields=["id", "name"]
        )
        assert get_state().stats.hits == 1


# -- when Redis is down ------------------------------------------------------------------------------------------


def cache_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "flask_backend_patterns.cache"
        and r.levelno == logging.WARNING
        and "unavailable" in r.message
    ]


def test_reads_use_the_database_when_redis_is_down_and_warn_once_per_interval(
    make_app: t.Any, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    app = make_app("down", clock=clock, BACKEND_CACHE_WARN_INTERVAL=30, BACKEND_CACHE_RETRY_INTERVAL_MS=1000)
    caplog.set_level(logging.WARNING, "flask_backend_patterns.cache")
    with app.app_context():
        (wid,) = add_widgets("from the database")
        repo = widgets()
        for _ in range(3):
            assert repo.find_by_id(wid).name == "from the database"
            assert repo.count() == 1
        assert len(cache_warnings(caplog)) == 1
        assert get_state().stats.errors == 1  # later reads skipped Redis for the retry interval
        clock.now += 2
        assert repo.find_by_id(wid).name == "from the database"
        assert (get_state().stats.errors, len(cache_warnings(caplog))) == (2, 1)
        clock.now += 30
        assert repo.find_all()[0].name == "from the database"
        assert (get_state().stats.errors, len(cache_warnings(caplog))) == (3, 2)
        assert get_state().stats.loads == 8


def test_writes_succeed_when_redis_is_down(make_app: t.Any, caplog: pytest.LogCaptureFixture) -> None:
    app = make_app("down")
    caplog.set_level(logging.WARNING, "flask_backend_patterns.cache")
    with app.app_context():
        (wid,) = add_widgets("a")
        repo = widgets()
        with transaction():
            repo.update(wid, {"name": "b"})
        assert repo.find_by_id(wid).name == "b"
        assert any("invalidation of Widget failed" in r.message for r in caplog.records)


def test_invalidation_missed_while_down_is_done_when_redis_answers_again(
    make_app: t.Any, fake_server: fakeredis.FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    writer, other = make_app(clock=clock), make_app()
    caplog.set_level(logging.INFO, "flask_backend_patterns.cache")
    with writer.app_context():
        (wid,) = add_widgets("v1")
        repo = widgets()
        assert repo.find_by_id(wid).name == "v1"
        fake_server.connected = False
        with transaction():
            repo.update(wid, {"name": "v2"})
        assert repo.find_by_id(wid).name == "v2"  # from the database while down
        fake_server.connected = True
    with other.app_context():
        # The documented window: a worker that reaches Redis still has the old entry.
        assert widgets().find_by_id(wid).name == "v1"
    clock.now += 2
    with writer.app_context():
        assert repo.find_by_id(wid).name == "v2"  # its first cache access makes the missed bump
    with other.app_context():
        assert widgets().find_by_id(wid).name == "v2"
    assert any("done after the backend came back" in r.message for r in caplog.records)


def test_cache_health_reports_redis_down(make_app: t.Any, fake_server: fakeredis.FakeServer) -> None:
    up, down, local = make_app(), make_app("down"), make_app("simple")
    assert cache_health(up) == cache_health(up)
    assert cache_health(up).ok and cache_health(up).backend == "redis"
    assert cache_health(local).ok and cache_health(local).backend == "simple"
    health = cache_health(down)
    assert (health.ok, health.backend) == (False, "redis")
    assert "ConnectionError" in (health.error or "")
    fake_server.connected = False
    with up.app_context():
        assert get_state().ping() is False


def test_real_redis_health(make_app: t.Any, real_redis: redis.Redis) -> None:
    app = make_app("redis")
    with app.app_context():
        assert cache_health().ok


# -- configuration, stats ------------------------------------------------------------------------------------------


def test_backend_follows_flask_caching_keys(make_app: t.Any) -> None:
    assert isinstance(get_state(make_app("simple")).backend, SimpleCache)
    app = make_app("down")
    assert isinstance(get_state(app).backend, RedisCache)
    assert get_state(app).redis is not None
    assert (
        get_state(make_app("simple", CACHE_TYPE="flask_caching.backends.SimpleCache")).backend_kind
        == "simple"
    )


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"CACHE_TYPE": "MemcachedCache"}, "CACHE_TYPE"),
        ({"BACKEND_CACHE_TTL": 0}, "BACKEND_CACHE_TTL"),
        ({"BACKEND_CACHE_KEY_PREFIX": "bad prefix"}, "BACKEND_CACHE_KEY_PREFIX"),
        (
            {"CACHE_REDIS_URL": DOWN_REDIS_URL, "CACHE_OPTIONS": {"decode_responses": True}},
            "decode_responses",
        ),
    ],
)
def test_wrong_config_fails_at_init_app(config: dict[str, t.Any], message: str) -> None:
    app = Flask("bad")
    app.config.update(config)
    with pytest.raises(ValueError, match=message):
        RepositoryCache(app)


def test_config_from_the_environment_arrives_as_strings(make_app: t.Any) -> None:
    app = make_app("simple", BACKEND_CACHE_TTL="60", BACKEND_CACHE_WARN_INTERVAL="5")
    assert (get_state(app).ttl, get_state(app).warn_interval) == (60, 5)


def test_cached_repository_needs_a_mapped_model() -> None:
    with pytest.raises(TypeError, match="model="):
        CachedRepository(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="namespace"):
        CachedRepository(WidgetRepository(), namespace="no spaces")


def test_stats_are_per_app_and_logged_at_debug(make_app: t.Any, caplog: pytest.LogCaptureFixture) -> None:
    first, second = make_app(), make_app()
    caplog.set_level(logging.DEBUG, "flask_backend_patterns.cache")
    with first.app_context():
        (wid,) = add_widgets("a")
        widgets().find_by_id(wid)
        widgets().find_by_id(wid)
    assert get_state(first).stats.snapshot() == {
        "hits": 1,
        "misses": 1,
        "loads": 1,
        "coalesced": 0,
        "errors": 0,
    }
    assert get_state(second).stats.snapshot()["hits"] == 0
    lines = [r for r in caplog.records if r.levelno == logging.DEBUG and r.message.startswith("cache hit")]
    assert len(lines) == 1
    assert lines[0].cache_stats["hits"] == 1  # type: ignore[attr-defined]


# -- cached responses ------------------------------------------------------------------------


def add_widget_views(app: Flask, calls: list[str]) -> None:
    from flask import jsonify
    from flask import request
    from flask.views import MethodView

    from flask_backend_patterns.cache import cached_response

    @app.get("/widgets/<int:wid>")
    @cached_response(Widget, Owner)
    def one(wid: int) -> t.Any:
        calls.append(f"one {wid}")
        found = widgets().find_by_id(wid)
        if found is None:
            return jsonify(error="missing"), 404
        response = jsonify(name=found.name, q=request.args.get("q"))
        response.headers["ETag"] = f'"{wid}"'
        return response

    class Listing(MethodView):
        @cached_response(Widget)
        def get(self, args: dict[str, t.Any]) -> t.Any:
            calls.append("list")
            return jsonify(names=[w.name for w in widgets().find_all(**args)])

    listing = Listing.as_view("listing")
    app.add_url_rule("/widgets", view_func=lambda: listing(args={"sort": request.args.get("sort", "id")}))


def test_cached_response_skips_the_view_until_a_write(make_app: t.Any, shared_kind: str) -> None:
    calls: list[str] = []
    first, second = make_app(shared_kind), make_app(shared_kind)
    for app in (first, second):
        add_widget_views(app, calls)
    with first.app_context():
        (wid,) = add_widgets("before")
    a, b = first.test_client(), second.test_client()
    assert a.get(f"/widgets/{wid}").get_json()["name"] == "before"
    response = b.get(f"/widgets/{wid}")  # another worker: served from the shared cache
    assert response.get_json()["name"] == "before" and response.headers["ETag"] == f'"{wid}"'
    assert a.get("/widgets").get_json() == {"names": ["before"]}
    assert b.get("/widgets").get_json() == {"names": ["before"]}
    assert calls == [f"one {wid}", "list"]
    with first.app_context(), transaction():
        widgets().update(wid, {"name": "after"})
    # Acknowledged: neither worker serves the old response.
    assert b.get(f"/widgets/{wid}").get_json()["name"] == "after"
    assert b.get("/widgets").get_json() == {"names": ["after"]}
    assert calls[-2:] == [f"one {wid}", "list"]


def test_cached_response_keys_on_the_arguments_and_never_stores_errors(make_app: t.Any) -> None:
    calls: list[str] = []
    app = make_app("fakeredis")
    add_widget_views(app, calls)
    with app.app_context():
        (wid,) = add_widgets("w")
    client = app.test_client()
    for _ in range(2):
        assert client.get("/widgets/999").status_code == 404
    assert calls == ["one 999", "one 999"]
    client.get(f"/widgets/{wid}")
    client.get(f"/widgets/{wid}")
    assert calls.count(f"one {wid}") == 1
    # A conditional request goes to the view, which answers it.
    client.get(f"/widgets/{wid}", headers={"If-None-Match": '"1"'})
    assert calls.count(f"one {wid}") == 2


def test_cached_response_reads_through_when_the_backend_is_down(make_app: t.Any) -> None:
    calls: list[str] = []
    app = make_app("down")
    add_widget_views(app, calls)
    with app.app_context():
        (wid,) = add_widgets("w")
    client = app.test_client()
    assert [client.get(f"/widgets/{wid}").status_code for _ in range(2)] == [200, 200]
    assert calls == [f"one {wid}", f"one {wid}"]


def test_cached_response_needs_models() -> None:
    from flask_backend_patterns.cache import cached_response

    with pytest.raises(ValueError, match="models"):
        cached_response()
    with pytest.raises(ValueError, match="ttl"):
        cached_response(Widget, ttl=0)


def test_cached_response_keeps_the_order_of_a_repeated_parameter(make_app: t.Any) -> None:
    from flask import jsonify
    from flask import request

    from flask_backend_patterns.cache import cached_response

    app = make_app("fakeredis")

    @app.get("/first")
    @cached_response(Widget)
    def first() -> t.Any:
        return jsonify(first=request.args.getlist("x")[0])

    client = app.test_client()
    assert client.get("/first?x=a&x=b").get_json() == {"first": "a"}
    assert client.get("/first?x=b&x=a").get_json() == {"first": "b"}
    assert client.get("/first?x=a&x=b").get_json() == {"first": "a"}


def test_cached_response_keeps_the_view_headers_and_never_stores_cookies_or_vary(make_app: t.Any) -> None:
    from flask import jsonify

    from flask_backend_patterns.cache import cached_response

    app = make_app("fakeredis")
    calls: list[str] = []

    @app.get("/linked")
    @cached_response(Widget)
    def linked() -> t.Any:
        calls.append("linked")
        response = jsonify(ok=True)
        response.headers["Link"] = '</next>; rel="next"'
        return response

    @app.get("/personal")
    @cached_response(Widget)
    def personal() -> t.Any:
        calls.append("personal")
        response = jsonify(ok=True)
        response.set_cookie("seen", "1")
        return response

    client = app.test_client()
    for _ in range(2):
        assert client.get("/linked").headers["Link"] == '</next>; rel="next"'
        client.get("/personal")
    assert calls == ["linked", "personal", "personal"]


def test_a_response_hit_is_one_mget_and_a_repository_hit_two_commands(
    make_app: t.Any, shared_kind: str, redis_trips: list[list[str]]
) -> None:
    calls: list[str] = []
    app = make_app(shared_kind)
    add_widget_views(app, calls)
    with app.app_context():
        (wid,) = add_widgets("a")
        widgets().find_by_id(wid)  # stored
    client = app.test_client()
    client.get(f"/widgets/{wid}")  # stored
    redis_trips.clear()
    with app.app_context():
        assert widgets().find_by_id(wid).name == "a"
    assert redis_trips == [["MGET"], ["GET"]]  # the versions, then the value keyed on them
    redis_trips.clear()
    assert client.get(f"/widgets/{wid}").get_json()["name"] == "a"
    assert redis_trips == [["MGET"]] and calls == [f"one {wid}"]


#: fakeredis names each client's host at random unless told: one name, one server.
FAKE_HOST = "fakeredis"


def _with_limiter(
    app: Flask, shared_kind: str, fake_server: fakeredis.FakeServer | None, limit: str = "3 per minute"
) -> Flask:
    from flask_backend_patterns.ratelimit import RateLimiting

    app.config.update(RATELIMIT_DEFAULT=limit, BACKEND_LOGGING_CONFIGURE=False)
    if shared_kind == "redis":
        app.config["RATELIMIT_STORAGE_URI"] = REAL_REDIS_URL
    else:
        app.config["RATELIMIT_STORAGE_URI"] = "redis://127.0.0.1:6379/0"  # the pool below serves it
        app.config["RATELIMIT_STORAGE_OPTIONS"] = {
            "connection_pool": fakeredis.FakeRedis(server=fake_server, host=FAKE_HOST).connection_pool
        }
    RateLimiting(app)
    return app


def test_a_response_hit_rides_on_the_rate_limit_round_trip(
    make_app: t.Any, shared_kind: str, fake_server: fakeredis.FakeServer, redis_trips: list[list[str]]
) -> None:
    calls: list[str] = []
    app = _with_limiter(make_app(shared_kind), shared_kind, fake_server)
    add_widget_views(app, calls)
    with app.app_context():
        (wid,) = add_widgets("a")
    client = app.test_client()
    assert client.get(f"/widgets/{wid}").get_json()["name"] == "a"  # a miss: stored
    redis_trips.clear()
    hit = client.get(f"/widgets/{wid}")
    assert hit.get_json()["name"] == "a" and hit.headers["RateLimit-Remaining"] == "1"
    assert redis_trips == [["EVALSHA", "MGET"]]  # one round trip for the count and the hit
    assert calls == [f"one {wid}"]
    # A write between two requests: the read that rides along sees the new version.
    with app.app_context(), transaction():
        widgets().update(wid, {"name": "b"})
    assert client.get(f"/widgets/{wid}").get_json()["name"] == "b"
    assert calls == [f"one {wid}", f"one {wid}"]
    # Over the limit: a 429, whatever the cache holds.
    assert client.get(f"/widgets/{wid}").status_code == 429


@pytest.mark.parametrize("setup", ["limit-on-another-redis", "prefetch-off"])
def test_a_response_hit_makes_its_own_trip_when_it_cannot_ride_along(
    make_app: t.Any, fake_server: fakeredis.FakeServer, redis_trips: list[list[str]], setup: str
) -> None:
    calls: list[str] = []
    if setup == "limit-on-another-redis":
        app = _with_limiter(make_app("fakeredis"), "fakeredis", fakeredis.FakeServer())
    else:
        app = _with_limiter(make_app("fakeredis", BACKEND_CACHE_PREFETCH="false"), "fakeredis", fake_server)
    add_widget_views(app, calls)
    with app.app_context():
        (wid,) = add_widgets("a")
    client = app.test_client()
    client.get(f"/widgets/{wid}")
    redis_trips.clear()
    assert client.get(f"/widgets/{wid}").get_json()["name"] == "a"
    assert redis_trips == [["EVALSHA"], ["MGET"]]


def test_a_write_in_the_same_request_is_seen_though_the_read_was_queued_before_it(
    make_app: t.Any, fake_server: fakeredis.FakeServer, redis_trips: list[list[str]]
) -> None:
    from flask import request as flask_request

    calls: list[str] = []
    app = _with_limiter(make_app("fakeredis"), "fakeredis", fake_server)
    add_widget_views(app, calls)
    with app.app_context():
        (wid,) = add_widgets("a")

    @app.before_request
    def write_first() -> None:  # runs after the read is queued, before the view
        rename = flask_request.headers.get("X-Rename")  # not in the key: the same cached URL
        if rename:
            with transaction():
                widgets().update(wid, {"name": rename})

    client = app.test_client()
    assert client.get(f"/widgets/{wid}").get_json()["name"] == "a"  # stored
    redis_trips.clear()
    renamed = client.get(f"/widgets/{wid}", headers={"X-Rename": "b"})
    assert redis_trips[0] == ["EVALSHA", "MGET"]  # the read was queued and carried
    assert renamed.get_json()["name"] == "b"


def test_a_retried_invalidation_is_seen_by_the_request_that_retries_it(
    make_app: t.Any, fake_server: fakeredis.FakeServer, monkeypatch: t.Any
) -> None:
    calls: list[str] = []
    app = _with_limiter(make_app("fakeredis"), "fakeredis", fake_server, limit="100 per minute")
    add_widget_views(app, calls)
    with app.app_context():
        (wid,) = add_widgets("a")
    client = app.test_client()
    assert client.get(f"/widgets/{wid}").get_json()["name"] == "a"  # stored
    state = get_state(app)
    real_bump = state.store.bump

    def down(key: str) -> int:
        raise redis.ConnectionError("Redis is down")

    monkeypatch.setattr(state.store, "bump", down)
    with app.app_context(), transaction():
        widgets().update(wid, {"name": "b"})  # committed; its invalidation failed
    assert state._pending_bumps
    monkeypatch.setattr(state.store, "bump", real_bump)
    state._down_until = None  # the back-off is over: Redis answers again
    assert client.get(f"/widgets/{wid}").get_json()["name"] == "b"
    assert not state._pending_bumps


def test_a_hook_that_changes_the_view_args_after_the_prefetch_changes_the_key(
    make_app: t.Any, fake_server: fakeredis.FakeServer
) -> None:
    from flask import request as flask_request

    calls: list[str] = []
    app = _with_limiter(make_app("fakeredis"), "fakeredis", fake_server)
    add_widget_views(app, calls)
    with app.app_context():
        first, second = add_widgets("a", "b")

    @app.before_request
    def redirect_to_other() -> None:  # runs after the prefetch hook made the key
        other = flask_request.headers.get("X-Other")
        if other and flask_request.view_args:
            flask_request.view_args["wid"] = int(other)

    client = app.test_client()
    assert client.get(f"/widgets/{first}").get_json()["name"] == "a"  # stored
    assert client.get(f"/widgets/{first}", headers={"X-Other": str(second)}).get_json()["name"] == "b"
    assert calls == [f"one {first}", f"one {second}"]


@pytest.mark.parametrize(
    "url",
    ["/items/7?b=2&a=1&b=1", "/items/x%22y?q=%F0%9F%99%82&q=", "/items/7", "/items/true"],
)
def test_the_response_key_of_plain_view_args_is_the_canonical_one(url: str) -> None:
    from flask_backend_patterns.cache import _canonical
    from flask_backend_patterns.cache import _response_query

    app = Flask(__name__)
    app.add_url_rule("/items/<int:item>", "by_int", lambda item: "")
    app.add_url_rule("/items/<item>", "by_str", lambda item: "")
    with app.test_request_context(url):
        from flask import request as flask_request

        expected = _canonical(
            {
                "endpoint": flask_request.endpoint,
                "view_args": flask_request.view_args,
                "query": sorted(flask_request.args.items(multi=True), key=lambda pair: pair[0]),
            }
        )
        assert _response_query() == expected


def test_the_response_key_is_remade_when_a_view_arg_changes_type_only() -> None:
    from flask import request as flask_request

    from flask_backend_patterns.cache import _response_query

    app = Flask(__name__)
    app.add_url_rule("/items/<int:item>", "by_int", lambda item: "")
    with app.test_request_context("/items/1"):
        as_int = _response_query()
        assert flask_request.view_args is not None
        flask_request.view_args["item"] = True  # equal to 1, and not the same key
        as_bool = _response_query()
    assert as_int != as_bool and '"item":1' in as_int and '"item":true' in as_bool


def test_view_args_with_no_json_form_are_served_by_the_view_uncached(
    make_app: t.Any, fake_server: fakeredis.FakeServer
) -> None:
    from werkzeug.routing import BaseConverter

    from flask_backend_patterns.cache import cached_response

    class Opaque:
        def __init__(self, text: str) -> None:
            self.text = text

    class OpaqueConverter(BaseConverter):
        def to_python(self, value: str) -> Opaque:
            return Opaque(value)

        def to_url(self, value: Opaque) -> str:
            return value.text

    app = _with_limiter(make_app("fakeredis"), "fakeredis", fake_server, limit="100 per minute")
    app.url_map.converters["opaque"] = OpaqueConverter
    calls: list[str] = []

    @app.get("/opaque/<opaque:thing>")
    @cached_response(Widget)
    def opaque(thing: Opaque) -> t.Any:
        calls.append(thing.text)
        return {"text": thing.text}

    client = app.test_client()
    assert [client.get("/opaque/x").get_json() for _ in range(2)] == [{"text": "x"}] * 2
    assert calls == ["x", "x"]  # no key for it: the view answers every time
