"""Auth and the market write endpoints over HTTP: API.md's Auth and Markets contract."""

from __future__ import annotations

import logging

import pytest
import sqlalchemy as sa

from example_app.models import Market
from example_app.models import Position
from example_app.repositories import PositionRepository
from example_app.services import AuthService
from tests.e2e.test_markets_http import error
from tests.e2e.test_markets_http import ok
from tests.factories import make_markets
from tests.factories import make_user

PASSWORD = "correct horse battery staple"


@pytest.fixture
def alice(db):
    return AuthService().create_user(email="Alice@Example.com", password=PASSWORD, role="user", name="Alice")


def login(client, email="alice@example.com", password=PASSWORD):
    return client.post("/api/auth/login", json={"email": email, "password": password})


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def count(db, model):
    return db.session.scalar(sa.select(sa.func.count()).select_from(model))


# -- login, refresh, logout, me -------------------------------------------------------


def test_login_gives_tokens_that_me_accepts(client, alice):
    tokens = ok(login(client, email=" ALICE@example.com "))["data"]
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == 900
    assert tokens["access_token"] != tokens["refresh_token"]
    me = ok(client.get("/api/auth/me", headers=bearer(tokens["access_token"])))["data"]
    assert me == {
        "id": alice.id,
        "email": "alice@example.com",
        "role": "user",
        "permissions": ["read", "write"],
    }


def test_unknown_email_and_wrong_password_get_the_same_401(client, alice):
    unknown = error(login(client, email="bob@example.com"), 401, "unauthorized")
    wrong = error(login(client, password="nope"), 401, "unauthorized")
    assert unknown["error"] == wrong["error"] == "Invalid email or password"


@pytest.mark.parametrize(
    ("body", "field"),
    [({"email": "a@b.c"}, "password"), ({"email": "a@b.c", "password": "x", "extra": 1}, "extra")],
)
def test_login_body_is_validated(client, body, field):
    assert field in error(client.post("/api/auth/login", json=body), 400, "validation_error")["details"]


def test_login_with_a_form_body_is_415(client):
    response = client.post("/api/auth/login", data={"email": "a@b.c", "password": "x"})
    error(response, 415, "unsupported_media_type")


def test_refresh_gives_a_new_access_token(client, alice):
    tokens = ok(login(client))["data"]
    fresh = ok(client.post("/api/auth/refresh", headers=bearer(tokens["refresh_token"])))["data"]
    assert set(fresh) == {"access_token", "token_type", "expires_in"}
    assert ok(client.get("/api/auth/me", headers=bearer(fresh["access_token"])))["data"]["id"] == alice.id


def test_access_and_refresh_tokens_are_not_interchangeable(client, alice):
    tokens = ok(login(client))["data"]
    error(client.post("/api/auth/refresh", headers=bearer(tokens["access_token"])), 401, "unauthorized")
    error(client.get("/api/auth/me", headers=bearer(tokens["refresh_token"])), 401, "unauthorized")


def test_logout_revokes_the_presented_token_only(client, alice):
    tokens = ok(login(client))["data"]
    other = ok(login(client))["data"]
    assert client.post("/api/auth/logout", headers=bearer(tokens["access_token"])).status_code == 204
    response = client.get("/api/auth/me", headers=bearer(tokens["access_token"]))
    error(response, 401, "unauthorized")
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    ok(client.get("/api/auth/me", headers=bearer(other["access_token"])))
    # A refresh token is revoked the same way.
    assert client.post("/api/auth/logout", headers=bearer(tokens["refresh_token"])).status_code == 204
    error(client.post("/api/auth/refresh", headers=bearer(tokens["refresh_token"])), 401, "unauthorized")


def test_refresh_for_a_deleted_user_is_401(client, db, alice):
    tokens = ok(login(client))["data"]
    db.session.delete(alice)
    db.session.commit()
    error(client.post("/api/auth/refresh", headers=bearer(tokens["refresh_token"])), 401, "unauthorized")


@pytest.mark.parametrize(
    ("headers", "challenge_error"),
    [
        ({}, False),
        ({"Authorization": "Bearer not-a-jwt"}, True),
        ({"Authorization": "Bearer a b"}, True),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, False),
    ],
)
def test_me_without_a_valid_token_is_401_with_a_bearer_challenge(client, headers, challenge_error):
    response = client.get("/api/auth/me", headers=headers)
    error(response, 401, "unauthorized")
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer")
    assert ('error="invalid_token"' in challenge) is challenge_error


def test_a_bad_token_on_a_public_endpoint_is_served_anonymously(client):
    ok(client.get("/api/markets", headers={"Authorization": "Bearer garbage"}))


# -- writes: the role x endpoint matrix -----------------------------------------------

