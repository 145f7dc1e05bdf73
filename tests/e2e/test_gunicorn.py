"""The production entry point: gunicorn with several workers, over real HTTP on loopback."""

from __future__ import annotations

import concurrent.futures
import json
import time

import pytest

from tests.e2e.servers import get
from tests.e2e.servers import gunicorn_server
from tests.e2e.servers import post
from tests.factories import make_markets


@pytest.fixture
def server(app, database_uri, tmp_path):
    make_markets(30)
    with gunicorn_server(database_uri, tmp_path, workers=2) as running:
        yield running


def test_serves_lists_across_workers_with_shared_cursor_secret(server):
    base, _ = server
    seen, url = [], f"{base}/api/markets?limit=4&sort=-volume"
    for _ in range(20):  # bounded: 30 rows / 4 per page
        status, _, body = get(url)
        assert status == 200
        seen += [m["id"] for m in body["data"]]
        if not body["meta"]["next_cursor"]:
            break
        url = f"{base}/api/markets?limit=4&sort=-volume&cursor={body['meta']['next_cursor']}"
    assert len(seen) == len(set(seen)) == 30


def test_errors_and_request_ids_over_http(server):
    base, log_path = server
    status, headers, body = get(f"{base}/api/markets?limit=500", {"X-Request-ID": "e2e-req-1"})
    assert status == 400 and body["code"] == "validation_error" and body["request_id"] == "e2e-req-1"
    assert headers["X-Request-ID"] == "e2e-req-1" and headers["Content-Type"] == "application/json"
    status, _, body = get(f"{base}/nope")
    assert status == 404 and body["code"] == "not_found"
    deadline = time.monotonic() + 5
    while "e2e-req-1" not in log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("request_id") == "e2e-req-1"]
    assert access and access[0]["status"] == 400 and access[0]["path"] == "/api/markets"


def test_readyz_over_http(server):
    base, _ = server
    status, _, body = get(f"{base}/readyz")
    assert status == 200 and body["data"]["checks"]["database"] == "ok"


def test_logout_is_seen_by_every_worker(server, db):
    from example_app.services import AuthService

    base, log_path = server
    AuthService().create_user(email="w@example.com", password="worker-pass-123", role="user")
    status, body = post(f"{base}/api/auth/login", {"email": "w@example.com", "password": "worker-pass-123"})
    assert status == 200
    bearer = {"Authorization": f"Bearer {body['data']['access_token']}"}
    assert get(f"{base}/api/auth/me", bearer)[0] == 200
    assert post(f"{base}/api/auth/logout", headers=bearer)[0] == 204
    # Batches of concurrent requests, each on its own connection: while one worker is
    # busy the other accepts. Stop once both workers have refused the token (bounded).
    pids: set[int] = set()
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        for batch in range(10):
            rids = [f"after-logout-{batch}-{i}" for i in range(8)]
            for status, _, body in pool.map(
                lambda rid: get(f"{base}/api/auth/me", {**bearer, "X-Request-ID": rid}), rids
            ):
                assert status == 401 and body["code"] == "unauthorized"
            lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
            pids = {
                line["pid"]
                for line in lines
                if str(line.get("request_id", "")).startswith("after-logout-") and line.get("status") == 401
            }
            if len(pids) >= 2:
                break
    assert len(pids) == 2, "the requests after logout should have reached both workers"
