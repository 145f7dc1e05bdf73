"""Migrations build the schema the models describe; `flask seed` fills it in bulk."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from example_app import create_app
from example_app.extensions import db
from tests.conftest import make_app


@pytest.fixture
def fresh_database_uri(database_uri, tmp_path):
    """An empty database of the same kind as the test one."""
    if not database_uri.startswith("postgresql"):
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    name = f"fbp_migrations_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(database_uri, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield sa.make_url(database_uri).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_upgrade_builds_exactly_the_models_schema(fresh_database_uri):
    app = make_app(fresh_database_uri, EXAMPLE_AUTO_MIGRATE=True)
    with app.app_context():
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), db.metadata)
        db.engine.dispose()
    assert diff == []


def test_flask_db_upgrade_and_downgrade_commands(fresh_database_uri):
    app = make_app(fresh_database_uri, EXAMPLE_AUTO_MIGRATE=False)
    runner = app.test_cli_runner()
    assert runner.invoke(args=["db", "upgrade"]).exit_code == 0
    with app.app_context():
        assert {"users", "markets", "positions"} <= set(sa.inspect(db.engine).get_table_names())
    assert runner.invoke(args=["db", "downgrade", "base"]).exit_code == 0
    with app.app_context():
        assert "markets" not in sa.inspect(db.engine).get_table_names()
        db.engine.dispose()


def test_embedded_default_makes_tables_on_first_start(tmp_path, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    from flask import Flask

    monkeypatch.setattr(Flask, "auto_find_instance_path", lambda self: str(tmp_path / "instance"))
    app = create_app({"TESTING": True, "BACKEND_LOGGING_CONFIGURE": False})
    assert app.config["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path / 'instance' / 'example_app.db'}"
    assert (tmp_path / "instance" / "secret_key").exists()
    response = app.test_client().get("/api/markets")
    assert response.status_code == 200
    # A second start reuses the secret (cursors stay valid) and the tables.
    again = create_app({"TESTING": True, "BACKEND_LOGGING_CONFIGURE": False})
    assert again.config["SECRET_KEY"] == app.config["SECRET_KEY"]
    with app.app_context():
        db.engine.dispose()
    with again.app_context():
        db.engine.dispose()


def test_seed_command_inserts_in_bulk(app, count_queries):
    runner = app.test_cli_runner()
    with count_queries() as q:
        result = runner.invoke(
            args=["seed", "--markets", "1200", "--users", "3", "--batch-size", "500", "--seed", "7"]
        )
    assert result.exit_code == 0, result.output
    assert "Seeded 3 users and 1200 markets." in result.output
    from example_app.models import Market
    from example_app.models import User

    assert db.session.scalar(sa.select(sa.func.count()).select_from(Market)) == 1200
    assert db.session.scalar(sa.select(sa.func.count()).select_from(User)) == 3
    # Bulk inserts: a handful of statements, not one per row.
    assert q.count < 60


def test_seed_rejects_bad_counts(app):
    result = app.test_cli_runner().invoke(args=["seed", "--markets", "-5"])
    assert result.exit_code != 0


def test_database_url_env_is_normalised(monkeypatch):
    from example_app.config import _database_url

    assert _database_url("postgres://u@h/d") == "postgresql+psycopg://u@h/d"
    assert _database_url("postgresql://u@h/d") == "postgresql+psycopg://u@h/d"
    assert _database_url("postgresql+psycopg://u@h/d") == "postgresql+psycopg://u@h/d"
    assert _database_url("sqlite:///x.db") == "sqlite:///x.db"


def test_prefixed_env_reaches_config(monkeypatch, app_factory):
    monkeypatch.setenv("FLASK_MAX_CONTENT_LENGTH", "2048")
    monkeypatch.setenv("FLASK_BACKEND_LOGGING_ACCESS_LOG", "false")
    app = app_factory()
    assert app.config["MAX_CONTENT_LENGTH"] == 2048
    assert app.config["BACKEND_LOGGING_ACCESS_LOG"] is False


def test_engine_options_from_env_do_not_leak_into_the_defaults(monkeypatch, app_factory):
    from example_app.config import Defaults

    monkeypatch.setenv("FLASK_SQLALCHEMY_ENGINE_OPTIONS__pool_size", "7")
    app = app_factory()
    assert app.config["SQLALCHEMY_ENGINE_OPTIONS"]["pool_size"] == 7
    assert "pool_size" not in Defaults.SQLALCHEMY_ENGINE_OPTIONS


def test_instance_secret_is_made_once(tmp_path):
    from flask import Flask

    from example_app.config import _instance_secret

    app = Flask(__name__, instance_path=str(tmp_path / "inst"))
    first = _instance_secret(app, "secret_key")
    assert _instance_secret(app, "secret_key") == first and len(first) >= 32
    assert [p.name for p in (tmp_path / "inst").iterdir()] == ["secret_key"]
    assert ((tmp_path / "inst" / "secret_key").stat().st_mode & 0o777) == 0o600
