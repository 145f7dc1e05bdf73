"""The example market API: every part of flask_backend_patterns, used as a real service would.

``flask --app example_app run`` serves it on embedded defaults; ``gunicorn
"example_app:create_app()"`` in production.
"""

from __future__ import annotations

import typing as t
from pathlib import Path

from flask import Flask
from flask import Request
from flask.sessions import SecureCookieSession
from flask.sessions import SecureCookieSessionInterface

from flask_backend_patterns.api import Api
from flask_backend_patterns.transactions import enable_sqlite_savepoints

from .api import register_blueprints
from .cli import register_cli
from .config import load_config
from .extensions import auth
from .extensions import cache
from .extensions import db
from .extensions import jobs
from .extensions import limiter
from .extensions import migrate
from .extensions import patterns
from .search import get_embedder

MIGRATIONS_DIR = str(Path(__file__).parent / "migrations")


def create_app(config: t.Mapping[str, t.Any] | None = None) -> Flask:
    """Build the app: config (defaults < environment < ``config``), extensions, API, CLI."""
    app = Flask(__name__, instance_relative_config=True)
    app.session_interface = _CookielessSessionInterface()
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep the envelope's order
    load_config(app, config)
    # A wrong embedder name, or "sentence" without its extra, fails here, not at a search.
    get_embedder(app.config["EXAMPLE_SEARCH_EMBEDDER"])
    patterns.init_app(app)
    db.init_app(app)
    auth.init_app(app)
    limiter.init_app(app)
    cache.init_app(app)
    jobs.init_app(app)
    _enable_sqlite_foreign_keys(app)
    migrate.init_app(app, db, directory=MIGRATIONS_DIR)
    api = Api(app)
    register_blueprints(api)
    register_cli(app)
    if app.config["EXAMPLE_AUTO_MIGRATE"]:
        with app.app_context():
            _upgrade_database()
    return app


class _CookielessSessionInterface(SecureCookieSessionInterface):
    """Flask's cookie sessions, minus the signing serializer Flask builds on every request:
    a request without a session cookie (every bearer-token call) starts an empty session
    without it. Sessions work as before; the API itself uses none."""

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if app.secret_key and not request.cookies.get(self.get_cookie_name(app)):
            return self.session_class()
        return super().open_session(app, request)


def _enable_sqlite_foreign_keys(app: Flask) -> None:
    """SQLite enforces foreign keys (and ON DELETE CASCADE) only when asked, per connection,
    needs help for savepoints, and lets readers and a writer work at once only in WAL mode."""
    import sqlalchemy as sa

    with app.app_context():
        engine = db.engine
    if engine.dialect.name != "sqlite":
        return
    enable_sqlite_savepoints(engine)

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: t.Any, _record: t.Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        # WAL: readers do not block the writer (a logout's revocation commits on a
        # connection of its own while a request's read transaction is open).
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.close()


def _upgrade_database() -> None:
    """Bring the schema to the newest migration (what ``flask db upgrade`` does)."""
    from flask_migrate import upgrade

    upgrade(directory=MIGRATIONS_DIR)
