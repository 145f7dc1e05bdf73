"""Market endpoints: parse, call MarketService, shape the response."""

from __future__ import annotations

import functools
import typing as t

from flask import request
from flask import Response
from flask import url_for
from flask.views import MethodView

from flask_backend_patterns.api import Blueprint
from flask_backend_patterns.api import dump
from flask_backend_patterns.api import empty_response
from flask_backend_patterns.api import envelope
from flask_backend_patterns.api import etag_matches
from flask_backend_patterns.api import page_meta
from flask_backend_patterns.auth import current_user
from flask_backend_patterns.auth import require_permission
from flask_backend_patterns.cache import cached_response
from flask_backend_patterns.repository import Page

from ..models import Market
from ..models import User
from ..schemas import JobSchema
from ..schemas import MarketCreateSchema
from ..schemas import MarketGetQuerySchema
from ..schemas import MarketListQuerySchema
from ..schemas import MarketPatchSchema
from ..schemas import MarketReplaceSchema
from ..schemas import MarketSchema
from ..schemas import MarketSearchResultSchema
from ..schemas import PositionListQuerySchema
from ..schemas import PositionSchema
from ..schemas import SearchQuerySchema
from ..services import MarketService
from ..services import SearchService

blp = Blueprint("markets", __name__, url_prefix="/api/markets", description="Prediction markets")


@functools.lru_cache(maxsize=256)
def market_schema(fields: tuple[str, ...] | None, include: tuple[str, ...]) -> MarketSchema:
    """The dump schema for a projection (cached: building a schema is not free)."""
    only = None if fields is None else (*fields, *include)
    return MarketSchema(only=only, exclude=() if "creator" in include or only else ("creator",))


def page_response(page: Page[t.Any], schema: t.Any) -> Response:
    """The list envelope of one page."""
    return envelope(dump(schema, page.items, many=True), meta=page_meta(page))


def _projection(args: dict[str, t.Any]) -> tuple[tuple[str, ...] | None, tuple[str, ...]]:
    fields = args.get("fields")
    return (tuple(dict.fromkeys(fields)) if fields else None), tuple(dict.fromkeys(args.get("include") or ()))


@blp.route("")
class Markets(MethodView):
    @cached_response(Market, User)
    @blp.arguments(MarketListQuerySchema, location="query")
    @blp.response(200, MarketSchema(many=True))
    def get(self, args: dict[str, t.Any]) -> Response:
        """List markets: filter, sort, paginate (offset or cursor), project, embed."""
        fields, include = _projection(args)
        page = MarketService().list(
            filters={"status": args["status"]} if args.get("status") else None,
            sort=args["sort"],
            limit=args["limit"],
            offset=args.get("offset"),
            cursor=args.get("cursor"),
            fields=fields,
            include=include,
        )
        return page_response(page, market_schema(fields, include))

    @require_permission("write")
    @blp.arguments(MarketCreateSchema)
    @blp.response(
        201,
        MarketSchema,
        headers={
            "Location": {"description": "URL of the new market", "schema": {"type": "string"}},
            "ETag": {"description": "Version of the market", "schema": {"type": "string"}},
        },
    )
    def post(self, data: dict[str, t.Any]) -> Response:
        """Create a market; ``initial_position`` is taken in the same transaction."""
        initial_position = data.pop("initial_position", None)
        market = MarketService().create_market(
            data, creator_id=current_user.id, initial_position=initial_position
        )
        return _written(market, 201)


def _written(market: t.Any, status: int = 200) -> Response:
    headers = {"ETag": market.etag}
    if status == 201:
        headers["Location"] = url_for("markets.MarketById", market_id=market.id)
    return envelope(dump(market_schema(None, ()), market), status=status, headers=headers)


def _if_match() -> str | None:
    return request.headers.get("If-Match")


_ETAG_HEADER = {"ETag": {"description": "Version of the market", "schema": {"type": "string"}}}


