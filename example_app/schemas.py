"""marshmallow schemas: what the API accepts and what it returns."""

from __future__ import annotations

import typing as t

import marshmallow as ma
from marshmallow import validate

from flask_backend_patterns.repository import SQLAlchemyRepository

from .models import MARKET_STATUSES
from .models import OUTCOMES
from .repositories import MARKET_FIELDS
from .repositories import MARKET_SORT_FIELDS
from .repositories import POSITION_SORT_FIELDS


class CommaList(ma.fields.List):
    """A list from a repeated query parameter, a comma-separated one, or both
    (``?status=active&status=closed`` or ``?status=active,closed``)."""

    def _deserialize(self, value: t.Any, attr: str | None, data: t.Any, **kwargs: t.Any) -> list[t.Any]:
        values = value if isinstance(value, (list, tuple)) else [value]
        parts = [p.strip() for v in values for p in (v.split(",") if isinstance(v, str) else [v])]
        try:
            return super()._deserialize([p for p in parts if p != ""], attr, data, **kwargs)
        except ma.ValidationError as exc:
            # A query parameter's errors read better as one flat list than keyed by index.
            items = exc.messages.values() if isinstance(exc.messages, dict) else [exc.messages]
            raise ma.ValidationError(sorted({m for msgs in items for m in msgs})) from exc


def _sort_choices(fields: t.Sequence[str]) -> list[str]:
    return [f"{sign}{name}" for name in fields for sign in ("", "-")]


class PageQuerySchema(ma.Schema):
    """limit/offset/cursor, shared by every list."""

    limit = ma.fields.Integer(
        load_default=20, validate=validate.Range(1, 100), metadata={"description": "Page size, 1 to 100"}
    )
    offset = ma.fields.Integer(
        validate=validate.Range(0, SQLAlchemyRepository.max_offset),
        metadata={"description": "Rows to skip; not with cursor"},
    )
    cursor = ma.fields.String(
        validate=validate.Length(min=1, max=2048),
        metadata={"description": "meta.next_cursor of the previous page"},
    )

    @ma.validates_schema
    def _offset_or_cursor(self, data: dict[str, t.Any], **kwargs: t.Any) -> None:
        if data.get("cursor") is not None and data.get("offset") is not None:
            raise ma.ValidationError("Give either cursor or offset, not both.", "cursor")


class MarketListQuerySchema(PageQuerySchema):
    status = CommaList(
        ma.fields.String(validate=validate.OneOf(MARKET_STATUSES)),
        metadata={"description": "Filter; repeat or comma-separate for several"},
    )
    sort = ma.fields.String(
        load_default="-created_at",
        validate=validate.OneOf(_sort_choices(MARKET_SORT_FIELDS)),
        metadata={"description": "Field, '-' prefix for descending; ties by id"},
    )
    fields = CommaList(
        ma.fields.String(validate=validate.OneOf(MARKET_FIELDS)),
        validate=validate.Length(min=1),
        metadata={"description": "Return (and select) only these fields"},
    )
    include = CommaList(
        ma.fields.String(validate=validate.OneOf(["creator"])),
        metadata={"description": "Embed related objects: creator"},
    )


class MarketGetQuerySchema(ma.Schema):
    fields = MarketListQuerySchema._declared_fields["fields"]
    include = MarketListQuerySchema._declared_fields["include"]


class PositionListQuerySchema(PageQuerySchema):
    outcome = CommaList(ma.fields.String(validate=validate.OneOf(OUTCOMES)))
    sort = ma.fields.String(
        load_default="-created_at", validate=validate.OneOf(_sort_choices(POSITION_SORT_FIELDS))
    )


class UserSummarySchema(ma.Schema):
    id = ma.fields.String(required=True)
    name = ma.fields.String(required=True)


class MarketSchema(ma.Schema):
    """A market as the API returns it (``fields=`` may leave any field out)."""

    id = ma.fields.String()
    name = ma.fields.String()
    description = ma.fields.String(allow_none=True)
    status = ma.fields.String(metadata={"enum": list(MARKET_STATUSES)})
    volume = ma.fields.Float()
    creator_id = ma.fields.String()
    created_at = ma.fields.DateTime()
    updated_at = ma.fields.DateTime()
    creator = ma.fields.Nested(UserSummarySchema, metadata={"description": "With include=creator"})


