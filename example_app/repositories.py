"""Repositories of the example app: what each list may filter, sort, select and embed."""

from __future__ import annotations

from flask_backend_patterns.repository import Include
from flask_backend_patterns.repository import SQLAlchemyRepository

from .models import Market
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
