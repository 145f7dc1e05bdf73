"""Rows for tests, inserted through the ORM."""

from __future__ import annotations

import datetime as dt
import typing as t

from example_app.extensions import db
from example_app.models import Market
from example_app.models import Position
from example_app.models import User

BASE_TIME = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def make_user(**kw: t.Any) -> User:
    n = db.session.query(User).count()
    user = User(**{"email": f"u{n}@example.com", "name": f"User {n}", "role": "user", **kw})
    db.session.add(user)
    db.session.flush()
    return user


def make_markets(n: int, creator: User | None = None, **kw: t.Any) -> list[Market]:
    """``n`` markets with distinct created_at; kw values may be callables of the index."""
    creator = creator or make_user()
    markets = []
    for i in range(n):
        values = {k: (v(i) if callable(v) else v) for k, v in kw.items()}
        values.setdefault("name", f"Market {i:04d}")
        values.setdefault("created_at", BASE_TIME + dt.timedelta(minutes=i))
        values.setdefault("updated_at", values["created_at"])
        markets.append(Market(creator_id=creator.id, **values))
    db.session.add_all(markets)
    db.session.commit()
    return markets


def make_position(market: Market, user: User, **kw: t.Any) -> Position:
    position = Position(market_id=market.id, user_id=user.id, **{"outcome": "yes", "amount": 10.0, **kw})
    db.session.add(position)
    db.session.commit()
    return position
