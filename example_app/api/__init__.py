"""HTTP API: one flask-smorest blueprint per resource."""

from __future__ import annotations

from flask_backend_patterns.api import Api

from . import auth
from . import jobs
from . import markets
from . import ops


def register_blueprints(api: Api) -> None:
    """Register every blueprint of the example app on ``api``."""
    api.register_blueprint(ops.blp)
    api.register_blueprint(auth.blp)
    api.register_blueprint(markets.blp)
    api.register_blueprint(jobs.blp)
