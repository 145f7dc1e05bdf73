"""Operations endpoints: liveness and readiness."""

from __future__ import annotations

import logging

import sqlalchemy as sa
from flask import current_app
from flask import Response
from flask.views import MethodView

from flask_backend_patterns.api import Blueprint
from flask_backend_patterns.api import envelope
from flask_backend_patterns.cache import cache_health
from flask_backend_patterns.errors import error_response

from ..extensions import db
from ..schemas import HealthSchema

log = logging.getLogger(__name__)
blp = Blueprint("ops", __name__, description="Liveness and readiness")


@blp.route("/healthz")
class Health(MethodView):
    @blp.response(200, HealthSchema)
    def get(self) -> Response:
        """200 while the process serves requests."""
        return envelope({"status": "ok"})


def _check_database() -> str | None:
    try:
        db.session.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as exc:
        db.session.rollback()
        log.warning("readiness: database check failed: %s", type(exc).__name__)
        return f"database unreachable ({type(exc).__name__})"
    return None


def _check_redis() -> str | None:
    if not current_app.config.get("REDIS_URL"):
        return None
    # The cache's own client (short timeouts), not a new connection per probe.
    health = cache_health()
    if health.ok:
        return None
    log.warning("readiness: redis check failed: %s", health.error)
    return "redis unreachable"


@blp.route("/readyz")
class Ready(MethodView):
    @blp.response(200, HealthSchema)
    @blp.alt_response(503, response="SERVICE_UNAVAILABLE")
    def get(self) -> Response:
        """200 when the database (and Redis, if configured) answer; else 503 naming which failed."""
        failures = {
            name: [msg] for name, msg in (("database", _check_database()), ("redis", _check_redis())) if msg
        }
        if failures:
            return error_response(503, "unavailable", "Not ready: " + ", ".join(failures), details=failures)
        checks = {"database": "ok"}
        if current_app.config.get("REDIS_URL"):
            checks["redis"] = "ok"
        return envelope({"status": "ready", "checks": checks})
