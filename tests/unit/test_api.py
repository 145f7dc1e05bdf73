"""flask-smorest integration: the success envelope and ETag matching."""

from __future__ import annotations

import marshmallow as ma
import pytest
from flask import Flask
from flask.views import MethodView

from flask_backend_patterns.api import Api
from flask_backend_patterns.api import Blueprint
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
