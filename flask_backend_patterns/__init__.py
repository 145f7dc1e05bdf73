"""Backend patterns as Flask extensions: errors, logging, repositories, transactions.

Each part works alone (``ErrorHandler(app)``, ``RequestLogging(app)``, ...);
``BackendPatterns(app)`` registers the ones the config enables.
"""

from __future__ import annotations

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
from .logging import bind_request_id
from .logging import get_request_id
from .logging import JsonFormatter
from .logging import RequestLogging
from .logging import set_log_context
from .repository import Include
from .repository import Page
from .repository import Repository
from .repository import SQLAlchemyRepository
from .repository import UtcDateTime
from .service import Service
from .transactions import transaction

__all__ = [
    "ApiError",
    "BackendPatterns",
    "BadRequestError",
    "ConflictError",
    "ErrorHandler",
    "ForbiddenError",
    "Include",
    "JsonFormatter",
    "NotFoundError",
    "Page",
    "PreconditionFailedError",
    "Repository",
    "RequestLogging",
    "SQLAlchemyRepository",
    "Service",
    "ServiceUnavailableError",
    "UnauthorizedError",
    "UtcDateTime",
    "ValidationError",
    "bind_request_id",
    "get_request_id",
    "set_log_context",
    "transaction",
]
