"""Business rules of the market API. Blueprints call these; these call repositories."""

from __future__ import annotations

import typing as t

from werkzeug.security import check_password_hash
from werkzeug.security import generate_password_hash

from flask_backend_patterns.api import etag_matches
from flask_backend_patterns.auth import create_access_token
from flask_backend_patterns.auth import create_refresh_token
from flask_backend_patterns.auth import decode_token
from flask_backend_patterns.auth import ensure_owner
from flask_backend_patterns.auth import get_bearer_token
from flask_backend_patterns.auth import get_state as get_auth_state
from flask_backend_patterns.auth import revoke_token
from flask_backend_patterns.cache import CachedRepository
from flask_backend_patterns.errors import NotFoundError
from flask_backend_patterns.errors import PreconditionFailedError
from flask_backend_patterns.errors import UnauthorizedError
from flask_backend_patterns.jobs import JobInfo
from flask_backend_patterns.repository import Page
from flask_backend_patterns.repository import Repository
from flask_backend_patterns.service import Service
from flask_backend_patterns.transactions import transaction

from .extensions import db
from .extensions import jobs
from .indexing import bump_search_revision
from .indexing import current_embedder
from .indexing import get_market_index
from .indexing import queue_index
from .indexing import queue_index_after_write
from .models import Market
from .models import Position
from .models import User
from .repositories import MarketRepository
from .repositories import PositionRepository
from .repositories import UserRepository

#: fields a client may write on a market; PUT must give every one of them.
WRITABLE_MARKET_FIELDS = ("name", "description", "status", "volume")


def _check_if_match(market: Market, if_match: str | None) -> None:
    if if_match is not None and not etag_matches(if_match, market.etag):
        raise PreconditionFailedError()


class MarketService(Service[Market]):
    """Markets and the positions taken on them."""

    repository: t.Any

    def __init__(
        self,
        markets: Repository[Market] | None = None,
        positions: PositionRepository | None = None,
    ) -> None:
        # Reads of markets go through the cache; its writes invalidate after commit.
        super().__init__(markets or CachedRepository(MarketRepository()))
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
            written = (market.id, market.version)
        # After the commit: a worker must find the market it is asked to index.
        queue_index_after_write(*written)
        return market

    def replace_market(
        self,
        market_id: str,
        data: t.Mapping[str, t.Any],
        *,
        if_match: str | None = None,
        enforce_owner: bool = False,
    ) -> Market:
        """Replace every writable field (absent optional ones are reset).

        :raises NotFoundError: no such market.
        :raises ForbiddenError: ``enforce_owner`` and the caller neither owns the
            market nor is a moderator or admin.
        :raises PreconditionFailedError: ``if_match`` is not the market's ETag.
        """
        full = {name: data.get(name) for name in WRITABLE_MARKET_FIELDS}
        return self.update_market(market_id, full, if_match=if_match, enforce_owner=enforce_owner)

    def update_market(
        self,
        market_id: str,
        changes: t.Mapping[str, t.Any],
        *,
        if_match: str | None = None,
        enforce_owner: bool = False,
    ) -> Market:
        """Change only the given fields.

        ``enforce_owner`` applies the ownership rule to the current request's caller
        (owner, or a moderator or admin); the command line leaves it off.

        :raises NotFoundError: no such market.
        :raises ForbiddenError: see ``enforce_owner``.
        :raises PreconditionFailedError: ``if_match`` is not the market's ETag.
        """
        unknown = set(changes) - set(WRITABLE_MARKET_FIELDS)
        if unknown:
            raise ValueError(f"not writable: {sorted(unknown)}")
        with transaction(self.repository.session):
            market = self.get(market_id)
            if enforce_owner:
                # Before If-Match: a stranger learns nothing about the current version.
                ensure_owner(market.creator_id)
            _check_if_match(market, if_match)
            market = self.repository.update(market_id, changes)
            written = (market.id, market.version)
        queue_index_after_write(*written)
        return market

    def delete_market(self, market_id: str, *, if_match: str | None = None) -> None:
        """Delete a market and its positions.

        :raises NotFoundError: no such market.
        :raises PreconditionFailedError: ``if_match`` is not the market's ETag.
        """
        with transaction(self.repository.session):
            market = self.get(market_id)
            _check_if_match(market, if_match)
            # Its vector goes with it (ON DELETE CASCADE): let every process's matrix know.
            # The revision's lock first, as every writer of embeddings takes it: one order.
            bump_search_revision(self.repository.session)
            self.repository.delete(market_id)

    def list_positions(self, market_id: str, **query: t.Any) -> Page[Position]:
        """One page of a market's positions.

        :raises NotFoundError: no such market.
        """
        if self.repository.find_by_id(market_id, fields=["id"]) is None:
            raise NotFoundError("Market not found")
        filters = {**(query.pop("filters", None) or {}), "market_id": market_id}
        return self.positions.find_page(filters=filters, **query)