ROLES = ("anonymous", "owner", "other", "moderator", "admin")
VALID_PUT = {"name": "Replaced", "description": None, "status": "closed", "volume": 3.0}
# What each caller gets from each write (API.md: write for POST; write + owner, or a
# moderator/admin, for PUT/PATCH; the delete permission for DELETE).
EXPECTED = {
    "post": {"anonymous": 401, "owner": 201, "other": 201, "moderator": 201, "admin": 201},
    "put": {"anonymous": 401, "owner": 200, "other": 403, "moderator": 200, "admin": 200},
    "patch": {"anonymous": 401, "owner": 200, "other": 403, "moderator": 200, "admin": 200},
    "delete": {"anonymous": 401, "owner": 403, "other": 403, "moderator": 204, "admin": 204},
}


@pytest.fixture
def owner(db):
    user = make_user(role="user")
    db.session.commit()
    return user


@pytest.fixture
def market(db, owner):
    return make_markets(1, creator=owner)[0]


def headers_for(caller, owner, auth_header):
    if caller == "anonymous":
        return {}
    if caller == "owner":
        return auth_header(user=owner)
    return auth_header(role="user" if caller == "other" else caller)


@pytest.mark.parametrize("caller", ROLES)
@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_write_permissions(client, db, market, owner, auth_header, method, caller):
    headers = headers_for(caller, owner, auth_header)
    url = "/api/markets" if method == "post" else f"/api/markets/{market.id}"
    body = {"post": {"name": "New"}, "put": VALID_PUT, "patch": {"volume": 9.0}, "delete": None}[method]
    response = client.open(url, method=method.upper(), json=body, headers=headers)
    expected = EXPECTED[method][caller]
    assert response.status_code == expected, response.get_data(as_text=True)
    if expected == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    if expected == 403:
        assert error(response, 403, "forbidden")
        db.session.expire_all()
        assert db.session.get(Market, market.id).name == market.name  # nothing changed


def test_post_creates_with_the_caller_as_creator(client, db, auth_header, owner):
    response = client.post(
        "/api/markets",
        json={"name": "Rain tomorrow?", "description": "Berlin", "volume": 2.5},
        headers=auth_header(user=owner),
    )
    body = ok(response, 201)["data"]
    assert body["creator_id"] == owner.id and body["status"] == "active" and body["volume"] == 2.5
    assert response.headers["Location"] == f"/api/markets/{body['id']}"
    assert response.headers["ETag"] == f'"{body["id"]}.1"'
    assert ok(client.get(response.headers["Location"]))["data"]["name"] == "Rain tomorrow?"


def test_post_with_initial_position_creates_both(client, db, auth_header, owner):
    response = client.post(
        "/api/markets",
        json={"name": "Both", "initial_position": {"outcome": "yes", "amount": 5}},
        headers=auth_header(user=owner),
    )
    market_id = ok(response, 201)["data"]["id"]
    positions = db.session.scalars(sa.select(Position).where(Position.market_id == market_id)).all()
    assert [(p.user_id, p.outcome, p.amount) for p in positions] == [(owner.id, "yes", 5.0)]


def test_a_failing_position_leaves_no_market_behind(client, db, auth_header, monkeypatch):
    def refuse(self, data):
        raise sa.exc.IntegrityError("INSERT INTO positions", {}, Exception("refused"))

    monkeypatch.setattr(PositionRepository, "create", refuse)
    headers = auth_header()
    response = client.post(
        "/api/markets",
        json={"name": "Neither", "initial_position": {"outcome": "no", "amount": 1}},
        headers=headers,
    )
    error(response, 409, "conflict")
    assert count(db, Market) == 0 and count(db, Position) == 0


@pytest.mark.parametrize(
    "position",
    [{"outcome": "maybe", "amount": 1}, {"outcome": "yes", "amount": 0}, {"outcome": "yes"}, {"amount": 1}],
)
def test_an_invalid_position_is_400_and_creates_nothing(client, db, auth_header, position):
    headers = auth_header()
    response = client.post("/api/markets", json={"name": "X", "initial_position": position}, headers=headers)
    assert "initial_position" in error(response, 400, "validation_error")["details"]
    assert count(db, Market) == 0


@pytest.mark.parametrize("field", ["id", "creator_id", "created_at", "updated_at", "version", "is_admin"])
@pytest.mark.parametrize("method", ["post", "put", "patch"])
def test_mass_assignment_is_refused(client, db, market, owner, auth_header, method, field):
    body = {"post": {"name": "X"}, "put": dict(VALID_PUT), "patch": {}}[method]
    body[field] = "forged"
    url = "/api/markets" if method == "post" else f"/api/markets/{market.id}"
    response = client.open(url, method=method.upper(), json=body, headers=auth_header(user=owner))
    assert field in error(response, 400, "validation_error")["details"]
    db.session.expire_all()
    assert db.session.get(Market, market.id).creator_id == owner.id


def test_put_requires_every_writable_field(client, market, owner, auth_header):
    response = client.put(f"/api/markets/{market.id}", json={"name": "Only"}, headers=auth_header(user=owner))
    details = error(response, 400, "validation_error")["details"]
    assert set(details) == {"description", "status", "volume"}


