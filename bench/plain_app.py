"""The reference the list benchmark measures us against: the same list query written the
plain way, with flask-smorest, Flask-SQLAlchemy (its default engine settings) and
marshmallow, and nothing of this project (no request id, access log, rate limit, total,
cursor, ETag or cache). Reads ``DATABASE_URL``."""

from __future__ import annotations

import os
import typing as t

import marshmallow as ma
import sqlalchemy as sa
from flask import Flask
from flask.views import MethodView
from flask_smorest import Api
from flask_smorest import Blueprint
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import orm

db = SQLAlchemy()


class Market(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "markets"
    id: orm.Mapped[str] = orm.mapped_column(sa.String(32), primary_key=True)
    name: orm.Mapped[str] = orm.mapped_column(sa.String(200))
    description: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    status: orm.Mapped[str] = orm.mapped_column(sa.String(16))
    volume: orm.Mapped[float] = orm.mapped_column(sa.Float)
    creator_id: orm.Mapped[str] = orm.mapped_column(sa.String(32))
    created_at: orm.Mapped[t.Any] = orm.mapped_column(sa.DateTime(timezone=True))
    updated_at: orm.Mapped[t.Any] = orm.mapped_column(sa.DateTime(timezone=True))


class ListQuery(ma.Schema):
    status = ma.fields.String(validate=ma.validate.OneOf(["active", "resolved", "closed"]))
    limit = ma.fields.Integer(load_default=20, validate=ma.validate.Range(min=1, max=100))
    sort = ma.fields.String(load_default="-volume")


class MarketOut(ma.Schema):
    id = ma.fields.String()
    name = ma.fields.String()
    description = ma.fields.String(allow_none=True)
    status = ma.fields.String()
    volume = ma.fields.Float()
    creator_id = ma.fields.String()
    created_at = ma.fields.DateTime()
    updated_at = ma.fields.DateTime()


blp = Blueprint("markets", __name__, url_prefix="/api/markets")


@blp.route("")
class Markets(MethodView):
    @blp.arguments(ListQuery, location="query")
    @blp.response(200, MarketOut(many=True))
    def get(self, args: dict[str, t.Any]) -> t.Any:
        stmt = sa.select(Market)
        if args.get("status"):
            stmt = stmt.where(Market.status == args["status"])
        return db.session.scalars(
            stmt.order_by(Market.volume.desc(), Market.id.desc()).limit(args["limit"])
        ).all()


def create_app() -> Flask:
    app = Flask(__name__)
    app.config.update(
        SQLALCHEMY_DATABASE_URI=os.environ["DATABASE_URL"],
        API_TITLE="plain",
        API_VERSION="1",
        OPENAPI_VERSION="3.0.3",
    )
    db.init_app(app)
    Api(app).register_blueprint(blp)
    return app
