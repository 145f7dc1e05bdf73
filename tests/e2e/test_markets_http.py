"""The example market API over HTTP (Flask test client): API.md's read contract."""

from __future__ import annotations

import pytest

from tests.factories import make_markets
from tests.factories import make_position
from tests.factories import make_user

STATUSES = ("active", "closed", "resolved")


@pytest.fixture
def markets(db):
    return make_markets(25, status=lambda i: STATUSES[i % 3], volume=lambda i: float(i % 4))


def ok(response, status=200):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["success"] is True
    return body


def error(response, status, code):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["success"] is False and body["code"] == code and body["error"]
    assert body["request_id"] == response.headers["X-Request-ID"]
    return body


def test_list_default_envelope_and_meta(client, markets):
    body = ok(client.get("/api/markets"))
    assert body["meta"] == {"total": 25, "limit": 20, "offset": 0, "next_cursor": body["meta"]["next_cursor"]}
    assert body["meta"]["next_cursor"]
    created = [m["created_at"] for m in body["data"]]
    assert created == sorted(created, reverse=True)
    assert set(body["data"][0]) == {
        "id",
        "name",
        "description",
        "status",
        "volume",
        "creator_id",
        "created_at",
        "updated_at",
    }


@pytest.mark.parametrize("query", ["status=active&status=closed", "status=active,closed"])
def test_status_filter_repeatable_or_comma_separated(client, markets, query):
    body = ok(client.get(f"/api/markets?{query}&limit=100"))
    assert {m["status"] for m in body["data"]} == {"active", "closed"}
    assert body["meta"]["total"] == sum(1 for m in markets if m.status != "resolved")


def test_sort_descending_volume_ties_by_id(client, markets):
    data = ok(client.get("/api/markets?sort=-volume&limit=100"))["data"]
    assert [(m["volume"], m["id"]) for m in data] == sorted(
        ((m["volume"], m["id"]) for m in data), reverse=True
    )


def test_offset_pagination(client, markets):
    first = ok(client.get("/api/markets?sort=name&limit=10"))["data"]
    second = ok(client.get("/api/markets?sort=name&limit=10&offset=10"))
    assert second["meta"]["offset"] == 10
    assert [m["name"] for m in first + second["data"]] == sorted(m.name for m in markets)[:20]


def test_cursor_pagination_walks_all(client, markets):
    seen, url = [], "/api/markets?sort=-volume&limit=7"
    while url:
        body = ok(client.get(url))
        seen += [m["id"] for m in body["data"]]
        cursor = body["meta"]["next_cursor"]
        url = f"/api/markets?sort=-volume&limit=7&cursor={cursor}" if cursor else None
    assert len(seen) == len(set(seen)) == 25


def test_fields_projection(client, markets):
    data = ok(client.get("/api/markets?fields=id,name,status,volume"))["data"]
    assert set(data[0]) == {"id", "name", "status", "volume"}


def test_include_creator(client, db, markets):
    data = ok(client.get("/api/markets?include=creator&fields=id,name&limit=3"))["data"]
    assert set(data[0]) == {"id", "name", "creator"} and set(data[0]["creator"]) == {"id", "name"}


def test_include_creator_full_objects(client, markets):
    data = ok(client.get("/api/markets?include=creator&limit=2"))["data"]
    assert data[0]["creator"]["id"] == data[0]["creator_id"]


@pytest.mark.parametrize(
    "query",
    [
        "sort=description",
        "sort=volume;drop",
        "limit=0",
        "limit=101",
        "limit=abc",
        "offset=-1",
        "offset=99999999999999999999",
        "status=open",
        "fields=password_hash",
        "include=positions",
        "fields=",
        "cursor=garbage",
        "offset=5&cursor=abc",
    ],
)
def test_bad_query_is_400_validation_error(client, markets, query):
    body = error(client.get(f"/api/markets?{query}"), 400, "validation_error")
    assert body["details"] and all(isinstance(v, list) for v in body["details"].values())


def test_cursor_from_another_sort_is_400(client, markets):
    cursor = ok(client.get("/api/markets?sort=name&limit=5"))["meta"]["next_cursor"]
    error(client.get(f"/api/markets?sort=volume&cursor={cursor}"), 400, "validation_error")


def test_unknown_query_parameters_are_ignored(client, markets):
    assert ok(client.get("/api/markets?utm_source=x"))["meta"]["total"] == 25


def test_get_one_with_etag_and_304(client, markets):
    response = client.get(f"/api/markets/{markets[0].id}")
    body = ok(response)
    assert body["data"]["id"] == markets[0].id and body["data"]["name"] == markets[0].name
    etag = response.headers["ETag"]
    not_modified = client.get(f"/api/markets/{markets[0].id}", headers={"If-None-Match": etag})
    assert not_modified.status_code == 304 and not_modified.data == b""
    assert not_modified.headers["ETag"] == etag and "Content-Type" not in not_modified.headers


def test_get_one_projection_and_include(client, markets):
    data = ok(client.get(f"/api/markets/{markets[1].id}?fields=id,volume&include=creator"))["data"]
    assert set(data) == {"id", "volume", "creator"}


def test_unknown_market_is_404(client):
    error(client.get("/api/markets/does-not-exist"), 404, "not_found")


def test_unknown_route_is_404(client):
    error(client.get("/api/nothing-here"), 404, "not_found")


def test_method_not_allowed_is_405_with_allow(client, markets):
    response = client.delete("/api/markets")
    error(response, 405, "method_not_allowed")
    assert "GET" in response.headers["Allow"]


