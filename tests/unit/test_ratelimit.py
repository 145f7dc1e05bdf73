"""Rate limiting: limits per client and user, overrides, exemptions, headers, storage failures."""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace

import fakeredis
import pytest
import redis
import redis.connection
from flask import Blueprint
from flask import Flask
from flask import g
from flask import request
from flask.views import MethodView
from werkzeug.http import http_date
from werkzeug.middleware.proxy_fix import ProxyFix

from flask_backend_patterns import api as fbp_api
from flask_backend_patterns.errors import ErrorHandler
from flask_backend_patterns.errors import UnauthorizedError
from flask_backend_patterns.logging import RequestLogging
from flask_backend_patterns.ratelimit import get_state
from flask_backend_patterns.ratelimit import rate_limit
from flask_backend_patterns.ratelimit import rate_limit_exempt
from flask_backend_patterns.ratelimit import rate_limit_key
from flask_backend_patterns.ratelimit import RateLimiting

CLOSED_PORT_REDIS = "redis://127.0.0.1:1/0"
RATELIMIT_LOGGER = "flask_backend_patterns.ratelimit"

routes = Blueprint("routes", __name__)
admin = Blueprint("admin", __name__, url_prefix="/admin")
internal = Blueprint("internal", __name__, url_prefix="/internal")
rate_limit("1 per minute")(admin)
rate_limit_exempt(internal)


@routes.get("/items")
def items():
    return {"remote_addr": request.remote_addr, "scheme": request.scheme}


@routes.get("/login")
@rate_limit("1 per minute")
def login():
    return {"ok": True}


@routes.get("/dynamic")
@rate_limit(lambda: "1 per minute" if request.args.get("strict") else "3 per minute")
def dynamic():
    return {"ok": True}


@routes.get("/open")
@rate_limit_exempt
def open_view():
    return {"ok": True}


@routes.get("/healthz")
def healthz():
    return {"ok": True}


@routes.get("/api/docs/<path:rest>")
@routes.get("/api/docs")
def docs(rest=""):
    return {"ok": True}


@routes.get("/api/docsx")
def not_docs():
    return {"ok": True}


class Things(MethodView):
    def get(self):
        return {"ok": True}

    @rate_limit("1 per minute")
    def post(self):
        return {"ok": True}


@rate_limit_exempt
class Public(MethodView):
    def get(self):
        return {"ok": True}


class Orders(MethodView):
    @rate_limit("2 per minute")
    def get(self):
        return {"ok": True}

    def post(self):
        return {"ok": True}


routes.add_url_rule("/things", view_func=Things.as_view("things"))
routes.add_url_rule("/orders", view_func=Orders.as_view("orders"))
routes.add_url_rule("/public", view_func=Public.as_view("public"))


@admin.get("/report")
def admin_report():
    return {"ok": True}


@admin.get("/ping")
@rate_limit_exempt
def admin_ping():
    return {"ok": True}


@internal.get("/stats")
def internal_stats():
    return {"ok": True}


def user_from_header(req):
    """The identity loader the tests use: the ``X-User`` header, trusted."""
    return req.headers.get("X-User")


def make_app(*, ext=None, name="app", before=None, **config):
    app = Flask(name)
    app.config.update(TESTING=True, BACKEND_LOGGING_CONFIGURE=False, RATELIMIT_DEFAULT="2 per minute")
    app.config.update(config)
    RequestLogging(app)
    ErrorHandler(app)
    if before is not None:
        app.before_request(before)  # registered first, so it runs before the limit check
    (ext or RateLimiting()).init_app(app)
    app.register_blueprint(routes)
    app.register_blueprint(admin)
    app.register_blueprint(internal)
    return app


def statuses(client, path, n, **kwargs):
    return [client.get(path, **kwargs).status_code for _ in range(n)]


