"""The trigger-kept status counters agree with COUNT(*) after every kind of write."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from example_app.models import Market
from example_app.models import MarketStatusCount
from example_app.repositories import MarketRepository
from tests.factories import make_markets
from tests.factories import make_user


def counters(db):
    rows = db.session.execute(sa.select(MarketStatusCount.status, MarketStatusCount.total)).all()
    return {status: total for status, total in rows if total}


def actual(db):
    rows = db.session.execute(sa.select(Market.status, sa.func.count()).group_by(Market.status)).all()
    return dict(rows)


def statuses(i):
    return ("active", "closed", "resolved")[i % 3]


@pytest.fixture
def markets(db):
    return make_markets(9, status=statuses)


def test_orm_inserts_are_counted(db, markets):
    assert counters(db) == actual(db) == {"active": 3, "closed": 3, "resolved": 3}


def test_bulk_insert_is_counted(db, markets):
    creator = make_user()
    rows = [{"name": f"bulk {i}", "status": "closed", "creator_id": creator.id} for i in range(25)]
    db.session.execute(sa.insert(Market), rows)
    db.session.commit()
    assert counters(db) == actual(db)
    assert counters(db)["closed"] == 28


def test_status_change_moves_one_row_between_counters(db, markets):
    markets[0].status = "resolved"
    db.session.commit()
    assert counters(db) == actual(db) == {"active": 2, "closed": 3, "resolved": 4}


def test_update_of_other_columns_leaves_counters(db, markets):
    db.session.execute(sa.update(Market).values(volume=Market.volume + 1))
    db.session.commit()
    assert counters(db) == actual(db)


def test_bulk_status_update_is_counted(db, markets):
    db.session.execute(sa.update(Market).where(Market.status == "active").values(status="closed"))
    db.session.commit()
    assert counters(db) == actual(db) == {"closed": 6, "resolved": 3}


def test_deletes_are_counted(db, markets):
    db.session.delete(markets[1])
    db.session.execute(sa.delete(Market).where(Market.status == "resolved"))
    db.session.commit()
    assert counters(db) == actual(db) == {"active": 3, "closed": 2}


def test_rolled_back_write_leaves_counters(db, markets):
    markets[0].status = "closed"
    db.session.flush()
    db.session.rollback()
    assert counters(db) == actual(db) == {"active": 3, "closed": 3, "resolved": 3}


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (None, 9),
        ({"status": "active"}, 3),
        ({"status": ["active", "closed"]}, 6),
        ({"status__in": ["resolved"]}, 3),
        ({"status": []}, 0),
        ({"status": "unknown"}, 0),
        ({"status": "active", "volume__gte": 0}, 3),
        ({"volume__gte": 0}, 9),
    ],
)
def test_repository_count_equals_rows(db, markets, filters, expected):
    repo = MarketRepository()
    assert repo.count(filters) == expected


def test_status_only_count_reads_the_counters(db, markets, count_queries):
    with count_queries() as queries:
        MarketRepository().count({"status": "active"})
    assert queries.count == 1
    assert "market_status_counts" in queries.statements[0]
    assert "FROM markets" not in queries.statements[0]
