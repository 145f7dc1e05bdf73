"""Centralized JSON error handling.

Every error leaves the app in one envelope::

    {"success": false, "error": "Human readable message", "code": "machine_code",
     "request_id": "...", "details": {...}}

``details`` is present only for validation errors (field name -> list of messages).
Register with ``ErrorHandler(app)`` or ``ErrorHandler().init_app(app)``.
"""

from __future__ import annotations

import logging
import typing as t
from dataclasses import dataclass

from flask import current_app
from flask import Flask
from flask import Response
from werkzeug.exceptions import HTTPException

try:
    from marshmallow import ValidationError as _MarshmallowError
except ImportError:  # the errors part works without marshmallow

    class _MarshmallowError(Exception):  # type: ignore[no-redef]
        """Stands in when marshmallow is not installed: never raised."""


from ._extension import lookup_state
from ._extension import register_state
from .logging import get_request_id

log = logging.getLogger("flask_backend_patterns.errors")

EXTENSION_KEY = "backend_patterns.errors"

#: machine code and short message for every status the envelope knows.
STATUS_CODES: dict[int, tuple[str, str]] = {
    400: ("bad_request", "Bad request"),
    401: ("unauthorized", "Authentication required"),
    403: ("forbidden", "You do not have permission to do this"),
    404: ("not_found", "Resource not found"),
    405: ("method_not_allowed", "Method not allowed"),
    406: ("not_acceptable", "Not acceptable"),
    409: ("conflict", "Conflict with the current state of the resource"),
    412: ("precondition_failed", "Precondition failed"),
    413: ("payload_too_large", "Request body too large"),
    415: ("unsupported_media_type", "Request body must be JSON (Content-Type: application/json)"),
    422: ("validation_error", "Validation failed"),
    428: ("precondition_required", "Precondition required"),
    429: ("rate_limited", "Rate limit exceeded"),
    500: ("internal_error", "Internal server error"),
    501: ("not_implemented", "Not implemented"),
    503: ("unavailable", "Service unavailable"),
}

Details = t.Mapping[str, t.Any]


class ApiError(Exception):
    """An error with an HTTP status, a machine ``code`` and a message a user can act on.

    Raise it (or a subclass) anywhere in a request; the registered handler turns it
    into the error envelope. ``headers`` are added to the response.
    """

    status: int = 400
    code: str = "bad_request"
    message: str = "Bad request"

    def __init__(
        self,
        message: str | None = None,
        *,
        status: int | None = None,
        code: str | None = None,
        details: Details | None = None,
        headers: t.Mapping[str, str] | None = None,
    ) -> None:
        if message is not None:
            self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.details = dict(details) if details is not None else None
        self.headers = dict(headers or {})
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.code!r}, {self.message!r})"


class BadRequestError(ApiError):
    """400: the request cannot be understood (malformed body, conflicting parameters)."""


class ValidationError(ApiError):
    """400 ``validation_error``: input failed validation; ``details`` maps field -> messages."""

    code = "validation_error"
    message = "Validation failed"


class UnauthorizedError(ApiError):
    """401: missing or invalid credentials; sends ``WWW-Authenticate: Bearer``."""

    status = 401
    code = "unauthorized"
    message = "Authentication required"

    def __init__(
        self, message: str | None = None, *, error: str | None = "invalid_token", **kw: t.Any
    ) -> None:
        super().__init__(message, **kw)
        challenge = 'Bearer realm="api"'
        if error:
            challenge += f', error="{error}"'
        self.headers.setdefault("WWW-Authenticate", challenge)


class ForbiddenError(ApiError):
    """403: authenticated but not allowed."""

    status = 403
    code = "forbidden"
    message = "You do not have permission to do this"


class NotFoundError(ApiError):
    """404: the resource does not exist."""

    status = 404
    code = "not_found"
    message = "Resource not found"


class ConflictError(ApiError):
    """409: the write conflicts with existing data (a uniqueness rule, a stale version)."""

    status = 409
    code = "conflict"
    message = "Conflict with the current state of the resource"


class PreconditionFailedError(ApiError):
    """412: ``If-Match`` did not match the current ``ETag``."""

    status = 412
    code = "precondition_failed"
    message = "The resource has changed: If-Match does not match its current ETag"


class PayloadTooLargeError(ApiError):
    """413: the body is larger than ``MAX_CONTENT_LENGTH``."""

    status = 413
    code = "payload_too_large"
    message = "Request body too large"


class UnsupportedMediaTypeError(ApiError):
    """415: the endpoint takes JSON and the body is not JSON."""

    status = 415
    code = "unsupported_media_type"
    message = "Request body must be JSON (Content-Type: application/json)"


class RateLimitedError(ApiError):
    """429: too many requests; give ``headers={"Retry-After": ...}``."""

    status = 429
    code = "rate_limited"
    message = "Rate limit exceeded"


class ServiceUnavailableError(ApiError):
    """503: a dependency (database, Redis) does not answer."""

    status = 503
    code = "unavailable"
    message = "Service unavailable"


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    details: Details | None = None,
    headers: t.Mapping[str, str] | None = None,
) -> Response:
    """Build the JSON error envelope response; the one place it is rendered."""
    payload: dict[str, t.Any] = {"success": False, "error": message, "code": code}
    payload["request_id"] = get_request_id()
    if details:
        payload["details"] = details
    return json_response(payload, status, headers)


