"""The error envelope: every error of every kind, JSON, never a stack or SQL."""

from __future__ import annotations

import logging

import marshmallow as ma
import pytest
import sqlalchemy as sa
from flask import abort
from flask import Flask
from flask.views import MethodView

from flask_backend_patterns.api import Api
from flask_backend_patterns.api import Blueprint
from flask_backend_patterns.errors import ApiError
from flask_backend_patterns.errors import ConflictError
from flask_backend_patterns.errors import ErrorHandler
from flask_backend_patterns.errors import NotFoundError
from flask_backend_patterns.errors import UnauthorizedError
from flask_backend_patterns.errors import ValidationError
from flask_backend_patterns.logging import RequestLogging


class BodySchema(ma.Schema):
    name = ma.fields.String(required=True, validate=ma.validate.Length(min=1))
    size = ma.fields.Integer()


class QuerySchema(ma.Schema):
    limit = ma.fields.Integer(validate=ma.validate.Range(1, 10))


@pytest.fixture
def app():
    app = Flask(__name__)
    app.config.update(
        TESTING=True,
        MAX_CONTENT_LENGTH=100,
        BACKEND_LOGGING_CONFIGURE=False,
        API_TITLE="t",
        API_VERSION="1",
        OPENAPI_VERSION="3.0.3",
    )
    RequestLogging(app)
    ErrorHandler(app)

    @app.get("/api-error")
    def api_error():
        raise ConflictError("Name taken", details={"name": ["taken"]})

    @app.get("/unauthorized")
    def unauthorized():
        raise UnauthorizedError("Token expired")

    @app.get("/abort/<int:status>")
    def do_abort(status):
        abort(status)

    @app.get("/boom")
    def boom():
        raise ZeroDivisionError("secret internals: SELECT * FROM users")

    @app.get("/integrity")
    def integrity():
        raise sa.exc.IntegrityError("INSERT INTO users VALUES ('secret')", {}, Exception("UNIQUE failed"))

    @app.get("/data-error")
    def data_error():
        raise sa.exc.DataError("SELECT 1 OFFSET 99999999999999999999", {}, Exception("bigint out of range"))

    @app.get("/db-down")
    def db_down():
        raise sa.exc.OperationalError("SELECT 1", {}, Exception("connection refused"))

    @app.post("/body")
    def body():
        from flask import request

        return {"n": len(request.get_data())}

    api = Api(app)
    blp = Blueprint("things", __name__, url_prefix="/things")

    @blp.route("")
    class Things(MethodView):
        @blp.arguments(QuerySchema, location="query")
        def get(self, args):
            return {"ok": True}

        @blp.arguments(BodySchema)
        def post(self, data):
            return data

    api.register_blueprint(blp)
    return app


@pytest.fixture
def client(app):
    return app.test_client()


def assert_envelope(response, status, code):
    assert response.status_code == status
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["success"] is False and body["code"] == code and body["error"]
    assert body["request_id"] == response.headers["X-Request-ID"]
    return body


def test_api_error_with_details(client):
    body = assert_envelope(client.get("/api-error"), 409, "conflict")
    assert body["error"] == "Name taken" and body["details"] == {"name": ["taken"]}


def test_unauthorized_sends_bearer_challenge(client):
    response = client.get("/unauthorized")
    assert_envelope(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_unknown_route_is_json_404(client):
    assert_envelope(client.get("/nope"), 404, "not_found")


def test_method_not_allowed_keeps_allow_header(client):
    response = client.delete("/boom")
    assert_envelope(response, 405, "method_not_allowed")
    assert "GET" in response.headers["Allow"]


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "bad_request"),
        (403, "forbidden"),
        (409, "conflict"),
        (412, "precondition_failed"),
        (415, "unsupported_media_type"),
        (429, "rate_limited"),
        (503, "unavailable"),
    ],
)
def test_werkzeug_errors_map_to_codes(client, status, code):
    assert_envelope(client.get(f"/abort/{status}"), status, code)


def test_body_too_large_is_413(client):
    assert_envelope(client.post("/body", data=b"x" * 500), 413, "payload_too_large")


def test_unexpected_error_is_generic_500_logged_with_stack(client, caplog):
    caplog.set_level(logging.ERROR, logger="flask_backend_patterns.errors")
    response = client.get("/boom")
    body = assert_envelope(response, 500, "internal_error")
    assert body["error"] == "Internal server error"
    assert "SELECT" not in response.get_data(as_text=True)
    record = next(r for r in caplog.records if r.name == "flask_backend_patterns.errors")
    assert record.exc_info[0] is ZeroDivisionError


def test_integrity_error_is_409_without_sql(client):
    response = client.get("/integrity")
    assert_envelope(response, 409, "conflict")
    assert "INSERT" not in response.get_data(as_text=True) and "secret" not in response.get_data(as_text=True)


def test_data_error_is_400_without_sql(client):
    response = client.get("/data-error")
    assert_envelope(response, 400, "bad_request")
    assert "OFFSET" not in response.get_data(as_text=True)


def test_operational_error_is_503_with_retry_after(client):
    response = client.get("/db-down")
    assert_envelope(response, 503, "unavailable")
    assert response.headers["Retry-After"] == "1"


def test_webargs_query_validation_becomes_400_with_details(client):
    body = assert_envelope(client.get("/things?limit=50"), 400, "validation_error")
    assert list(body["details"]) == ["limit"] and isinstance(body["details"]["limit"], list)


def test_webargs_body_validation_and_unknown_field(client):
    body = assert_envelope(client.post("/things", json={"name": "", "admin": True}), 400, "validation_error")
    assert set(body["details"]) == {"name", "admin"}


def test_wrong_type_in_body(client):
    body = assert_envelope(client.post("/things", json={"name": "a", "size": "big"}), 400, "validation_error")
    assert "size" in body["details"]


def test_malformed_json_is_400_bad_request(client):
    response = client.post("/things", data="{not json", content_type="application/json")
    body = assert_envelope(response, 400, "bad_request")
    assert body["error"] == "Malformed JSON body"


def test_api_error_defaults_and_repr():
    error = NotFoundError()
    assert (error.status, error.code, error.message) == (404, "not_found", "Resource not found")
    assert "NotFoundError(404" in repr(error)
    custom = ApiError("Teapot", status=418, code="teapot")
    assert (custom.status, custom.code) == (418, "teapot")
    assert ValidationError(details={"a": ["b"]}).details == {"a": ["b"]}


def test_stale_write_is_409(app):
    from sqlalchemy.orm.exc import StaleDataError

    @app.get("/stale")
    def stale():
        raise StaleDataError(
            "UPDATE statement on table 'markets' expected to update 1 row(s); 0 were matched."
        )

    response = app.test_client().get("/stale")
    assert_envelope(response, 409, "conflict")
    assert "UPDATE" not in response.get_data(as_text=True)


def test_501_keeps_its_own_message(client):
    body = assert_envelope(client.get("/abort/501"), 501, "not_implemented")
    assert body["error"] == "Not implemented"