@pytest.fixture
def clock(monkeypatch):
    """A frozen wall clock, shared by the storage and the headers; advance with ``clock[0] += s``."""
    now = [1_000_000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    return now


# --- the limit and the 429 ---------------------------------------------------------------


def test_limit_of_n_admits_exactly_n_then_429_envelope():
    client = make_app(RATELIMIT_DEFAULT="3 per minute").test_client()
    admitted = [client.get("/items") for _ in range(3)]
    assert [r.status_code for r in admitted] == [200, 200, 200]
    assert [r.headers["RateLimit-Remaining"] for r in admitted] == ["2", "1", "0"]
    assert all(r.headers["RateLimit-Limit"] == "3" for r in admitted)
    assert all("Retry-After" not in r.headers for r in admitted)

    refused = client.get("/items")
    assert refused.status_code == 429
    assert refused.mimetype == "application/json"
    body = refused.get_json()
    assert body["success"] is False and body["code"] == "rate_limited" and body["error"]
    assert body["request_id"] == refused.headers["X-Request-ID"]
    assert refused.headers["RateLimit-Limit"] == "3"
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["Retry-After"] == refused.headers["RateLimit-Reset"]


def test_retry_after_and_reset_are_seconds_until_the_window_resets(clock):
    client = make_app(RATELIMIT_DEFAULT="2 per minute").test_client()
    first = client.get("/items")
    assert first.headers["RateLimit-Reset"] == "60"  # seconds, not an epoch
    client.get("/items")
    refused = client.get("/items")
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "60" and refused.headers["RateLimit-Reset"] == "60"

    clock[0] += 45
    refused = client.get("/items")
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "15"

    clock[0] += 16
    again = client.get("/items")
    assert again.status_code == 200 and again.headers["RateLimit-Remaining"] == "1"


def test_retry_after_as_http_date(clock):
    client = make_app(
        RATELIMIT_DEFAULT="1 per minute", RATELIMIT_HEADER_RETRY_AFTER_VALUE="http-date"
    ).test_client()
    client.get("/items")
    refused = client.get("/items")
    assert refused.headers["Retry-After"] == http_date(1_000_060)
    assert refused.headers["RateLimit-Reset"] == "60"


def test_429_through_flask_smorest_api_keeps_envelope_and_headers():
    app = Flask("smorest")
    app.config.update(
        TESTING=True,
        BACKEND_LOGGING_CONFIGURE=False,
        API_TITLE="t",
        API_VERSION="1",
        OPENAPI_VERSION="3.0.3",
        RATELIMIT_DEFAULT="5 per minute",
    )
    RequestLogging(app)
    ErrorHandler(app)
    RateLimiting(app)
    api = fbp_api.Api(app)
    blp = fbp_api.Blueprint("markets", __name__, url_prefix="/markets")

    @blp.route("")
    class Markets(MethodView):
        @blp.response(200)
        @rate_limit("1 per minute")
        def get(self):
            return {"ok": True}

    api.register_blueprint(blp)
    client = app.test_client()
    assert client.get("/markets").status_code == 200
    refused = client.get("/markets")
    assert refused.status_code == 429 and refused.get_json()["code"] == "rate_limited"
    assert refused.headers["RateLimit-Limit"] == "1" and "Retry-After" in refused.headers


def test_headers_can_be_turned_off_but_429_keeps_retry_after():
    client = make_app(RATELIMIT_DEFAULT="1 per minute", RATELIMIT_HEADERS_ENABLED=False).test_client()
    assert "RateLimit-Limit" not in client.get("/items").headers
    refused = client.get("/items")
    assert refused.status_code == 429 and "RateLimit-Remaining" not in refused.headers
    assert int(refused.headers["Retry-After"]) >= 1


def test_disabled_limits_nothing():
    client = make_app(RATELIMIT_DEFAULT="1 per minute", RATELIMIT_ENABLED="false").test_client()
    responses = [client.get("/items") for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert "RateLimit-Limit" not in responses[-1].headers


def test_empty_default_limits_only_decorated_routes():
    client = make_app(RATELIMIT_DEFAULT="").test_client()
    assert statuses(client, "/items", 5) == [200] * 5
    assert statuses(client, "/login", 2) == [200, 429]


# --- client address -----------------------------------------------------------------------


def test_spoofed_forwarded_for_is_ignored_without_trusted_proxies():
    client = make_app(RATELIMIT_DEFAULT="2 per minute").test_client()
    codes = [
        client.get("/items", headers={"X-Forwarded-For": f"198.51.100.{n}"}).status_code for n in range(3)
    ]
    assert codes == [200, 200, 429]


def test_forwarded_for_is_honoured_with_one_trusted_proxy():
    app = make_app(RATELIMIT_DEFAULT="1 per minute", TRUSTED_PROXY_COUNT=1)
    assert isinstance(app.wsgi_app, ProxyFix)
    assert (app.wsgi_app.x_for, app.wsgi_app.x_proto, app.wsgi_app.x_host) == (1, 1, 0)
    client = app.test_client()
    # The proxy appends the address it saw: a value the client sent before it is not trusted.
    first = client.get(
        "/items", headers={"X-Forwarded-For": "6.6.6.6, 203.0.113.9", "X-Forwarded-Proto": "https"}
    )
    assert first.status_code == 200
    assert first.get_json() == {"remote_addr": "203.0.113.9", "scheme": "https"}
    assert client.get("/items", headers={"X-Forwarded-For": "7.7.7.7, 203.0.113.9"}).status_code == 429
    assert client.get("/items", headers={"X-Forwarded-For": "203.0.113.10"}).status_code == 200


def test_trusted_proxy_count_is_validated():
    with pytest.raises(ValueError, match="TRUSTED_PROXY_COUNT"):
        make_app(TRUSTED_PROXY_COUNT=-1)
    app = Flask("wrapped")
    app.wsgi_app = ProxyFix(app.wsgi_app)
    app.config["TRUSTED_PROXY_COUNT"] = 1
    with pytest.raises(ValueError, match="already a ProxyFix"):
        RateLimiting(app)


# --- per-user keys ------------------------------------------------------------------------


def test_identity_loader_gives_each_user_a_counter():
    client = make_app(
        RATELIMIT_DEFAULT="1 per minute", ext=RateLimiting(identity=user_from_header)
    ).test_client()
    assert client.get("/items", headers={"X-User": "alice"}).status_code == 200
    assert client.get("/items", headers={"X-User": "bob"}).status_code == 200
    assert client.get("/items").status_code == 200  # anonymous: by IP
    assert client.get("/items", headers={"X-User": "alice"}).status_code == 429
    assert client.get("/items").status_code == 429


def test_identity_loader_from_config_import_path_beats_constructor():
    def nobody(req):
        return None

    app = make_app(
        RATELIMIT_DEFAULT="1 per minute",
        BACKEND_RATELIMIT_IDENTITY="tests.unit.test_ratelimit:user_from_header",
        ext=RateLimiting(identity=nobody),
    )
    with app.test_request_context("/items", headers={"X-User": "carol"}):
        assert rate_limit_key() == "user:carol"


def test_identity_loader_is_called_once_per_request():
    calls = []

    def counting(req):
        calls.append(req.path)
        return "dave"

    client = make_app(
        RATELIMIT_DEFAULT="5 per minute;50 per hour", ext=RateLimiting(identity=counting)
    ).test_client()
    assert client.get("/items").status_code == 200
    assert calls == ["/items"]


def test_bad_credentials_in_identity_loader_count_by_ip():
    def rejecting(req):
        raise UnauthorizedError("Token expired")

    client = make_app(RATELIMIT_DEFAULT="1 per minute", ext=RateLimiting(identity=rejecting)).test_client()
    assert client.get("/items").status_code == 200  # the public route still serves
    assert client.get("/items").status_code == 429
    with client.application.test_request_context("/items", environ_base={"REMOTE_ADDR": "192.0.2.1"}):
        assert rate_limit_key() == "ip:192.0.2.1"


def test_identity_on_g_gives_each_user_a_counter():
    def authenticate():
        if "X-User" in request.headers:
            g._fbp_identity = SimpleNamespace(id=request.headers["X-User"])

    client = make_app(RATELIMIT_DEFAULT="1 per minute", before=authenticate).test_client()
    assert client.get("/items", headers={"X-User": "7"}).status_code == 200
    assert client.get("/items", headers={"X-User": "8"}).status_code == 200
    assert client.get("/items", headers={"X-User": "7"}).status_code == 429


def test_per_user_off_counts_users_by_ip():
    client = make_app(
        RATELIMIT_DEFAULT="1 per minute",
        BACKEND_RATELIMIT_PER_USER=False,
        ext=RateLimiting(identity=user_from_header),
    ).test_client()
    assert client.get("/items", headers={"X-User": "alice"}).status_code == 200
    assert client.get("/items", headers={"X-User": "bob"}).status_code == 429


def test_unimportable_identity_is_an_init_error():
    with pytest.raises(ValueError, match="BACKEND_RATELIMIT_IDENTITY"):
        make_app(BACKEND_RATELIMIT_IDENTITY="tests.unit.nowhere:loader")


# --- exemptions and overrides -------------------------------------------------------------


@pytest.mark.parametrize("path", ["/healthz", "/api/docs", "/api/docs/swagger-ui.css", "/open", "/public"])
def test_exempt_routes_are_never_limited_and_send_no_headers(path):
    client = make_app(RATELIMIT_DEFAULT="1 per minute").test_client()
    responses = [client.get(path) for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert "RateLimit-Limit" not in responses[-1].headers


def test_exempt_path_matches_whole_segments_only():
    client = make_app(RATELIMIT_DEFAULT="1 per minute").test_client()
    assert statuses(client, "/api/docsx", 2) == [200, 429]


def test_exempt_paths_config_replaces_the_defaults():
    client = make_app(RATELIMIT_DEFAULT="1 per minute", BACKEND_RATELIMIT_EXEMPT_PATHS="/items").test_client()
    assert statuses(client, "/items", 3) == [200, 200, 200]
    assert statuses(client, "/healthz", 2) == [200, 429]


def test_exempt_path_must_be_absolute():
    with pytest.raises(ValueError, match="must start with '/'"):
        make_app(BACKEND_RATELIMIT_EXEMPT_PATHS=["healthz"])


def test_route_override_has_its_own_limit_and_counter():
    client = make_app(RATELIMIT_DEFAULT="3 per minute").test_client()
    assert statuses(client, "/login", 2) == [200, 429]
    assert client.get("/login").headers["RateLimit-Limit"] == "1"
    assert statuses(client, "/items", 3) == [200, 200, 200]


def test_callable_override_is_read_per_request():
    client = make_app().test_client()
    assert client.get("/dynamic").headers["RateLimit-Limit"] == "3"
    assert client.get("/dynamic?strict=1").headers["RateLimit-Limit"] == "1"


def test_method_override_on_method_view():
    client = make_app(RATELIMIT_DEFAULT="3 per minute").test_client()
    assert [client.post("/things").status_code for _ in range(2)] == [200, 429]
    assert statuses(client, "/things", 3) == [200, 200, 200]


def test_method_override_never_shares_a_counter_with_other_methods():
    client = make_app(RATELIMIT_DEFAULT="2 per minute").test_client()
    assert statuses(client, "/orders", 2) == [200, 200]
    assert [client.post("/orders").status_code for _ in range(3)] == [200, 200, 429]


def test_blueprint_override_and_route_exemption_inside_it():
    client = make_app(RATELIMIT_DEFAULT="3 per minute").test_client()
    assert statuses(client, "/admin/report", 2) == [200, 429]
    assert statuses(client, "/admin/ping", 3) == [200, 200, 200]
    assert statuses(client, "/internal/stats", 4) == [200] * 4


def test_bad_limit_strings_fail_early():
    with pytest.raises(ValueError, match="not a rate limit"):
        rate_limit("lots per minute")
    with pytest.raises(ValueError, match="RATELIMIT_DEFAULT"):
        make_app(RATELIMIT_DEFAULT="lots")


def test_one_extension_serves_two_apps_with_their_own_limits():
    ext = RateLimiting()
    first = make_app(ext=ext, name="first", RATELIMIT_DEFAULT="1 per minute").test_client()
    second = make_app(ext=ext, name="second", RATELIMIT_DEFAULT="2 per minute").test_client()
    assert statuses(first, "/items", 2) == [200, 429]
    assert statuses(second, "/items", 3) == [200, 200, 429]
    assert statuses(second, "/login", 2) == [200, 429]
    assert get_state(first.application).limiter is not get_state(second.application).limiter


# --- storage ------------------------------------------------------------------------------


def fake_redis_config(server):
    return {
        "RATELIMIT_STORAGE_URI": "redis://127.0.0.1:6379/6",
        "RATELIMIT_STORAGE_OPTIONS": {"connection_pool": fakeredis.FakeRedis(server=server).connection_pool},
    }


def test_redis_storage_is_shared_by_two_workers():
    server = fakeredis.FakeServer()
    worker_a = make_app(name="a", RATELIMIT_DEFAULT="3 per minute", **fake_redis_config(server)).test_client()
    worker_b = make_app(name="b", RATELIMIT_DEFAULT="3 per minute", **fake_redis_config(server)).test_client()
    assert statuses(worker_a, "/items", 2) == [200, 200]
    last = worker_b.get("/items")
    assert last.status_code == 200 and last.headers["RateLimit-Remaining"] == "0"
    assert worker_a.get("/items").status_code == 429
    assert worker_b.get("/items").status_code == 429


def test_redis_storage_makes_one_round_trip_a_request(redis_trips):
    server = fakeredis.FakeServer()
    client = make_app(RATELIMIT_DEFAULT="5 per minute", **fake_redis_config(server)).test_client()
    client.get("/items")  # loads the script
    redis_trips.clear()
    response = client.get("/items")
    assert redis_trips == [["EVALSHA"]]
    # The headers come from that one call: the second of five hits, the window's time left.
    assert response.headers["RateLimit-Remaining"] == "3"
    assert 0 < int(response.headers["RateLimit-Reset"]) <= 60
    redis_trips.clear()
    client.get("/items")
    assert redis_trips == [["EVALSHA"]]  # a later request counts afresh, not from the memo
    assert client.get("/items").headers["RateLimit-Remaining"] == "1"


def test_redis_count_gives_the_headers_their_window_without_reading_it_back(monkeypatch):
    from limits.strategies import FixedWindowRateLimiter

    read_back = []
    original = FixedWindowRateLimiter.get_window_stats
    monkeypatch.setattr(
        FixedWindowRateLimiter,
        "get_window_stats",
        lambda self, *args: read_back.append(args) or original(self, *args),
    )
    server = fakeredis.FakeServer()
    client = make_app(RATELIMIT_DEFAULT="2 per minute", **fake_redis_config(server)).test_client()
    answers = [client.get("/items") for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 429]
    assert [r.headers["RateLimit-Remaining"] for r in answers] == ["1", "0", "0"]
    assert all(0 < int(r.headers["RateLimit-Reset"]) <= 60 for r in answers)
    assert 0 < int(answers[-1].headers["Retry-After"]) <= 60
    assert read_back == []


def test_redis_down_fails_open_with_one_warning(caplog):
    caplog.set_level(logging.INFO, logger=RATELIMIT_LOGGER)
    app = make_app(RATELIMIT_DEFAULT="1 per minute", RATELIMIT_STORAGE_URI=CLOSED_PORT_REDIS)
    now = [0.0]
    get_state(app).storage_failures.clock = lambda: now[0]
    client = app.test_client()
    responses = [client.get("/items") for _ in range(4)]
    assert [r.status_code for r in responses] == [200] * 4
    assert "RateLimit-Limit" not in responses[-1].headers
    warnings = [r for r in caplog.records if r.name == RATELIMIT_LOGGER and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "requests pass unlimited" in warnings[0].getMessage()

    now[0] += 61  # past BACKEND_RATELIMIT_WARNING_INTERVAL
    client.get("/items")
    warnings = [r for r in caplog.records if r.name == RATELIMIT_LOGGER and r.levelno == logging.WARNING]
    assert len(warnings) == 2 and warnings[1].unlogged_failures == 3


def test_storage_back_after_outage_limits_again(caplog):
    caplog.set_level(logging.INFO, logger=RATELIMIT_LOGGER)
    server = fakeredis.FakeServer()
    client = make_app(RATELIMIT_DEFAULT="2 per minute", **fake_redis_config(server)).test_client()
    server.connected = False
    assert statuses(client, "/items", 3) == [200, 200, 200]
    server.connected = True
    assert statuses(client, "/items", 3) == [200, 200, 429]
    messages = [r.getMessage() for r in caplog.records if r.name == RATELIMIT_LOGGER]
    assert len(messages) == 2 and "answers again" in messages[1]


def test_redis_down_fails_closed_when_errors_are_not_swallowed(caplog):
    app = make_app(RATELIMIT_STORAGE_URI=CLOSED_PORT_REDIS, RATELIMIT_SWALLOW_ERRORS=False)
    response = app.test_client().get("/items")
    assert response.status_code == 503
    assert response.get_json()["code"] == "unavailable" and response.headers["Retry-After"] == "1"
    assert [r.name for r in caplog.records if r.levelno == logging.WARNING] == [RATELIMIT_LOGGER]


def test_redis_down_falls_back_to_memory_when_configured(caplog):
    caplog.set_level(logging.WARNING)
    client = make_app(
        RATELIMIT_DEFAULT="2 per minute",
        RATELIMIT_STORAGE_URI=CLOSED_PORT_REDIS,
        RATELIMIT_IN_MEMORY_FALLBACK_ENABLED=True,
    ).test_client()
    responses = [client.get("/items") for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert responses[0].headers["RateLimit-Remaining"] == "1"
    assert "Retry-After" in responses[2].headers
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "falling back to in-memory" in warnings[0].getMessage()
    assert warnings[0].name == "flask-limiter"  # as documented, whichever path counted


def test_bad_storage_configuration_fails_at_init_and_leaves_app_unregistered():
    app = Flask("bad")
    app.config["RATELIMIT_STORAGE_URI"] = "nosuch://host"
    with pytest.raises(ValueError, match="RATELIMIT_STORAGE_URI"):
        RateLimiting(app)
    assert "backend_patterns.ratelimit" not in app.extensions
    app = Flask("unwrapped")
    app.config["RATELIMIT_STORAGE_OPTIONS"] = {"wrap_exceptions": False}
    with pytest.raises(ValueError, match="wrap_exceptions"):
        RateLimiting(app)


# --- the default limit's own path vs Flask-Limiter's resolution ----------------------------

PARITY_REQUESTS = [
    ("GET", "/items", {}),
    ("GET", "/items", {"X-User": "7"}),
    ("GET", "/login", {}),
    ("GET", "/dynamic?strict=1", {}),
    ("GET", "/things", {}),
    ("POST", "/things", {}),
    ("GET", "/orders", {}),
    ("GET", "/admin/report", {}),
    ("GET", "/admin/ping", {}),
    ("GET", "/internal/stats", {}),
    ("GET", "/open", {}),
    ("GET", "/nowhere", {}),
]


def _run_parity(monkeypatch, force_flask_limiter, **config):
    from flask_backend_patterns import ratelimit

    if force_flask_limiter:
        monkeypatch.setattr(ratelimit._AppLimiter, "_default_limit_only", lambda self: False)
    server = fakeredis.FakeServer()
    config = {"RATELIMIT_KEY_PREFIX": "p", **fake_redis_config(server), **config}
    app = make_app(BACKEND_RATELIMIT_IDENTITY=user_from_header, **config)
    client = app.test_client()
    seen = []
    for _ in range(4):  # through the limits, to the 429s
        for method, path, headers in PARITY_REQUESTS:
            response = client.open(path, method=method, headers=headers)
            seen.append(
                (method, path, response.status_code)
                + tuple(
                    response.headers.get(h) for h in ("RateLimit-Limit", "RateLimit-Remaining", "Retry-After")
                )
            )
    keys = fakeredis.FakeRedis(server=server)
    counters = {key: keys.get(key) for key in keys.keys("*")}
    return seen, counters


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"RATELIMIT_DEFAULT": "2/second;3/minute", "RATELIMIT_FAIL_ON_FIRST_BREACH": False},
        {"RATELIMIT_DEFAULT": "2/second;3/minute"},
        {"RATELIMIT_DEFAULT": "3/minute;3/minute"},
    ],
    ids=["one-part", "every-part-counted", "first-breach", "a-part-twice"],
)
def test_default_limit_path_counts_and_answers_as_flask_limiter_does(monkeypatch, config):
    ours = _run_parity(monkeypatch, False, **config)
    monkeypatch.undo()
    theirs = _run_parity(monkeypatch, True, **config)
    assert ours == theirs
    statuses_seen = {row[2] for row in ours[0]}
    assert {200, 404, 429} <= statuses_seen and len(ours[1]) >= 8  # the run did reach every case


def test_default_limit_path_is_taken_until_flask_limiter_holds_a_limit_of_its_own(monkeypatch):
    from flask_limiter import Limiter

    resolved = []
    original = Limiter._check_request_limit

    def spy(self, *args, **kwargs):
        resolved.append(request.path)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Limiter, "_check_request_limit", spy)
    app = make_app()
    assert app.test_client().get("/items").status_code == 200
    assert resolved == []  # counted without Flask-Limiter's resolution

    app = Flask("native")
    app.config.update(TESTING=True, BACKEND_LOGGING_CONFIGURE=False, RATELIMIT_DEFAULT="5 per minute")
    ErrorHandler(app)
    RateLimiting(app)
    limiter = get_state(app).limiter

    @app.get("/native")
    @limiter.limit("1 per minute")
    def native():
        return {"ok": True}

    @app.get("/plain")
    def plain():
        return {"ok": True}

    client = app.test_client()
    assert statuses(client, "/native", 2) == [200, 429]  # Flask-Limiter's own limit holds
    plain_response = client.get("/plain")
    assert (
        plain_response.headers["RateLimit-Limit"] == "5"
        and plain_response.headers["RateLimit-Remaining"] == "4"
    )
    # All through Flask-Limiter now (its decorator checks /native a second time, in the view).
    assert set(resolved) == {"/native", "/plain"} and resolved.count("/plain") == 1


def test_flask_limiter_still_has_the_state_the_default_limit_path_reads():
    from flask_backend_patterns.ratelimit import _FLASK_LIMITER_STATE

    limiter = get_state(make_app()).limiter
    for owner, name in _FLASK_LIMITER_STATE:
        assert hasattr(limiter.limit_manager if owner == "manager" else limiter, name), name
    assert len(limiter.limit_manager._default_limits) == 1


@pytest.mark.parametrize(
    "config",
    [
        {"RATELIMIT_DEFAULTS_PER_METHOD": True},
        {"RATELIMIT_DEFAULTS_COST": 2},
        {"RATELIMIT_DEFAULTS_EXEMPT_WHEN": lambda: request.args.get("free") == "1"},
        {"RATELIMIT_DEFAULTS_DEDUCT_WHEN": lambda response: response.status_code == 200},
        {"RATELIMIT_APPLICATION": "100 per minute"},
    ],
    ids=["per_method", "cost", "exempt_when", "deduct_when", "application"],
)
def test_flask_limiter_default_options_keep_their_meaning(config):
    app = make_app(RATELIMIT_DEFAULT="4 per minute", **config)
    assert not get_state(app).limiter._default_limit_only()
    client = app.test_client()
    if "RATELIMIT_DEFAULTS_COST" in config:
        assert statuses(client, "/items", 3) == [200, 200, 429]  # 2 a request out of 4
    elif "RATELIMIT_DEFAULTS_EXEMPT_WHEN" in config:
        assert statuses(client, "/items?free=1", 6) == [200] * 6
        assert statuses(client, "/items", 5) == [200] * 4 + [429]
    elif "RATELIMIT_DEFAULTS_PER_METHOD" in config:
        assert statuses(client, "/things", 4) == [200] * 4
        assert client.get("/things").status_code == 429
        assert client.post("/things").status_code == 200  # POST /things has its own 1/minute
    else:
        assert statuses(client, "/items", 5) == [200] * 4 + [429]


def test_a_connection_closed_under_the_count_is_retried_once_on_a_new_one(caplog):
    server = fakeredis.FakeServer()
    app = make_app(RATELIMIT_DEFAULT="5 per minute", **fake_redis_config(server))
    client = app.test_client()
    assert client.get("/items").headers["RateLimit-Remaining"] == "4"
    storage = get_state(app).limiter.storage
    connection = storage._direct.connection()
    real_send = connection.send_command
    failures = []

    def closed_once(*args, **kwargs):
        if not failures:
            failures.append(args[0])
            raise redis.ConnectionError("Connection closed by server.")
        return real_send(*args, **kwargs)

    connection.send_command = closed_once
    response = client.get("/items")
    assert failures == ["EVALSHA"]
    assert response.headers["RateLimit-Remaining"] == "3"  # counted, on the second try
    assert not [r for r in caplog.records if r.name == RATELIMIT_LOGGER and r.levelno >= logging.WARNING]

    def always_closed(*args, **kwargs):
        raise redis.ConnectionError("Connection refused.")

    connection.send_command = always_closed
    response = client.get("/items")  # twice closed: a storage failure, the request passes
    assert response.status_code == 200 and "RateLimit-Remaining" not in response.headers
    assert any("Rate limit storage unavailable" in r.getMessage() for r in caplog.records)


def _context_manager_counts(monkeypatch, force_flask_limiter):
    from flask_backend_patterns import ratelimit

    if force_flask_limiter:
        monkeypatch.setattr(ratelimit._AppLimiter, "_default_limit_only", lambda self: False)
    app = Flask("cm")
    app.config.update(TESTING=True, BACKEND_LOGGING_CONFIGURE=False, RATELIMIT_DEFAULT="5 per minute")
    RateLimiting(app)
    limiter = get_state(app).limiter

    @app.get("/cm")
    def cm():
        with limiter.limit("100/minute"):
            return "ok"

    client = app.test_client()
    seen = []
    for _ in range(3):
        response = client.get("/cm")
        seen.append((response.status_code, response.headers.get("RateLimit-Remaining")))
        seen.append(dict(limiter.limiter.storage.storage))
    return seen


def test_a_limit_used_as_a_context_manager_counts_as_with_flask_limiter_alone(monkeypatch):
    # The first request takes our default-limit path, then the view's RouteLimit runs
    # Flask-Limiter's own check: the default must not be counted twice.
    ours = _context_manager_counts(monkeypatch, False)
    monkeypatch.undo()
    theirs = _context_manager_counts(monkeypatch, True)
    assert ours == theirs
    assert ours[1] == {"LIMITER/ip:127.0.0.1/cm/5/1/minute": 1, "LIMITER/ip:127.0.0.1/cm/100/1/minute": 1}
