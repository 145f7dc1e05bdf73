"""Structured JSON logging with request ids.

Every log record becomes one JSON object on one line. :class:`RequestLogging`
accepts or makes a request id per request, echoes it in ``X-Request-ID``, puts it in
every log line and error body, and writes one access line per request.

Code that runs outside a request (a background job) binds the id of the request
that started it with :func:`bind_request_id`, so its lines carry the same id.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import os
import random
import re
import sys
import time
import traceback
import typing as t
from dataclasses import dataclass
from dataclasses import field

from flask import Flask
from flask import g
from flask import request
from flask import Response
from flask.logging import default_handler

from ._extension import config_bool
from ._extension import config_list
from ._extension import lookup_state
from ._extension import register_state

EXTENSION_KEY = "backend_patterns.logging"

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "backend_patterns_request_id", default=None
)
_log_context: contextvars.ContextVar[dict[str, t.Any] | None] = contextvars.ContextVar(
    "backend_patterns_log_context", default=None
)

#: attributes every ``LogRecord`` has; anything else on a record came from ``extra``.
_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime", "taskName"}
)
#: substrings of keys whose values are never written (case-insensitive).
DEFAULT_REDACT_KEYS = ("password", "passwd", "secret", "token", "authorization", "cookie", "api_key")
REDACTED = "[REDACTED]"
_BEARER_RE = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")
_MAY_HOLD_CREDENTIAL = re.compile(r"(?i)bearer|basic")
_JWT_RE = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")


def is_valid_request_id(value: str | None) -> bool:
    """True for 1-128 characters of ``[A-Za-z0-9._-]`` (the ids we accept from clients)."""
    return bool(value) and _REQUEST_ID_RE.match(value) is not None  # type: ignore[arg-type]


def new_request_id() -> str:
    """Make a fresh request id (32 hex characters).

    From a generator of this module's own, seeded from ``os.urandom`` at import and in
    every forked worker: an id names a request in the logs and grants nothing, and
    ``os.urandom`` would be a system call per request. No ``random.seed()`` elsewhere
    touches it.
    """
    return f"{_ids.getrandbits(128):032x}"


_ids = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(32)))


def get_request_id() -> str | None:
    """The request id of the current request, or the one bound by :func:`bind_request_id`.

    ``None`` outside both. Safe to call from any thread or job.
    """
    return _request_id.get()


@contextlib.contextmanager
def bind_request_id(request_id: str | None) -> t.Iterator[str]:
    """Make ``request_id`` the current id for the block (a new one if ``None``).

    Background jobs use this so their log lines carry the id of the request that
    queued them.
    """
    rid = request_id if request_id and is_valid_request_id(request_id) else new_request_id()
    token = _request_id.set(rid)
    context_token = _log_context.set({})  # fields set inside belong to the block alone
    try:
        yield rid
    finally:
        _log_context.reset(context_token)
        _request_id.reset(token)


def set_log_context(**fields: t.Any) -> None:
    """Add fields to every later log line of the current request (or bound block).

    The auth part calls ``set_log_context(user_id=...)`` once it knows the caller.
    Outside a request seen by :class:`RequestLogging` and outside
    :func:`bind_request_id` there is no scope to end, so the fields are dropped rather
    than left on every later line of the thread.
    """
    current = _log_context.get()
    if current is not None:
        current.update(fields)


def redact(value: t.Any, keys: t.Sequence[str] = DEFAULT_REDACT_KEYS) -> t.Any:
    """Return ``value`` with secrets masked: values under secret-looking keys, bearer
    credentials and JWTs inside strings."""
    kind = type(value)
    if kind is dict:
        keys = tuple(keys)
        decided = _secret_key_decisions(keys)
        out = {}
        for k, v in value.items():
            # Decisions are kept for plain str keys only: an enum or other key that
            # equals a str may print otherwise.
            secret = decided.get(k) if type(k) is str else None
            if secret is None:
                secret = _decide_secret_key(decided, k, keys)
            out[k] = REDACTED if secret else v if type(v) in _PLAIN_TYPES else redact(v, keys)
        return out
    if kind is str:
        if "eyJ" in value or _MAY_HOLD_CREDENTIAL.search(value):
            return _JWT_RE.sub(REDACTED, _BEARER_RE.sub(r"\1 " + REDACTED, value))
        return value
    if kind in _PLAIN_TYPES or value is None:
        return value
    if isinstance(value, dict):
        return redact(dict(value), keys)
    if isinstance(value, (list, tuple)):
        return [redact(v, keys) for v in value]
    if isinstance(value, str):
        return redact(str(value), keys)
    return value


#: values that never hold a secret: returned as they are, without a look.
_PLAIN_TYPES = frozenset({int, float, bool})


#: per tuple of secret key substrings, key name -> whether its value is masked. Log lines
#: reuse a handful of key names: each is decided once, not per line.
_DECISIONS: dict[tuple[str, ...], dict[t.Any, bool]] = {}
_MAX_DECISIONS = 4096


def _secret_key_decisions(secret_keys: tuple[str, ...]) -> dict[t.Any, bool]:
    decided = _DECISIONS.get(secret_keys)
    if decided is None:
        if len(_DECISIONS) >= 64:  # key tuples come from config: a handful per process
            _DECISIONS.clear()
        decided = _DECISIONS[secret_keys] = {}
    return decided


def _decide_secret_key(decided: dict[t.Any, bool], key: t.Any, secret_keys: tuple[str, ...]) -> bool:
    lowered = str(key).lower()
    secret = any(s in lowered for s in secret_keys)
    if type(key) is str:
        if len(decided) >= _MAX_DECISIONS:  # names made from data: keep the memory bounded
            decided.clear()
        decided[key] = secret
    return secret


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: timestamp, level, message, logger,
    request_id, pid, the request's log context, any ``extra`` fields and, for
    exceptions, ``exc_type``, ``exc_message`` and ``stack``. Secrets are redacted."""

    def __init__(self, redact_keys: t.Sequence[str] = DEFAULT_REDACT_KEYS) -> None:
        super().__init__()
        self.redact_keys = tuple(k.lower() for k in redact_keys)

    def format(self, record: logging.LogRecord) -> str:
        extras = {
            key: value
            for key, value in record.__dict__.items()
            if key not in _RECORD_ATTRS and not key.startswith("_")
        }
        return self._format_fields(
            record.created,
            record.levelname,
            record.getMessage(),
            record.name,
            record.process,
            extras,
            record.exc_info,
            record.stack_info,
        )

    def _format_fields(
        self,
        created: float,
        level: str,
        message: str,
        name: str,
        process: int | None,
        extras: t.Mapping[str, t.Any],
        exc_info: t.Any = None,
        stack_info: str | None = None,
    ) -> str:
        """The line of a record made of these fields (the access line's direct path)."""
        entry: dict[str, t.Any] = {
            "timestamp": dt.datetime.fromtimestamp(created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": level,
            "message": message,
            "logger": name,
            "request_id": _request_id.get(),
            # Which worker wrote it, when gunicorn runs several.
            "pid": process,
        }
        context = _log_context.get()
        if context:
            entry.update(context)
        entry.update(extras)
        if exc_info and exc_info[0] is not None:
            exc_type, exc, tb = exc_info
            entry["exc_type"] = exc_type.__name__
            entry["exc_message"] = str(exc)
            entry["stack"] = "".join(traceback.format_exception(exc_type, exc, tb))
        elif stack_info:
            entry["stack"] = stack_info
        return json.dumps(redact(entry, self.redact_keys), default=str, ensure_ascii=False)


_HANDLER_MARK = "_backend_patterns_json"


def configure_json_logging(
    level: int | str = logging.INFO,
    redact_keys: t.Sequence[str] = DEFAULT_REDACT_KEYS,
    stream: t.TextIO | None = None,
) -> logging.Handler:
    """Send every log record (the root logger's) to ``stream`` as JSON lines.

    Idempotent: a handler installed by an earlier call is replaced, not doubled.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(redact_keys))
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    root.setLevel(level)
    return handler


@dataclass
class RequestLoggingState:
    """Per-app state of :class:`RequestLogging`."""

    header: str
    access_log: bool
    access_logger: logging.Logger = field(repr=False)


class RequestLogging:
    """Request ids and one JSON access line per request.

    Config keys (defaults in brackets):

    - ``BACKEND_LOGGING_CONFIGURE`` [True]: send all log records to stderr as JSON
      lines (root logger); False leaves handlers to you (use :class:`JsonFormatter`).
    - ``BACKEND_LOGGING_LEVEL`` ["INFO"]: root level when configuring.
    - ``BACKEND_LOGGING_ACCESS_LOG`` [True]: write the access line.
    - ``BACKEND_LOGGING_REQUEST_ID_HEADER`` ["X-Request-ID"].
    - ``BACKEND_LOGGING_REDACT_KEYS`` [password, secret, token, authorization, ...].
    """

    def __init__(self, app: Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register the request hooks on ``app``.

        :raises RuntimeError: already registered on this app.
        :raises ValueError: a config value of the wrong type or an unknown level.
        """
        app.config.setdefault("BACKEND_LOGGING_CONFIGURE", True)
        app.config.setdefault("BACKEND_LOGGING_LEVEL", "INFO")
        app.config.setdefault("BACKEND_LOGGING_ACCESS_LOG", True)
        app.config.setdefault("BACKEND_LOGGING_REQUEST_ID_HEADER", "X-Request-ID")
        app.config.setdefault("BACKEND_LOGGING_REDACT_KEYS", list(DEFAULT_REDACT_KEYS))
        level = app.config["BACKEND_LOGGING_LEVEL"]
        if isinstance(level, str):
            if level.upper() not in logging.getLevelNamesMapping():
                raise ValueError(f"BACKEND_LOGGING_LEVEL: unknown level {level!r}")
            level = level.upper()
        redact_keys = config_list(app.config["BACKEND_LOGGING_REDACT_KEYS"], "BACKEND_LOGGING_REDACT_KEYS")
        state = RequestLoggingState(
            header=str(app.config["BACKEND_LOGGING_REQUEST_ID_HEADER"]),
            access_log=config_bool(app.config["BACKEND_LOGGING_ACCESS_LOG"], "BACKEND_LOGGING_ACCESS_LOG"),
            access_logger=logging.getLogger("flask_backend_patterns.access"),
        )
        register_state(app, EXTENSION_KEY, state)
        if config_bool(app.config["BACKEND_LOGGING_CONFIGURE"], "BACKEND_LOGGING_CONFIGURE"):
            configure_json_logging(level, redact_keys)
            app.logger.removeHandler(default_handler)
        # First hook of all, so that every later hook and error already has the id.
        app.before_request_funcs.setdefault(None, []).insert(0, _start_request)
        app.after_request(_finish_request)
        app.teardown_request(_teardown_request)


def _start_request() -> None:
    state = get_state()
    incoming = request.headers.get(state.header)
    rid = incoming if incoming and is_valid_request_id(incoming) else new_request_id()
    g._fbp_log = (time.perf_counter(), _request_id.set(rid), _log_context.set({"user_id": None}))


def _finish_request(response: Response) -> Response:
    state = get_state()
    rid = _request_id.get()
    if rid is not None:
        response.headers[state.header] = rid
    started = g.get("_fbp_log")
    if state.access_log and started is not None:
        status = response.status_code
        level = logging.ERROR if status >= 500 else logging.INFO
        logger = state.access_logger
        if logger.isEnabledFor(level):
            method, path = request.method, request.path
            extra = {
                "method": method,
                "path": path,
                "status": status,
                "duration_ms": round((time.perf_counter() - started[0]) * 1000, 3),
                "remote_addr": request.remote_addr,
            }
            args = (method, path, status)
            handler = _sole_json_handler(logger, level)
            if handler is None:
                logger.log(level, "%s %s %s", *args, extra=extra)
            else:
                _write_direct(handler, logger, level, "%s %s %s", args, extra)
    return response


def _sole_json_handler(logger: logging.Logger, level: int) -> logging.StreamHandler[t.Any] | None:
    """The handler of :func:`configure_json_logging`, if it alone takes a record of ``level``
    from ``logger`` and nothing on the way could see or change the record: no filter,
    no other handler, the standard record factory, logger classes and formatter.

    Then the access line skips building a ``LogRecord`` and the logging machinery (a
    good share of a small request's time) and is written as the handler would write it.
    """
    if logger.disabled or logging.getLogRecordFactory() is not logging.LogRecord or not _stdlib_flow():
        return None
    found: logging.StreamHandler[t.Any] | None = None
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters or type(current) not in _PLAIN_LOGGERS:
            return None
        for handler in current.handlers:
            if (
                found is not None
                or not getattr(handler, _HANDLER_MARK, False)
                or type(handler) is not logging.StreamHandler
                or type(handler.formatter) is not JsonFormatter
                or handler.filters
                or level < handler.level
            ):
                return None
            found = handler
        current = current.parent if current.propagate else None
    return found


_PLAIN_LOGGERS = (logging.Logger, logging.RootLogger)
#: the methods a record passes through on its way to the handler's stream.
_FLOW = (
    (logging.Logger, "log"),
    (logging.Logger, "_log"),
    (logging.Logger, "makeRecord"),
    (logging.Logger, "handle"),
    (logging.Logger, "callHandlers"),
    (logging.Logger, "filter"),
    (logging.Handler, "handle"),
    (logging.Handler, "filter"),
    (logging.Handler, "format"),
    (logging.StreamHandler, "emit"),
    (logging.StreamHandler, "flush"),
)


def _stdlib_flow() -> bool:
    """Whether those methods are still the standard library's: tools that hook logging
    (Sentry's integration patches ``Logger.callHandlers``, tracers ``Logger.makeRecord``)
    replace them on the classes themselves, and must see the access record."""
    return all(getattr(getattr(owner, name), "__module__", None) == "logging" for owner, name in _FLOW)


def _write_direct(
    handler: logging.StreamHandler[t.Any],
    logger: logging.Logger,
    level: int,
    msg: str,
    args: tuple[t.Any, ...],
    extra: dict[str, t.Any],
) -> None:
    """What ``logger.log(level, msg, *args, extra=extra)`` writes through ``handler``."""
    formatter = t.cast(JsonFormatter, handler.formatter)
    handler.acquire()
    try:
        line = formatter._format_fields(
            time.time(),
            logging.getLevelName(level),
            msg % args,
            logger.name,
            os.getpid() if logging.logProcesses else None,
            extra,
        )
        handler.stream.write(line + handler.terminator)
        handler.flush()
    except RecursionError:
        raise
    except Exception:  # noqa: BLE001  (as logging.Handler.emit: reported by handleError)
        handler.handleError(logger.makeRecord(logger.name, level, "", 0, msg, args, None, extra=extra))
    finally:
        handler.release()


def _teardown_request(_exc: BaseException | None) -> None:
    started = g.pop("_fbp_log", None)
    if started is not None:
        _log_context.reset(started[2])
        _request_id.reset(started[1])


def get_state(app: Flask | None = None) -> RequestLoggingState:
    """Return the :class:`RequestLogging` state of ``app`` (or the current app)."""
    return lookup_state(EXTENSION_KEY, RequestLoggingState, app)
