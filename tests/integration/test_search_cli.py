"""``flask search reindex``: markets written without the API become searchable."""

from __future__ import annotations

import sqlalchemy as sa

from example_app.models import Market
from example_app.models import MarketEmbedding


def test_seeded_markets_are_searchable_after_reindex(app, db):
    runner = app.test_cli_runner()
    assert runner.invoke(args=["seed", "--markets", "30", "--users", "2", "--seed", "3"]).exit_code == 0
    assert db.session.scalar(sa.select(sa.func.count()).select_from(MarketEmbedding)) == 0
    result = runner.invoke(args=["search", "reindex", "--batch-size", "7"])
    assert result.exit_code == 0, result.output
    assert "Indexed 30 markets." in result.output
    db.session.rollback()
    embedded = dict(
        db.session.execute(sa.select(MarketEmbedding.market_id, MarketEmbedding.market_version)).all()
    )
    assert len(embedded) == 30 and set(embedded.values()) == {1}
    target = db.session.scalars(sa.select(Market).order_by(Market.id).limit(1)).one()
    found = app.test_client().get("/api/markets/search", query_string={"q": target.name, "limit": 3})
    assert found.status_code == 200
    assert found.get_json()["data"][0]["id"] == target.id


def test_reindex_replaces_vectors_rather_than_duplicating_them(app, db):
    runner = app.test_cli_runner()
    runner.invoke(args=["seed", "--markets", "5", "--users", "1", "--seed", "4"])
    for _ in range(2):
        assert runner.invoke(args=["search", "reindex"]).exit_code == 0
    db.session.rollback()
    assert db.session.scalar(sa.select(sa.func.count()).select_from(MarketEmbedding)) == 5
