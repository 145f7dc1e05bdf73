"""Business rules of the market API. Blueprints call these; these call repositories."""

from __future__ import annotations

import typing as t

from flask_backend_patterns.api import etag_matches
from flask_backend_patterns.errors import NotFoundError
from flask_backend_patterns.errors import PreconditionFailedError
from flask_backend_patterns.repository import Page
from flask_backend_patterns.service import Service
from flask_backend_patterns.transactions import transaction

from .models import Market
from .models import Position
from .repositories import MarketRepository
from .repositories import PositionRepository

#: fields a client may write on a market; PUT must give every one of them.
WRITABLE_MARKET_FIELDS = ("name", "description", "status", "volume")


def _check_if_match(market: Market, if_match: str | None) -> None:
    if if_match is not None and not etag_matches(if_match, market.etag):
        raise PreconditionFailedError()


class MarketService(Service[Market]):
    """Markets and the positions taken on them."""

    repository: MarketRepository

    def __init__(
        self, markets: MarketRepository | None = None, positions: PositionRepository | None = None
    ) -> None:
        super().__init__(markets or MarketRepository())
        self.positions = positions or PositionRepository(self.repository.session)

    def create_market(
        self,
        data: t.Mapping[str, t.Any],
        *,
        creator_id: str,
        initial_position: t.Mapping[str, t.Any] | None = None,
    ) -> Market:
        """Create a market and, if given, its creator's first position: both or neither."""
        with transaction(self.repository.session):
            market = self.repository.create({**data, "creator_id": creator_id})
            if initial_position is not None:
                self.positions.create({**initial_position, "market_id": market.id, "user_id": creator_id})
            return market

    def replace_market(
        self, market_id: str, data: t.Mapping[str, t.Any], *, if_match: str | None = None
    ) -> Market:
        """Replace every writable field (absent optional ones are reset).

        :raises NotFoundError: no such market.
        :raises PreconditionFailedError: ``if_match`` is not the market's ETag.
        """
        full = {name: data.get(name) for name in WRITABLE_MARKET_FIELDS}
        return self.update_market(market_id, full, if_match=if_match)

    def update_market(
        self, market_id: str, changes: t.Mapping[str, t.Any], *, if_match: str | None = None
    ) -> Market:
        """Change only the given fields.

        :raises NotFoundError: no such market.
        :raises PreconditionFailedError: ``if_match`` is not the market's ETag.
        """
        unknown = set(changes) - set(WRITABLE_MARKET_FIELDS)
        if unknown:
            raise ValueError(f"not writable: {sorted(unknown)}")
        with transaction(self.repository.session):
            market = self.get(market_id)
            _check_if_match(market, if_match)
            return self.repository.update(market_id, changes)

    def delete_market(self, market_id: str, *, if_match: str | None = None) -> None:
        """Delete a market and its positions.

        :raises NotFoundError: no such market.
        :raises PreconditionFailedError: ``if_match`` is not the market's ETag.
        """
        with transaction(self.repository.session):
            market = self.get(market_id)
            _check_if_match(market, if_match)
            self.repository.delete(market_id)

    def list_positions(self, market_id: str, **query: t.Any) -> Page[Position]:
        """One page of a market's positions.

        :raises NotFoundError: no such market.
        """
        if self.repository.find_by_id(market_id, fields=["id"]) is None:
            raise NotFoundError("Market not found")
        filters = {**(query.pop("filters", None) or {}), "market_id": market_id}
        return self.positions.find_page(filters=filters, **query)
