"""The baseline: bare Flask answering /ping, served by the same gunicorn settings."""

from __future__ import annotations

from flask import Flask


def create_app() -> Flask:
    app = Flask(__name__)

    @app.get("/ping")
    def ping() -> dict[str, bool]:
        return {"ok": True}

    return app
