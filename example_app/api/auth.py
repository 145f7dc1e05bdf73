"""Auth endpoints: login, refresh, logout, me."""

from __future__ import annotations

import typing as t

from flask import Response
from flask.views import MethodView

from flask_backend_patterns.api import Blueprint
from flask_backend_patterns.api import empty_response
from flask_backend_patterns.api import envelope
from flask_backend_patterns.auth import current_user
from flask_backend_patterns.auth import require_auth
from flask_backend_patterns.ratelimit import rate_limit

from ..schemas import LoginSchema
from ..schemas import MeSchema
from ..schemas import TokenSchema
from ..services import AuthService

#: login attempts a client may make; other routes use RATELIMIT_DEFAULT.
LOGIN_RATE_LIMIT = "10 per minute"

blp = Blueprint("auth", __name__, url_prefix="/api/auth", description="Tokens and the current user")


@blp.route("/login")
class Login(MethodView):
    # Guessing passwords costs a client more than browsing: a tighter limit.
    @rate_limit(LOGIN_RATE_LIMIT)
    @blp.arguments(LoginSchema)
    @blp.response(200, TokenSchema)
    @blp.alt_response(401, response="UNAUTHORIZED")
    def post(self, data: dict[str, t.Any]) -> Response:
        """Trade an email and password for an access and a refresh token."""
        return envelope(AuthService().login(data["email"], data["password"]))


@blp.route("/refresh")
class Refresh(MethodView):
    @blp.response(200, TokenSchema)
    @blp.alt_response(401, response="UNAUTHORIZED")
    @blp.doc(security=[{"bearerAuth": []}])
    def post(self) -> Response:
        """A new access token, for the refresh token sent as the bearer token."""
        return envelope(AuthService().refresh())


@blp.route("/logout")
class Logout(MethodView):
    @blp.response(204)
    @blp.alt_response(401, response="UNAUTHORIZED")
    @blp.doc(security=[{"bearerAuth": []}])
    def post(self) -> Response:
        """Revoke the bearer token sent (access or refresh) until it would expire."""
        AuthService().logout()
        return empty_response()


@blp.route("/me")
class Me(MethodView):
    @require_auth
    @blp.response(200, MeSchema)
    def get(self) -> Response:
        """Who the access token belongs to, and what it may do."""
        return envelope(
            {
                "id": current_user.id,
                "email": current_user.email,
                "role": current_user.role,
                "permissions": sorted(current_user.permissions),
            }
        )
