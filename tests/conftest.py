"""Fixtures shared by every test: app, client, db, a query counter.

With ``DATABASE_URL``/``REDIS_URL`` set (CI sets both) the tests use the real
PostgreSQL and Redis; otherwise SQLite in a temporary folder. Under ``CI=true`` a
missing or unreachable service fails the run instead of skipping tests.
"""

from __future__ import annotations

import contextlib
import os
import typing as t

import pytest
import sqlalchemy as sa

from example_app import create_app
from example_app.config import _database_url
from example_app.extensions import db as _db
from example_app.models import MarketStatusCount
from example_app.models import SearchRevision
from flask_backend_patterns.cache import get_state as get_cache_state
from flask_backend_patterns.cache import namespace_of

DATABASE_URL = os.environ.get("DATABASE_URL")
REDIS_URL = os.environ.get("REDIS_URL")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
TEST_SECRET = "test-secret-key-that-is-long-enough-0123456789"
TEST_JWT_SECRET = "test-jwt-secret-that-is-long-enough-0123456789"


def _check_services() -> None:
    if not DATABASE_URL or not REDIS_URL:
        raise pytest.UsageError("CI=true needs DATABASE_URL and REDIS_URL: the services are required in CI")
    engine = sa.create_engine(_database_url(DATABASE_URL))
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        raise pytest.UsageError(f"PostgreSQL at DATABASE_URL does not answer: {exc}") from exc
    finally:
        engine.dispose()
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        raise pytest.UsageError(f"Redis at REDIS_URL does not answer: {exc}") from exc


def pytest_configure(config: pytest.Config) -> None:
    if IN_CI:
        _check_services()


def pytest_report_header(config: pytest.Config) -> str:
    return f"database: {'PostgreSQL' if DATABASE_URL else 'SQLite'}; redis: {'yes' if REDIS_URL else 'no'}"


@pytest.fixture(scope="session")
def database_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    if DATABASE_URL:
        return _database_url(DATABASE_URL)
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"


def make_app(database_uri: str, **overrides: t.Any) -> t.Any:
    """The example app configured for tests."""
    config = {
        "TESTING": True,
        "SQLALCHEMY_DATABASE_URI": database_uri,
        "SECRET_KEY": TEST_SECRET,
        "JWT_SECRET_KEY": TEST_JWT_SECRET,
        "EXAMPLE_AUTO_MIGRATE": False,
        "BACKEND_LOGGING_CONFIGURE": False,
        # Tests send many requests from one address; the rate-limit tests turn it on.
        "RATELIMIT_ENABLED": False,
        # Index jobs run in the request unless a test asks for a queue and a worker.
        "BACKEND_JOBS_INLINE": True,
        **overrides,
    }
    app = create_app(config)

    @app.teardown_request
    def _end_the_request_transaction(_exc: BaseException | None) -> None:
        # In production each request has its own app context, so its own session. A test
        # keeps one app context around its requests, and so one session: end the
        # request's transaction as the app context's teardown would, keeping the objects.
        _db.session.rollback()

    return app


@pytest.fixture(scope="session")
def _schema(database_uri: str) -> t.Iterator[None]:
    app = make_app(database_uri)
    with app.app_context():
        _db.drop_all()
        _db.create_all()
    yield
    with app.app_context():
        _db.drop_all()
        _db.engine.dispose()


@pytest.fixture
def app(database_uri: str, _schema: None) -> t.Iterator[t.Any]:
    app = make_app(database_uri)
    with app.app_context():
        yield app
        _db.session.remove()
        # The rows go below without the repositories: drop every cached read of them too.
        cache_state = get_cache_state(app)
        for mapper in _db.Model.registry.mappers:
            cache_state.invalidate(namespace_of(mapper.class_))
        with _db.engine.begin() as conn:
            for table in reversed(_db.metadata.sorted_tables):
                conn.execute(table.delete())
            # Deleting markets moved the trigger-kept counters (maybe after they were
            # emptied): clear them last so the next test starts from zero.
            conn.execute(MarketStatusCount.__table__.delete())
            conn.execute(sa.insert(SearchRevision.__table__).values(id=1, revision=0))
        _db.engine.dispose()


@pytest.fixture
def app_factory(database_uri: str) -> t.Iterator[t.Callable[..., t.Any]]:
    """``app_factory(uri=None, **config)``: more apps for a test; their engines are closed after it."""
    made: list[t.Any] = []

    def factory(uri: str | None = None, **overrides: t.Any) -> t.Any:
        made.append(make_app(uri or database_uri, **overrides))
        return made[-1]

    yield factory
    for extra in made:
        with extra.app_context():
            _db.engine.dispose()


@pytest.fixture
def client(app: t.Any) -> t.Any:
    return app.test_client()


@pytest.fixture
def db(app: t.Any) -> t.Any:
    return _db


_TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")


class QueryCounter:
    """Counts the queries sent to the database while active (not BEGIN/COMMIT/...)."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    @property
    def count(self) -> int:
        return len(self.statements)


@pytest.fixture
def count_queries(db: t.Any) -> t.Callable[[], t.ContextManager[QueryCounter]]:
    """``with count_queries() as q: ...; assert q.count == 2``."""

    @contextlib.contextmanager
    def counting() -> t.Iterator[QueryCounter]:
        counter = QueryCounter()

        def before(conn: t.Any, cursor: t.Any, statement: str, *args: t.Any) -> None:
            if not statement.lstrip().upper().startswith(_TRANSACTION_CONTROL):
                counter.statements.append(statement)

        sa.event.listen(db.engine, "before_cursor_execute", before)
        try:
            yield counter
        finally:
            sa.event.remove(db.engine, "before_cursor_execute", before)

    return counting


@pytest.fixture
def auth_header(app: t.Any) -> t.Callable[..., dict[str, str]]:
    """``auth_header(role="user", user=None)``: an ``Authorization`` header for a (new) user."""
    from example_app.services import AuthService
    from tests.factories import make_user

    def header(role: str = "user", user: t.Any = None, **token_kw: t.Any) -> dict[str, str]:
        if user is None:
            user = make_user(role=role)
            _db.session.commit()
        token = AuthService().tokens_for(user, **token_kw)["access_token"]
        return {"Authorization": f"Bearer {token}"}

    return header


@pytest.fixture
def redis_trips(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every round trip any redis-py connection makes from now on, as the list of the
    command names it carried (a pipeline's several, a plain command's one)."""
    from redis.connection import AbstractConnection

    trips: list[list[str]] = []
    send_command, pack_commands = AbstractConnection.send_command, AbstractConnection.pack_commands

    def one(self: t.Any, *args: t.Any, **kwargs: t.Any) -> t.Any:
        trips.append([str(args[0]).upper()])
        return send_command(self, *args, **kwargs)

    def several(self: t.Any, commands: t.Any) -> t.Any:
        commands = list(commands)
        trips.append([str(command[0]).upper() for command in commands])
        return pack_commands(self, commands)

    monkeypatch.setattr(AbstractConnection, "send_command", one)
    monkeypatch.setattr(AbstractConnection, "pack_commands", several)
    return trips
