"""The extension objects, created unbound and registered by the app factory."""

from __future__ import annotations

from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase

from flask_backend_patterns import BackendPatterns
from flask_backend_patterns.auth import Auth
from flask_backend_patterns.auth import SQLAlchemyRevocationStore
from flask_backend_patterns.cache import RepositoryCache
from flask_backend_patterns.jobs import JobQueue
from flask_backend_patterns.ratelimit import RateLimiting


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
patterns = BackendPatterns()
#: revocations go to Redis when REDIS_URL is set (see config), to this table otherwise.
auth = Auth(revocation_store=SQLAlchemyRevocationStore(db))
#: market reads go through it: Redis with REDIS_URL, in process on the embedded default.
cache = RepositoryCache()
#: registered after auth, so that a known caller is limited per user.
limiter = RateLimiting()
#: on Redis with REDIS_URL (workers: flask jobs worker); inline in the request otherwise.
jobs = JobQueue()
# flask-smorest keeps its spec on the Api object, so each app gets its own (see create_app).
