"""The cached repository and rate limits of the example app, on Redis, across workers and faults."""

from __future__ import annotations

import concurrent.futures
import time

import pytest

from example_app.services import AuthService
from flask_backend_patterns.cache import get_state as get_cache_state
from tests.e2e.servers import get
from tests.e2e.servers import gunicorn_server
from tests.e2e.servers import request
from tests.e2e.test_markets_http import error
from tests.e2e.test_markets_http import ok
from tests.factories import make_markets
from tests.factories import make_user


@pytest.fixture
def owner(db):
    user = make_user(role="user")
    db.session.commit()
    return user


def bearer_for(user):
    return {"Authorization": f"Bearer {AuthService().tokens_for(user)['access_token']}"}


# -- in process -------------------------------------------------------------------------


def test_market_reads_are_served_from_the_cache_and_writes_invalidate(
    app_factory, private_redis, owner, auth_header
):
    app = app_factory(REDIS_URL=private_redis.url, CACHE_REDIS_URL=private_redis.url)
    client = app.test_client()
    market = make_markets(1, creator=owner, volume=1.0)[0]
    with app.app_context():
        stats = get_cache_state(app).stats
        ok(client.get(f"/api/markets/{market.id}"))
        ok(client.get("/api/markets?status=active"))
        before = stats.snapshot()
        assert ok(client.get(f"/api/markets/{market.id}"))["data"]["volume"] == 1.0
        assert ok(client.get("/api/markets?status=active"))["meta"]["total"] == 1
        after = stats.snapshot()
        assert after["hits"] - before["hits"] == 2 and after["misses"] == before["misses"]
        headers = bearer_for(owner)
        ok(client.patch(f"/api/markets/{market.id}", json={"volume": 2.0}, headers=headers))
        assert ok(client.get(f"/api/markets/{market.id}"))["data"]["volume"] == 2.0
        ok(client.post("/api/markets", json={"name": "second"}, headers=headers), 201)
        assert ok(client.get("/api/markets?status=active"))["meta"]["total"] == 2


def test_redis_stopped_mid_test_degrades_then_recovers(app_factory, private_redis, owner):
    app = app_factory(
        REDIS_URL=private_redis.url,
        CACHE_REDIS_URL=private_redis.url,
        RATELIMIT_ENABLED=True,
        RATELIMIT_STORAGE_URI=private_redis.url,
        BACKEND_AUTH_REVOCATION_REDIS_URL=private_redis.url,
        BACKEND_CACHE_RETRY_INTERVAL_MS=50,
    )
    client = app.test_client()
    market = make_markets(1, creator=owner, name="Before the outage")[0]
    ok(client.get(f"/api/markets/{market.id}"))  # cached
    ok(client.get("/readyz"))

    private_redis.stop()
    for _ in range(3):  # reads keep working, from the database, with the right value
        assert ok(client.get(f"/api/markets/{market.id}"))["data"]["name"] == "Before the outage"
        ok(client.get("/api/markets"))
    body = error(client.get("/readyz"), 503, "unavailable")
    assert set(body["details"]) == {"redis"}

    private_redis.start()
    time.sleep(0.1)  # past BACKEND_CACHE_RETRY_INTERVAL_MS: the cache tries Redis again
    ok(client.get("/readyz"))
    ok(client.get(f"/api/markets/{market.id}"))
    with app.app_context():
        hits = get_cache_state(app).stats.snapshot()["hits"]
    ok(client.get(f"/api/markets/{market.id}"))
    with app.app_context():
        assert get_cache_state(app).stats.snapshot()["hits"] == hits + 1


# -- gunicorn, 3 workers, one Redis ------------------------------------------------------


def _spread(calls, workers=6):
    """Run the calls concurrently, each on its own connection, so several workers serve them."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda call: call(), calls))


def test_reads_never_older_than_the_last_acknowledged_write(database_uri, tmp_path, private_redis, owner, db):
    market = make_markets(1, creator=owner, volume=0.0)[0]
    headers = bearer_for(owner)
    env = {"REDIS_URL": private_redis.url}
    with gunicorn_server(database_uri, tmp_path, workers=3, env=env) as (base, _):
        item, listing = f"{base}/api/markets/{market.id}", f"{base}/api/markets?sort=-volume&limit=1"
        # Warm every worker's cache with the old value.
        _spread([lambda: get(item)] * 9 + [lambda: get(listing)] * 9)
        for volume in range(1, 16):
            status, _, _ = request("PATCH", item, {"volume": float(volume)}, headers)
            assert status == 200  # acknowledged: from here on nobody may serve older
            results = _spread([lambda: get(item)] * 6 + [lambda: get(listing)] * 6)
            for status, _, body in results:
                assert status == 200
                data = body["data"] if isinstance(body["data"], dict) else body["data"][0]
                assert data["volume"] == float(volume)


def test_a_limit_of_n_admits_exactly_n_across_workers_and_ignores_spoofed_forwarding(
    database_uri, tmp_path, private_redis, db
):
    env = {
        "REDIS_URL": private_redis.url,
        "FLASK_RATELIMIT_DEFAULT": "10 per minute",
        "FLASK_RATELIMIT_ENABLED": "true",
    }
    with gunicorn_server(database_uri, tmp_path, workers=3, env=env) as (base, _):
        # A different X-Forwarded-For on every request: with no trusted proxy it changes nothing.
        calls = [
            lambda i=i: get(f"{base}/api/markets", {"X-Forwarded-For": f"203.0.113.{i}"}) for i in range(16)
        ]
        results = _spread(calls)
        statuses = sorted(status for status, _, _ in results)
        assert statuses == [200] * 10 + [429] * 6
        for status, headers, body in results:
            assert headers["RateLimit-Limit"] == "10"
            if status == 429:
                assert body["code"] == "rate_limited" and body["success"] is False
                retry_after = int(headers["Retry-After"])
                assert 0 < retry_after <= 60
                assert headers["RateLimit-Reset"] == headers["Retry-After"]
                assert headers["RateLimit-Remaining"] == "0"
        # Exempt: health checks and the docs are never limited.
        assert all(get(f"{base}/healthz")[0] == 200 for _ in range(12))


# -- in process: who is counted ---------------------------------------------------------


def test_each_user_has_a_budget_of_their_own_and_anonymous_clients_share_the_address(
    app_factory, auth_header
):
    app = app_factory(
        RATELIMIT_ENABLED=True, RATELIMIT_STORAGE_URI="memory://", RATELIMIT_DEFAULT="3 per minute"
    )
    client = app.test_client()
    alice, bob = auth_header(), auth_header()
    assert [client.get("/api/markets", headers=alice).status_code for _ in range(4)] == [200, 200, 200, 429]
    assert [client.get("/api/markets", headers=bob).status_code for _ in range(3)] == [200, 200, 200]
    assert [client.get("/api/markets").status_code for _ in range(4)] == [200, 200, 200, 429]


def test_login_has_a_tighter_limit(app_factory):
    app = app_factory(RATELIMIT_ENABLED=True, RATELIMIT_STORAGE_URI="memory://")
    client = app.test_client()
    body = {"email": "nobody@example.com", "password": "guess"}
    statuses = [client.post("/api/auth/login", json=body).status_code for _ in range(11)]
    assert statuses == [401] * 10 + [429]
    assert client.get("/api/markets").status_code == 200  # other routes keep their own budget