def json_response(payload: t.Any, status: int, headers: t.Mapping[str, str] | None = None) -> Response:
    """Serialise ``payload`` with the app's JSON provider into a response."""
    response: Response = current_app.json.response(payload)  # type: ignore[assignment]
    response.status_code = status
    if headers:
        response.headers.update(headers)
    return response


def handle_api_error(error: ApiError) -> Response:
    """Render an :class:`ApiError`."""
    return error_response(
        error.status, error.code, error.message, details=error.details, headers=error.headers
    )


def _flatten_locations(messages: t.Any) -> dict[str, t.Any]:
    """webargs keys messages by location (``{"json": {...}, "query": {...}}``): merge them."""
    if not isinstance(messages, dict):
        return {"_schema": messages if isinstance(messages, list) else [str(messages)]}
    flat: dict[str, t.Any] = {}
    for location, fields in messages.items():
        if isinstance(fields, dict):
            flat.update(fields)
        else:
            flat[str(location)] = fields if isinstance(fields, list) else [str(fields)]
    return flat


def handle_http_exception(error: HTTPException) -> Response:
    """Render a werkzeug ``HTTPException`` (routing errors, ``abort()``, webargs errors)."""
    status = error.code or 500
    code, message = STATUS_CODES.get(status, ("error" if status < 500 else "internal_error", error.name))
    # Keep werkzeug's own headers (Allow on 405, WWW-Authenticate on 401), not its HTML type.
    headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
    details = None
    data = getattr(error, "data", None)  # set by webargs/flask-smorest abort()
    if isinstance(data, dict):
        headers.update(data.get("headers") or {})
        messages = data.get("errors", data.get("messages"))
        if messages is not None:
            details = _flatten_locations(messages)
            if status == 422 or isinstance(getattr(error, "exc", None), _MarshmallowError):
                # webargs reports validation failures as 422 by default; the envelope says 400.
                status, code, message = 400, "validation_error", "Validation failed"
            elif status == 400 and "json" in messages:
                message = "Malformed JSON body"
        if isinstance(data.get("message"), str):
            message = data["message"]
    elif status == 422:
        status, code = 400, "validation_error"
    if status == 500:
        message = "Internal server error"
    return error_response(status, code, message, details=details, headers=headers)


def handle_unexpected_error(error: Exception) -> Response:
    """Log an unexpected exception with its stack; answer a generic 500."""
    log.error("Unhandled %s", type(error).__name__, exc_info=error)
    code, message = STATUS_CODES[500]
    return error_response(500, code, message)


def _sqlalchemy_handlers() -> list[tuple[type[Exception], t.Callable[[t.Any], Response]]]:
    try:
        from sqlalchemy import exc as sa_exc
    except ImportError:  # the errors part works without SQLAlchemy
        return []

    def integrity(error: Exception) -> Response:
        # The database said no (unique or foreign key): a client-side conflict. The
        # statement and its parameters stay in the log, never in the body.
        log.info("Integrity error: %s", getattr(error, "orig", error))
        return error_response(409, "conflict", "Conflict with existing data")

    def data_error(error: Exception) -> Response:
        # A value the database cannot store or compare (out of range, wrong type) that
        # validation let through: the client's input, so a 400, and worth a look in the log.
        log.warning("Database rejected a value: %s", getattr(error, "orig", error))
        return error_response(400, "bad_request", "A value is out of range or of the wrong type")

    def unavailable(error: Exception) -> Response:
        log.error("Database unavailable: %s", type(error).__name__, exc_info=error)
        return error_response(
            503, "unavailable", "Database unavailable, try again shortly", headers={"Retry-After": "1"}
        )

    def stale(error: Exception) -> Response:
        # Optimistic locking (version_id_col): another request changed the row first.
        log.info("Stale write: %s", error)
        return error_response(
            409, "conflict", "The resource was changed by another request; reload and retry"
        )

    from sqlalchemy.orm.exc import StaleDataError

    return [
        (sa_exc.IntegrityError, integrity),
        (sa_exc.DataError, data_error),
        (sa_exc.OperationalError, unavailable),
        (StaleDataError, stale),
    ]


@dataclass
class ErrorHandlerState:
    """Per-app state of :class:`ErrorHandler`."""

    handlers: list[tuple[type[Exception], t.Callable[[t.Any], Response]]]


class ErrorHandler:
    """Turns every error raised while serving a request into the JSON error envelope.

    Handles :class:`ApiError`, werkzeug ``HTTPException`` (404 and 405 on unknown
    routes, 413, webargs' 422 which becomes 400 ``validation_error``), SQLAlchemy
    ``IntegrityError`` (409) and ``OperationalError`` (503), and anything else (500,
    generic message, stack logged with the request id). With flask-smorest, use
    :class:`flask_backend_patterns.api.Api`, which renders its errors here too.
    """

    def __init__(self, app: Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register the handlers on ``app``.

        :raises RuntimeError: already registered on this app.
        """
        handlers: list[tuple[type[Exception], t.Callable[[t.Any], Response]]] = [
            (ApiError, handle_api_error),
            (HTTPException, handle_http_exception),
            *_sqlalchemy_handlers(),
            (Exception, handle_unexpected_error),
        ]
        register_state(app, EXTENSION_KEY, ErrorHandlerState(handlers))
        for exc_type, handler in handlers:
            app.register_error_handler(exc_type, handler)


def get_state(app: Flask | None = None) -> ErrorHandlerState:
    """Return the :class:`ErrorHandler` state of ``app`` (or the current app)."""
    return lookup_state(EXTENSION_KEY, ErrorHandlerState, app)
