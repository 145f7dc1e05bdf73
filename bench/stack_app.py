"""A trivial endpoint behind the library's middleware, for the stack benchmarks.

``/ping`` runs the request id, the JSON access log, the error handler and a rate limit
counted in Redis; ``/ping-auth`` adds HS256 bearer verification and the revocation
lookup in Redis: the full stack.
Configured from the environment the benchmark gives it (``BENCH_REDIS_URL``,
``BENCH_JWT_SECRET``). :func:`create_layer_app` builds the same app one layer at a
time, for the in-process cost of each layer.
"""

from __future__ import annotations

import os

from flask import Flask

from bench.common import NO_LIMIT
from flask_backend_patterns import Auth
from flask_backend_patterns import BackendPatterns
from flask_backend_patterns import RateLimiting
from flask_backend_patterns import require_auth

#: the layers of :func:`create_layer_app`, each on top of the ones before it.
LAYERS = ("errors", "logging", "limit-memory", "limit-redis", "auth", "auth-no-memory")


def create_app() -> Flask:
    return create_layer_app("auth")


def create_layer_app(layer: str) -> Flask:
    """The stack up to ``layer`` (one of :data:`LAYERS`); ``auth-no-memory`` is the full
    stack with an ``EXISTS`` per request for the revocation instead of the memory."""
    upto = LAYERS.index(layer)
    redis_url = os.environ["BENCH_REDIS_URL"]
    app = Flask(__name__)
    app.config.update(
        JWT_SECRET_KEY=os.environ["BENCH_JWT_SECRET"],
        BACKEND_LOGGING_ENABLED=upto >= LAYERS.index("logging"),
        BACKEND_AUTH_REVOCATION_REDIS_URL=redis_url,
        BACKEND_AUTH_REVOCATION_CACHE=layer != "auth-no-memory",
        RATELIMIT_STORAGE_URI="memory://" if layer == "limit-memory" else redis_url,
        RATELIMIT_DEFAULT=NO_LIMIT,
    )
    BackendPatterns(app)
    if upto >= LAYERS.index("auth"):
        Auth(app)  # before the limiter, so that a known caller is counted per user
    if upto >= LAYERS.index("limit-memory"):
        RateLimiting(app)

    @app.get("/ping")
    def ping() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/ping-auth")
    @require_auth
    def ping_auth() -> dict[str, bool]:
        return {"ok": True}

    return app