class PositionSchema(ma.Schema):
    """A position as the API returns it."""

    id = ma.fields.String(required=True)
    market_id = ma.fields.String(required=True)
    user_id = ma.fields.String(required=True)
    outcome = ma.fields.String(required=True, metadata={"enum": list(OUTCOMES)})
    amount = ma.fields.Float(required=True)
    created_at = ma.fields.DateTime(required=True)


class PositionInputSchema(ma.Schema):
    """The creator's first position, taken with the market (``initial_position``)."""

    outcome = ma.fields.String(required=True, validate=validate.OneOf(OUTCOMES))
    amount = ma.fields.Float(
        required=True, allow_nan=False, validate=validate.Range(min=0, min_inclusive=False, max=1e15)
    )


class MarketPatchSchema(ma.Schema):
    """The writable fields of a market; any subset (PATCH). Unknown fields are a 400,
    so ``id``, ``creator_id`` and the timestamps cannot be written."""

    name = ma.fields.String(validate=validate.Length(min=1, max=200))
    description = ma.fields.String(allow_none=True, validate=validate.Length(max=5000))
    status = ma.fields.String(validate=validate.OneOf(MARKET_STATUSES))
    volume = ma.fields.Float(allow_nan=False, validate=validate.Range(min=0, max=1e15))


class MarketReplaceSchema(MarketPatchSchema):
    """Every writable field, each required (PUT); ``description`` may be null."""

    name = ma.fields.String(required=True, validate=validate.Length(min=1, max=200))
    description = ma.fields.String(required=True, allow_none=True, validate=validate.Length(max=5000))
    status = ma.fields.String(required=True, validate=validate.OneOf(MARKET_STATUSES))
    volume = ma.fields.Float(required=True, allow_nan=False, validate=validate.Range(min=0, max=1e15))


class MarketCreateSchema(MarketPatchSchema):
    """A new market: ``name`` required, the rest defaulted; optionally a first position."""

    name = ma.fields.String(required=True, validate=validate.Length(min=1, max=200))
    status = ma.fields.String(load_default="active", validate=validate.OneOf(MARKET_STATUSES))
    volume = ma.fields.Float(load_default=0.0, allow_nan=False, validate=validate.Range(min=0, max=1e15))
    initial_position = ma.fields.Nested(PositionInputSchema)


class LoginSchema(ma.Schema):
    email = ma.fields.String(required=True, validate=validate.Length(min=1, max=320))
    password = ma.fields.String(required=True, load_only=True, validate=validate.Length(min=1, max=1024))


class TokenSchema(ma.Schema):
    """Tokens issued by login (both) or refresh (the access token)."""

    access_token = ma.fields.String(required=True)
    refresh_token = ma.fields.String()
    token_type = ma.fields.String(required=True, metadata={"enum": ["Bearer"]})
    expires_in = ma.fields.Integer(required=True, metadata={"description": "Seconds the access token lives"})


class MeSchema(ma.Schema):
    id = ma.fields.String(required=True)
    email = ma.fields.String(required=True, allow_none=True)
    role = ma.fields.String(required=True, allow_none=True)
    permissions = ma.fields.List(ma.fields.String(), required=True)


class SearchQuerySchema(ma.Schema):
    q = ma.fields.String(
        required=True,
        validate=validate.Length(min=1, max=500),
        metadata={"description": "What to look for, in words"},
    )
    limit = ma.fields.Integer(
        load_default=10, validate=validate.Range(1, 50), metadata={"description": "Results, 1 to 50"}
    )

    @ma.validates("q")
    def _not_blank(self, value: str, **kwargs: t.Any) -> None:
        if not value.strip():
            raise ma.ValidationError("Give some words to search for.")


class MarketSearchResultSchema(MarketSchema):
    """A market found by search, with its similarity to the query (cosine, -1 to 1)."""

    score = ma.fields.Float(required=True)


class JobSchema(ma.Schema):
    """A background job: status, and its result or error once it ended."""

    id = ma.fields.String(required=True)
    status = ma.fields.String(
        required=True,
        metadata={
            "enum": [
                "queued",
                "started",
                "finished",
                "failed",
                "scheduled",
                "deferred",
                "stopped",
                "canceled",
            ]
        },
    )
    result = ma.fields.Raw(allow_none=True)
    error = ma.fields.String(allow_none=True)
    enqueued_at = ma.fields.String(allow_none=True, metadata={"format": "date-time"})
    ended_at = ma.fields.String(allow_none=True, metadata={"format": "date-time"})


class HealthSchema(ma.Schema):
    status = ma.fields.String(required=True)
    checks = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.String())