#: checked when the email is unknown, so that both failures take as long.
_UNUSED_HASH = generate_password_hash("not a real password: equalises login timing")
_BAD_LOGIN = "Invalid email or password"


def normalise_email(email: str) -> str:
    """Emails are stored and looked up trimmed and lower-cased."""
    return email.strip().lower()


class AuthService:
    """Users' passwords and the tokens issued for them."""

    def __init__(self, users: UserRepository | None = None) -> None:
        self.users = users or UserRepository()

    def find_user_by_email(self, email: str) -> User | None:
        """The user with this email (case-insensitive), or None."""
        found = self.users.find_all(filters={"email": normalise_email(email)}, limit=1)
        return found[0] if found else None

    def create_user(self, *, email: str, password: str, role: str = "user", name: str | None = None) -> User:
        """A new user with a hashed password.

        :raises ValueError: a role the app does not know.
        :raises sqlalchemy.exc.IntegrityError: the email is taken.
        """
        if role not in get_auth_state().roles:
            raise ValueError(f"unknown role {role!r}; known: {sorted(get_auth_state().roles)}")
        email = normalise_email(email)
        with transaction(self.users.session):
            return self.users.create(
                {
                    "email": email,
                    "name": name or email.split("@", 1)[0],
                    "role": role,
                    "password_hash": generate_password_hash(password),
                }
            )

    def tokens_for(self, user: User, *, expires_in: int | None = None) -> dict[str, t.Any]:
        """An access token (and a refresh token) for ``user``."""
        claims = {"email": user.email, "role": user.role}
        lifetime = expires_in or get_auth_state().access_expires
        return {
            "access_token": create_access_token(user.id, claims=claims, expires_in=lifetime),
            "refresh_token": create_refresh_token(user.id),
            "token_type": "Bearer",
            "expires_in": lifetime,
        }

    def login(self, email: str, password: str) -> dict[str, t.Any]:
        """Tokens for a correct email and password.

        :raises UnauthorizedError: the same 401 for an unknown email and a wrong password.
        """
        user = self.find_user_by_email(email)
        if user is None or user.password_hash is None:
            check_password_hash(_UNUSED_HASH, password)
            raise UnauthorizedError(_BAD_LOGIN, error=None)
        if not check_password_hash(user.password_hash, password):
            raise UnauthorizedError(_BAD_LOGIN, error=None)
        return self.tokens_for(user)

    def refresh(self) -> dict[str, t.Any]:
        """A new access token for the request's refresh token; role and email are read again.

        :raises UnauthorizedError: no, a bad, a revoked or an access token; the user is gone.
        """
        claims = decode_token(get_bearer_token(), expected_type="refresh")
        user = self.users.find_by_id(claims["sub"])
        if user is None:
            raise UnauthorizedError("The user of this token no longer exists")
        tokens = self.tokens_for(user)
        del tokens["refresh_token"]
        return tokens

    def logout(self) -> None:
        """Revoke the request's bearer token (access or refresh) until it expires.

        :raises UnauthorizedError: no or a bad token.
        """
        revoke_token(decode_token(get_bearer_token(), expected_type=None))


class SearchService:
    """Semantic search over markets and the jobs that index them."""

    def __init__(self, markets: Repository[Market] | None = None) -> None:
        self.markets = markets or CachedRepository(MarketRepository())

    def search(self, query: str, *, limit: int = 10) -> list[tuple[Market, float]]:
        """The markets most similar to ``query``, most similar first, with their cosine score."""
        index = get_market_index()
        index.refresh(db.session)
        vector = current_embedder().embed([query])[0]
        hits = index.index.search(vector, limit)
        by_id = {
            market.id: market for market in self.markets.find_by_ids([market_id for market_id, _ in hits])
        }
        # A market deleted since the matrix was loaded is skipped.
        return [(by_id[market_id], score) for market_id, score in hits if market_id in by_id]

    def queue_index(self, market_id: str) -> JobInfo:
        """Queue (or find the pending) index job of a market.

        :raises NotFoundError: no such market.
        :raises ServiceUnavailableError: the job queue does not answer.
        """
        market = self.markets.find_by_id(market_id)
        if market is None:
            raise NotFoundError("Market not found")
        return queue_index(market.id, market.version)

    def job(self, job_id: str) -> JobInfo:
        """The status of a job.

        :raises NotFoundError: no such job (or it expired).
        """
        info = jobs.get_job(job_id)
        if info is None:
            raise NotFoundError("Job not found")
        return info
