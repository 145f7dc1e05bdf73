"""Semantic search, index jobs and job status over HTTP (inline, and on Redis with a worker)."""

from __future__ import annotations

import json
import logging

import pytest
import sqlalchemy as sa
from rq import SimpleWorker

from example_app.extensions import jobs
from example_app.models import Market
from example_app.models import MarketEmbedding
from flask_backend_patterns.logging import JsonFormatter
from tests.e2e.test_markets_http import error
from tests.e2e.test_markets_http import ok

MARKETS = [
    ("Will Bitcoin close above $150k in 2027?", "BTC price at the end of the year, Coinbase reference."),
    ("Will it rain in London on New Year's Day?", "Met Office weather record for Heathrow."),
    ("Who wins the 2028 US presidential election?", "Resolves on the certified electoral college vote."),
    ("Will the Fed cut interest rates in March?", "FOMC decision on the federal funds target range."),
    ("Will the new iPhone ship with USB-C only?", "Apple hardware launch in September."),
]


@pytest.fixture
def writer(auth_header):
    return auth_header(role="user")


def create(client, headers, name, description=None):
    body = ok(
        client.post("/api/markets", json={"name": name, "description": description}, headers=headers), 201
    )
    return body["data"]["id"]


@pytest.fixture
def indexed(client, writer):
    return [create(client, writer, name, description) for name, description in MARKETS]


# -- inline mode (no Redis: the embedded default) -----------------------------------------


def test_creating_a_market_indexes_it(client, db, indexed):
    rows = db.session.scalars(sa.select(MarketEmbedding)).all()
    assert {row.market_id for row in rows} == set(indexed)
    assert all(row.market_version == 1 for row in rows)


def test_search_ranks_by_descending_similarity(client, indexed):
    body = ok(client.get("/api/markets/search", query_string={"q": "bitcoin price end of year", "limit": 5}))
    results = body["data"]
    assert results[0]["id"] == indexed[0]
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True) and len(results) == 5
    assert set(results[0]) >= {"id", "name", "status", "volume", "score"}
    assert body["meta"] == {"total": 5, "limit": 5}


def test_search_limit_and_the_best_match_of_other_queries(client, indexed):
    assert [r["id"] for r in ok(client.get("/api/markets/search?q=rain+weather+london&limit=1"))["data"]] == [
        indexed[1]
    ]
    assert (
        ok(client.get("/api/markets/search?q=interest+rates+federal+reserve&limit=2"))["data"][0]["id"]
        == (indexed[3])
    )


@pytest.mark.parametrize(
    "query", ["", "q=", "q=%20%20", "q=x&limit=0", "q=x&limit=51", "q=x&limit=ten", "q=" + "x" * 501]
)
def test_bad_search_queries_are_400(client, query):
    error(client.get(f"/api/markets/search?{query}"), 400, "validation_error")


def test_an_update_is_reindexed_and_a_delete_drops_out(client, indexed, writer, auth_header):
    ok(client.get("/api/markets/search?q=anything"))  # load this process's matrix
    ok(
        client.patch(
            f"/api/markets/{indexed[4]}", json={"name": "Will SpaceX land humans on Mars?"}, headers=writer
        )
    )
    assert ok(client.get("/api/markets/search?q=mars+landing+spacex&limit=1"))["data"][0]["id"] == indexed[4]
    assert client.delete(f"/api/markets/{indexed[4]}", headers=auth_header(role="admin")).status_code == 204
    found = [r["id"] for r in ok(client.get("/api/markets/search?q=mars+landing+spacex&limit=50"))["data"]]
    assert indexed[4] not in found and len(found) == 4


def test_index_endpoint_queues_a_job_and_the_job_endpoint_reports_it(client, indexed, writer):
    response = client.post(f"/api/markets/{indexed[0]}/index", headers=writer)
    job = ok(response, 202)["data"]
    assert response.headers["Location"] == f"/api/jobs/{job['id']}"
    status = ok(client.get(response.headers["Location"], headers=writer))["data"]
    assert status["status"] == "finished" and status["result"]["indexed"] is True
    assert status["result"]["market_id"] == indexed[0]


