"""Repositories of the example app: what each list may filter, sort, select and embed."""

from __future__ import annotations

import typing as t

import sqlalchemy as sa

from flask_backend_patterns.repository import Filters
from flask_backend_patterns.repository import Include
from flask_backend_patterns.repository import SQLAlchemyRepository

from .models import Market
from .models import MarketStatusCount
from .models import Position
from .models import User

MARKET_SORT_FIELDS = ("volume", "created_at", "name", "id")
MARKET_FIELDS = ("id", "name", "description", "status", "volume", "creator_id", "created_at", "updated_at")
POSITION_SORT_FIELDS = ("created_at", "amount", "id")


class MarketRepository(SQLAlchemyRepository[Market]):
    model = Market
    filter_fields = {"status": {"eq", "in"}, "creator_id": {"eq", "in"}, "volume": {"gte", "lte"}}
    sort_fields = MARKET_SORT_FIELDS
    default_sort = "-created_at"
    projectable_fields = MARKET_FIELDS
    includes = {"creator": Include("creator", ("id", "name"))}

    def total_expression(self, filters: Filters | None = None) -> sa.ScalarSelect[t.Any]:
        """Read the total from the status counters when the filters are on status only.

        Any other filter counts rows (``COUNT(*)``), as the base repository does.
        """
        statuses = _status_only(filters)
        if statuses is None:
            return super().total_expression(filters)
        stmt = sa.select(sa.func.coalesce(sa.func.sum(MarketStatusCount.total), 0))
        if statuses:
            stmt = stmt.where(MarketStatusCount.status.in_(statuses))
        return stmt.scalar_subquery()


def _status_only(filters: Filters | None) -> list[str] | None:
    """The statuses asked for ([] for all) when ``filters`` holds nothing else, else None."""
    if not filters:
        return []
    if len(filters) != 1:
        return None
    key, value = next(iter(filters.items()))
    if key not in ("status", "status__eq", "status__in"):
        return None
    values = list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]
    if key == "status__eq" and len(values) != 1:
        return None
    # An empty list matches nothing: let the base class answer 0 the usual way.
    return [str(v) for v in values] if values else None


class PositionRepository(SQLAlchemyRepository[Position]):
    model = Position
    filter_fields = {"market_id": {"eq"}, "outcome": {"eq", "in"}, "user_id": {"eq"}}
    sort_fields = POSITION_SORT_FIELDS
    default_sort = "-created_at"


class UserRepository(SQLAlchemyRepository[User]):
    model = User
    filter_fields = {"email": {"eq"}, "role": {"eq", "in"}}
    sort_fields = ("created_at", "email", "id")
    default_sort = "created_at"
