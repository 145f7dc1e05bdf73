"""flask-smorest integration: the success envelope and ETag matching."""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import types

import marshmallow as ma
import pytest
from flask import Flask
from flask.views import MethodView
from hypothesis import given
from hypothesis import strategies as st

from flask_backend_patterns.api import _dump_plan
from flask_backend_patterns.api import Api
from flask_backend_patterns.api import Blueprint
from flask_backend_patterns.api import dump
from flask_backend_patterns.api import etag_matches
from flask_backend_patterns.api import page_meta
from flask_backend_patterns.api import set_meta
from flask_backend_patterns.repository import Page


class ItemSchema(ma.Schema):
    id = ma.fields.Integer()


def test_plain_return_is_dumped_into_the_envelope_with_meta():
    app = Flask(__name__)
    app.config.update(API_TITLE="t", API_VERSION="1", OPENAPI_VERSION="3.0.3", OPENAPI_URL_PREFIX="/")
    api = Api(app)
    blp = Blueprint("items", __name__, url_prefix="/items")

    @blp.route("")
    class Items(MethodView):
        @blp.response(200, ItemSchema(many=True))
        def get(self):
            set_meta(page_meta(Page([], 2, 20, 0, None)))
            return [{"id": 1, "secret": "x"}, {"id": 2}]

    api.register_blueprint(blp)
    body = app.test_client().get("/items").get_json()
    assert body == {
        "success": True,
        "data": [{"id": 1}, {"id": 2}],
        "meta": {"total": 2, "limit": 20, "offset": 0, "next_cursor": None},
    }
    documented = (
        app.test_client().get("/openapi.json").get_json()["components"]["schemas"]["ItemListEnvelope"]
    )
    assert set(documented["properties"]) == {"success", "data", "meta"}


@pytest.mark.parametrize(
    ("header", "weak", "expected"),
    [
        (None, False, False),
        ("", False, False),
        ("*", False, True),
        ('"a.1"', False, True),
        ('"b.1", "a.1"', False, True),
        ('"a.2"', False, False),
        ('W/"a.1"', False, False),  # If-Match compares strongly
        ('W/"a.1"', True, True),  # If-None-Match compares weakly
        ('"x", W/"a.1"', True, True),
    ],
)
def test_etag_matches(header, weak, expected):
    assert etag_matches(header, '"a.1"', weak=weak) is expected


# --- dump: schema.dump, compiled --------------------------------------------------------


class OwnerOut(ma.Schema):
    id = ma.fields.String()
    name = ma.fields.String(allow_none=True)


class ThingOut(ma.Schema):
    id = ma.fields.String()
    label = ma.fields.String(data_key="title")
    size = ma.fields.Integer()
    weight = ma.fields.Float()
    seen = ma.fields.DateTime()
    renamed = ma.fields.String(attribute="original")
    owner = ma.fields.Nested(OwnerOut)
    owners = ma.fields.Nested(OwnerOut, many=True)
    secret = ma.fields.String(load_only=True)


class Hooked(ThingOut):
    @ma.post_dump
    def shout(self, data, **kwargs):
        return {k.upper(): v for k, v in data.items()}


class Odd(ma.fields.String):
    def _serialize(self, value, attr, obj, **kwargs):
        return "odd"


FALLBACKS = {
    "hook": Hooked(),
    "method field": type("M", (ma.Schema,), {"x": ma.fields.Method("get_x"), "get_x": lambda self, obj: 1})(),
    "field subclass": type("S", (ma.Schema,), {"id": Odd()})(),
    "dump_default": type("D", (ma.Schema,), {"id": ma.fields.String(dump_default="none")})(),
    "dotted attribute": type("A", (ma.Schema,), {"name": ma.fields.String(attribute="owner.name")})(),
    "strftime format": type("T", (ma.Schema,), {"seen": ma.fields.DateTime(format="%Y")})(),
    "unknown nested schema": type("U", (ma.Schema,), {"h": ma.fields.Nested("NoSuchSchema")})(),
    "boolean": type("B", (ma.Schema,), {"on": ma.fields.Boolean()})(),
    "nested fallback": type("N", (ma.Schema,), {"h": ma.fields.Nested(Hooked)})(),
}

texts = st.one_of(
    st.none(), st.text(max_size=5), st.integers(), st.binary(max_size=3).map(lambda b: b.hex().encode())
)
numbers = st.one_of(
    st.none(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False),
    st.decimals(allow_nan=False, allow_infinity=False, places=2),
)
moments = st.one_of(
    st.none(), st.datetimes(timezones=st.sampled_from([None, dt.UTC, dt.timezone(dt.timedelta(hours=-3))]))
)
owners = st.one_of(st.none(), st.fixed_dictionaries({"id": texts, "name": texts}))