def test_index_and_jobs_need_the_write_permission(client, indexed):
    error(client.post(f"/api/markets/{indexed[0]}/index"), 401, "unauthorized")
    error(client.get("/api/jobs/some-job"), 401, "unauthorized")


def test_unknown_market_and_unknown_job_are_404(client, writer):
    error(client.post("/api/markets/nope/index", headers=writer), 404, "not_found")
    error(client.get("/api/jobs/no-such-job", headers=writer), 404, "not_found")
    error(client.get("/api/jobs/bad%20id!", headers=writer), 404, "not_found")


# -- on Redis, with a worker ---------------------------------------------------------------


@pytest.fixture
def queued_app(app_factory, private_redis):
    return app_factory(
        BACKEND_JOBS_REDIS_URL=private_redis.url, REDIS_URL=private_redis.url, BACKEND_JOBS_INLINE=False
    )


def work(app):
    with app.app_context():
        jobs.worker(worker_class=SimpleWorker).work(burst=True)


class JsonLines(logging.Handler):
    """Formats each record as it is emitted, while its request id is bound."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(JsonFormatter())
        self.lines: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


def test_on_redis_the_job_waits_for_a_worker_and_carries_the_request_id(queued_app, auth_header, db):
    client = queued_app.test_client()
    writer = auth_header()
    # Creating the market queues its index job, with this request's id.
    market_id = create(
        client, {**writer, "X-Request-ID": "rid-create-1"}, "Will Eurovision draw 200M viewers?"
    )
    assert db.session.get(MarketEmbedding, market_id) is None  # queued, not run
    response = client.post(f"/api/markets/{market_id}/index", headers=writer)
    job = ok(response, 202)["data"]
    assert job["status"] == "queued"
    # The same market version queued again while pending is the same job.
    again = ok(client.post(f"/api/markets/{market_id}/index", headers=writer), 202)["data"]
    assert again["id"] == job["id"]
    handler = JsonLines()
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        work(queued_app)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    status = ok(client.get(f"/api/jobs/{job['id']}", headers=writer))["data"]
    assert status["status"] == "finished" and status["result"]["indexed"] is True
    job_lines = [line for line in handler.lines if line.get("job_id") == job["id"]]
    assert len(job_lines) >= 3  # started, indexed, finished
    assert {line["request_id"] for line in job_lines} == {"rid-create-1"}
    db.session.rollback()  # end the test's read transaction: see what the worker wrote
    assert db.session.get(MarketEmbedding, market_id) is not None


def test_a_queue_outage_does_not_lose_the_write(app_factory, auth_header, db, caplog):
    app = app_factory(BACKEND_JOBS_REDIS_URL="redis://127.0.0.1:1/0", BACKEND_JOBS_INLINE=False)
    client = app.test_client()
    writer = auth_header()
    caplog.set_level(logging.WARNING)
    market_id = create(client, writer, "Saved while the queue is down")
    db.session.rollback()  # end the test's read transaction: see what the request wrote
    assert db.session.get(Market, market_id) is not None
    assert any("not queued for indexing" in r.getMessage() for r in caplog.records)
    error(client.post(f"/api/markets/{market_id}/index", headers=writer), 503, "unavailable")


def test_an_index_job_of_an_older_version_does_not_overwrite_a_newer_vector(client, db, writer, monkeypatch):
    from example_app import indexing
    from example_app.models import MarketEmbedding as Embedding

    market_id = create(client, writer, "Will the old name win?")
    ok(client.patch(f"/api/markets/{market_id}", json={"name": "The newer name"}, headers=writer))
    db.session.rollback()
    newer = db.session.get(Embedding, market_id)
    assert newer.market_version == 2
    newer_vector = newer.vector
    embedder = indexing.current_embedder()
    original = type(embedder).embed

    def embed_then_change(self, texts):
        # While this (now older) job embeds, the market moves on to version 3.
        vectors = original(self, texts)
        with db.engine.begin() as conn:
            conn.execute(sa.update(Market).where(Market.id == market_id).values(version=Market.version + 1))
        return vectors

    monkeypatch.setattr(type(embedder), "embed", embed_then_change)
    result = indexing.index_market(market_id)
    assert result["indexed"] is False
    db.session.rollback()
    assert db.session.get(Embedding, market_id).vector == newer_vector
