"""Configuration of the example app: defaults, then the environment, then overrides.

This is the only module that reads environment variables.
"""

from __future__ import annotations

import logging
import os
import secrets
import typing as t
from pathlib import Path

from flask import Flask

log = logging.getLogger(__name__)


class Defaults:
    """Embedded defaults: SQLite in the instance folder, nothing else to start."""

    API_TITLE = "Market API"
    API_VERSION = "1.0.0"
    OPENAPI_VERSION = "3.0.3"
    OPENAPI_URL_PREFIX = "/api"
    OPENAPI_JSON_PATH = "openapi.json"
    OPENAPI_SWAGGER_UI_PATH = "/docs"
    SQLALCHEMY_ENGINE_OPTIONS: dict[str, t.Any] = {"pool_pre_ping": True}
    SQLALCHEMY_RECORD_QUERIES = False
    MAX_CONTENT_LENGTH = 1024 * 1024
    #: how plain ``rq worker`` builds the app its jobs run in.
    BACKEND_JOBS_APP_FACTORY = "example_app:create_app"
    #: "hashing" (no download) or "sentence" (the ``semantic`` extra's MiniLM model).
    EXAMPLE_SEARCH_EMBEDDER = "hashing"
    #: create missing tables at start-up (the embedded SQLite default does).
    EXAMPLE_AUTO_MIGRATE: bool | None = None


def _database_url(url: str) -> str:
    # Hosting platforms hand out postgres:// URLs; SQLAlchemy wants a driver name.
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _instance_secret(app: Flask, name: str) -> str:
    """A random secret made once and kept in the instance folder (embedded default)."""
    path = Path(app.instance_path) / name
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    # Written whole to a private temp file, then linked into place: workers starting at
    # once all end up with the one secret that won, never a half-written one.
    tmp = path.with_name(f".{name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return path.read_text().strip()
    finally:
        tmp.unlink()
    log.warning("No FLASK_SECRET_KEY set: made one in %s; set one shared by every host in production", path)
    return value


def load_config(app: Flask, overrides: t.Mapping[str, t.Any] | None = None) -> None:
    """Fill ``app.config``: defaults < ``DATABASE_URL``/``REDIS_URL``/``FLASK_*`` < overrides."""
    app.config.from_object(Defaults)
    # A copy, so that FLASK_SQLALCHEMY_ENGINE_OPTIONS__x=... edits this app's dict only.
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = dict(Defaults.SQLALCHEMY_ENGINE_OPTIONS)
    if os.environ.get("DATABASE_URL"):
        app.config["SQLALCHEMY_DATABASE_URI"] = _database_url(os.environ["DATABASE_URL"])
    if os.environ.get("REDIS_URL"):
        app.config["REDIS_URL"] = os.environ["REDIS_URL"]
    app.config.from_prefixed_env()
    if overrides:
        app.config.update(overrides)
    uri = app.config.get("SQLALCHEMY_DATABASE_URI")
    if not uri:
        Path(app.instance_path).mkdir(parents=True, exist_ok=True)
        app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{Path(app.instance_path) / 'example_app.db'}"
    else:
        app.config["SQLALCHEMY_DATABASE_URI"] = _database_url(uri)
    redis_url = app.config.get("REDIS_URL")
    if redis_url:
        # One Redis for everything shared by workers and hosts.
        app.config.setdefault("BACKEND_AUTH_REVOCATION_REDIS_URL", redis_url)
        app.config.setdefault("CACHE_REDIS_URL", redis_url)
        app.config.setdefault("RATELIMIT_STORAGE_URI", redis_url)
        app.config.setdefault("BACKEND_JOBS_REDIS_URL", redis_url)
    elif uri and "CACHE_TYPE" not in app.config:
        # Only the embedded default (no database configured) is one process for sure. A
        # configured database without Redis may have several workers, and an in-process
        # cache would serve one worker's stale copy after another's write: read through.
        app.config["CACHE_TYPE"] = "NullCache"
    if app.config["EXAMPLE_AUTO_MIGRATE"] is None:
        app.config["EXAMPLE_AUTO_MIGRATE"] = app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite")
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = _instance_secret(app, "secret_key")
