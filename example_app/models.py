"""Database models: users, markets and their positions."""

from __future__ import annotations

import datetime as dt
import typing as t
import uuid

import sqlalchemy as sa
from sqlalchemy import orm

from flask_backend_patterns.repository import UtcDateTime
from flask_backend_patterns.repository import utcnow

from .counters import install_market_counters
from .counters import remove_market_counters
from .extensions import db

MARKET_STATUSES = ("active", "closed", "resolved")
OUTCOMES = ("yes", "no")


def new_id() -> str:
    """A new opaque id (32 hex characters)."""
    return uuid.uuid4().hex


class User(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "users"

    id: orm.Mapped[str] = orm.mapped_column(sa.String(32), primary_key=True, default=new_id)
    email: orm.Mapped[str] = orm.mapped_column(sa.String(320), unique=True)
    name: orm.Mapped[str] = orm.mapped_column(sa.String(200))
    password_hash: orm.Mapped[str | None] = orm.mapped_column(sa.String(255))
    role: orm.Mapped[str] = orm.mapped_column(sa.String(32), default="user")
    created_at: orm.Mapped[dt.datetime] = orm.mapped_column(UtcDateTime, default=utcnow)


class Market(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "markets"
    __table_args__ = (
        sa.CheckConstraint("status IN ('active', 'closed', 'resolved')", name="ck_markets_status"),
        sa.CheckConstraint("volume >= 0", name="ck_markets_volume"),
        # One index per sort order the list offers, led by the status filter where it
        # is common, each ending in id: keyset pages and sorted pages read them in order.
        sa.Index("ix_markets_status_volume", "status", "volume", "id"),
        sa.Index("ix_markets_status_created", "status", "created_at", "id"),
        sa.Index("ix_markets_volume", "volume", "id"),
        sa.Index("ix_markets_created", "created_at", "id"),
        sa.Index("ix_markets_name", "name", "id"),
    )

    id: orm.Mapped[str] = orm.mapped_column(sa.String(32), primary_key=True, default=new_id)
    name: orm.Mapped[str] = orm.mapped_column(sa.String(200))
    description: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    status: orm.Mapped[str] = orm.mapped_column(sa.String(16), default="active")
    volume: orm.Mapped[float] = orm.mapped_column(sa.Float, default=0.0)
    creator_id: orm.Mapped[str] = orm.mapped_column(sa.ForeignKey("users.id"), index=True)
    created_at: orm.Mapped[dt.datetime] = orm.mapped_column(UtcDateTime, default=utcnow)
    updated_at: orm.Mapped[dt.datetime] = orm.mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)
    #: bumped by every UPDATE (optimistic locking); the ETag is made from it.
    version: orm.Mapped[int] = orm.mapped_column(sa.Integer, default=1)

    creator: orm.Mapped[User] = orm.relationship(lazy="raise")
    positions: orm.Mapped[list[Position]] = orm.relationship(
        back_populates="market", lazy="raise", cascade="all, delete-orphan", passive_deletes=True
    )

    __mapper_args__ = {"version_id_col": version}

    @property
    def etag(self) -> str:
        """The strong ETag of this version of the market."""
        return f'"{self.id}.{self.version}"'


class Position(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "positions"
    __table_args__ = (
        sa.CheckConstraint("outcome IN ('yes', 'no')", name="ck_positions_outcome"),
        sa.CheckConstraint("amount > 0", name="ck_positions_amount"),
        sa.Index("ix_positions_market_created", "market_id", "created_at", "id"),
    )

    id: orm.Mapped[str] = orm.mapped_column(sa.String(32), primary_key=True, default=new_id)
    market_id: orm.Mapped[str] = orm.mapped_column(sa.ForeignKey("markets.id", ondelete="CASCADE"))
    user_id: orm.Mapped[str] = orm.mapped_column(sa.ForeignKey("users.id"), index=True)
    outcome: orm.Mapped[str] = orm.mapped_column(sa.String(3))
    amount: orm.Mapped[float] = orm.mapped_column(sa.Float)
    created_at: orm.Mapped[dt.datetime] = orm.mapped_column(UtcDateTime, default=utcnow)

    market: orm.Mapped[Market] = orm.relationship(back_populates="positions", lazy="raise")


class MarketStatusCount(db.Model):  # type: ignore[name-defined,misc]
    """How many markets have each status: kept exact by triggers (see :mod:`.counters`)."""

    __tablename__ = "market_status_counts"

    status: orm.Mapped[str] = orm.mapped_column(sa.String(16), primary_key=True)
    total: orm.Mapped[int] = orm.mapped_column(sa.BigInteger, default=0)


@sa.event.listens_for(db.metadata, "after_create")
def _install_counters(target: sa.MetaData, connection: sa.Connection, **kw: t.Any) -> None:
    # create_all (tests, embedded default without migrations) gets the triggers too.
    tables = {table.name for table in kw.get("tables") or target.sorted_tables}
    if {"markets", "market_status_counts"} <= tables:
        install_market_counters(connection)


@sa.event.listens_for(db.metadata, "after_create")
def _first_search_revision(target: sa.MetaData, connection: sa.Connection, **kw: t.Any) -> None:
    tables = {table.name for table in kw.get("tables") or target.sorted_tables}
    if "search_revision" in tables:
        connection.execute(sa.insert(SearchRevision.__table__).values(id=1, revision=0))


@sa.event.listens_for(db.metadata, "before_drop")
def _remove_counters(target: sa.MetaData, connection: sa.Connection, **kw: t.Any) -> None:
    remove_market_counters(connection)


class MarketEmbedding(db.Model):  # type: ignore[name-defined,misc]
    """A market's vector for semantic search, written by the index job."""

    __tablename__ = "market_embeddings"

    market_id: orm.Mapped[str] = orm.mapped_column(
        sa.ForeignKey("markets.id", ondelete="CASCADE"), primary_key=True
    )
    #: the embedder that made the vector (its name says the model and dimension).
    embedder: orm.Mapped[str] = orm.mapped_column(sa.String(64))
    vector: orm.Mapped[bytes] = orm.mapped_column(sa.LargeBinary)
    #: the market version the vector was made from.
    market_version: orm.Mapped[int] = orm.mapped_column(sa.Integer)
    #: the search revision of this write: processes load the rows newer than theirs.
    revision: orm.Mapped[int] = orm.mapped_column(sa.BigInteger, index=True)
    updated_at: orm.Mapped[dt.datetime] = orm.mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)


class SearchRevision(db.Model):  # type: ignore[name-defined,misc]
    """One row: bumped in the transaction of every change to the embeddings."""

    __tablename__ = "search_revision"

    id: orm.Mapped[int] = orm.mapped_column(sa.Integer, primary_key=True)
    revision: orm.Mapped[int] = orm.mapped_column(sa.BigInteger, default=0)
