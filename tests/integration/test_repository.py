"""SQLAlchemyRepository against the real database (PostgreSQL in CI, SQLite locally)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from example_app.models import Market
from example_app.repositories import MarketRepository
from example_app.repositories import PositionRepository
from flask_backend_patterns.errors import NotFoundError
from flask_backend_patterns.errors import ValidationError
from tests.factories import make_markets
from tests.factories import make_position
from tests.factories import make_user

STATUSES = ("active", "closed", "resolved")


@pytest.fixture
def repo(db):
    return MarketRepository(db.session)


@pytest.fixture
def markets(db):
    # 30 markets; volume repeats every 5 so sorts by volume have ties.
    return make_markets(30, status=lambda i: STATUSES[i % 3], volume=lambda i: float((i % 5) * 10))


def ids(items):
    return [m.id for m in items]


def python_sort(items, key, descending):
    ordered = sorted(items, key=lambda m: (getattr(m, key), m.id))
    return list(reversed(ordered)) if descending else ordered


def test_filter_eq(repo, markets):
    found = repo.find_all(filters={"status": "closed"}, limit=100)
    assert sorted(ids(found)) == sorted(m.id for m in markets if m.status == "closed")


def test_filter_in_with_list(repo, markets):
    found = repo.find_all(filters={"status": ["closed", "resolved"]}, limit=100)
    assert sorted(ids(found)) == sorted(m.id for m in markets if m.status != "active")


def test_filter_range_operators(repo, markets):
    found = repo.find_all(filters={"volume__gte": 20.0, "volume__lte": 30.0}, limit=100)
    assert sorted(ids(found)) == sorted(m.id for m in markets if 20 <= m.volume <= 30)


def test_filter_by_creator(repo, db, markets):
    other = make_user()
    mine = make_markets(2, creator=other)
    assert sorted(ids(repo.find_all(filters={"creator_id": other.id}))) == sorted(ids(mine))


@pytest.mark.parametrize("filters", [{"name": "x"}, {"status__gt": "a"}, {"volume__like": 1}])
def test_filter_not_allowed_is_validation_error(repo, filters):
    with pytest.raises(ValidationError) as info:
        repo.find_all(filters=filters)
    assert "filters" in info.value.details


@pytest.mark.parametrize("key", ["volume", "created_at", "name", "id"])
@pytest.mark.parametrize("descending", [False, True])
def test_every_sort_with_ties_broken_by_id(repo, markets, key, descending):
    found = repo.find_all(sort=("-" if descending else "") + key, limit=100)
    assert ids(found) == ids(python_sort(markets, key, descending))


def test_default_sort_is_newest_first(repo, markets):
    assert ids(repo.find_all(limit=100)) == ids(python_sort(markets, "created_at", True))


def test_unknown_sort_field_is_validation_error(repo):
    with pytest.raises(ValidationError) as info:
        repo.find_all(sort="description")
    assert "sort" in info.value.details


@pytest.mark.parametrize("limit", [0, 101, -1])
def test_limit_out_of_range(repo, limit):
    with pytest.raises(ValidationError):
        repo.find_all(limit=limit)


@pytest.mark.parametrize("offset", [-1, 10**19])
def test_offset_out_of_range(repo, offset):
    with pytest.raises(ValidationError):
        repo.find_all(offset=offset)


def test_offset_pages_cover_all_rows_once(repo, markets):
    seen = []
    for offset in range(0, 30, 7):
        page = repo.find_page(sort="volume", limit=7, offset=offset)
        assert page.total == 30 and page.offset == offset
        seen += ids(page.items)
    assert seen == ids(python_sort(markets, "volume", False))


def test_last_page_is_short_and_has_no_cursor(repo, markets):
    page = repo.find_page(sort="name", limit=7, offset=28)
    assert len(page.items) == 2 and page.next_cursor is None


def test_empty_page_past_the_end(repo, markets):
    page = repo.find_page(limit=10, offset=500)
    assert page.items == [] and page.total == 30 and page.next_cursor is None


def test_empty_table(repo):
    page = repo.find_page()
    assert page.items == [] and page.total == 0 and page.next_cursor is None


@pytest.mark.parametrize("sort", ["-volume", "volume", "name", "-created_at", "id"])
def test_keyset_pages_walk_everything_in_order(repo, markets, sort):
    expected = ids(python_sort(markets, sort.lstrip("-"), sort.startswith("-")))
    seen, cursor = [], None
    while True:
        page = repo.find_page(sort=sort, limit=4, cursor=cursor, filters=None)
        assert page.offset == (0 if cursor is None else None)
        seen += ids(page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == expected


def test_keyset_with_filter(repo, markets):
    expected = ids(python_sort([m for m in markets if m.status == "active"], "volume", True))
    seen, cursor = [], None
    while True:
        page = repo.find_page(sort="-volume", limit=3, cursor=cursor, filters={"status": "active"})
        assert page.total == 10
        seen += ids(page.items)
        if not (cursor := page.next_cursor):
            break
    assert seen == expected


def test_keyset_at_depth_matches_offset(db):
    make_markets(1000, volume=lambda i: float(i % 17))
    repo = MarketRepository(db.session)
    cursor, depth = None, 0
    while depth < 900:
        page = repo.find_page(sort="-volume", limit=100, cursor=cursor, with_total=False)
        cursor, depth = page.next_cursor, depth + 100
    keyset = repo.find_page(sort="-volume", limit=50, cursor=cursor, with_total=False)
    offset = repo.find_page(sort="-volume", limit=50, offset=900, with_total=False)
    assert ids(keyset.items) == ids(offset.items)


def test_exact_multiple_has_no_cursor_on_last_page(repo, markets):
    page = repo.find_page(sort="id", limit=15)
    page2 = repo.find_page(sort="id", limit=15, cursor=page.next_cursor)
    assert len(page2.items) == 15 and page2.next_cursor is None


@pytest.mark.parametrize("cursor", ["garbage", "", "eyJzIjpbXX0", "a" * 300])
def test_garbage_cursor_is_validation_error(repo, markets, cursor):
    with pytest.raises(ValidationError) as info:
        repo.find_all(cursor=cursor)
    assert "cursor" in info.value.details


def test_forged_cursor_is_validation_error(repo, markets):
    from itsdangerous import URLSafeSerializer

    forged = URLSafeSerializer("not-the-secret", salt="backend_patterns.repository.cursor").dumps(
        {"s": ["-created_at", "-id"], "v": [{"dt": "2026-01-01T00:00:00+00:00"}, "zzz"]}
    )
    with pytest.raises(ValidationError):
        repo.find_all(cursor=forged)


def test_cursor_of_another_sort_is_validation_error(repo, markets):
    cursor = repo.find_page(sort="volume", limit=5).next_cursor
    with pytest.raises(ValidationError):
        repo.find_all(sort="name", cursor=cursor)


def test_cursor_and_offset_together_is_validation_error(repo, markets):
    cursor = repo.find_page(limit=5).next_cursor
    with pytest.raises(ValidationError):
        repo.find_page(limit=5, offset=5, cursor=cursor)


def test_projection_selects_only_those_columns(repo, markets, count_queries):
    with count_queries() as q:
        found = repo.find_all(fields=["id", "name"], sort="name", limit=5)
    select_list = q.statements[0].split("FROM")[0]
    assert "markets.name" in select_list and "markets.description" not in select_list
    assert [m.name for m in found] == [m.name for m in python_sort(markets, "name", False)[:5]]


def test_projected_out_column_is_never_lazy_loaded(repo, db, markets):
    db.session.expunge_all()
    found = repo.find_all(fields=["id"], limit=1)
    with pytest.raises(sa.exc.InvalidRequestError):
        _ = found[0].description


def test_unknown_projection_field(repo):
    with pytest.raises(ValidationError) as info:
        repo.find_all(fields=["id", "password_hash"])
    assert "fields" in info.value.details


@pytest.mark.parametrize("page_size", [1, 20, 100])
def test_include_creator_costs_one_extra_query(db, page_size, count_queries):
    creators = [make_user() for _ in range(5)]
    for i, creator in enumerate(creators):
        make_markets(page_size, creator=creator, name=lambda j, i=i: f"M{i}-{j}")
    creator_names = {c.name for c in creators}
    db.session.expunge_all()  # nothing preloaded in the identity map
    repo = MarketRepository(db.session)
    with count_queries() as plain:
        repo.find_all(limit=page_size)
    db.session.expunge_all()
    with count_queries() as included:
        found = repo.find_all(limit=page_size, include=["creator"])
        names = {m.creator.name for m in found}
    assert plain.count == 1
    assert included.count == 2
    assert names and names <= creator_names


def test_include_with_projection_loads_the_foreign_key(repo, markets):
    found = repo.find_all(fields=["name"], include=["creator"], limit=3)
    assert all(m.creator.id == m.creator_id for m in found)


def test_unknown_include(repo):
    with pytest.raises(ValidationError):
        repo.find_all(include=["positions"])


def test_find_by_id(repo, markets):
    assert repo.find_by_id(markets[3].id).name == markets[3].name
    assert repo.find_by_id("missing") is None


def test_find_by_ids_is_one_query_in_given_order(repo, db, markets, count_queries):
    wanted = [markets[5].id, "missing", markets[1].id, markets[5].id, markets[20].id]
    db.session.expunge_all()
    with count_queries() as q:
        found = repo.find_by_ids(wanted)
    assert q.count == 1
    assert ids(found) == [markets[5].id, markets[1].id, markets[20].id]


def test_find_by_ids_empty_sends_no_query(repo, count_queries):
    with count_queries() as q:
        assert repo.find_by_ids([]) == []
    assert q.count == 0


def test_count_and_exists(repo, markets):
    assert repo.count() == 30
    assert repo.count({"status": "active"}) == 10
    assert repo.exists({"status": "closed"}) is True
    assert repo.exists({"volume__gte": 10_000.0}) is False


def test_create_update_delete_flush_without_commit(repo, db):
    creator = make_user()
    db.session.commit()
    market = repo.create({"name": "New", "creator_id": creator.id})
    assert market.id and market.status == "active" and market.version == 1
    repo.update(market.id, {"volume": 5.0})
    assert market.version == 2
    db.session.rollback()  # nothing was committed by the repository
    assert repo.find_by_id(market.id) is None


def test_delete(repo, db, markets):
    repo.delete(markets[0].id)
    db.session.commit()
    assert repo.count() == 29


def test_update_and_delete_missing_raise_not_found(repo):
    with pytest.raises(NotFoundError):
        repo.update("missing", {"name": "x"})
    with pytest.raises(NotFoundError):
        repo.delete("missing")


def test_create_with_unknown_attribute_is_rejected(repo):
    with pytest.raises(ValueError):
        repo.create({"name": "x", "is_admin": True})


def test_delete_market_cascades_to_positions(repo, db, markets):
    user = make_user()
    make_position(markets[0], user)
    repo.delete(markets[0].id)
    db.session.commit()
    assert PositionRepository(db.session).count() == 0


def test_check_constraint_rejects_negative_volume(repo, db, markets):
    with pytest.raises(sa.exc.IntegrityError):
        repo.update(markets[0].id, {"volume": -1.0})
    db.session.rollback()


def test_datetimes_come_back_aware_utc(repo, markets):
    found = repo.find_by_id(markets[0].id)
    assert found.created_at.utcoffset().total_seconds() == 0
    assert found.created_at == markets[0].created_at


def test_repository_uses_app_session_by_default(app, markets):
    assert MarketRepository().count() == 30


def test_cursor_needs_a_secret(app, db, markets):
    repo = MarketRepository(db.session)
    app.config["SECRET_KEY"] = None
    with pytest.raises(RuntimeError, match="SECRET_KEY"):
        repo.find_page(limit=5)


def test_market_model_is_what_repository_serves(repo):
    assert repo.model is Market
