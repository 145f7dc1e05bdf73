"""The extension objects, created unbound and registered by the app factory."""

from __future__ import annotations

from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase

from flask_backend_patterns import BackendPatterns


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
patterns = BackendPatterns()
# flask-smorest keeps its spec on the Api object, so each app gets its own (see create_app).
