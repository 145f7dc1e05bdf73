"""JWT auth and RBAC: token defects, key rotation, decorators, secrets, revocation stores."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import io
import json
import logging
import os
import secrets
import stat
import time
import uuid

import fakeredis
import jwt
import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from flask import Flask
from flask import g
from flask_sqlalchemy import SQLAlchemy

from flask_backend_patterns.auth import Auth
from flask_backend_patterns.auth import create_access_token
from flask_backend_patterns.auth import create_refresh_token
from flask_backend_patterns.auth import current_user
from flask_backend_patterns.auth import decode_token
from flask_backend_patterns.auth import ensure_owner
from flask_backend_patterns.auth import get_bearer_token
from flask_backend_patterns.auth import get_current_identity
from flask_backend_patterns.auth import get_state
from flask_backend_patterns.auth import Identity
from flask_backend_patterns.auth import INSTANCE_SECRET_FILE
from flask_backend_patterns.auth import optional_auth
from flask_backend_patterns.auth import RedisRevocationStore
from flask_backend_patterns.auth import require_auth
from flask_backend_patterns.auth import require_permission
from flask_backend_patterns.auth import require_role
from flask_backend_patterns.auth import revoke_token
from flask_backend_patterns.auth import SQLAlchemyRevocationStore
from flask_backend_patterns.errors import ErrorHandler
from flask_backend_patterns.errors import ServiceUnavailableError
from flask_backend_patterns.logging import JsonFormatter
from flask_backend_patterns.logging import RequestLogging

SECRET = "unit-test-secret-0123456789abcdef-0123456789abcdef"
OTHER_SECRET = "another-unit-test-secret-0123456789abcdef-012345"
AUDIENCE = "market-api"
ISSUER = "https://auth.example"
INVALID_TOKEN = 'Bearer realm="api", error="invalid_token"'
NO_TOKEN = 'Bearer realm="api"'
DROP = object()


# -- helpers --------------------------------------------------------------------------


def new_store():
    return RedisRevocationStore(fakeredis.FakeRedis(server=fakeredis.FakeServer()))


def make_app(*, store=None, user_loader=None, instance_path=None, **config):
    app = Flask(__name__, instance_path=instance_path)
    app.config.update(
        {"TESTING": True, "BACKEND_LOGGING_CONFIGURE": False, "JWT_SECRET_KEY": SECRET, **config}
    )
    ErrorHandler(app)
    Auth(app, revocation_store=store if store is not None else new_store(), user_loader=user_loader)

    @app.get("/me")
    @require_auth
    def me():
        identity = get_current_identity()
        return {
            "id": identity.id,
            "email": identity.email,
            "role": identity.role,
            "permissions": sorted(identity.permissions),
        }

    @app.get("/maybe")
    @optional_auth
    def maybe():
        identity = get_current_identity()
        return {"id": identity.id if identity else None}

    @app.get("/public")
    def public():
        identity = g.get("_fbp_identity")
        return {"id": identity.id if identity else None}

    @app.delete("/things")
    @require_permission("delete")
    def delete_things():
        return {"deleted": True}

    @app.get("/admin")
    @require_role("admin")
    def admin_only():
        return {"admin": True}

    @app.put("/things/<owner>")
    @require_permission("write")
    def update_thing(owner):
        ensure_owner(owner)
        return {"updated": owner}

    @app.put("/strict/<owner>")
    @require_auth
    def strict_update(owner):
        ensure_owner(owner, override_roles=())
        return {"updated": owner}

    @app.get("/whoami")
    @require_auth
    def whoami():
        return {"user": current_user["name"] if user_loader else current_user.id}

    @app.post("/refresh")
    def refresh():
        claims = decode_token(get_bearer_token(), expected_type="refresh")
        return {"access_token": create_access_token(claims["sub"])}

    @app.post("/logout")
    def logout():
        revoke_token(decode_token(get_bearer_token(), expected_type=None))
        return {"revoked": True}

    return app


def issue(app, sub="u1", *, role="user", refresh=False, **kwargs):
    make = create_refresh_token if refresh else create_access_token
    with app.app_context():
        return make(sub, claims={"role": role, "email": f"{sub}@example.com"}, **kwargs)


def call(app, path, token=None, *, method="GET", header=None):
    headers = {}
    if header is not None:
        headers["Authorization"] = header
    elif token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return app.test_client().open(path, method=method, headers=headers)


def claims_now(**overrides):
    now = int(time.time())
    claims = {
        "sub": "u1",
        "email": "u1@example.com",
        "role": "user",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
        "type": "access",
        "aud": AUDIENCE,
        "iss": ISSUER,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not DROP}


def sign(claims=None, *, key=SECRET, algorithm="HS256", headers=None):
    return jwt.encode(
        claims if claims is not None else claims_now(), key, algorithm=algorithm, headers=headers
    )


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_signed_with(secret: bytes, claims, **header) -> str:
    """An HS256 token made by hand: PyJWT refuses a PEM key as an HMAC secret, or a non-str kid."""
    header = {"alg": "HS256", "typ": "JWT", **header}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def assert_unauthorized(response, message=None, *, challenge=INVALID_TOKEN):
    assert response.status_code == 401, response.get_json()
    body = response.get_json()
    assert body["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"] == challenge
    if message is not None:
        assert body["error"] == message


def pem_private(key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def pem_public(key) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture(scope="module")
def rsa_keys():
    return [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2)]


@pytest.fixture
def strict_app():
    return make_app(JWT_ENCODE_AUDIENCE=AUDIENCE, JWT_ENCODE_ISSUER=ISSUER)


# -- valid tokens ---------------------------------------------------------------------


def test_valid_access_token_gives_the_identity_and_role_permissions(strict_app):
    response = call(strict_app, "/me", issue(strict_app, "u1", role="moderator"))
    assert response.status_code == 200
    assert response.get_json() == {
        "id": "u1",
        "email": "u1@example.com",
        "role": "moderator",
        "permissions": ["delete", "read", "write"],
    }


def test_token_claims_are_sub_iat_nbf_exp_jti_type_aud_iss_and_extras():
    app = make_app(JWT_ENCODE_AUDIENCE=AUDIENCE, JWT_ENCODE_ISSUER=ISSUER, BACKEND_AUTH_KEY_ID="k1")
    token = issue(app, 42, role="admin")
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER)
    assert claims["sub"] == "42"
    assert claims["type"] == "access"
    assert claims["nbf"] == claims["iat"]
    assert claims["exp"] - claims["iat"] == 900
    assert len(claims["jti"]) == 32 and int(claims["jti"], 16) >= 0
    assert (claims["role"], claims["email"]) == ("admin", "42@example.com")
    assert jwt.get_unverified_header(token)["kid"] == "k1"
    refresh = jwt.decode(issue(app, refresh=True), SECRET, algorithms=["HS256"], audience=AUDIENCE)
    assert refresh["type"] == "refresh"
    assert refresh["exp"] - refresh["iat"] == 30 * 24 * 3600
    with app.app_context():
        assert decode_token(token) == claims


def test_expires_in_replaces_the_configured_lifetime():
    app = make_app(JWT_ACCESS_TOKEN_EXPIRES=dt.timedelta(minutes=5))
    default = jwt.decode(issue(app), SECRET, algorithms=["HS256"])
    seconds = jwt.decode(issue(app, expires_in=60), SECRET, algorithms=["HS256"])
    delta = jwt.decode(issue(app, expires_in=dt.timedelta(minutes=2)), SECRET, algorithms=["HS256"])
    assert default["exp"] - default["iat"] == 300
    assert seconds["exp"] - seconds["iat"] == 60
    assert delta["exp"] - delta["iat"] == 120


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"claims": {"exp": 1}}, ValueError),
        ({"claims": {"type": "refresh"}}, ValueError),
        ({"expires_in": 0}, ValueError),
    ],
)
def test_create_token_refuses_reserved_claims_and_empty_lifetimes(kwargs, error):
    app = make_app()
    with app.app_context(), pytest.raises(error):
        create_access_token("u1", **kwargs)


def test_create_token_refuses_an_identity_that_is_not_an_id():
    app = make_app()
    with app.app_context(), pytest.raises(TypeError, match="identity"):
        create_access_token(True)


# -- every token defect is a 401 ------------------------------------------------------


def _tampered():
    header, payload, signature = sign().split(".")
    forged = b64(json.dumps(claims_now(role="admin")).encode())
    return f"{header}.{forged}.{signature}"


DEFECTS = [
    pytest.param(lambda app: "not-a-jwt", "Malformed token", id="garbage"),
    pytest.param(lambda app: "eyJhbGciOi.eyJzdWIi.c2ln", "Malformed token", id="garbage-3-parts"),
    pytest.param(
        lambda app: jwt.encode(claims_now(), None, algorithm="none"),
        "Token algorithm is not accepted",
        id="alg-none",
    ),
    pytest.param(
        lambda app: sign(key=SECRET + SECRET, algorithm="HS512"),
        "Token algorithm is not accepted",
        id="alg-not-in-allow-list",
    ),
    pytest.param(lambda app: sign(key=OTHER_SECRET), "Token signature is invalid", id="wrong-key"),
    pytest.param(lambda app: _tampered(), "Token signature is invalid", id="tampered-payload"),
    pytest.param(lambda app: sign(claims_now(exp=int(time.time()) - 10)), "Token has expired", id="expired"),
    pytest.param(lambda app: sign(claims_now(exp=DROP)), "Token has no 'exp' claim", id="missing-exp"),
    pytest.param(lambda app: sign(claims_now(jti=DROP)), "Token has no 'jti' claim", id="missing-jti"),
    pytest.param(
        lambda app: sign(claims_now(nbf=int(time.time()) + 60)), "Token is not valid yet", id="future-nbf"
    ),
    pytest.param(
        lambda app: sign(claims_now(iat=int(time.time()) + 60)), "Token is not valid yet", id="future-iat"
    ),
    pytest.param(
        lambda app: sign(claims_now(aud="another-api")), "Token audience is not accepted", id="wrong-aud"
    ),
    pytest.param(lambda app: sign(claims_now(aud=DROP)), "Token has no 'aud' claim", id="missing-aud"),
    pytest.param(
        lambda app: sign(claims_now(iss="https://evil.example")),
        "Token issuer is not accepted",
        id="wrong-iss",
    ),
    pytest.param(lambda app: sign(claims_now(type="id")), "Token type is not accepted", id="unknown-type"),
    pytest.param(
        lambda app: issue(app, refresh=True),
        "A refresh token cannot be used here; send an access token",
        id="refresh-as-access",
    ),
]


@pytest.mark.parametrize(("make_token", "message"), DEFECTS)
def test_token_defect_is_a_401_that_never_echoes_the_token(strict_app, make_token, message):
    token = make_token(strict_app)
    response = call(strict_app, "/me", token)
    assert_unauthorized(response, message)
    assert token not in response.get_data(as_text=True)


def test_the_same_token_passes_when_it_has_no_defect(strict_app):
    # The positive control of the defect table: sign() itself makes good tokens.
    assert call(strict_app, "/me", sign()).status_code == 200


def test_revoked_token_is_a_401_and_other_tokens_still_work(strict_app):
    token, other = issue(strict_app), issue(strict_app)
    assert call(strict_app, "/logout", token, method="POST").status_code == 200
    assert_unauthorized(call(strict_app, "/me", token), "Token has been revoked")
    assert call(strict_app, "/me", other).status_code == 200


def test_a_verified_token_is_checked_again_for_time_and_revocation(strict_app, monkeypatch):
    import flask_backend_patterns.auth as auth_module

    token = issue(strict_app, expires_in=60)
    assert call(strict_app, "/me", token).status_code == 200  # verified, remembered
    with strict_app.app_context():
        assert token in auth_module.get_state().verified._items
    real_time = time.time
    monkeypatch.setattr(auth_module.time, "time", lambda: real_time() + 61)
    expired = call(strict_app, "/me", token)
    assert_unauthorized(expired)
    assert "expired" in expired.get_json()["error"]
    monkeypatch.setattr(auth_module.time, "time", real_time)
    assert call(strict_app, "/me", token).status_code == 200
    assert call(strict_app, "/logout", token, method="POST").status_code == 200
    assert_unauthorized(call(strict_app, "/me", token), "Token has been revoked")
    # A remembered access token is still no refresh token.
    assert_unauthorized(call(strict_app, "/refresh", token, method="POST"))


def test_the_verified_tokens_are_bounded():
    from flask_backend_patterns.auth import _VerifiedTokens

    verified = _VerifiedTokens(2)
    for name in ("a", "b", "c"):
        verified.put(name, {"sub": name})
    assert verified.get("a") is None and verified.get("c") == {"sub": "c"}


def test_access_token_is_refused_where_a_refresh_token_is_needed(strict_app):
    assert_unauthorized(
        call(strict_app, "/refresh", issue(strict_app), method="POST"),
        "An access token cannot be used here; send a refresh token",
    )
    response = call(strict_app, "/refresh", issue(strict_app, refresh=True), method="POST")
    assert response.status_code == 200
    assert call(strict_app, "/me", response.get_json()["access_token"]).status_code == 200


def test_a_revoked_refresh_token_cannot_refresh(strict_app):
    refresh = issue(strict_app, refresh=True)
    assert call(strict_app, "/logout", refresh, method="POST").status_code == 200
    assert_unauthorized(call(strict_app, "/refresh", refresh, method="POST"), "Token has been revoked")


# -- the Authorization header ---------------------------------------------------------


def test_missing_token_is_a_401_without_error_code(strict_app):
    response = call(strict_app, "/me")
    assert_unauthorized(response, challenge=NO_TOKEN)


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Token abc", ""])
def test_other_schemes_count_as_no_token(strict_app, header):
    assert_unauthorized(call(strict_app, "/me", header=header), challenge=NO_TOKEN)
    assert call(strict_app, "/maybe", header=header).get_json() == {"id": None}


@pytest.mark.parametrize("header", ["Bearer", "Bearer   ", "Bearer two tokens"])
def test_malformed_bearer_header_is_a_401(strict_app, header):
    assert_unauthorized(
        call(strict_app, "/me", header=header), "Malformed Authorization header: expected 'Bearer <token>'"
    )


def test_bearer_scheme_is_case_insensitive(strict_app):
    token = issue(strict_app)
    assert call(strict_app, "/me", header=f"bearer {token}").status_code == 200
    assert call(strict_app, "/me", header=f"BEARER {token}").status_code == 200


# -- leeway ---------------------------------------------------------------------------


def test_leeway_accepts_a_token_expired_less_than_leeway_ago():
    now = int(time.time())
    token = sign(claims_now(aud=DROP, iss=DROP, exp=now - 30 + 2))
    assert call(make_app(JWT_DECODE_LEEWAY=30), "/me", token).status_code == 200
    # Without leeway the same token is expired: the leeway is what let it in.
    assert_unauthorized(call(make_app(), "/me", token), "Token has expired")


def test_leeway_rejects_a_token_expired_more_than_leeway_ago():
    token = sign(claims_now(aud=DROP, iss=DROP, exp=int(time.time()) - 30 - 1))
    assert_unauthorized(call(make_app(JWT_DECODE_LEEWAY=30), "/me", token), "Token has expired")


def test_a_revoked_token_stays_refused_through_the_leeway():
    # Expired 2 s ago, inside a leeway of 30 s: decoding still accepts it, so its
    # revocation must outlive its exp (the store keeps a key until the time it is given).
    store = new_store()
    app = make_app(store=store, JWT_DECODE_LEEWAY=30)
    now = int(time.time())
    claims = claims_now(aud=DROP, iss=DROP, exp=now - 2)
    token = sign(claims)
    assert call(app, "/me", token).status_code == 200
    with app.app_context():
        revoke_token(claims)
    assert store.client.ttl(store.key(claims["jti"])) > 20
    assert_unauthorized(call(app, "/me", token), "Token has been revoked")


def test_leeway_applies_to_nbf_at_its_edge():
    app = make_app(JWT_DECODE_LEEWAY="30")
    now = int(time.time())
    inside = sign(claims_now(aud=DROP, iss=DROP, nbf=now + 30 - 1))
    outside = sign(claims_now(aud=DROP, iss=DROP, nbf=now + 30 + 2))
    assert call(app, "/me", inside).status_code == 200
    assert_unauthorized(call(app, "/me", outside), "Token is not valid yet")


# -- asymmetric keys and algorithm confusion ------------------------------------------


def rs_app(private, *, store=None, **config):
    return make_app(store=store, JWT_ALGORITHM="RS256", JWT_PRIVATE_KEY=pem_private(private), **config)


def test_rs256_tokens_are_signed_and_verified(rsa_keys):
    app = rs_app(rsa_keys[0])
    token = issue(app)
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    assert call(app, "/me", token).status_code == 200
    assert_unauthorized(
        call(app, "/me", sign(claims_now(aud=DROP, iss=DROP))), "Token algorithm is not accepted"
    )


@pytest.mark.parametrize("decode_algorithms", [None, ["RS256", "HS256"]])
def test_hs256_token_signed_with_the_rsa_public_key_is_refused(rsa_keys, decode_algorithms):
    config = {} if decode_algorithms is None else {"JWT_DECODE_ALGORITHMS": decode_algorithms}
    app = rs_app(rsa_keys[0], JWT_PUBLIC_KEY=pem_public(rsa_keys[0]), **config)
    forged = hs256_signed_with(pem_public(rsa_keys[0]).encode(), claims_now(aud=DROP, iss=DROP))
    assert_unauthorized(call(app, "/me", forged), "Token algorithm is not accepted")


@pytest.mark.parametrize(
    ("algorithm", "make_key"),
    [
        ("ES256", lambda: ec.generate_private_key(ec.SECP256R1())),
        ("EdDSA", ed25519.Ed25519PrivateKey.generate),
    ],
)
def test_ec_and_eddsa_tokens_are_signed_and_verified(algorithm, make_key):
    app = make_app(JWT_ALGORITHM=algorithm, JWT_PRIVATE_KEY=pem_private(make_key()))
    token = issue(app)
    assert jwt.get_unverified_header(token)["alg"] == algorithm
    assert call(app, "/me", token).status_code == 200


def test_a_certificate_is_accepted_as_the_public_key(rsa_keys):
    key = rsa_keys[0]
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "auth.example")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    verifier = make_app(
        JWT_ALGORITHM="RS256", JWT_PUBLIC_KEY=certificate.public_bytes(serialization.Encoding.PEM).decode()
    )
    assert call(verifier, "/me", issue(rs_app(key))).status_code == 200


def test_public_key_only_app_verifies_but_cannot_sign(rsa_keys):
    signer = rs_app(rsa_keys[0])
    verifier = make_app(JWT_ALGORITHM="RS256", JWT_PUBLIC_KEY=pem_public(rsa_keys[0]))
    assert call(verifier, "/me", issue(signer)).status_code == 200
    with verifier.app_context(), pytest.raises(RuntimeError, match="cannot sign"):
        create_access_token("u1")


# -- key rotation ---------------------------------------------------------------------


def test_hs256_rotation_old_kid_verifies_during_overlap_and_not_after():
    old_app = make_app(BACKEND_AUTH_KEY_ID="2024", JWT_SECRET_KEY=SECRET)
    old_token = issue(old_app)
    assert jwt.get_unverified_header(old_token)["kid"] == "2024"
    overlap = make_app(
        BACKEND_AUTH_KEY_ID="2025", JWT_SECRET_KEY=OTHER_SECRET, BACKEND_AUTH_VERIFY_KEYS={"2024": SECRET}
    )
    new_token = issue(overlap)
    assert jwt.get_unverified_header(new_token)["kid"] == "2025"
    assert call(overlap, "/me", old_token).status_code == 200
    assert call(overlap, "/me", new_token).status_code == 200
    after = make_app(BACKEND_AUTH_KEY_ID="2025", JWT_SECRET_KEY=OTHER_SECRET)
    assert_unauthorized(call(after, "/me", old_token), "Token key id is not accepted")
    assert call(after, "/me", new_token).status_code == 200


def test_rs256_rotation_old_kid_verifies_during_overlap_and_not_after(rsa_keys):
    old_key, new_key = rsa_keys
    old_token = issue(rs_app(old_key, BACKEND_AUTH_KEY_ID="a"))
    overlap = rs_app(new_key, BACKEND_AUTH_KEY_ID="b", BACKEND_AUTH_VERIFY_KEYS={"a": pem_public(old_key)})
    new_token = issue(overlap)
    assert call(overlap, "/me", old_token).status_code == 200
    assert call(overlap, "/me", new_token).status_code == 200
    after = rs_app(new_key, BACKEND_AUTH_KEY_ID="b")
    assert_unauthorized(call(after, "/me", old_token), "Token key id is not accepted")
    assert call(after, "/me", new_token).status_code == 200


def test_kid_picks_the_key_so_a_token_signed_with_another_key_fails():
    app = make_app(
        BACKEND_AUTH_KEY_ID="2025", JWT_SECRET_KEY=OTHER_SECRET, BACKEND_AUTH_VERIFY_KEYS={"2024": SECRET}
    )
    wrong = sign(claims_now(aud=DROP, iss=DROP), key=SECRET, headers={"kid": "2025"})
    assert_unauthorized(call(app, "/me", wrong), "Token signature is invalid")


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ({"kid": "1999"}, "Token key id is not accepted"),
        ({}, "Token has no key id (kid)"),
        ({"kid": 2025}, "Malformed token"),
    ],
)
def test_unknown_or_missing_kid_is_a_401(header, message):
    app = make_app(BACKEND_AUTH_KEY_ID="2025")
    token = hs256_signed_with(SECRET.encode(), claims_now(aud=DROP, iss=DROP), **header)
    assert_unauthorized(call(app, "/me", token), message)


def test_verify_keys_may_mix_hs_and_rs_without_confusion(rsa_keys):
    # Moving from HS256 to RS256: the old HS kid still verifies, an HS token under the
    # RSA kid does not.
    app = rs_app(
        rsa_keys[1],
        BACKEND_AUTH_KEY_ID="rsa",
        BACKEND_AUTH_VERIFY_KEYS={"hs": SECRET},
        JWT_DECODE_ALGORITHMS=["RS256", "HS256"],
    )
    assert call(app, "/me", sign(claims_now(aud=DROP, iss=DROP), headers={"kid": "hs"})).status_code == 200
    forged = jwt.encode(claims_now(aud=DROP, iss=DROP), SECRET, algorithm="HS256", headers={"kid": "rsa"})
    assert_unauthorized(call(app, "/me", forged), "Token algorithm is not accepted")


# -- permissions, roles, ownership ----------------------------------------------------


@pytest.mark.parametrize(
    ("role", "status"), [(None, 401), ("user", 403), ("moderator", 200), ("admin", 200), ("wizard", 403)]
)
def test_require_permission_is_401_without_token_and_403_without_permission(role, status):
    app = make_app()
    response = call(app, "/things", None if role is None else issue(app, role=role), method="DELETE")
    assert response.status_code == status
    if status == 403:
        assert response.get_json()["code"] == "forbidden"
        assert response.get_json()["error"] == "This needs the delete permission"


@pytest.mark.parametrize(("role", "status"), [(None, 401), ("user", 403), ("moderator", 403), ("admin", 200)])
def test_require_role_is_401_without_token_and_403_for_other_roles(role, status):
    app = make_app()
    response = call(app, "/admin", None if role is None else issue(app, role=role))
    assert response.status_code == status


def test_unknown_role_has_no_permissions():
    app = make_app()
    assert call(app, "/me", issue(app, role="wizard")).get_json()["permissions"] == []


def test_roles_come_from_config():
    app = make_app(BACKEND_AUTH_ROLES={"user": ["read", "write", "delete"]})
    assert call(app, "/things", issue(app, role="user"), method="DELETE").status_code == 200
    assert call(app, "/things", issue(app, role="admin"), method="DELETE").status_code == 403


@pytest.mark.parametrize(
    ("sub", "role", "status"),
    [("u1", "user", 200), ("u2", "user", 403), ("u3", "moderator", 200), ("u4", "admin", 200)],
)
def test_ensure_owner_allows_the_owner_and_override_roles(sub, role, status):
    app = make_app()
    response = call(app, "/things/u1", issue(app, sub, role=role), method="PUT")
    assert response.status_code == status
    if status == 403:
        assert response.get_json() == {
            "success": False,
            "error": "Only the owner can do this",
            "code": "forbidden",
            "request_id": None,
        }


def test_ensure_owner_without_override_roles_refuses_a_moderator():
    app = make_app()
    assert call(app, "/strict/u1", issue(app, "u3", role="moderator"), method="PUT").status_code == 403
    assert call(app, "/strict/u1", issue(app, "u1"), method="PUT").status_code == 200


def test_decorators_keep_the_view_and_describe_the_requirement():
    @require_role("admin", "moderator")
    @require_permission("write")
    @require_permission("delete")
    def edit():
        """Edit a thing."""

    assert edit.__name__ == "edit"
    assert edit.__doc__ == "Edit a thing."
    assert edit._fbp_auth == {
        "required": True,
        "permissions": ["delete", "write"],
        "roles": ["admin", "moderator"],
    }

    @require_role("admin")
    @require_role("moderator", "admin")
    def narrowed():
        pass

    assert narrowed._fbp_auth["roles"] == ["admin"]

    @optional_auth
    def maybe():
        pass

    assert maybe._fbp_auth == {"required": False, "permissions": [], "roles": []}
    assert require_auth(maybe)._fbp_auth["required"] is True


def test_stacked_roles_that_no_one_can_hold_are_refused():
    with pytest.raises(ValueError, match="No role"):

        @require_role("admin")
        @require_role("user")
        def never():
            pass


def test_decorators_need_a_name():
    with pytest.raises(ValueError):
        require_permission()
    with pytest.raises(ValueError):
        require_role()


# -- the current caller ---------------------------------------------------------------


def test_optional_auth_serves_anonymous_callers_and_refuses_bad_tokens():
    app = make_app()
    assert call(app, "/maybe").get_json() == {"id": None}
    assert call(app, "/maybe", issue(app, "u7")).get_json() == {"id": "u7"}
    assert_unauthorized(call(app, "/maybe", "garbage"), "Malformed token")


def test_current_user_is_the_identity_without_a_user_loader():
    app = make_app()
    assert call(app, "/whoami", issue(app, "u5")).get_json() == {"user": "u5"}
    with app.test_request_context("/", headers={"Authorization": f"Bearer {issue(app, 'u5')}"}):
        assert isinstance(current_user._get_current_object(), Identity)
    with app.app_context():
        assert current_user._get_current_object() is None
        assert get_current_identity() is None


def test_user_loader_result_is_current_user_and_a_missing_user_is_a_401():
    users = {"u1": {"name": "Ann"}}
    seen = []

    def load(identity):
        seen.append(identity.id)
        return users.get(identity.id)

    app = make_app(user_loader=load)
    assert call(app, "/whoami", issue(app, "u1")).get_json() == {"user": "Ann"}
    assert seen == ["u1"]  # loaded once per request
    assert_unauthorized(call(app, "/whoami", issue(app, "ghost")), "The user of this token no longer exists")


def test_identity_is_on_g_before_later_hooks_and_in_the_access_log():
    app = make_app()
    RequestLogging(app)
    seen = []
    app.before_request(lambda: seen.append(g.get("_fbp_identity")))
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    access = logging.getLogger("flask_backend_patterns.access")
    access.addHandler(handler)
    old_level = access.level
    access.setLevel(logging.INFO)
    try:
        response = call(app, "/public", issue(app, "u9"))
    finally:
        access.removeHandler(handler)
        access.setLevel(old_level)
    assert response.get_json() == {"id": "u9"}
    assert [identity.id for identity in seen] == ["u9"]
    assert json.loads(stream.getvalue().splitlines()[-1])["user_id"] == "u9"


def test_public_route_serves_a_bad_token_anonymously():
    app = make_app()
    assert call(app, "/public", "garbage").get_json() == {"id": None}


# -- secrets --------------------------------------------------------------------------


def test_instance_secret_is_generated_once_and_reused_by_a_second_app(tmp_path, caplog):
    instance = tmp_path / "instance"
    with caplog.at_level(logging.WARNING, logger="flask_backend_patterns.auth"):
        first = make_app(instance_path=str(instance), JWT_SECRET_KEY=None)
    path = instance / INSTANCE_SECRET_FILE
    secret = path.read_bytes()
    assert len(secret) >= 64
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "JWT_SECRET_KEY is not set" in caplog.text
    assert secret.decode() not in caplog.text
    token = issue(first)
    second = make_app(instance_path=str(instance), JWT_SECRET_KEY="")
    assert call(second, "/me", token).status_code == 200
    assert path.read_bytes() == secret
    assert os.listdir(instance) == [INSTANCE_SECRET_FILE]  # no temporary file left


def test_instance_secret_first_writer_wins(tmp_path, monkeypatch):
    instance = tmp_path / "instance"
    instance.mkdir()
    winner = secrets.token_urlsafe(48)
    real_link = os.link

    def another_worker_links_first(src, dst, *args, **kwargs):
        with open(dst, "x") as file:
            file.write(winner)
        return real_link(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "link", another_worker_links_first)
    app = make_app(instance_path=str(instance), JWT_SECRET_KEY=None)
    assert call(app, "/me", sign(claims_now(aud=DROP, iss=DROP), key=winner)).status_code == 200
    assert os.listdir(instance) == [INSTANCE_SECRET_FILE]


def test_no_secret_and_no_instance_secret_refuses(tmp_path):
    with pytest.raises(ValueError, match="JWT_SECRET_KEY is not set"):
        make_app(instance_path=str(tmp_path), JWT_SECRET_KEY=None, BACKEND_AUTH_INSTANCE_SECRET=False)
    assert not (tmp_path / INSTANCE_SECRET_FILE).exists()


@pytest.mark.parametrize(
    "config",
    [
        {"JWT_SECRET_KEY": "too-short"},
        {"JWT_SECRET_KEY": "x" * 31},
        {"JWT_SECRET_KEY": "x" * 40, "JWT_ALGORITHM": "HS512"},
        {"BACKEND_AUTH_KEY_ID": "new", "BACKEND_AUTH_VERIFY_KEYS": {"old": "short-old-secret"}},
    ],
)
def test_short_secret_refuses_outside_debug_and_testing(config):
    with pytest.raises(ValueError, match="needs at least"):
        make_app(TESTING=False, **config)


def test_short_secret_is_accepted_in_testing_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="flask_backend_patterns.auth"):
        make_app(JWT_SECRET_KEY="too-short")
    assert "JWT_SECRET_KEY is 9 bytes" in caplog.text
    assert "too-short" not in caplog.text
    make_app(TESTING=False, JWT_SECRET_KEY="x" * 32)  # 32 bytes is enough for HS256


def test_secrets_and_tokens_are_never_logged(strict_app, caplog):
    token = issue(strict_app)
    with caplog.at_level(logging.DEBUG):
        for bad in (token + "x", sign(key=OTHER_SECRET), "garbage"):
            call(strict_app, "/me", bad)
        call(strict_app, "/logout", token, method="POST")
        call(strict_app, "/me", token)
    assert caplog.records  # the failures were logged at all
    for secret in (SECRET, OTHER_SECRET, token):
        assert secret not in caplog.text
    assert SECRET not in repr(get_state(strict_app))


# -- config ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "error", "match"),
    [
        ({"JWT_ALGORITHM": "none"}, ValueError, "JWT_ALGORITHM 'none' is not supported"),
        ({"JWT_ALGORITHM": "HS257"}, ValueError, "not supported"),
        ({"JWT_DECODE_ALGORITHMS": ["HS256", "none"]}, ValueError, "'none' never is"),
        ({"JWT_DECODE_ALGORITHMS": ["HS512"]}, ValueError, "must include JWT_ALGORITHM"),
        ({"JWT_ALGORITHM": "RS256"}, ValueError, "needs JWT_PRIVATE_KEY"),
        ({"JWT_ALGORITHM": "RS256", "JWT_PRIVATE_KEY": "not a key"}, ValueError, "not an unencrypted PEM"),
        ({"BACKEND_AUTH_VERIFY_KEYS": {"old": OTHER_SECRET}}, ValueError, "needs BACKEND_AUTH_KEY_ID"),
        (
            {"BACKEND_AUTH_KEY_ID": "k", "BACKEND_AUTH_VERIFY_KEYS": {"k": OTHER_SECRET}},
            ValueError,
            "is not the key that signs",
        ),
        ({"BACKEND_AUTH_VERIFY_KEYS": "[1, 2]"}, ValueError, "must be a mapping"),
        ({"JWT_ACCESS_TOKEN_EXPIRES": False}, ValueError, "JWT_ACCESS_TOKEN_EXPIRES"),
        ({"JWT_ACCESS_TOKEN_EXPIRES": 0}, ValueError, "at least 1 seconds"),
        ({"JWT_DECODE_LEEWAY": -1}, ValueError, "JWT_DECODE_LEEWAY"),
        ({"JWT_ENCODE_AUDIENCE": 7}, ValueError, "JWT_ENCODE_AUDIENCE"),
        ({"BACKEND_AUTH_ROLES": ["admin"]}, ValueError, "BACKEND_AUTH_ROLES must be a mapping"),
        ({"BACKEND_AUTH_INSTANCE_SECRET": "maybe", "JWT_SECRET_KEY": None}, ValueError, "must be a boolean"),
        (
            {"BACKEND_AUTH_REVOCATION_CACHE": "maybe"},
            ValueError,
            "BACKEND_AUTH_REVOCATION_CACHE must be a boolean",
        ),
        ({"BACKEND_AUTH_REVOCATION_CACHE": 2}, ValueError, "BACKEND_AUTH_REVOCATION_CACHE must be a boolean"),
        ({"BACKEND_AUTH_REVOCATION_CACHE_CHECK_INTERVAL": 0}, ValueError, "more than 0 seconds"),
        ({"BACKEND_AUTH_REVOCATION_CACHE_CHECK_INTERVAL": "0"}, ValueError, "more than 0 seconds"),
        ({"BACKEND_AUTH_REVOCATION_CACHE_CHECK_INTERVAL": -1}, ValueError, "more than 0 seconds"),
        ({"BACKEND_AUTH_REVOCATION_CACHE_CHECK_INTERVAL": "soon"}, ValueError, "_CHECK_INTERVAL must be a"),
        ({"BACKEND_AUTH_REVOCATION_CACHE_CHECK_INTERVAL": True}, ValueError, "_CHECK_INTERVAL must be a"),
        ({"BACKEND_AUTH_REVOCATION_CACHE_CHECK_INTERVAL": float("inf")}, ValueError, "more than 0 seconds"),
        ({"BACKEND_AUTH_REVOCATION_CACHE_CHECK_INTERVAL": None}, ValueError, "_CHECK_INTERVAL"),
    ],
)
def test_wrong_config_fails_at_init_app(config, error, match, tmp_path):
    with pytest.raises(error, match=match):
        make_app(instance_path=str(tmp_path), **config)


def test_key_config_errors_name_the_problem(rsa_keys):
    with pytest.raises(ValueError, match="is not the public half"):
        rs_app(rsa_keys[0], JWT_PUBLIC_KEY=pem_public(rsa_keys[1]))
    with pytest.raises(ValueError, match="holds a private key"):
        rs_app(rsa_keys[0], BACKEND_AUTH_KEY_ID="b", BACKEND_AUTH_VERIFY_KEYS={"a": pem_private(rsa_keys[1])})
    with pytest.raises(ValueError, match="allows none of RS256"):
        make_app(BACKEND_AUTH_KEY_ID="b", BACKEND_AUTH_VERIFY_KEYS={"a": pem_public(rsa_keys[1])})
    with pytest.raises(ValueError, match="does not fit the configured key"):
        make_app(JWT_ALGORITHM="ES256", JWT_PRIVATE_KEY=pem_private(rsa_keys[0]))


def test_key_error_messages_never_contain_the_key(rsa_keys):
    private = pem_private(rsa_keys[0])
    with pytest.raises(ValueError) as excinfo:
        make_app(JWT_ALGORITHM="ES256", JWT_PRIVATE_KEY=private)
    assert "PRIVATE KEY" not in str(excinfo.value)


def test_json_parsed_env_values_are_accepted(monkeypatch):
    monkeypatch.setenv("FLASK_JWT_SECRET_KEY", SECRET)
    monkeypatch.setenv("FLASK_JWT_ACCESS_TOKEN_EXPIRES", "600")
    monkeypatch.setenv("FLASK_JWT_DECODE_ALGORITHMS", '["HS256"]')
    monkeypatch.setenv("FLASK_JWT_DECODE_LEEWAY", "5")
    monkeypatch.setenv("FLASK_JWT_ENCODE_AUDIENCE", '["market-api", "admin-api"]')
    monkeypatch.setenv("FLASK_BACKEND_AUTH_KEY_ID", "2025")
    monkeypatch.setenv("FLASK_BACKEND_AUTH_VERIFY_KEYS", json.dumps({"2024": OTHER_SECRET}))
    monkeypatch.setenv("FLASK_BACKEND_AUTH_ROLES", '{"user": ["read"], "editor": "read,write"}')
    monkeypatch.setenv("FLASK_BACKEND_AUTH_INSTANCE_SECRET", "false")
    app = Flask(__name__)
    app.config.update(TESTING=True)
    app.config.from_prefixed_env()
    Auth(app, revocation_store=new_store())
    state = get_state(app)
    assert state.access_expires == 600
    assert state.leeway == 5.0
    assert state.decode_audience == ["market-api", "admin-api"]
    assert sorted(state.verify_keys) == ["2024", "2025"]
    assert state.roles == {"user": frozenset({"read"}), "editor": frozenset({"read", "write"})}


def test_pem_keys_with_escaped_newlines_from_env_are_accepted(rsa_keys):
    escaped = pem_private(rsa_keys[0]).replace("\n", "\\n")
    app = make_app(JWT_ALGORITHM="RS256", JWT_PRIVATE_KEY=escaped)
    assert call(app, "/me", issue(app)).status_code == 200


# -- revocation stores ----------------------------------------------------------------


def test_no_revocation_store_refuses_and_explains_the_choice():
    app = Flask(__name__)
    app.config.update(TESTING=True, JWT_SECRET_KEY=SECRET)
    with pytest.raises(RuntimeError, match="BACKEND_AUTH_REVOCATION_REDIS_URL.*SQLAlchemyRevocationStore"):
        Auth(app)


def test_a_store_without_the_protocol_is_refused():
    app = Flask(__name__)
    app.config.update(TESTING=True, JWT_SECRET_KEY=SECRET)
    with pytest.raises(TypeError, match="revoke"):
        Auth(app, revocation_store=set())


def test_redis_url_config_makes_a_redis_store_and_beats_the_constructor():
    app = Flask(__name__)
    app.config.update(
        TESTING=True,
        JWT_SECRET_KEY=SECRET,
        BACKEND_AUTH_REVOCATION_REDIS_URL="redis://127.0.0.1:6379/7",
        BACKEND_AUTH_REVOCATION_KEY_PREFIX="market:revoked:",
    )
    given = new_store()
    Auth(app, revocation_store=given)
    store = get_state(app).revocation_store
    assert isinstance(store, RedisRevocationStore) and store is not given
    assert store.key("abc") == "market:revoked:abc"
    assert store.client.connection_pool.connection_kwargs["db"] == 7
    store.client.close()


def test_revocation_cache_config_reaches_the_redis_store():
    app = Flask(__name__)
    app.config.update(
        TESTING=True,
        JWT_SECRET_KEY=SECRET,
        BACKEND_AUTH_REVOCATION_REDIS_URL="redis://127.0.0.1:6379/7",
        BACKEND_AUTH_REVOCATION_CACHE="false",
        BACKEND_AUTH_REVOCATION_CACHE_CHECK_INTERVAL=dt.timedelta(milliseconds=250),
    )
    Auth(app)
    store = get_state(app).revocation_store
    assert (store.cache, store.check_interval) == (False, 0.25)
    store.client.close()
    defaults = make_app()
    assert defaults.config["BACKEND_AUTH_REVOCATION_CACHE"] is True
    assert defaults.config["BACKEND_AUTH_REVOCATION_CACHE_CHECK_INTERVAL"] == 1.0
    store = RedisRevocationStore.from_url("redis://127.0.0.1:6379/7")
    assert (store.cache, store.check_interval) == (True, 1.0)
    store.client.close()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"check_interval": 0}, "check_interval"),
        ({"check_interval": -1.0}, "check_interval"),
        ({"check_interval": float("nan")}, "check_interval"),
        ({"check_interval": "1"}, "check_interval"),
        ({"check_interval": True}, "check_interval"),
        ({"cache_size": 0}, "cache_size"),
    ],
)
def test_redis_store_refuses_a_bad_check_interval_or_size(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RedisRevocationStore(fakeredis.FakeRedis(server=fakeredis.FakeServer()), **kwargs)


def test_a_client_that_cannot_track_asks_redis_every_time_with_one_warning(caplog, monkeypatch):
    # fakeredis has no CLIENT TRACKING: the watch cannot be set up.
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    store = RedisRevocationStore(client, check_interval=3600)
    calls = []
    real_exists = client.exists
    monkeypatch.setattr(client, "exists", lambda *keys: calls.append(keys) or real_exists(*keys))
    setups = []
    real_open = store._open_watch
    monkeypatch.setattr(store, "_open_watch", lambda now: setups.append(now) or real_open(now))
    with caplog.at_level(logging.WARNING, logger="flask_backend_patterns.auth"):
        assert [store.is_revoked("j1") for _ in range(3)] == [False] * 3
        store.revoke("j1", int(time.time()) + 60)
        assert store.is_revoked("j1") is True
    assert len(calls) == 4  # no memory: each lookup asked
    assert len(setups) == 1  # one set-up tried, not one per lookup
    warnings = [r for r in caplog.records if "Revocation memory off" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"
    assert "ResponseError" in warnings[0].getMessage()


def test_redis_store_ttl_is_the_token_remaining_life():
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    store = RedisRevocationStore(client, prefix="t:", clock=lambda: 1_000.25)
    store.revoke("abc", 1_900)
    assert client.ttl("t:abc") == 900  # 899.75 s rounded up: never forgotten early
    assert store.is_revoked("abc")
    assert not store.is_revoked("other")


def test_redis_store_skips_tokens_that_expired_already():
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    store = RedisRevocationStore(client, clock=lambda: 2_000.0)
    store.revoke("old", 2_000)
    assert client.keys("*") == []


def test_logout_ttl_follows_the_token_exp(strict_app):
    token = issue(strict_app)
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    store = get_state(strict_app).revocation_store
    assert call(strict_app, "/logout", token, method="POST").status_code == 200
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    remaining = store.client.ttl(store.key(jti))
    assert 0 < remaining <= exp - int(time.time()) + 1


def test_redis_down_fails_closed_with_a_503():
    server = fakeredis.FakeServer()
    app = make_app(store=RedisRevocationStore(fakeredis.FakeRedis(server=server)))
    token = issue(app)
    server.connected = False
    response = call(app, "/me", token)
    assert response.status_code == 503
    assert response.get_json()["code"] == "unavailable"
    assert response.headers["Retry-After"] == "1"
    assert call(app, "/logout", token, method="POST").status_code == 503
    assert call(app, "/public", token).get_json() == {"id": None}
    server.connected = True
    assert call(app, "/me", token).status_code == 200


def test_redis_store_down_raises_service_unavailable_on_both_methods():
    server = fakeredis.FakeServer()
    store = RedisRevocationStore(fakeredis.FakeRedis(server=server))
    server.connected = False
    with pytest.raises(ServiceUnavailableError):
        store.revoke("j1", int(time.time()) + 60)
    with pytest.raises(ServiceUnavailableError):
        store.is_revoked("j1")


@pytest.fixture
def sqlite_uri(tmp_path):
    return f"sqlite:///{tmp_path / 'auth.db'}"


def sql_app(uri, db):
    app = Flask(__name__)
    app.config.update(TESTING=True, SQLALCHEMY_DATABASE_URI=uri)
    db.init_app(app)
    return app


def test_sqlalchemy_store_defines_its_table_on_the_metadata():
    db = SQLAlchemy()
    store = SQLAlchemyRevocationStore(db)
    table = db.metadata.tables["revoked_tokens"]
    assert store.table is table
    assert [c.name for c in table.primary_key] == ["jti"]
    assert "expires_at" in table.c
    assert SQLAlchemyRevocationStore(db).table is table


def test_sqlalchemy_store_persists_across_sessions_and_engines(sqlite_uri):
    db = SQLAlchemy()
    store = SQLAlchemyRevocationStore(db)
    app = sql_app(sqlite_uri, db)
    with app.app_context():
        db.create_all()
        db.session.execute(sa.select(1))  # the request's session is in a transaction
        store.revoke("j1", int(time.time()) + 600)
        db.session.rollback()  # ... and rolls it back: the revocation was committed on its own
        db.engine.dispose()
    other_db = SQLAlchemy()  # another process: its own metadata, engine and connections
    other_store = SQLAlchemyRevocationStore(other_db)
    other = sql_app(sqlite_uri, other_db)
    with other.app_context():
        try:
            assert other_store.is_revoked("j1")
            assert not other_store.is_revoked("j2")
        finally:
            other_db.engine.dispose()


def test_sqlalchemy_store_prunes_expired_rows_and_ignores_a_second_revoke(sqlite_uri):
    now = [1_000.0]
    db = SQLAlchemy()
    store = SQLAlchemyRevocationStore(db, clock=lambda: now[0])
    app = sql_app(sqlite_uri, db)
    with app.app_context():
        try:
            db.create_all()
            store.revoke("short", 1_100)
            store.revoke("long", 9_000)
            store.revoke("long", 9_000)
            store.revoke("expired", 900)
            rows = lambda: sorted(db.session.execute(sa.select(store.table.c.jti)).scalars())  # noqa: E731
            assert rows() == ["long", "short"]
            db.session.rollback()
            now[0] = 2_000.0
            store.revoke("later", 9_500)
            assert rows() == ["later", "long"]
            db.session.rollback()
        finally:
            db.engine.dispose()


def test_sqlalchemy_store_backs_logout(sqlite_uri):
    db = SQLAlchemy()
    app = make_app(store=SQLAlchemyRevocationStore(db), SQLALCHEMY_DATABASE_URI=sqlite_uri)
    db.init_app(app)
    with app.app_context():
        db.create_all()
    try:
        token = issue(app)
        assert call(app, "/me", token).status_code == 200
        assert call(app, "/logout", token, method="POST").status_code == 200
        assert_unauthorized(call(app, "/me", token), "Token has been revoked")
    finally:
        with app.app_context():
            db.engine.dispose()


def test_sqlalchemy_store_unreachable_database_raises_service_unavailable(tmp_path):
    db = SQLAlchemy()
    store = SQLAlchemyRevocationStore(db)
    app = sql_app(f"sqlite:///{tmp_path / 'missing' / 'auth.db'}", db)
    with app.app_context():
        try:
            with pytest.raises(ServiceUnavailableError):
                store.revoke("j1", int(time.time()) + 60)
            with pytest.raises(ServiceUnavailableError):
                store.is_revoked("j1")
        finally:
            db.engine.dispose()


def test_sqlalchemy_store_unreachable_database_is_a_503(tmp_path):
    db = SQLAlchemy()
    uri = f"sqlite:///{tmp_path / 'missing' / 'auth.db'}"
    app = make_app(store=SQLAlchemyRevocationStore(db), SQLALCHEMY_DATABASE_URI=uri)
    db.init_app(app)
    try:
        response = call(app, "/me", issue(app))
        assert response.status_code == 503
        assert response.get_json()["code"] == "unavailable"
    finally:
        with app.app_context():
            db.engine.dispose()


def test_set_ups_that_keep_failing_are_tried_less_and_less_often(caplog, monkeypatch):
    from flask_backend_patterns import auth as auth_module

    now = [1000.0]
    monkeypatch.setattr(auth_module.time, "monotonic", lambda: now[0])
    store = RedisRevocationStore(fakeredis.FakeRedis(server=fakeredis.FakeServer()), check_interval=1)
    setups = []
    real_open = store._open_watch
    monkeypatch.setattr(store, "_open_watch", lambda at: setups.append(at) or real_open(at))
    with caplog.at_level(logging.WARNING, logger="flask_backend_patterns.auth"):
        for _ in range(2000):  # a lookup every 0.5 s for 1000 s
            store.is_revoked("j1")
            now[0] += 0.5
    gaps = [b - a for a, b in zip(setups, setups[1:], strict=False)]
    assert gaps[:4] == [1.0, 2.0, 4.0, 8.0]  # doubling
    assert max(gaps) == 300.0 and len(setups) < 15  # capped at 5 minutes
    warnings = [r for r in caplog.records if "Revocation memory off" in r.getMessage()]
    assert len(warnings) == len(setups)  # one per set-up, not one per second