@blp.route("/search")
class MarketSearch(MethodView):
    @blp.arguments(SearchQuerySchema, location="query")
    @blp.response(200, MarketSearchResultSchema(many=True))
    def get(self, args: dict[str, t.Any]) -> Response:
        """Semantic search: the markets closest in meaning to ``q``, most similar first."""
        hits = SearchService().search(args["q"], limit=args["limit"])
        data = [{**dump(market_schema(None, ()), market), "score": round(score, 6)} for market, score in hits]
        return envelope(data, meta={"total": len(data), "limit": args["limit"]})


@blp.route("/<market_id>/index")
class MarketIndexJob(MethodView):
    @require_permission("write")
    @blp.response(
        202,
        JobSchema,
        headers={"Location": {"description": "URL of the job's status", "schema": {"type": "string"}}},
    )
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.alt_response(503, response="SERVICE_UNAVAILABLE")
    def post(self, market_id: str) -> Response:
        """Queue a background (re)index of the market; 202 with the job's URL."""
        info = SearchService().queue_index(market_id)
        location = url_for("jobs.JobById", job_id=info.id)
        return envelope(info.as_dict(), status=202, headers={"Location": location})


@blp.route("/<market_id>")
class MarketById(MethodView):
    @cached_response(Market, User)
    @blp.arguments(MarketGetQuerySchema, location="query")
    @blp.response(
        200,
        MarketSchema,
        headers={"ETag": {"description": "Version of the market", "schema": {"type": "string"}}},
    )
    @blp.alt_response(304, description="Not modified (If-None-Match matched)")
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, args: dict[str, t.Any], market_id: str) -> Response:
        """One market, with its ETag; If-None-Match answers 304."""
        fields, include = _projection(args)
        market = MarketService().get(market_id, fields=fields, include=include)
        # A projection may leave out the version the ETag is made of: no ETag then.
        etag = market.etag if fields is None else None
        if etag is not None and etag_matches(request.headers.get("If-None-Match"), etag, weak=True):
            return empty_response(304, {"ETag": etag})
        return envelope(
            dump(market_schema(fields, include), market), headers={"ETag": etag} if etag else None
        )

    @require_permission("write")
    @blp.arguments(MarketReplaceSchema)
    @blp.response(200, MarketSchema, headers=_ETAG_HEADER)
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.alt_response(409, response="CONFLICT")
    @blp.alt_response(412, response="PRECONDITION_FAILED")
    def put(self, data: dict[str, t.Any], market_id: str) -> Response:
        """Replace a market: every writable field required (owner, moderator or admin)."""
        market = MarketService().replace_market(market_id, data, if_match=_if_match(), enforce_owner=True)
        return _written(market)

    @require_permission("write")
    @blp.arguments(MarketPatchSchema)
    @blp.response(200, MarketSchema, headers=_ETAG_HEADER)
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.alt_response(409, response="CONFLICT")
    @blp.alt_response(412, response="PRECONDITION_FAILED")
    def patch(self, data: dict[str, t.Any], market_id: str) -> Response:
        """Change only the fields given (owner, moderator or admin)."""
        market = MarketService().update_market(market_id, data, if_match=_if_match(), enforce_owner=True)
        return _written(market)

    @require_permission("delete")
    @blp.response(204)
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.alt_response(412, response="PRECONDITION_FAILED")
    def delete(self, market_id: str) -> Response:
        """Delete a market and its positions (permission ``delete``)."""
        MarketService().delete_market(market_id, if_match=_if_match())
        return empty_response()


@blp.route("/<market_id>/positions")
class MarketPositions(MethodView):
    @require_permission("read")
    @blp.arguments(PositionListQuerySchema, location="query")
    @blp.response(200, PositionSchema(many=True))
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, args: dict[str, t.Any], market_id: str) -> Response:
        """A market's positions, paginated like markets (permission ``read``)."""
        page = MarketService().list_positions(
            market_id,
            filters={"outcome": args["outcome"]} if args.get("outcome") else None,
            sort=args["sort"],
            limit=args["limit"],
            offset=args.get("offset"),
            cursor=args.get("cursor"),
        )
        return page_response(page, _POSITION_SCHEMA)


_POSITION_SCHEMA = PositionSchema()