def test_put_replaces_and_patch_changes_only_what_is_given(client, db, owner, auth_header):
    market = make_markets(1, creator=owner, description="old", volume=7.0)[0]
    headers = auth_header(user=owner)
    patched = ok(client.patch(f"/api/markets/{market.id}", json={"name": "Renamed"}, headers=headers))["data"]
    assert (patched["name"], patched["description"], patched["volume"]) == ("Renamed", "old", 7.0)
    replaced = ok(client.put(f"/api/markets/{market.id}", json=VALID_PUT, headers=headers))["data"]
    assert {k: replaced[k] for k in VALID_PUT} == VALID_PUT
    assert replaced["creator_id"] == owner.id


def test_etag_and_if_match(client, market, owner, auth_header):
    headers = auth_header(user=owner)
    etag = client.get(f"/api/markets/{market.id}").headers["ETag"]
    first = client.patch(
        f"/api/markets/{market.id}", json={"volume": 1}, headers={**headers, "If-Match": etag}
    )
    ok(first)
    assert first.headers["ETag"] != etag
    stale = client.patch(
        f"/api/markets/{market.id}", json={"volume": 2}, headers={**headers, "If-Match": etag}
    )
    error(stale, 412, "precondition_failed")
    fresh = {**headers, "If-Match": first.headers["ETag"]}
    ok(client.put(f"/api/markets/{market.id}", json=VALID_PUT, headers=fresh))
    moderator = auth_header(role="moderator")
    error(
        client.delete(f"/api/markets/{market.id}", headers={**moderator, "If-Match": etag}),
        412,
        "precondition_failed",
    )
    deleted = client.delete(f"/api/markets/{market.id}", headers=moderator)
    assert deleted.status_code == 204 and deleted.data == b"" and "Content-Type" not in deleted.headers
    error(client.get(f"/api/markets/{market.id}"), 404, "not_found")


def test_writes_to_an_unknown_market_are_404(client, auth_header):
    headers = auth_header(role="admin")
    error(client.patch("/api/markets/nope", json={"volume": 1}, headers=headers), 404, "not_found")
    error(client.put("/api/markets/nope", json=VALID_PUT, headers=headers), 404, "not_found")
    error(client.delete("/api/markets/nope", headers=headers), 404, "not_found")


def test_a_body_that_is_not_json_is_415(client, auth_header):
    response = client.post(
        "/api/markets", data="name=x", headers={**auth_header(), "Content-Type": "text/plain"}
    )
    error(response, 415, "unsupported_media_type")


def test_malformed_json_is_400(client, auth_header):
    response = client.post(
        "/api/markets", data="{not json", headers={**auth_header(), "Content-Type": "application/json"}
    )
    error(response, 400, "bad_request")


def test_a_body_over_the_maximum_is_413(client, app, auth_header):
    app.config["MAX_CONTENT_LENGTH"] = 1024
    response = client.post(
        "/api/markets", json={"name": "x", "description": "y" * 4096}, headers=auth_header()
    )
    error(response, 413, "payload_too_large")


def test_openapi_documents_security_on_protected_operations(client):
    spec = client.get("/api/openapi.json").get_json()
    for path, method in [
        ("/api/markets", "post"),
        ("/api/markets/{market_id}", "put"),
        ("/api/markets/{market_id}", "patch"),
        ("/api/markets/{market_id}", "delete"),
        ("/api/markets/{market_id}/positions", "get"),
    ]:
        operation = spec["paths"][path][method]
        assert operation["security"] == [{"bearerAuth": []}], (path, method)
        assert {"401", "403"} <= set(operation["responses"]), (path, method)
    assert "security" not in spec["paths"]["/api/markets"]["get"]
    assert "415" in spec["paths"]["/api/markets"]["post"]["responses"]
    assert spec["paths"]["/api/auth/me"]["get"]["security"] == [{"bearerAuth": []}]


# -- nothing secret in the logs -------------------------------------------------------


def test_no_password_token_or_authorization_header_in_any_log_line(client, alice, caplog, app):
    from flask_backend_patterns.logging import JsonFormatter

    formatter = JsonFormatter()
    caplog.set_level(logging.DEBUG)
    tokens = ok(login(client))["data"]
    login(client, password="wrong-" + PASSWORD)
    login(client, email="nobody@example.com")
    client.post("/api/auth/login", data="{broken", headers={"Content-Type": "application/json"})
    client.get("/api/auth/me", headers=bearer(tokens["access_token"]))
    client.get("/api/auth/me", headers=bearer(tokens["access_token"] + "x"))
    client.post("/api/auth/logout", headers=bearer(tokens["refresh_token"]))
    client.post("/api/markets", json={"name": "x"}, headers=bearer(tokens["access_token"]))
    assert caplog.records
    lines = "\n".join(formatter.format(record) for record in caplog.records)
    for secret in (PASSWORD, tokens["access_token"], tokens["refresh_token"], "Bearer "):
        assert secret not in lines
    assert tokens["access_token"].split(".")[1] not in lines  # not even the payload part