@st.composite
def things(draw):
    values = {
        "id": draw(texts),
        "label": draw(texts),
        "size": draw(st.one_of(st.none(), st.integers(-(10**9), 10**9))),
        "weight": draw(numbers),
        "seen": draw(moments),
        "original": draw(texts),
        "owner": draw(owners),
        "owners": draw(
            st.one_of(st.none(), st.lists(st.fixed_dictionaries({"id": texts, "name": texts}), max_size=2))
        ),
        "secret": "x",
    }
    present = {k: v for k, v in values.items() if draw(st.booleans()) or k == "id"}  # some attributes missing
    as_dict = draw(st.booleans())
    return present if as_dict else types.SimpleNamespace(**present)


@given(st.lists(things(), max_size=4), st.sampled_from([None, ("id", "size"), ("owner", "seen", "renamed")]))
def test_dump_gives_what_marshmallow_gives(items, only):
    schema = ThingOut(only=only) if only else ThingOut()
    assert _dump_plan(schema) is not None
    assert dump(schema, items, many=True) == schema.dump(items, many=True)
    for item in items:
        assert dump(schema, item) == schema.dump(item)


@pytest.mark.parametrize("name", sorted(FALLBACKS))
def test_dump_leaves_what_it_does_not_know_to_marshmallow(name):
    schema = FALLBACKS[name]
    obj = types.SimpleNamespace(
        id="a",
        x=1,
        on=1,
        seen=dt.datetime(2026, 1, 2, tzinfo=dt.UTC),
        owner=types.SimpleNamespace(name="n"),
    )
    assert _dump_plan(schema) is None
    assert dump(schema, obj) == schema.dump(obj)
    assert dump(schema, [obj], many=True) == schema.dump([obj], many=True)


def test_dump_of_the_example_schemas_compiles_and_matches():
    from example_app.api.markets import market_schema
    from example_app.schemas import PositionSchema

    when = dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC)
    market = types.SimpleNamespace(
        id="m", name="n", description=None, status="active", volume=decimal.Decimal("1.5"),
        creator_id="u", created_at=when, updated_at=when, creator=types.SimpleNamespace(id="u", name="U"),
    )  # fmt: skip
    position = types.SimpleNamespace(
        id="p", market_id="m", user_id="u", outcome="yes", amount=2, created_at=when
    )
    for schema, obj in [
        (market_schema(None, ()), market),
        (market_schema(None, ("creator",)), market),
        (market_schema(("id", "volume"), ("creator",)), market),
        (PositionSchema(), position),
    ]:
        assert _dump_plan(schema) is not None
        assert dump(schema, obj) == schema.dump(obj)


class Tree(ma.Schema):
    name = ma.fields.String()
    children = ma.fields.Nested(lambda: Tree(), many=True)


def test_a_schema_nested_in_itself_is_left_to_marshmallow():
    tree = {"name": "a", "children": [{"name": "b", "children": []}]}
    assert (
        dump(Tree(), tree) == Tree().dump(tree) == {"name": "a", "children": [{"name": "b", "children": []}]}
    )


@pytest.mark.parametrize("many", [True, False, None])
def test_dump_of_none_is_marshmallows(many):
    schema = ThingOut()
    assert dump(schema, None, many=many) == schema.dump(None, many=many) == {}


def test_datetime_formats_call_marshmallows_function():
    class Moment(dt.datetime):
        def isoformat(self, *args, **kwargs):
            return "its own"

    class When(ma.Schema):
        iso = ma.fields.DateTime()
        stamp = ma.fields.DateTime(format="timestamp")
        rfc = ma.fields.DateTime(format="rfc")

    schema = When()
    moment = Moment(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    value = {"iso": moment, "stamp": moment, "rfc": moment}
    assert _dump_plan(schema) is not None
    assert dump(schema, value) == schema.dump(value)
    assert dump(schema, value)["iso"] == "2026-01-02T03:04:05+00:00"
    with pytest.raises(TypeError):  # a date is not a datetime, for marshmallow either
        dump(schema, {"iso": dt.date(2026, 1, 2)})


def test_an_unknown_nested_schema_fails_when_dumped_as_in_marshmallow():
    schema = FALLBACKS["unknown nested schema"]
    for dumper in (schema.dump, functools.partial(dump, schema)):
        assert dumper({"id": "a"}) == {}  # not there: nothing to resolve
        with pytest.raises(ma.exceptions.RegistryError):
            dumper({"h": {"x": 1}})
