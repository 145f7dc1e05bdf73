"""Backend patterns as Flask extensions: errors, logging, auth, repositories, a cache,
transactions, rate limits, retries and jobs.

Each part works alone (``ErrorHandler(app)``, ``RequestLogging(app)``, ...);
``BackendPatterns(app)`` registers the ones the config enables.
"""

from __future__ import annotations

from .auth import Auth
from .auth import create_access_token
from .auth import create_refresh_token
from .auth import current_user
from .auth import decode_token
from .auth import ensure_owner
from .auth import get_bearer_token
from .auth import get_current_identity
from .auth import Identity
from .auth import optional_auth
from .auth import RedisRevocationStore
from .auth import require_auth
from .auth import require_permission
from .auth import require_role
from .auth import RevocationStore
from .auth import revoke_token
from .auth import SQLAlchemyRevocationStore
from .cache import cache_health
from .cache import CachedRepository
from .cache import CacheHealth
from .cache import CacheStats
from .cache import ModelCodec
from .cache import RepositoryCache
from .errors import ApiError
from .errors import BadRequestError
from .errors import ConflictError
from .errors import ErrorHandler
from .errors import ForbiddenError
from .errors import NotFoundError
from .errors import PreconditionFailedError
from .errors import ServiceUnavailableError
from .errors import UnauthorizedError
from .errors import ValidationError
from .extension import BackendPatterns
from .jobs import JobInfo
from .jobs import JobQueue
from .logging import bind_request_id
from .logging import get_request_id
from .logging import JsonFormatter
from .logging import RequestLogging
from .logging import set_log_context
from .ratelimit import rate_limit
from .ratelimit import rate_limit_exempt
from .ratelimit import rate_limit_key
from .ratelimit import RateLimiting
from .repository import Include
from .repository import Page
from .repository import Repository
from .repository import SQLAlchemyRepository
from .repository import UtcDateTime
from .retry import retry
from .retry import retrying
from .retry import RetryPolicy
from .service import Service
from .transactions import transaction

__all__ = [
    "ApiError",
    "Auth",
    "BackendPatterns",
    "BadRequestError",
    "CacheHealth",
    "CacheStats",
    "CachedRepository",
    "ConflictError",
    "ErrorHandler",
    "ForbiddenError",
    "Identity",
    "Include",
    "JobInfo",
    "JobQueue",
    "JsonFormatter",
    "ModelCodec",
    "NotFoundError",
    "Page",
    "PreconditionFailedError",
    "RateLimiting",
    "RedisRevocationStore",
    "Repository",
    "RepositoryCache",
    "RequestLogging",
    "RetryPolicy",
    "RevocationStore",
    "SQLAlchemyRepository",
    "SQLAlchemyRevocationStore",
    "Service",
    "ServiceUnavailableError",
    "UnauthorizedError",
    "UtcDateTime",
    "ValidationError",
    "bind_request_id",
    "cache_health",
    "create_access_token",
    "create_refresh_token",
    "current_user",
    "decode_token",
    "ensure_owner",
    "get_bearer_token",
    "get_current_identity",
    "get_request_id",
    "optional_auth",
    "rate_limit",
    "rate_limit_exempt",
    "rate_limit_key",
    "require_auth",
    "require_permission",
    "require_role",
    "retry",
    "retrying",
    "revoke_token",
    "set_log_context",
    "transaction",
]
