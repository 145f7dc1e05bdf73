"""MarketService: the write rules that the HTTP write endpoints will call."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from example_app.models import Market
from example_app.models import Position
from example_app.services import MarketService
from flask_backend_patterns.errors import NotFoundError
from flask_backend_patterns.errors import PreconditionFailedError
from tests.factories import make_markets
from tests.factories import make_user


def count(db, model):
    return db.session.scalar(sa.select(sa.func.count()).select_from(model))


@pytest.fixture
def creator(db):
    user = make_user()
    db.session.commit()
    return user


def test_create_with_initial_position_commits_both(db, creator):
    market = MarketService().create_market(
        {"name": "Rain?"}, creator_id=creator.id, initial_position={"outcome": "yes", "amount": 5.0}
    )
    market_id = market.id
    db.session.expunge_all()
    assert count(db, Market) == 1 and count(db, Position) == 1
    assert db.session.get(Position, db.session.scalar(sa.select(Position.id))).market_id == market_id


@pytest.mark.parametrize("position", [{"outcome": "no", "amount": -1.0}, {"outcome": "maybe", "amount": 1.0}])
def test_invalid_position_rolls_back_the_market(db, creator, position):
    # The database refuses the position (a CHECK, or a value too long for the column).
    with pytest.raises((sa.exc.IntegrityError, sa.exc.DataError)):
        MarketService().create_market({"name": "Rain?"}, creator_id=creator.id, initial_position=position)
    assert count(db, Market) == 0 and count(db, Position) == 0


def test_replace_resets_omitted_fields_update_keeps_them(db, creator):
    service = MarketService()
    market = service.create_market({"name": "A", "description": "d", "volume": 3.0}, creator_id=creator.id)
    service.update_market(market.id, {"name": "B"})
    assert (market.name, market.description, market.volume) == ("B", "d", 3.0)
    service.replace_market(market.id, {"name": "C", "status": "closed", "volume": 0.0})
    assert (market.name, market.description, market.status) == ("C", None, "closed")


def test_update_rejects_fields_that_are_not_writable(db, creator):
    market = MarketService().create_market({"name": "A"}, creator_id=creator.id)
    with pytest.raises(ValueError):
        MarketService().update_market(market.id, {"creator_id": "someone-else"})


def test_stale_if_match_is_precondition_failed(db, creator):
    service = MarketService()
    market = service.create_market({"name": "A"}, creator_id=creator.id)
    stale = market.etag
    service.update_market(market.id, {"name": "B"}, if_match=stale)
    assert market.etag != stale
    with pytest.raises(PreconditionFailedError):
        service.update_market(market.id, {"name": "C"}, if_match=stale)
    with pytest.raises(PreconditionFailedError):
        service.delete_market(market.id, if_match=stale)
    service.delete_market(market.id, if_match=market.etag)
    assert count(db, Market) == 0


def test_if_match_star_and_lists(db, creator):
    service = MarketService()
    market = service.create_market({"name": "A"}, creator_id=creator.id)
    service.update_market(market.id, {"name": "B"}, if_match="*")
    service.update_market(market.id, {"name": "C"}, if_match=f'"nope", {market.etag}')
    assert market.name == "C"


def test_missing_market_is_not_found(db):
    service = MarketService()
    for call in (
        lambda: service.get("x"),
        lambda: service.update_market("x", {"name": "y"}),
        lambda: service.delete_market("x"),
        lambda: service.list_positions("x"),
    ):
        with pytest.raises(NotFoundError):
            call()


def test_list_positions_of_one_market_only(db, creator):
    service = MarketService()
    a = service.create_market(
        {"name": "A"}, creator_id=creator.id, initial_position={"outcome": "yes", "amount": 1.0}
    )
    service.create_market(
        {"name": "B"}, creator_id=creator.id, initial_position={"outcome": "no", "amount": 2.0}
    )
    page = service.list_positions(a.id)
    assert [p.market_id for p in page.items] == [a.id] and page.total == 1


def test_list_passes_query_through(db):
    make_markets(5, status="closed")
    page = MarketService().list(filters={"status": "closed"}, limit=2)
    assert page.total == 5 and len(page.items) == 2 and page.next_cursor
