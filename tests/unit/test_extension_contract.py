"""The contract every extension keeps (STYLE.md): init forms, twice, no app, two apps."""

from __future__ import annotations

import pytest
from flask import Flask

from flask_backend_patterns import auth
from flask_backend_patterns import cache
from flask_backend_patterns import errors
from flask_backend_patterns import extension as umbrella
from flask_backend_patterns import jobs
from flask_backend_patterns import logging as fbp_logging
from flask_backend_patterns import ratelimit

PARTS = [
    pytest.param(auth.Auth, auth.get_state, id="auth"),
    pytest.param(cache.RepositoryCache, cache.get_state, id="cache"),
    pytest.param(errors.ErrorHandler, errors.get_state, id="errors"),
    pytest.param(fbp_logging.RequestLogging, fbp_logging.get_state, id="logging"),
    pytest.param(jobs.JobQueue, jobs.get_state, id="jobs"),
    pytest.param(ratelimit.RateLimiting, ratelimit.get_state, id="ratelimit"),
    pytest.param(umbrella.BackendPatterns, umbrella.get_state, id="umbrella"),
]


def new_app(name="app"):
    app = Flask(name)
    app.config.update(TESTING=True, BACKEND_LOGGING_CONFIGURE=False)
    # auth: a configured secret (no file in the instance folder) and a shared revocation
    # store (the Redis client connects lazily: nothing here talks to Redis).
    app.config.update(
        JWT_SECRET_KEY="contract-test-secret-0123456789abcdef0123456789",
        BACKEND_AUTH_REVOCATION_REDIS_URL="redis://127.0.0.1:6379/7",
    )
    return app


@pytest.mark.parametrize(("ext_type", "get_state"), PARTS)
def test_init_with_app_in_constructor(ext_type, get_state):
    app = new_app()
    ext_type(app)
    assert get_state(app) is not None


@pytest.mark.parametrize(("ext_type", "get_state"), PARTS)
def test_init_app_later(ext_type, get_state):
    app = new_app()
    ext = ext_type()
    ext.init_app(app)
    with app.app_context():
        assert get_state() is get_state(app)


@pytest.mark.parametrize(("ext_type", "get_state"), PARTS)
def test_registering_twice_is_an_error(ext_type, get_state):
    app = new_app()
    ext = ext_type(app)
    with pytest.raises(RuntimeError, match="already registered"):
        ext.init_app(app)


@pytest.mark.parametrize(("ext_type", "get_state"), PARTS)
def test_state_outside_app_context_is_a_clear_error(ext_type, get_state):
    with pytest.raises(RuntimeError, match="application context"):
        get_state()


@pytest.mark.parametrize(("ext_type", "get_state"), PARTS)
def test_not_registered_says_init_app(ext_type, get_state):
    app = new_app()
    with app.app_context(), pytest.raises(RuntimeError, match="init_app"):
        get_state()


@pytest.mark.parametrize(("ext_type", "get_state"), PARTS)
def test_one_extension_two_apps(ext_type, get_state):
    ext = ext_type()
    first, second = new_app("first"), new_app("second")
    ext.init_app(first)
    ext.init_app(second)
    assert get_state(first) is not get_state(second)
    for app in (first, second):
        response = app.test_client().get("/missing")
        assert response.status_code == 404


def test_umbrella_registers_enabled_parts_only():
    app = new_app()
    app.config["BACKEND_LOGGING_ENABLED"] = False
    umbrella.BackendPatterns(app)
    assert umbrella.get_state(app).parts == ["errors"]
    assert "backend_patterns.logging" not in app.extensions


def test_umbrella_registers_every_part_in_working_order_when_enabled():
    app = new_app()
    app.config.update(
        BACKEND_AUTH_ENABLED=True,
        BACKEND_RATELIMIT_ENABLED=True,
        BACKEND_CACHE_ENABLED=True,
        BACKEND_JOBS_ENABLED="true",  # as FLASK_BACKEND_JOBS_ENABLED=true arrives
        RATELIMIT_DEFAULT="2 per minute",
    )
    umbrella.BackendPatterns(app)
    assert umbrella.get_state(app).parts == ["logging", "errors", "auth", "ratelimit", "cache", "jobs"]
    for key in ("auth", "ratelimit", "cache", "jobs"):
        assert f"backend_patterns.{key}" in app.extensions
    app.add_url_rule("/ping", "ping", lambda: {"ok": True})
    client = app.test_client()
    assert [client.get("/ping").status_code for _ in range(3)] == [200, 200, 429]
    refused = client.get("/ping")
    assert refused.get_json()["code"] == "rate_limited" and refused.headers["X-Request-ID"]


def test_umbrella_leaves_the_opt_in_parts_off_by_default():
    app = new_app()
    umbrella.BackendPatterns(app)
    assert umbrella.get_state(app).parts == ["logging", "errors"]
