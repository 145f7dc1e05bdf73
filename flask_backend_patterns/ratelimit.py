"""Rate limits per client IP and per user, over Flask-Limiter.

:class:`RateLimiting` registers one Flask-Limiter ``Limiter`` per app. Every route gets
the default limit (``RATELIMIT_DEFAULT``) per client; :func:`rate_limit` overrides it
on a view, a ``MethodView`` class or method, or a blueprint, and :func:`rate_limit_exempt`
(or ``BACKEND_RATELIMIT_EXEMPT_PATHS``) takes routes out. Responses carry
``RateLimit-Limit``, ``RateLimit-Remaining`` and ``RateLimit-Reset`` (seconds until the
window resets), and a 429 also ``Retry-After``; with :class:`~flask_backend_patterns.errors.ErrorHandler`
the 429 body is the error envelope with ``code: rate_limited``.

Counters live in ``RATELIMIT_STORAGE_URI`` (memory by default, Redis to share them
between workers and hosts). When the storage fails, requests pass with a warning logged
at most once per interval, or use per-process memory counters if
``RATELIMIT_IN_MEMORY_FALLBACK_ENABLED`` is on.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import typing as t
import urllib.parse
from dataclasses import dataclass
from dataclasses import field

import flask
from flask import current_app
from flask import Flask
from flask import g
from flask import request
from flask import Response
from flask_limiter import Limit
from flask_limiter import Limiter
from flask_limiter import RateLimitExceeded
from flask_limiter import RequestLimit
from flask_limiter._limits import RuntimeLimit
from limits import parse_many
from limits import RateLimitItem
from limits.errors import ConfigurationError
from limits.errors import StorageError
from limits.storage import RedisStorage
from limits.strategies import FixedWindowRateLimiter
from limits.util import WindowStats
from werkzeug.http import http_date
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.utils import import_string
from werkzeug.utils import ImportStringError

from ._extension import config_bool
from ._extension import config_int
from ._extension import config_list
from ._extension import lookup_state
from ._extension import register_state
from ._extension import request_view
from ._redis import DirectConnection
from .errors import ApiError
from .errors import ServiceUnavailableError

log = logging.getLogger("flask_backend_patterns.ratelimit")

EXTENSION_KEY = "backend_patterns.ratelimit"

ObjT = t.TypeVar("ObjT")

#: Given the request, the id of the user it authenticates, or ``None``.
IdentityLoader = t.Callable[[flask.Request], str | int | None]
#: A limit string, or a callable returning one per request.
LimitValue = str | t.Callable[[], str]

DEFAULT_LIMIT = "100 per minute"
DEFAULT_EXEMPT_PATHS = ("/healthz", "/readyz", "/api/docs", "/api/openapi.json")
#: storage schemes whose client takes redis-py's socket timeouts.
_REDIS_SCHEMES = frozenset({"redis", "rediss", "redis+unix", "valkey", "valkeys", "valkey+unix"})
_RULE_ATTR = "_fbp_rate_limit_rule"
_USER_ID_ENVIRON_KEY = "backend_patterns.ratelimit.user_id"


@dataclass(frozen=True)
class _Rule:
    """What :func:`rate_limit` or :func:`rate_limit_exempt` attached to an object."""

    limit: LimitValue | None
    exempt: bool = False


def _validate_limit(value: str, what: str) -> str:
    try:
        parse_many(value)
    except ValueError:
        raise ValueError(
            f"{what}: {value!r} is not a rate limit; write e.g. '5 per minute' or '10/second;1000/day'"
        ) from None
    return value


def rate_limit(value: LimitValue) -> t.Callable[[ObjT], ObjT]:
    """Give a route its own limit instead of ``RATELIMIT_DEFAULT``.

    ``value`` is a limit string (``"5 per minute"``, ``"10/second;1000/day"``) or a
    callable returning one, called per request (e.g. to read the app's config).
    Decorate a view function (directly under the route decorator), a ``MethodView``
    class, one of its methods, or pass a blueprint: ``rate_limit("5/minute")(bp)``.
    The most specific rule wins: method, then class or view, then the innermost
    blueprint. The limit is counted per client and per route (per method when set on
    a method), and applies in every app the route is registered on.

    :raises ValueError: ``value`` is a string that is not a rate limit.
    """
    if isinstance(value, str):
        _validate_limit(value, "rate_limit")
    elif not callable(value):
        raise TypeError(f"rate_limit takes a limit string or a callable, got {value!r}")
    rule = _Rule(limit=value)

    def decorator(obj: ObjT) -> ObjT:
        setattr(obj, _RULE_ATTR, rule)
        return obj

    return decorator


def rate_limit_exempt(obj: ObjT) -> ObjT:
    """Take a route out of rate limiting: use as ``@rate_limit_exempt``.

    Works on what :func:`rate_limit` works on (view function, ``MethodView`` class or
    method, blueprint). Exempt routes send no ``RateLimit-*`` headers.
    """
    setattr(obj, _RULE_ATTR, _Rule(limit=None, exempt=True))
    return obj


def _find_rule() -> tuple[_Rule | None, bool]:
    """The rule that applies to the current request, and whether it is a method's.

    Looked up once per request: the limit, its scope and the exemption all ask.
    """
    environ = request.environ
    found: tuple[_Rule | None, bool] | None = environ.get(_RULE_ENVIRON_KEY)
    if found is None:
        found = environ[_RULE_ENVIRON_KEY] = _lookup_rule()
    return found


def _lookup_rule() -> tuple[_Rule | None, bool]:
    view, view_class, handler = request_view()
    if view is not None:
        if view_class is not None:
            rule = getattr(handler, _RULE_ATTR, None)
            if rule is not None:
                return rule, True
            rule = getattr(view_class, _RULE_ATTR, None)
            if rule is not None:
                return rule, False
        rule = getattr(view, _RULE_ATTR, None)
        if rule is not None:
            return rule, False
    for name in request.blueprints:  # innermost first
        rule = getattr(current_app.blueprints.get(name), _RULE_ATTR, None)
        if rule is not None:
            return rule, False
    return None, False


_RULE_ENVIRON_KEY = "flask_backend_patterns.ratelimit.rule"


def _route_limit() -> str:
    rule, _ = _find_rule()
    if rule is not None and rule.limit is not None:
        return rule.limit() if callable(rule.limit) else rule.limit
    return get_state().default_limit


def _route_scope(_endpoint: str) -> str:
    # A limit set on one method of a MethodView gets its own counter, so that it
    # never shares one with another method whose limit string happens to be equal.
    rule, on_method = _find_rule()
    return request.method.upper() if rule is not None and on_method else ""


def _is_exempt() -> bool:
    state = get_state()
    path = request.path
    if path in state.exempt_paths or path.startswith(state.exempt_prefixes):
        return True
    rule, _ = _find_rule()
    return rule is not None and rule.exempt


def _current_user_id(state: RateLimitingState) -> str | None:
    identity = g.get("_fbp_identity")
    if identity is not None:
        return str(identity.id)
    if state.identity is None:
        return None
    environ = request.environ
    if _USER_ID_ENVIRON_KEY not in environ:
        try:
            user_id = state.identity(request)
        except ApiError:
            # Bad credentials: the view's own auth answers them with a 401 or lets a
            # public route serve them; for counting, the client is anonymous.
            user_id = None
        environ[_USER_ID_ENVIRON_KEY] = None if user_id is None else str(user_id)
    return t.cast("str | None", environ[_USER_ID_ENVIRON_KEY])


def rate_limit_key() -> str:
    """The key the current request is counted under.

    ``user:<id>`` when ``BACKEND_RATELIMIT_PER_USER`` is on and the user is known (from
    ``g._fbp_identity`` or the identity loader), else ``ip:<request.remote_addr>``.
    ``X-Forwarded-For`` counts only through ``TRUSTED_PROXY_COUNT``.
    """
    state = get_state()
    if state.per_user:
        user_id = _current_user_id(state)
        if user_id is not None:
            return f"user:{user_id}"
    return f"ip:{request.remote_addr or 'unknown'}"


class StorageFailures:
    """Logs failures of the rate-limit storage: one warning per ``interval`` seconds at most.

    ``clock`` is a monotonic clock in seconds; tests replace it.
    """

    def __init__(self, interval: float, fail_open: bool, clock: t.Callable[[], float] = time.monotonic):
        self.interval = interval
        self.fail_open = fail_open
        self.clock = clock
        self.failing = False
        self._lock = threading.Lock()
        self._last_warning: float | None = None
        self._unlogged = 0

    def failed(self, error: StorageError) -> None:
        """Record a failure; log it unless a warning was logged within ``interval``."""
        with self._lock:
            self.failing = True
            now = self.clock()
            if self._last_warning is not None and now - self._last_warning < self.interval:
                self._unlogged += 1
                return
            unlogged, self._unlogged, self._last_warning = self._unlogged, 0, now
        cause = error.storage_error
        log.warning(
            "Rate limit storage unavailable (%s: %s); %s. %d more failures since the last warning.",
            type(cause).__name__,
            cause,
            "requests pass unlimited" if self.fail_open else "requests get 503",
            unlogged,
            extra={"storage_error": f"{type(cause).__name__}: {cause}", "unlogged_failures": unlogged},
        )

    def succeeded(self) -> None:
        """Record a working storage; log once when it comes back after failures."""
        if not self.failing:  # the common case, without the lock
            return
        with self._lock:
            if not self.failing:
                return
            self.failing = False
        log.info("Rate limit storage answers again; limits apply.")


_MEMO_ENVIRON_KEY = "flask_backend_patterns.ratelimit.memo"
#: scheme prefix of the storage URIs that _OneTripRedisStorage serves.
_ONE_TRIP = "fbp-one-trip+"


class _OneTripRedisStorage(RedisStorage):
    """limits' Redis storage, with one lean round trip a request instead of three.

    Flask-Limiter counts a hit (a Lua script), then reads the count and the time left
    for the headers (``GET``, ``TTL``). Here the script returns the count and the time
    left together, and the request's later reads of that counter are answered from
    them. The count goes over a :class:`~flask_backend_patterns._redis.DirectConnection`.
    Chosen for ``redis://`` and ``rediss://`` storage URIs.
    """

    STORAGE_SCHEME = [f"{_ONE_TRIP}redis", f"{_ONE_TRIP}rediss"]
    SCRIPT_INCR_EXPIRE_TTL = """
local current = redis.call("incrby", KEYS[1], tonumber(ARGV[2]))
if tonumber(current) == tonumber(ARGV[2]) then
    redis.call("expire", KEYS[1], ARGV[1])
end
return {current, redis.call("pttl", KEYS[1])}
"""

    def __init__(self, uri: str, **options: t.Any) -> None:
        self._direct: DirectConnection | None = None
        super().__init__(uri.removeprefix(_ONE_TRIP), **options)

    def initialize_storage(self, uri: str) -> None:
        super().initialize_storage(uri)
        self.lua_incr_expire_ttl = self.get_connection().register_script(self.SCRIPT_INCR_EXPIRE_TTL.encode())

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        prefixed = self.prefixed_key(key)
        current, ttl_ms = self._count(prefixed, expiry, amount)
        memo = self._memo()
        if memo is not None:
            memo[prefixed] = (int(current), time.time() + max(int(ttl_ms), 0) / 1000)
        return int(current)

    def _count(self, key: str, expiry: int, amount: int) -> t.Any:
        """The script's reply, over this thread's own connection."""
        import redis

        direct = self._direct
        if direct is None:
            direct = self._direct = DirectConnection(self.get_connection())
        script = self.lua_incr_expire_ttl
        try:
            return direct.execute("EVALSHA", script.sha, 1, key, expiry, amount)
        except redis.exceptions.NoScriptError:  # Redis restarted or flushed its scripts
            return direct.execute("EVAL", script.script, 1, key, expiry, amount)

    def get(self, key: str) -> int:
        found = self._remembered(key)
        return found[0] if found is not None else int(super().get(key))

    def get_expiry(self, key: str) -> float:
        found = self._remembered(key)
        return found[1] if found is not None else float(super().get_expiry(key))

    def clear(self, key: str) -> None:
        memo = self._memo()
        if memo is not None:
            memo.pop(self.prefixed_key(key), None)
        super().clear(key)

    def _memo(self) -> dict[str, tuple[int, float]] | None:
        # Per request (its environ, not g: an app context, and so g, may outlive a
        # request): a later request reads the counter afresh.
        if not flask.has_request_context():
            return None
        memos: dict[int, dict[str, tuple[int, float]]] = request.environ.setdefault(_MEMO_ENVIRON_KEY, {})
        return memos.setdefault(id(self), {})

    def _remembered(self, key: str) -> tuple[int, float] | None:
        memo = self._memo()
        return None if memo is None else memo.get(self.prefixed_key(key))


class _AppLimiter(Limiter):
    """Flask-Limiter's ``Limiter`` for one app, answering storage errors itself: the
    request passes (fail open) or gets a 503, and the failure is logged, spaced out.

    While the app's only limit is this part's default one (no ``limiter.limit``,
    ``shared_limit``, application or meta limits, exemptions, ``on_breach``, none of
    ``RATELIMIT_DEFAULTS_PER_METHOD``, ``_EXEMPT_WHEN``, ``_DEDUCT_WHEN``, ``_COST``), a request
    is counted by :meth:`_check_default_limit`, which does what Flask-Limiter's
    resolution would end in, without it; otherwise Flask-Limiter resolves the limits.
    """

    def __init__(self, key_func: t.Callable[[], str], *, failures: StorageFailures, **kwargs: t.Any):
        self.failures = failures
        self._parsed: dict[str, list[RateLimitItem]] = {}
        super().__init__(key_func, **kwargs)

    def _check_request_limit(self, callable_name: str | None = None, in_middleware: bool = True) -> None:
        try:
            if in_middleware and callable_name is None and self._default_limit_only():
                try:
                    self._check_default_limit()
                except StorageError:
                    if not self._in_memory_fallback_enabled:
                        raise
                    # As Flask-Limiter does: count in memory from now on, this request too.
                    self.logger.warning("Rate limit storage unreachable - falling back to in-memory storage")
                    self._storage_dead = True
                    super()._check_request_limit(callable_name, in_middleware)
            else:
                super()._check_request_limit(callable_name, in_middleware)
        except StorageError as error:
            # Nothing was counted: no headers now, no deduction after the view.
            context = self.context
            context.view_rate_limit = None
            context.view_rate_limits.clear()
            context.conditional_deductions.clear()
            self.failures.failed(error)
            if not self.failures.fail_open:
                raise ServiceUnavailableError(
                    "Rate limiting is unavailable, try again shortly", headers={"Retry-After": "1"}
                ) from error
        else:
            self.failures.succeeded()

    def _default_limit_only(self) -> bool:
        """True while Flask-Limiter holds nothing but this part's default limit.

        Reads Flask-Limiter's private attributes; one that a new release renamed reads as
        present, which sends every request through Flask-Limiter's own resolution.
        """
        manager = getattr(self, "limit_manager", None)
        if manager is None:
            return False
        missing = object()
        for owner, name in _FLASK_LIMITER_STATE:
            value = getattr(manager if owner == "manager" else self, name, missing)
            if value is missing or value:
                return False
        defaults: t.Sequence[t.Any] = getattr(manager, "_default_limits", ())
        if len(defaults) != 1:
            return False
        # RATELIMIT_DEFAULTS_PER_METHOD, _EXEMPT_WHEN, _DEDUCT_WHEN and _COST land here.
        ours = defaults[0]
        return not (ours.per_method or ours.exempt_when or ours.deduct_when) and ours.cost == 1

    def _check_default_limit(self) -> None:
        """Count the request against its route's limit, as Flask-Limiter would."""
        endpoint = self.identify_request()  # "" unless enabled and initialized
        if not endpoint or endpoint.rsplit(".", 1)[-1] == "static":
            return
        if any(exempt() for exempt in self._request_filters):
            return
        limit = _route_limit()
        if not limit:
            return
        items = self._parsed.get(limit)
        if items is None:
            if len(self._parsed) >= 256:  # strings from a callable: keep the memory bounded
                self._parsed.clear()
            # Flask-Limiter counts a part given twice once.
            items = self._parsed[limit] = sorted(dict.fromkeys(parse_many(limit)))
        method_scope = _route_scope(endpoint)
        args = [rate_limit_key(), f"{endpoint}:{method_scope}" if method_scope else endpoint]
        if self._key_prefix:
            args.insert(0, self._key_prefix)
        strategy = self.limiter
        # A fixed window's count and reset are what the one-trip storage's count returned:
        # the headers read them from there, not through limits' window lookup.
        counted = strategy.storage if type(strategy) is FixedWindowRateLimiter else None
        if not isinstance(counted, _OneTripRedisStorage):
            counted = None
        view_limits: list[RequestLimit] = []
        first_breached: RequestLimit | None = None
        last_breached: RequestLimit | None = None
        for item in items:
            passed = strategy.hit(item, *args)
            view_limits.append(RequestLimit(self, item, args, not passed, False))
            if counted is not None:
                _prefill_window(view_limits[-1], counted)
            if not passed:
                self.logger.info("ratelimit %s (%s) exceeded at endpoint: %s", item, args[-2], args[-1])
                last_breached = view_limits[-1]
                first_breached = first_breached or last_breached
                if self._fail_on_first_breach:
                    break
        context = self.context
        # As Flask-Limiter: the headers tell of the last limit breached (the longest
        # window, when every part is counted), the 429 of the first.
        context.view_rate_limit = last_breached or view_limits[0]
        context.view_rate_limits = view_limits
        if first_breached is not None:
            raise RateLimitExceeded(RuntimeLimit(first_breached.limit, rate_limit_key, _route_scope))


def _prefill_window(limit: RequestLimit, storage: _OneTripRedisStorage) -> None:
    """Give ``limit`` the window its count just returned, as ``FixedWindowRateLimiter``'s
    ``get_window_stats`` would read it back (``RequestLimit`` keeps its window once read;
    if a release renames that attribute, the window is read the usual way)."""
    found = storage._remembered(limit.key)
    if found is not None:
        count, reset_at = found
        limit._window = WindowStats(reset_at, max(0, limit.limit.amount - count))


#: Flask-Limiter's state that, when not empty, holds limits, exemptions or callbacks
#: other than this part's default limit.
_FLASK_LIMITER_STATE = (
    ("limiter", "_storage_dead"),
    ("limiter", "_meta_limits"),
    ("limiter", "_on_breach"),
    ("limiter", "_marked_for_limiting"),
    ("manager", "_application_limits"),
    ("manager", "_decorated_limits"),
    ("manager", "_blueprint_limits"),
    ("manager", "_route_exemptions"),
    ("manager", "_blueprint_exemptions"),
    ("manager", "_endpoint_hints"),
)


@dataclass
class RateLimitingState:
    """Per-app state of :class:`RateLimiting`.

    ``limiter`` is the app's Flask-Limiter ``Limiter``: use it for what this part does
    not wrap (``limiter.shared_limit(...)``, ``limiter.reset()``).
    """

    limiter: Limiter
    enabled: bool
    default_limit: str
    per_user: bool
    identity: IdentityLoader | None
    exempt_paths: tuple[str, ...]
    headers_enabled: bool
    header_limit: str
    header_remaining: str
    header_reset: str
    header_retry_after: str
    retry_after_http_date: bool
    trusted_proxy_count: int
    storage_failures: StorageFailures = field(repr=False)
    #: the paths below ``exempt_paths``: each with a trailing "/".
    exempt_prefixes: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.exempt_prefixes = tuple(path.rstrip("/") + "/" for path in self.exempt_paths)


def _identity_from(value: object, constructor: IdentityLoader | None) -> IdentityLoader | None:
    if value is None:
        return constructor
    if isinstance(value, str):
        try:
            value = import_string(value)
        except ImportStringError as exc:
            raise ValueError(f"BACKEND_RATELIMIT_IDENTITY: cannot import {value!r}: {exc}") from None
    if not callable(value):
        raise ValueError(f"BACKEND_RATELIMIT_IDENTITY must be a callable or an import path, got {value!r}")
    return t.cast(IdentityLoader, value)


def _default_limit_from(value: object) -> str:
    if isinstance(value, (list, tuple)):
        value = ";".join(str(part) for part in value)
    if not isinstance(value, str):
        raise ValueError(f"RATELIMIT_DEFAULT must be a limit string, got {value!r}")
    # An empty string means no default limit: only routes with rate_limit(...) count.
    return _validate_limit(value, "RATELIMIT_DEFAULT") if value.strip() else ""


def _one_trip(uri: str) -> str:
    """The storage URI Flask-Limiter gets: plain Redis ones go to _OneTripRedisStorage."""
    scheme = urllib.parse.urlparse(uri).scheme
    return _ONE_TRIP + uri if scheme in ("redis", "rediss") else uri


def _storage_options(app: Flask, uri: str) -> dict[str, str | int]:
    """The storage options to give Flask-Limiter; its config key is merged over them."""
    configured = app.config["RATELIMIT_STORAGE_OPTIONS"]
    if not isinstance(configured, t.Mapping):
        raise ValueError(f"RATELIMIT_STORAGE_OPTIONS must be a mapping, got {configured!r}")
    if not configured.get("wrap_exceptions", True):
        raise ValueError(
            "RATELIMIT_STORAGE_OPTIONS: wrap_exceptions must stay on; storage errors are told "
            "apart from other errors by it"
        )
    options: dict[str, str | int] = {"wrap_exceptions": True}
    if urllib.parse.urlsplit(uri).scheme in _REDIS_SCHEMES:
        # Without a timeout an unreachable host holds every request for the OS's
        # connect timeout (minutes) before failing open.
        options.update(socket_connect_timeout=1, socket_timeout=1)
    return options


class RateLimiting:
    """Rate limits per client over Flask-Limiter, with a JSON 429 and ``RateLimit-*`` headers.

    ``identity`` is a callable taking the request and returning the id of the user it
    authenticates, or ``None`` (no or bad credentials); ``BACKEND_RATELIMIT_IDENTITY``
    beats it. It is needed for per-user keys because limits are checked in
    ``before_request``, before an auth decorator on the view has run.

    Config keys (defaults in brackets; the ``RATELIMIT_*`` ones are Flask-Limiter's, and
    those not listed pass through to it):

    - ``RATELIMIT_ENABLED`` [True]: False registers nothing but ``TRUSTED_PROXY_COUNT``.
    - ``RATELIMIT_DEFAULT`` ["100 per minute"]: per client and per route; "" for none.
    - ``RATELIMIT_STORAGE_URI`` ["memory://"]: ``redis://host:6379/0`` to share counters.
    - ``RATELIMIT_STORAGE_OPTIONS`` [{}]: keyword arguments of the storage.
    - ``RATELIMIT_STRATEGY`` ["fixed-window"]: or "moving-window", "sliding-window-counter".
    - ``RATELIMIT_SWALLOW_ERRORS`` [True]: on storage errors let requests pass (else 503).
    - ``RATELIMIT_IN_MEMORY_FALLBACK_ENABLED`` [False]: count in process memory while
      the storage is down (``RATELIMIT_IN_MEMORY_FALLBACK`` sets other limits for then).
    - ``RATELIMIT_HEADERS_ENABLED`` [True]: send the ``RateLimit-*`` headers.
    - ``RATELIMIT_HEADER_LIMIT`` / ``_REMAINING`` / ``_RESET`` / ``_RETRY_AFTER``
      ["RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "Retry-After"].
    - ``RATELIMIT_HEADER_RETRY_AFTER_VALUE`` ["delta-seconds"]: or "http-date".
    - ``TRUSTED_PROXY_COUNT`` [0]: proxies in front of the app; N > 0 wraps
      ``app.wsgi_app`` in ``ProxyFix(x_for=N, x_proto=N)``.
    - ``BACKEND_RATELIMIT_PER_USER`` [True]: count known users by id, not by IP.
    - ``BACKEND_RATELIMIT_IDENTITY`` [None]: the identity loader, or its import path.
    - ``BACKEND_RATELIMIT_EXEMPT_PATHS`` ["/healthz", "/readyz", "/api/docs",
      "/api/openapi.json"]: each path and every path below it is exempt.
    - ``BACKEND_RATELIMIT_WARNING_INTERVAL`` [60]: seconds between storage warnings.
    """

    def __init__(self, app: Flask | None = None, *, identity: IdentityLoader | None = None) -> None:
        self._identity = identity
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Create the app's ``Limiter`` and register the hooks on ``app``.

        :raises RuntimeError: already registered on this app.
        :raises ValueError: a config value of the wrong type, a limit string that does
            not parse, an unknown storage scheme or strategy, ``TRUSTED_PROXY_COUNT`` > 0
            on an app already wrapped in ``ProxyFix``.
        """
        config = app.config
        config.setdefault("RATELIMIT_ENABLED", True)
        config.setdefault("RATELIMIT_DEFAULT", DEFAULT_LIMIT)
        # Set, so that Flask-Limiter does not warn about a storage left to chance.
        config.setdefault("RATELIMIT_STORAGE_URI", "memory://")
        config.setdefault("RATELIMIT_STORAGE_OPTIONS", {})
        config.setdefault("RATELIMIT_SWALLOW_ERRORS", True)
        config.setdefault("RATELIMIT_IN_MEMORY_FALLBACK_ENABLED", False)
        config.setdefault("RATELIMIT_HEADERS_ENABLED", True)
        config.setdefault("RATELIMIT_HEADER_LIMIT", "RateLimit-Limit")
        config.setdefault("RATELIMIT_HEADER_REMAINING", "RateLimit-Remaining")
        config.setdefault("RATELIMIT_HEADER_RESET", "RateLimit-Reset")
        config.setdefault("RATELIMIT_HEADER_RETRY_AFTER", "Retry-After")
        config.setdefault("RATELIMIT_HEADER_RETRY_AFTER_VALUE", "delta-seconds")
        config.setdefault("TRUSTED_PROXY_COUNT", 0)
        config.setdefault("BACKEND_RATELIMIT_PER_USER", True)
        config.setdefault("BACKEND_RATELIMIT_IDENTITY", None)
        config.setdefault("BACKEND_RATELIMIT_EXEMPT_PATHS", list(DEFAULT_EXEMPT_PATHS))
        config.setdefault("BACKEND_RATELIMIT_WARNING_INTERVAL", 60)

        # Flask-Limiter reads these two with bool(), which takes the string "false" as
        # true: store them as booleans.
        enabled = config["RATELIMIT_ENABLED"] = config_bool(config["RATELIMIT_ENABLED"], "RATELIMIT_ENABLED")
        fallback = config["RATELIMIT_IN_MEMORY_FALLBACK_ENABLED"] = config_bool(
            config["RATELIMIT_IN_MEMORY_FALLBACK_ENABLED"], "RATELIMIT_IN_MEMORY_FALLBACK_ENABLED"
        )
        retry_after_value = config["RATELIMIT_HEADER_RETRY_AFTER_VALUE"]
        if retry_after_value not in ("delta-seconds", "http-date"):
            raise ValueError(
                f"RATELIMIT_HEADER_RETRY_AFTER_VALUE must be 'delta-seconds' or 'http-date', "
                f"got {retry_after_value!r}"
            )
        exempt_paths = tuple(
            config_list(config["BACKEND_RATELIMIT_EXEMPT_PATHS"], "BACKEND_RATELIMIT_EXEMPT_PATHS")
        )
        for path in exempt_paths:
            if not path.startswith("/"):
                raise ValueError(f"BACKEND_RATELIMIT_EXEMPT_PATHS: {path!r} must start with '/'")
        proxy_count = config_int(config["TRUSTED_PROXY_COUNT"], "TRUSTED_PROXY_COUNT", minimum=0)
        if proxy_count and isinstance(app.wsgi_app, ProxyFix):
            raise ValueError(
                "TRUSTED_PROXY_COUNT is set but app.wsgi_app is already a ProxyFix: "
                "keep one of them (TRUSTED_PROXY_COUNT=0 keeps yours)"
            )
        uri = str(config["RATELIMIT_STORAGE_URI"])
        failures = StorageFailures(
            interval=config_int(
                config["BACKEND_RATELIMIT_WARNING_INTERVAL"], "BACKEND_RATELIMIT_WARNING_INTERVAL", minimum=0
            ),
            fail_open=config_bool(config["RATELIMIT_SWALLOW_ERRORS"], "RATELIMIT_SWALLOW_ERRORS"),
        )
        limiter = _AppLimiter(
            rate_limit_key,
            failures=failures,
            # One default limit whose value and scope are looked up per request, so that
            # rate_limit() marks work in every app without registering with each Limiter.
            default_limits=[
                Limit(
                    limit_provider=_route_limit,
                    key_function=rate_limit_key,
                    scope=_route_scope,
                    finalized=False,
                )
            ],
            # Our after_request hook writes the headers: Flask-Limiter's Reset is an epoch.
            headers_enabled=False,
            # Storage errors reach _AppLimiter; anything else is a bug and a 500.
            swallow_errors=False,
            storage_uri=_one_trip(uri),
            storage_options=_storage_options(app, uri),
            in_memory_fallback_enabled=fallback,
        )
        limiter.request_filter(_is_exempt)
        state = RateLimitingState(
            limiter=limiter,
            enabled=enabled,
            default_limit=_default_limit_from(config["RATELIMIT_DEFAULT"]),
            per_user=config_bool(config["BACKEND_RATELIMIT_PER_USER"], "BACKEND_RATELIMIT_PER_USER"),
            identity=_identity_from(config["BACKEND_RATELIMIT_IDENTITY"], self._identity),
            exempt_paths=exempt_paths,
            headers_enabled=config_bool(config["RATELIMIT_HEADERS_ENABLED"], "RATELIMIT_HEADERS_ENABLED"),
            header_limit=str(config["RATELIMIT_HEADER_LIMIT"]),
            header_remaining=str(config["RATELIMIT_HEADER_REMAINING"]),
            header_reset=str(config["RATELIMIT_HEADER_RESET"]),
            header_retry_after=str(config["RATELIMIT_HEADER_RETRY_AFTER"]),
            retry_after_http_date=retry_after_value == "http-date",
            trusted_proxy_count=proxy_count,
            storage_failures=failures,
        )
        register_state(app, EXTENSION_KEY, state)
        try:
            limiter.init_app(app)
        except ConfigurationError as exc:
            del app.extensions[EXTENSION_KEY]
            raise ValueError(f"RATELIMIT_STORAGE_URI / RATELIMIT_STRATEGY: {exc}") from None
        if enabled:
            app.after_request(_add_headers)
        if proxy_count:
            # x_host stays 0: many proxies pass a client's X-Forwarded-Host through
            # untouched, and trusting it would let a client choose the host of every
            # URL the app builds.
            app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxy_count, x_proto=proxy_count)  # type: ignore[method-assign]


def _add_headers(response: Response) -> Response:
    state = get_state()
    current = state.limiter.current_limit
    if current is None:
        return response
    try:
        reset_time, remaining = current.window
    except StorageError as error:
        # The storage failed between the check and now: the check had counted the
        # request, so it passes, without headers.
        state.storage_failures.failed(error)
        return response
    reset_in = max(0, math.ceil(reset_time - time.time()))
    if state.headers_enabled:
        response.headers[state.header_limit] = str(current.limit.amount)
        response.headers[state.header_remaining] = str(max(0, remaining))
        response.headers[state.header_reset] = str(reset_in)
    if current.breached:
        response.headers[state.header_retry_after] = (
            http_date(math.ceil(reset_time)) if state.retry_after_http_date else str(max(1, reset_in))
        )
    return response


def get_state(app: Flask | None = None) -> RateLimitingState:
    """Return the :class:`RateLimiting` state of ``app`` (or the current app)."""
    return lookup_state(EXTENSION_KEY, RateLimitingState, app)
