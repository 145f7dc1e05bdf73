"""A trivial endpoint behind the library's middleware, for the stack benchmarks.

``/ping`` runs the request id, the JSON access log, the error handler and a rate limit
counted in Redis; ``/ping-auth`` adds HS256 bearer verification and the revocation
lookup in Redis: the full stack.
Configured from the environment the benchmark gives it (``BENCH_REDIS_URL``,
``BENCH_JWT_SECRET``).
"""

from __future__ import annotations

import os

from flask import Flask

from bench.common import NO_LIMIT
from flask_backend_patterns import Auth
from flask_backend_patterns import BackendPatterns
from flask_backend_patterns import RateLimiting
from flask_backend_patterns import require_auth


def create_app() -> Flask:
    app = Flask(__name__)
    app.config.update(
        JWT_SECRET_KEY=os.environ["BENCH_JWT_SECRET"],
        BACKEND_AUTH_REVOCATION_REDIS_URL=os.environ["BENCH_REDIS_URL"],
        RATELIMIT_STORAGE_URI=os.environ["BENCH_REDIS_URL"],
        RATELIMIT_DEFAULT=NO_LIMIT,
    )
    BackendPatterns(app)
    Auth(app)  # before the limiter, so that a known caller is counted per user
    RateLimiting(app)

    @app.get("/ping")
    def ping() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/ping-auth")
    @require_auth
    def ping_auth() -> dict[str, bool]:
        return {"ok": True}

    return app