def test_positions_list(client, db, markets, auth_header):
    user = make_user()
    for amount in (1.0, 2.0, 3.0):
        make_position(markets[0], user, amount=amount, outcome="yes" if amount < 3 else "no")
    make_position(markets[1], user)
    client.environ_base["HTTP_AUTHORIZATION"] = auth_header(user=user)["Authorization"]
    body = ok(client.get(f"/api/markets/{markets[0].id}/positions?sort=amount"))
    assert [p["amount"] for p in body["data"]] == [1.0, 2.0, 3.0] and body["meta"]["total"] == 3
    assert set(body["data"][0]) == {"id", "market_id", "user_id", "outcome", "amount", "created_at"}
    only_no = ok(client.get(f"/api/markets/{markets[0].id}/positions?outcome=no"))["data"]
    assert [p["outcome"] for p in only_no] == ["no"]


def test_positions_need_a_token(client, markets):
    response = client.get(f"/api/markets/{markets[0].id}/positions")
    error(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_positions_of_unknown_market_is_404(client, auth_header):
    error(client.get("/api/markets/nope/positions", headers=auth_header()), 404, "not_found")


def test_positions_bad_sort_is_400(client, markets, auth_header):
    response = client.get(f"/api/markets/{markets[0].id}/positions?sort=volume", headers=auth_header())
    error(response, 400, "validation_error")


def test_request_id_echoed_on_success_and_error(client, markets):
    assert (
        client.get("/api/markets", headers={"X-Request-ID": "abc.123"}).headers["X-Request-ID"] == "abc.123"
    )
    assert (
        error(client.get("/api/markets/x", headers={"X-Request-ID": "e-1"}), 404, "not_found")["request_id"]
        == "e-1"
    )


def test_healthz_and_readyz(client):
    assert ok(client.get("/healthz"))["data"]["status"] == "ok"
    assert ok(client.get("/readyz"))["data"]["checks"]["database"] == "ok"


def test_readyz_503_when_database_is_down(database_uri, app_factory):
    bad = (
        "postgresql+psycopg://postgres@127.0.0.1:1/none"
        if database_uri.startswith("postgresql")
        else "sqlite:////nonexistent-dir/x.db"
    )
    app = app_factory(bad)
    body = error(app.test_client().get("/readyz"), 503, "unavailable")
    assert "database" in body["details"]


def test_readyz_503_when_redis_is_down(app_factory, _schema):
    app = app_factory(REDIS_URL="redis://127.0.0.1:1/0")
    body = error(app.test_client().get("/readyz"), 503, "unavailable")
    assert set(body["details"]) == {"redis"}


def test_openapi_document(client):
    spec = ok_json(client.get("/api/openapi.json"))
    assert spec["openapi"].startswith("3.")
    for path in (
        "/api/markets",
        "/api/markets/{market_id}",
        "/api/markets/{market_id}/positions",
        "/healthz",
        "/readyz",
    ):
        assert path in spec["paths"], path
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    params = {p["name"] for p in spec["paths"]["/api/markets"]["get"]["parameters"]}
    assert {"status", "sort", "limit", "offset", "cursor", "fields", "include"} <= params


def test_docs_page_works_offline(client):
    page = client.get("/api/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "http://" not in html and "https://" not in html
    for asset in ("swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js"):
        assert f"/api/docs-assets/{asset}" in html
        with client.get(f"/api/docs-assets/{asset}") as response:
            assert response.status_code == 200 and response.content_length > 1000


def ok_json(response):
    assert response.status_code == 200 and response.mimetype == "application/json"
    return response.get_json()


def test_projection_with_id_on_a_fresh_session_is_200_without_etag(client, db, markets):
    market_id, name = markets[2].id, markets[2].name
    db.session.expunge_all()  # nothing preloaded: the projection alone decides what is loaded
    response = client.get(f"/api/markets/{market_id}?fields=id,name")
    assert ok(response)["data"] == {"id": market_id, "name": name}
    assert "ETag" not in response.headers


@pytest.mark.parametrize("header", ["*", "W/{etag}", '"other", {etag}'])
def test_if_none_match_forms(client, markets, header):
    etag = client.get(f"/api/markets/{markets[0].id}").headers["ETag"]
    response = client.get(
        f"/api/markets/{markets[0].id}", headers={"If-None-Match": header.format(etag=etag)}
    )
    assert response.status_code == 304 and response.headers["ETag"] == etag


def test_openapi_documents_validation_errors_as_400_not_422(client):
    spec = client.get("/api/openapi.json").get_json()
    responses = spec["paths"]["/api/markets"]["get"]["responses"]
    assert "422" not in responses and "400" in responses


def test_cookie_sessions_still_work_though_a_request_without_one_builds_no_serializer(
    app_factory, monkeypatch
):
    from flask import session
    from flask.sessions import SecureCookieSessionInterface

    app = app_factory()

    @app.post("/_test/session")
    def remember():
        session["seen"] = "yes"
        return {}

    @app.get("/_test/session")
    def recall():
        return {"seen": session.get("seen")}

    built = []
    original = SecureCookieSessionInterface.get_signing_serializer
    monkeypatch.setattr(
        SecureCookieSessionInterface,
        "get_signing_serializer",
        lambda self, app: built.append(1) or original(self, app),
    )
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    assert built == [] and "Set-Cookie" not in client.get("/healthz").headers
    assert client.post("/_test/session").status_code == 200  # sets the cookie
    assert client.get("/_test/session").get_json() == {"seen": "yes"}
