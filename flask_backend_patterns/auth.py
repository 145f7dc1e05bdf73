"""JWT authentication and role-based access control on PyJWT.

:class:`Auth` signs and verifies bearer tokens (HS* secrets or RS*/PS*/ES*/EdDSA key
pairs, several keys by ``kid`` for rotation), revokes them by ``jti`` in a store that
every worker shares (Redis or a SQL table), and guards views with
:func:`require_auth`, :func:`optional_auth`, :func:`require_permission` and
:func:`require_role`. :data:`current_user` is the caller; :func:`ensure_owner`
checks ownership.

Every failure is an :class:`~flask_backend_patterns.errors.UnauthorizedError` (401)
or :class:`~flask_backend_patterns.errors.ForbiddenError` (403), rendered by the
errors part. Tokens, secrets and keys are never logged and never echoed.
"""

from __future__ import annotations

import collections
import datetime as dt
import functools
import hmac
import json
import logging
import math
import os
import secrets
import tempfile
import threading
import time
import typing as t
import uuid
import weakref
from dataclasses import dataclass
from dataclasses import field

import jwt
import sqlalchemy as sa
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import ed448
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import current_app
from flask import Flask
from flask import g
from flask import has_request_context
from flask import request
from werkzeug.local import LocalProxy

from ._extension import config_bool
from ._extension import config_list
from ._extension import lookup_state
from ._extension import register_state
from .errors import ForbiddenError
from .errors import ServiceUnavailableError
from .errors import UnauthorizedError
from .logging import set_log_context
from .repository import UtcDateTime

if t.TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy

log = logging.getLogger("flask_backend_patterns.auth")

EXTENSION_KEY = "backend_patterns.auth"

#: the roles and permissions used when ``BACKEND_AUTH_ROLES`` is not set.
DEFAULT_ROLES: t.Mapping[str, tuple[str, ...]] = {
    "admin": ("read", "write", "delete", "admin"),
    "moderator": ("read", "write", "delete"),
    "user": ("read", "write"),
}
#: the key prefix of :class:`RedisRevocationStore` unless configured.
DEFAULT_REVOCATION_PREFIX = "fbp:auth:revoked:"
#: the file in ``app.instance_path`` that holds a generated HS secret.
INSTANCE_SECRET_FILE = "backend_patterns_jwt_secret"
#: claims this part sets itself; ``claims=`` may not override them.
RESERVED_CLAIMS = frozenset({"sub", "iat", "nbf", "exp", "jti", "type", "aud", "iss"})
#: claims every token must carry to be accepted.
REQUIRED_CLAIMS = ("exp", "iat", "sub", "jti", "type")
TOKEN_TYPES = ("access", "refresh")

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_EC_ALGORITHMS = {
    "secp256r1": ("ES256",),
    "secp384r1": ("ES384",),
    "secp521r1": ("ES512", "ES521"),
    "secp256k1": ("ES256K",),
}
# RFC 7518 3.2: an HMAC key at least as long as the hash output.
_HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
_RSA_MIN_BITS = 2048

PublicKey: t.TypeAlias = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)
PrivateKey: t.TypeAlias = (
    rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey
)
_PUBLIC_KEY_TYPES = (
    rsa.RSAPublicKey,
    ec.EllipticCurvePublicKey,
    ed25519.Ed25519PublicKey,
    ed448.Ed448PublicKey,
)
_PRIVATE_KEY_TYPES = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)
VerifyKey: t.TypeAlias = bytes | PublicKey
TokenType = t.Literal["access", "refresh"]

P = t.ParamSpec("P")
R = t.TypeVar("R")


def supported_algorithms() -> tuple[str, ...]:
    """The signing algorithms this part accepts: PyJWT's, never ``none``."""
    available = jwt.algorithms.get_default_algorithms()
    ours = (
        *HMAC_ALGORITHMS,
        *RSA_ALGORITHMS,
        *(a for algs in _EC_ALGORITHMS.values() for a in algs),
        "EdDSA",
    )
    return tuple(a for a in ours if a in available)


# -- identity -------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """The caller of the current request, read from a verified access token.

    ``permissions`` come from ``BACKEND_AUTH_ROLES[role]``; an unknown role has none.
    ``claims`` holds every claim of the token.
    """

    id: str
    email: str | None
    role: str | None
    permissions: frozenset[str]
    claims: t.Mapping[str, t.Any] = field(repr=False)


# -- revocation stores ----------------------------------------------------------------


@t.runtime_checkable
class RevocationStore(t.Protocol):
    """Where revoked token ids live; every worker and host must see the same store.

    ``expires_at`` is the token's ``exp`` plus ``JWT_DECODE_LEEWAY`` (Unix seconds):
    after it the token is rejected anyway, so the store may forget the ``jti``.
    """

    def revoke(self, jti: str, expires_at: int) -> None:
        """Remember ``jti`` as revoked until ``expires_at``."""

    def is_revoked(self, jti: str) -> bool:
        """True when ``jti`` was revoked.

        :raises ServiceUnavailableError: the store does not answer.
        """


def _unavailable(store: str, exc: Exception) -> ServiceUnavailableError:
    log.error("Revocation store (%s) unavailable: %s: %s", store, type(exc).__name__, exc)
    return ServiceUnavailableError(
        "Token revocation list unavailable, try again shortly", headers={"Retry-After": "1"}
    )


#: how many lookups a :class:`RedisRevocationStore` remembers (the oldest go first).
REVOCATION_CACHE_SIZE = 10_000
#: the channel Redis sends tracking invalidations to (RESP2 redirect mode).
_INVALIDATE_CHANNEL = "__redis__:invalidate"
#: the longest wait between two set-ups of a watch that keep failing (seconds).
_MAX_SETUP_DELAY = 300.0
#: read timeout of the watch connection when the client has none: a liveness PING
#: on a dead connection must fail, not hang every request.
_WATCH_TIMEOUT = 2.0


class RedisRevocationStore:
    """Revoked token ids in Redis: one key per ``jti`` that expires with the token.

    Every worker and host that uses the same Redis shares the revocations. When
    Redis does not answer, both methods raise :class:`ServiceUnavailableError`
    (503): a token whose revocation cannot be checked is not accepted.

    With ``cache`` on (the default), each process remembers the answers of its
    lookups (up to :data:`REVOCATION_CACHE_SIZE`) and asks Redis only for a ``jti``
    it has not seen. Redis keeps the memory true: a "watch" connection per process
    is subscribed to server-assisted invalidation (``CLIENT TRACKING ... BCAST
    PREFIX prefix``), and Redis pushes every key under ``prefix`` that is set,
    deleted or expires, and every flush. Each lookup first reads what was pushed,
    without waiting. Redis writes the invalidation of a revocation in the same pass
    as its reply, so the next request of another process normally sees it; a packet
    delayed on a watch's link, or a watch connection that died without a reset, can
    hide a revocation from that process for at most ``check_interval``: a lookup that
    read any invalidation, and otherwise one lookup every ``check_interval`` seconds,
    sends ``PING`` on the watch and reads up to the reply. The revoking process
    forgets the ``jti`` at once. Any error on the watch clears the memory; lookups then
    ask Redis every time, and set-ups that keep failing are retried less and less often
    (up to every 5 minutes, one warning each). A client that cannot track (an older
    Redis, fakeredis) works the same way, without the memory.
    """

    def __init__(
        self,
        client: t.Any,
        *,
        prefix: str = DEFAULT_REVOCATION_PREFIX,
        clock: t.Callable[[], float] = time.time,
        cache: bool = True,
        check_interval: float = 1.0,
        cache_size: int = REVOCATION_CACHE_SIZE,
    ) -> None:
        import redis

        if isinstance(check_interval, bool) or not (
            isinstance(check_interval, (int, float)) and math.isfinite(check_interval) and check_interval > 0
        ):
            raise ValueError(f"check_interval must be a number of seconds > 0, got {check_interval!r}")
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 1:
            raise ValueError(f"cache_size must be an integer >= 1, got {cache_size!r}")
        self.client = client
        self.prefix = prefix
        self.cache = bool(cache)
        self.check_interval = float(check_interval)
        self.cache_size = cache_size
        self._clock = clock
        self._errors: type[Exception] = redis.RedisError
        # Guards everything below; never held during a lookup on ``client``.
        self._lock = threading.Lock()
        #: jti -> revoked, for the lookups Redis will tell us about when they change.
        self._known: collections.OrderedDict[str, bool] = collections.OrderedDict()
        #: bumped by every invalidation applied and every reset of the memory: a lookup
        #: is remembered only if it did not move while the lookup ran.
        self._changes = 0
        self._watch: t.Any = None  # the watch connection, or None (no memory)
        self._watch_pid = 0
        self._watch_id: int | None = None
        self._encoding = "utf-8"  # of the keys the watch reads; the client's
        self._last_pong = 0.0  # monotonic time the last answered PING was sent
        self._next_setup = 0.0  # monotonic time before which no set-up is tried
        self._last_warning: float | None = None
        self._setup_failures = 0  # set-ups failed in a row
        _REDIS_STORES.add(self)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = DEFAULT_REVOCATION_PREFIX,
        timeout: float = 2.0,
        cache: bool = True,
        check_interval: float = 1.0,
        cache_size: int = REVOCATION_CACHE_SIZE,
    ) -> RedisRevocationStore:
        """A store on a new client for ``url`` (``redis://host:port/db``); connects lazily.

        :raises RuntimeError: the ``redis`` package is not installed.
        """
        try:
            import redis
        except ImportError:
            raise RuntimeError(
                "BACKEND_AUTH_REVOCATION_REDIS_URL needs the redis package: "
                "pip install 'flask-backend-patterns[redis]'"
            ) from None
        # Short timeouts: a request waits at most this long before the 503.
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        return cls(client, prefix=prefix, cache=cache, check_interval=check_interval, cache_size=cache_size)

    def key(self, jti: str) -> str:
        """The Redis key that marks ``jti`` as revoked."""
        return f"{self.prefix}{jti}"

    def revoke(self, jti: str, expires_at: int) -> None:
        """Mark ``jti`` revoked for the token's remaining life (no-op once expired)."""
        ttl = math.ceil(expires_at - self._clock())
        if ttl <= 0:
            return  # expired already: decoding rejects it without the store
        try:
            self.client.set(self.key(jti), b"1", ex=ttl)
        except self._errors as exc:
            raise _unavailable("redis", exc) from exc
        if self.cache:
            # The watch brings the invalidation too; this process must not wait for it.
            with self._lock:
                self._known.pop(jti, None)
                self._changes += 1

    def is_revoked(self, jti: str) -> bool:
        """True when ``jti`` was revoked and its token has not expired yet."""
        if not self.cache:
            return self._exists(jti)
        with self._lock:
            watching = self._sync()
            if watching:
                known = self._known.get(jti)
                if known is not None:
                    return known
            changes = self._changes
        revoked = self._exists(jti)
        if watching:
            with self._lock:
                # Remember the answer only if nothing was invalidated since just before
                # the lookup was sent: a revocation Redis handled after the lookup
                # would otherwise be hidden behind it. An invalidation still on its way
                # is read by the next lookup, before the memory.
                if self._sync() and self._changes == changes:
                    self._known[jti] = revoked
                    if len(self._known) > self.cache_size:
                        self._known.popitem(last=False)
        return revoked

    def close(self) -> None:
        """Close the watch connection and forget every lookup (the client stays open)."""
        with self._lock:
            self._drop_watch()

    def _exists(self, jti: str) -> bool:
        try:
            return bool(self.client.exists(self.key(jti)))
        except self._errors as exc:
            raise _unavailable("redis", exc) from exc

    # -- the watch (all called with the lock held) ------------------------------------

    def _sync(self) -> bool:
        """Bring the memory up to date with Redis; False when there is no watch."""
        if self._watch is not None and self._watch_pid != os.getpid():
            # The parent's, after a fork: each process sets up its own, at once.
            self._drop_watch()
            self._next_setup = 0.0
        now = time.monotonic()
        try:
            if self._watch is None:
                if now < self._next_setup:
                    return False
                # Set-ups that keep failing (a Redis or proxy that cannot track) are
                # tried less and less often: every check_interval, doubling up to 5 min.
                delay = min(self.check_interval * 2**self._setup_failures, _MAX_SETUP_DELAY)
                self._next_setup = now + max(delay, self.check_interval)
                self._setup_failures += 1
                self._open_watch(now)
                self._setup_failures = 0
            watch = self._watch
            received = False
            while watch.can_read(timeout=0):
                self._apply(watch.read_response())
                received = True
            # After reading anything, read on to a PING's reply too: more may still wait
            # in Redis's buffers when the socket's filled up (a process idle through
            # many revocations). The reply comes after all of it.
            if received or now - self._last_pong >= self.check_interval:
                watch.send_command("PING", check_health=False)
                while not self._apply(watch.read_response()):
                    pass
                self._last_pong = now
        except (self._errors, OSError) as exc:
            self._drop_watch()
            self._watch_failed(exc, now)
            return False
        return True

    def _open_watch(self, now: float) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        pool = getattr(self.client, "connection_pool", None)
        if pool is None:
            raise redis.RedisError(f"{type(self.client).__name__} has no connection pool")
        # A connection of the client's kind and address, outside the pool: the pool
        # never gets it back, so it must not count against max_connections. RESP2:
        # redis-py hands RESP3 pushes to its own handlers, which drop the keys.
        try:
            watch = pool.connection_class(**{**pool.connection_kwargs, "protocol": 2})
        except (TypeError, ValueError) as exc:
            raise redis.RedisError(f"cannot make a watch connection: {exc}") from exc
        # One attempt: a set-up that fails is tried again after check_interval.
        watch.retry = Retry(NoBackoff(), 0)
        if watch.socket_timeout is None:
            watch.socket_timeout = _WATCH_TIMEOUT
        try:
            watch.connect()
            watch.send_command("CLIENT", "ID", check_health=False)
            client_id = int(watch.read_response())
            prefix = ("PREFIX", self.prefix) if self.prefix else ()
            watch.send_command(
                "CLIENT", "TRACKING", "ON", "REDIRECT", client_id, "BCAST", *prefix, check_health=False
            )
            watch.read_response()
            watch.send_command("SUBSCRIBE", _INVALIDATE_CHANNEL, check_health=False)
            watch.read_response()
            # A silent reconnect would be a connection without tracking: refuse it.
            watch.register_connect_callback(self._watch_reconnected)
        except BaseException as exc:
            watch.disconnect()
            if isinstance(exc, (TypeError, ValueError)):  # a reply of an unexpected type
                raise redis.RedisError(f"unexpected reply while setting up the watch: {exc}") from exc
            raise
        self._forget()
        self._watch, self._watch_pid, self._watch_id = watch, os.getpid(), client_id
        self._encoding = getattr(getattr(watch, "encoder", None), "encoding", "utf-8")
        self._last_pong = now
        log.info("Revocation memory on: Redis client %s watches %s*", client_id, self.prefix)

    def _watch_reconnected(self, connection: t.Any) -> None:
        import redis

        connection.disconnect()
        raise redis.RedisError("the revocation watch lost its connection")

    def _apply(self, reply: t.Any) -> bool:
        """Apply one message read on the watch; True when it is the reply to PING."""
        kind = reply[0] if isinstance(reply, list) and reply else None
        if kind in (b"pong", "pong"):
            return True
        if kind in (b"message", "message") and len(reply) == 3:
            self._changes += 1
            keys = reply[2]
            if keys is None:  # FLUSHDB / FLUSHALL
                self._known.clear()
                return False
            for key in keys:
                name = key.decode(self._encoding, "replace") if isinstance(key, bytes) else str(key)
                if name.startswith(self.prefix):
                    self._known.pop(name[len(self.prefix) :], None)
            return False
        if kind in (b"subscribe", "subscribe"):
            return False
        import redis

        raise redis.RedisError(f"unexpected reply on the revocation watch: {type(reply).__name__}")

    def _forget(self) -> None:
        self._known.clear()
        self._changes += 1

    def _drop_watch(self) -> None:
        watch, self._watch, self._watch_id = self._watch, None, None
        self._forget()
        if watch is not None:
            # After a fork this closes the child's copy only: redis-py shuts the
            # socket down only in the process that opened it.
            watch.disconnect()

    def _watch_failed(self, exc: Exception, now: float) -> None:
        # At most one per check_interval; set-ups that keep failing are spaced out
        # further, and so are their warnings.
        if self._last_warning is not None and now - self._last_warning < self.check_interval:
            return
        self._last_warning = now
        log.warning(
            "Revocation memory off (%s: %s): every lookup asks Redis until the watch is set up again",
            type(exc).__name__,
            exc,
        )


#: every RedisRevocationStore, to give each a new lock in a forked child.
_REDIS_STORES: weakref.WeakSet[RedisRevocationStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A thread of the parent may have held a store's lock when it forked; that thread
    # does not exist here. The watch itself is replaced at the next lookup (pid check).
    for store in list(_REDIS_STORES):
        store._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


class SQLAlchemyRevocationStore:
    """Revoked token ids in a ``revoked_tokens`` table (``jti`` primary key, ``expires_at``).

    The table is added to ``db.metadata`` when the store is made, so
    ``db.create_all()`` and Alembic autogenerate see it. Each revocation is written
    and committed on a connection of its own, whatever the request's session later
    does, and rows of expired tokens are deleted in the same transaction. A database
    that does not answer raises :class:`ServiceUnavailableError` (503).
    """

    def __init__(
        self,
        db: SQLAlchemy,
        *,
        table_name: str = "revoked_tokens",
        clock: t.Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self._clock = clock
        existing = db.metadata.tables.get(table_name)
        if existing is None:
            self.table = sa.Table(
                table_name,
                db.metadata,
                sa.Column("jti", sa.String(64), primary_key=True),
                sa.Column("expires_at", UtcDateTime(), nullable=False, index=True),
            )
        elif {"jti", "expires_at"} <= set(existing.c.keys()):
            self.table = existing  # a second store on the same db shares the table
        else:
            raise ValueError(f"Table {table_name!r} already exists in db.metadata without jti/expires_at")

    def revoke(self, jti: str, expires_at: int) -> None:
        """Insert ``jti`` (committed at once) and delete the rows of expired tokens."""
        now = self._clock()
        if expires_at <= now:
            return  # expired already: decoding rejects it without the store
        table = self.table
        try:
            with self.db.engine.begin() as conn:
                conn.execute(table.delete().where(table.c.expires_at <= _utc(now)))
                conn.execute(table.insert().values(jti=jti, expires_at=_utc(expires_at)))
        except sa.exc.IntegrityError:
            # Revoked already (a second logout, another worker): the first row stands.
            log.debug("Token %s was revoked already", jti)
        except sa.exc.OperationalError as exc:
            raise _unavailable("database", exc) from exc

    def is_revoked(self, jti: str) -> bool:
        """True when a row for ``jti`` exists."""
        query = sa.select(self.table.c.jti).where(self.table.c.jti == jti)
        try:
            with self.db.engine.connect() as conn:
                return conn.execute(query).first() is not None
        except sa.exc.OperationalError as exc:
            raise _unavailable("database", exc) from exc


def _utc(timestamp: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC)


# -- state and configuration ----------------------------------------------------------


@dataclass(frozen=True)
class VerificationKey:
    """A key tokens are verified with, and the algorithms it may verify.

    The algorithms follow from the key's type (a secret: HS*; an RSA key: RS*/PS*;
    ...), intersected with ``JWT_DECODE_ALGORITHMS``, so an HS token can never be
    checked against an RSA public key used as a secret.
    """

    key: VerifyKey = field(repr=False)
    algorithms: tuple[str, ...]


@dataclass
class AuthState:
    """Per-app state of :class:`Auth`, built from the config in ``init_app``."""

    algorithm: str
    signing_key: bytes | PrivateKey | None = field(repr=False)
    key_id: str | None
    #: kid -> key; used (and a kid required) when ``BACKEND_AUTH_KEY_ID`` or
    #: ``BACKEND_AUTH_VERIFY_KEYS`` is set.
    verify_keys: dict[str, VerificationKey]
    #: the one key of an app that does not use key ids.
    default_key: VerificationKey | None
    access_expires: int
    refresh_expires: int
    encode_audience: str | list[str] | None
    decode_audience: str | list[str] | None
    encode_issuer: str | None
    decode_issuer: str | list[str] | None
    leeway: float
    roles: dict[str, frozenset[str]]
    revocation_store: RevocationStore
    user_loader: t.Callable[[Identity], t.Any] | None = None
    #: tokens whose signature and static claims were verified: a client sends the same
    #: token with every request, and PyJWT's decode is most of the cost of a check.
    verified: _VerifiedTokens = field(default_factory=lambda: _VerifiedTokens(1024), repr=False)


class _VerifiedTokens:
    """A bounded, thread-safe LRU of token -> claims whose signature, ``aud`` and ``iss``
    passed. Time-bound claims (``exp``, ``nbf``, ``iat``) and revocation are checked on
    every use. The claims are kept as JSON text: each use gets its own copy to change."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, token: str) -> dict[str, t.Any] | None:
        with self._lock:
            text = self._items.get(token)
            if text is None:
                return None
            self._items.move_to_end(token)
        return t.cast(dict[str, t.Any], json.loads(text))

    def put(self, token: str, claims: t.Mapping[str, t.Any]) -> None:
        text = json.dumps(claims)
        with self._lock:
            self._items[token] = text
            self._items.move_to_end(token)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


class Auth:
    """JWT bearer authentication, revocation and role-based permissions.

    ``revocation_store`` is used when ``BACKEND_AUTH_REVOCATION_REDIS_URL`` is not
    set (one of the two is required). ``user_loader(identity)``, if given, makes
    :data:`current_user` whatever it returns (``None``: the user is gone, 401).

    Config keys (defaults in brackets; full list with types in ``docs/auth.md``):

    - ``JWT_SECRET_KEY`` [None: a generated secret in the instance folder].
    - ``JWT_ALGORITHM`` ["HS256"]; ``JWT_DECODE_ALGORITHMS`` [[JWT_ALGORITHM]].
    - ``JWT_PRIVATE_KEY`` / ``JWT_PUBLIC_KEY`` [None]: PEM keys for RS*/PS*/ES*/EdDSA.
    - ``JWT_ACCESS_TOKEN_EXPIRES`` [900 s]; ``JWT_REFRESH_TOKEN_EXPIRES`` [30 days].
    - ``JWT_ENCODE_AUDIENCE`` / ``JWT_DECODE_AUDIENCE`` [None / the encode one].
    - ``JWT_ENCODE_ISSUER`` / ``JWT_DECODE_ISSUER`` [None / the encode one].
    - ``JWT_DECODE_LEEWAY`` [0 s].
    - ``BACKEND_AUTH_KEY_ID`` [None]: ``kid`` of new tokens.
    - ``BACKEND_AUTH_VERIFY_KEYS`` [{}]: kid -> secret or PEM public key also accepted.
    - ``BACKEND_AUTH_ROLES`` [admin, moderator, user]: role -> permissions.
    - ``BACKEND_AUTH_REVOCATION_REDIS_URL`` [None]; ``BACKEND_AUTH_REVOCATION_KEY_PREFIX``
      ["fbp:auth:revoked:"].
    - ``BACKEND_AUTH_REVOCATION_CACHE`` [True]: remember lookups in each process, kept
      true by Redis invalidation; ``BACKEND_AUTH_REVOCATION_CACHE_CHECK_INTERVAL`` [1 s]:
      how often the invalidation connection is checked. Both apply to the store made
      from ``BACKEND_AUTH_REVOCATION_REDIS_URL``.
    - ``BACKEND_AUTH_INSTANCE_SECRET`` [True]: generate a secret when none is set.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        revocation_store: RevocationStore | None = None,
        user_loader: t.Callable[[Identity], t.Any] | None = None,
    ) -> None:
        self.revocation_store = revocation_store
        self.user_loader = user_loader
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Validate the config, load the keys and register on ``app``.

        :raises ValueError: a config value is wrong (unknown algorithm, short secret
            outside debug/testing, a key that does not fit its algorithm, ...).
        :raises RuntimeError: already registered, or no revocation store configured.
        """
        config = app.config
        config.setdefault("JWT_SECRET_KEY", None)
        config.setdefault("JWT_ALGORITHM", "HS256")
        config.setdefault("JWT_DECODE_ALGORITHMS", None)
        config.setdefault("JWT_PRIVATE_KEY", None)
        config.setdefault("JWT_PUBLIC_KEY", None)
        config.setdefault("JWT_ACCESS_TOKEN_EXPIRES", 900)
        config.setdefault("JWT_REFRESH_TOKEN_EXPIRES", dt.timedelta(days=30))
        config.setdefault("JWT_ENCODE_AUDIENCE", None)
        config.setdefault("JWT_DECODE_AUDIENCE", None)
        config.setdefault("JWT_ENCODE_ISSUER", None)
        config.setdefault("JWT_DECODE_ISSUER", None)
        config.setdefault("JWT_DECODE_LEEWAY", 0)
        config.setdefault("BACKEND_AUTH_KEY_ID", None)
        config.setdefault("BACKEND_AUTH_VERIFY_KEYS", {})
        config.setdefault("BACKEND_AUTH_ROLES", {role: list(perms) for role, perms in DEFAULT_ROLES.items()})
        config.setdefault("BACKEND_AUTH_REVOCATION_REDIS_URL", None)
        config.setdefault("BACKEND_AUTH_REVOCATION_KEY_PREFIX", DEFAULT_REVOCATION_PREFIX)
        config.setdefault("BACKEND_AUTH_REVOCATION_CACHE", True)
        config.setdefault("BACKEND_AUTH_REVOCATION_CACHE_CHECK_INTERVAL", 1.0)
        config.setdefault("BACKEND_AUTH_INSTANCE_SECRET", True)
        state = _build_state(app, self.revocation_store, self.user_loader)
        register_state(app, EXTENSION_KEY, state)
        app.before_request(_identify_request)


def get_state(app: Flask | None = None) -> AuthState:
    """Return the :class:`Auth` state of ``app`` (or the current app)."""
    return lookup_state(EXTENSION_KEY, AuthState, app)


def _build_state(
    app: Flask,
    revocation_store: RevocationStore | None,
    user_loader: t.Callable[[Identity], t.Any] | None,
) -> AuthState:
    config = app.config
    # Debug and testing apps may use short keys; a served app may not.
    strict = not (app.debug or app.testing)
    known = supported_algorithms()
    algorithm = str(config["JWT_ALGORITHM"])
    if algorithm not in known:
        raise ValueError(f"JWT_ALGORITHM {algorithm!r} is not supported; use one of {', '.join(known)}")
    raw_decode = config["JWT_DECODE_ALGORITHMS"]
    decode_algorithms = (
        [algorithm] if raw_decode is None else config_list(raw_decode, "JWT_DECODE_ALGORITHMS")
    )
    unknown = [a for a in decode_algorithms if a not in known]
    if unknown:
        raise ValueError(
            f"JWT_DECODE_ALGORITHMS: {', '.join(map(repr, unknown))} not supported "
            f"('none' never is); use some of {', '.join(known)}"
        )
    if algorithm not in decode_algorithms:
        raise ValueError(
            f"JWT_DECODE_ALGORITHMS must include JWT_ALGORITHM {algorithm!r}, "
            "or the app rejects the tokens it signs"
        )

    signing_key: bytes | PrivateKey | None
    current_key: VerifyKey | None
    if algorithm in HMAC_ALGORITHMS:
        secret = _optional(config["JWT_SECRET_KEY"])
        if secret is None:
            signing_key = _instance_secret(app)
        else:
            signing_key = _secret_bytes(secret, "JWT_SECRET_KEY")
        _check_secret_length(signing_key, (algorithm,), "JWT_SECRET_KEY", strict)
        current_key = signing_key
    else:
        signing_key, current_key = _key_pair(config, algorithm, strict)

    verify_keys: dict[str, VerificationKey] = {}
    for kid, raw in _config_mapping(config["BACKEND_AUTH_VERIFY_KEYS"], "BACKEND_AUTH_VERIFY_KEYS").items():
        name = f"BACKEND_AUTH_VERIFY_KEYS[{kid!r}]"
        verify_keys[str(kid)] = _verification_key(
            _parse_verify_key(raw, name), decode_algorithms, name, strict
        )
    key_id = _optional(config["BACKEND_AUTH_KEY_ID"])
    if key_id is not None:
        key_id = str(key_id)
    if key_id is not None and current_key is not None:
        current = _verification_key(current_key, decode_algorithms, "the signing key", strict)
        listed = verify_keys.get(key_id)
        if listed is not None and not _same_key(listed.key, current.key):
            raise ValueError(
                f"BACKEND_AUTH_VERIFY_KEYS[{key_id!r}] is not the key that signs new tokens "
                f"(BACKEND_AUTH_KEY_ID={key_id!r}); drop it from BACKEND_AUTH_VERIFY_KEYS"
            )
        verify_keys.setdefault(key_id, current)
    if verify_keys and key_id is None and signing_key is not None:
        raise ValueError(
            "BACKEND_AUTH_VERIFY_KEYS needs BACKEND_AUTH_KEY_ID, the kid put in new tokens; "
            "without it the app rejects the tokens it signs"
        )
    default_key = None
    if not verify_keys:
        if current_key is None:
            raise ValueError(
                f"JWT_ALGORITHM {algorithm} needs JWT_PRIVATE_KEY (to sign tokens), JWT_PUBLIC_KEY "
                "(to verify them) or BACKEND_AUTH_VERIFY_KEYS"
            )
        default_key = _verification_key(current_key, decode_algorithms, "the signing key", strict)

    encode_audience = _config_audience(config["JWT_ENCODE_AUDIENCE"], "JWT_ENCODE_AUDIENCE")
    decode_audience = _config_audience(config["JWT_DECODE_AUDIENCE"], "JWT_DECODE_AUDIENCE")
    encode_issuer = _optional(config["JWT_ENCODE_ISSUER"])
    if encode_issuer is not None and not isinstance(encode_issuer, str):
        raise ValueError(f"JWT_ENCODE_ISSUER must be a string, got {type(encode_issuer).__name__}")
    decode_issuer = _config_audience(config["JWT_DECODE_ISSUER"], "JWT_DECODE_ISSUER")
    return AuthState(
        algorithm=algorithm,
        signing_key=signing_key,
        key_id=key_id,
        verify_keys=verify_keys,
        default_key=default_key,
        access_expires=int(
            _config_seconds(config["JWT_ACCESS_TOKEN_EXPIRES"], "JWT_ACCESS_TOKEN_EXPIRES", 1)
        ),
        refresh_expires=int(
            _config_seconds(config["JWT_REFRESH_TOKEN_EXPIRES"], "JWT_REFRESH_TOKEN_EXPIRES", 1)
        ),
        encode_audience=encode_audience,
        # Unset decode values follow the encode ones, so the app accepts its own tokens.
        decode_audience=decode_audience if decode_audience is not None else encode_audience,
        encode_issuer=encode_issuer,
        decode_issuer=decode_issuer if decode_issuer is not None else encode_issuer,
        leeway=_config_seconds(config["JWT_DECODE_LEEWAY"], "JWT_DECODE_LEEWAY", 0),
        roles=_config_roles(config["BACKEND_AUTH_ROLES"]),
        revocation_store=_revocation_store(config, revocation_store),
        user_loader=user_loader,
    )


def _revocation_store(config: t.Mapping[str, t.Any], given: RevocationStore | None) -> RevocationStore:
    # Checked whichever store is used, so a wrong value fails at init_app.
    cache = config_bool(config["BACKEND_AUTH_REVOCATION_CACHE"], "BACKEND_AUTH_REVOCATION_CACHE")
    name = "BACKEND_AUTH_REVOCATION_CACHE_CHECK_INTERVAL"
    check_interval = _config_seconds(config[name], name, 0, exclusive=True)
    url = _optional(config["BACKEND_AUTH_REVOCATION_REDIS_URL"])
    if url is not None:
        return RedisRevocationStore.from_url(
            str(url),
            prefix=str(config["BACKEND_AUTH_REVOCATION_KEY_PREFIX"]),
            cache=cache,
            check_interval=check_interval,
        )
    if given is None:
        raise RuntimeError(
            "Auth needs a revocation store that every worker shares, so that a logout holds "
            "everywhere: set BACKEND_AUTH_REVOCATION_REDIS_URL (Redis), or pass "
            "Auth(revocation_store=SQLAlchemyRevocationStore(db)) or your own RevocationStore"
        )
    if not isinstance(given, RevocationStore):
        raise TypeError("revocation_store must have revoke(jti, expires_at) and is_revoked(jti)")
    return given


def _optional(value: t.Any) -> t.Any:
    """``None`` for unset values: ``None`` and the empty string an unset env var gives."""
    return None if value is None or value == "" else value


def _secret_bytes(value: t.Any, name: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise ValueError(f"{name} must be a string, got {type(value).__name__}")


def _check_secret_length(secret: bytes, algorithms: t.Iterable[str], name: str, strict: bool) -> None:
    need = max(_HMAC_MIN_BYTES[a] for a in algorithms if a in _HMAC_MIN_BYTES)
    if len(secret) >= need:
        return
    message = f"{name} is {len(secret)} bytes; {', '.join(algorithms)} needs at least {need} random bytes"
    if strict:
        raise ValueError(f"{message} (a shorter one is accepted only when app.debug or app.testing is on)")
    log.warning("%s; accepted because the app is in debug or testing mode", message)


def _check_rsa_size(key: VerifyKey, name: str, strict: bool) -> None:
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size >= _RSA_MIN_BITS:
        return
    message = f"{name} is a {key.key_size}-bit RSA key; at least {_RSA_MIN_BITS} bits are needed"
    if strict:
        raise ValueError(f"{message} (a smaller one is accepted only when app.debug or app.testing is on)")
    log.warning("%s; accepted because the app is in debug or testing mode", message)


def _instance_secret(app: Flask) -> bytes:
    if not config_bool(app.config["BACKEND_AUTH_INSTANCE_SECRET"], "BACKEND_AUTH_INSTANCE_SECRET"):
        raise ValueError(
            "JWT_SECRET_KEY is not set: set it to at least 32 random bytes (the same on every "
            "host), or set BACKEND_AUTH_INSTANCE_SECRET=True to generate one in the instance folder"
        )
    path = os.path.join(app.instance_path, INSTANCE_SECRET_FILE)
    secret = _load_or_create_secret(path)
    log.warning(
        "JWT_SECRET_KEY is not set: tokens are signed with the generated secret in %s. Workers on "
        "this host share it, other hosts do not; set JWT_SECRET_KEY in production.",
        path,
    )
    return secret


def _load_or_create_secret(path: str) -> bytes:
    """The secret in ``path``; made (64 random characters, mode 0600) when missing.

    Workers starting at once each write a temporary file and hard-link it to
    ``path``: the link is atomic and fails when ``path`` exists, so the first
    writer wins and every worker reads the same secret.
    """
    secret = _read_secret(path)
    if secret is not None:
        return secret
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, temp_path = tempfile.mkstemp(prefix=".jwt-secret-", dir=directory)  # created 0600
    try:
        with os.fdopen(fd, "w", encoding="ascii") as file:
            file.write(secrets.token_urlsafe(48))
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temp_path, path)
        except FileExistsError:
            log.debug("Another process created %s first; using its secret", path)
    finally:
        os.unlink(temp_path)
    secret = _read_secret(path)
    if secret is None:
        raise RuntimeError(f"{path} disappeared while the JWT secret was being created")
    return secret


def _read_secret(path: str) -> bytes | None:
    try:
        with open(path, "rb") as file:
            secret = file.read().strip()
    except FileNotFoundError:
        return None
    if not secret:
        raise RuntimeError(f"{path} is empty: delete it to generate a new secret, or set JWT_SECRET_KEY")
    return secret


def _pem_bytes(value: t.Any, name: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        text: str = value
        # A PEM passed through one environment variable often has literal "\n"s.
        if "\n" not in text and "\\n" in text:
            text = text.replace("\\n", "\n")
        return text.encode("ascii", "replace")
    raise ValueError(f"{name} must be a PEM string, got {type(value).__name__}")


def _load_private_key(value: t.Any, name: str) -> PrivateKey:
    if isinstance(value, _PRIVATE_KEY_TYPES):
        return value
    try:
        key = serialization.load_pem_private_key(_pem_bytes(value, name), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError(f"{name} is not an unencrypted PEM private key") from None
    if not isinstance(key, _PRIVATE_KEY_TYPES):
        raise ValueError(f"{name}: {type(key).__name__} keys are not supported")
    return key


def _load_public_key(value: t.Any, name: str) -> PublicKey:
    if isinstance(value, _PUBLIC_KEY_TYPES):
        return value
    data = _pem_bytes(value, name)
    if b"PRIVATE KEY" in data:
        raise ValueError(f"{name} holds a private key; give the public key (or certificate) only")
    try:
        if b"BEGIN CERTIFICATE" in data:
            key: object = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError(f"{name} is not a PEM public key or certificate") from None
    if not isinstance(key, _PUBLIC_KEY_TYPES):
        raise ValueError(f"{name}: {type(key).__name__} keys are not supported")
    return key


def _parse_verify_key(value: t.Any, name: str) -> VerifyKey:
    if isinstance(value, _PUBLIC_KEY_TYPES):
        return value
    if isinstance(value, (str, bytes)) and (b"-----BEGIN" in _pem_bytes(value, name)):
        return _load_public_key(value, name)
    if isinstance(value, (str, bytes)) and value:
        return _secret_bytes(value, name)
    raise ValueError(f"{name} must be a secret string or a PEM public key")


def _key_pair(
    config: t.Mapping[str, t.Any], algorithm: str, strict: bool
) -> tuple[PrivateKey | None, PublicKey | None]:
    raw_private = _optional(config["JWT_PRIVATE_KEY"])
    raw_public = _optional(config["JWT_PUBLIC_KEY"])
    private = None if raw_private is None else _load_private_key(raw_private, "JWT_PRIVATE_KEY")
    public = None if raw_public is None else _load_public_key(raw_public, "JWT_PUBLIC_KEY")
    if private is not None:
        derived = private.public_key()
        if public is not None and not _same_key(public, derived):
            raise ValueError("JWT_PUBLIC_KEY is not the public half of JWT_PRIVATE_KEY")
        public = derived
    if public is not None:
        if algorithm not in _algorithms_for_key(public):
            raise ValueError(
                f"JWT_ALGORITHM {algorithm} does not fit the configured key ({_key_kind(public)})"
            )
        _check_rsa_size(public, "JWT_PRIVATE_KEY" if private is not None else "JWT_PUBLIC_KEY", strict)
    return private, public


def _algorithms_for_key(key: VerifyKey) -> tuple[str, ...]:
    if isinstance(key, bytes):
        return HMAC_ALGORITHMS
    if isinstance(key, rsa.RSAPublicKey):
        return RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        return _EC_ALGORITHMS.get(key.curve.name, ())
    return ("EdDSA",)


def _key_kind(key: VerifyKey) -> str:
    if isinstance(key, bytes):
        return "a secret"
    if isinstance(key, rsa.RSAPublicKey):
        return "an RSA key"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"an EC key on {key.curve.name}"
    return "an EdDSA key"


def _verification_key(
    key: VerifyKey, decode_algorithms: t.Sequence[str], name: str, strict: bool
) -> VerificationKey:
    fits = _algorithms_for_key(key)
    algorithms = tuple(a for a in decode_algorithms if a in fits)
    if not algorithms:
        raise ValueError(
            f"{name} is {_key_kind(key)}, but JWT_DECODE_ALGORITHMS ({', '.join(decode_algorithms)}) "
            f"allows none of {', '.join(fits) or 'its algorithms'}"
        )
    if isinstance(key, bytes):
        _check_secret_length(key, algorithms, name, strict)
    else:
        _check_rsa_size(key, name, strict)
    return VerificationKey(key=key, algorithms=algorithms)


def _same_key(a: VerifyKey, b: VerifyKey) -> bool:
    if isinstance(a, bytes) or isinstance(b, bytes):
        return isinstance(a, bytes) and isinstance(b, bytes) and hmac.compare_digest(a, b)
    encoding, fmt = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return a.public_bytes(encoding, fmt) == b.public_bytes(encoding, fmt)


def _config_mapping(value: t.Any, name: str) -> dict[str, t.Any]:
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError(f"{name} must be a mapping (or its JSON text)") from None
    if not isinstance(value, t.Mapping):
        raise ValueError(f"{name} must be a mapping, got {type(value).__name__}")
    return dict(value)


def _config_roles(value: t.Any) -> dict[str, frozenset[str]]:
    roles = _config_mapping(value, "BACKEND_AUTH_ROLES")
    return {
        str(role): frozenset(config_list(perms, f"BACKEND_AUTH_ROLES[{role!r}]"))
        for role, perms in roles.items()
    }


def _config_audience(value: t.Any, name: str) -> str | list[str] | None:
    value = _optional(value)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v for v in value):
        return list(value)
    raise ValueError(f"{name} must be a string or a non-empty list of strings")


def _config_seconds(value: t.Any, name: str, minimum: float, *, exclusive: bool = False) -> float:
    if isinstance(value, dt.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise ValueError(f"{name} must be a number of seconds or a timedelta, got {value!r}")
    elif isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = float(value.strip())
        except ValueError:
            raise ValueError(f"{name} must be a number of seconds or a timedelta, got {value!r}") from None
    else:
        raise ValueError(f"{name} must be a number of seconds or a timedelta, got {type(value).__name__}")
    if exclusive and not (math.isfinite(seconds) and seconds > minimum):
        raise ValueError(f"{name} must be more than {minimum:g} seconds, got {value!r}")
    if not math.isfinite(seconds) or seconds < minimum:
        raise ValueError(f"{name} must be at least {minimum:g} seconds, got {value!r}")
    return seconds


# -- tokens ---------------------------------------------------------------------------


def create_access_token(
    identity: str | int,
    *,
    claims: t.Mapping[str, t.Any] | None = None,
    expires_in: int | float | dt.timedelta | None = None,
) -> str:
    """Sign an access token for the user id ``identity`` (the ``sub`` claim).

    ``claims`` adds claims (``email``, ``role``, ...); ``expires_in`` (seconds or a
    timedelta) replaces ``JWT_ACCESS_TOKEN_EXPIRES``.

    :raises ValueError: ``claims`` names a reserved claim, or ``expires_in`` < 1 s.
    :raises RuntimeError: the app has a public key only and cannot sign.
    """
    return _create_token("access", identity, claims, expires_in)


def create_refresh_token(
    identity: str | int,
    *,
    claims: t.Mapping[str, t.Any] | None = None,
    expires_in: int | float | dt.timedelta | None = None,
) -> str:
    """Sign a refresh token for ``identity``; like :func:`create_access_token`.

    Its lifetime defaults to ``JWT_REFRESH_TOKEN_EXPIRES``. It is accepted only
    where ``decode_token(..., expected_type="refresh")`` asks for it.
    """
    return _create_token("refresh", identity, claims, expires_in)


def _create_token(
    token_type: TokenType,
    identity: str | int,
    claims: t.Mapping[str, t.Any] | None,
    expires_in: int | float | dt.timedelta | None,
) -> str:
    state = get_state()
    if state.signing_key is None:
        raise RuntimeError("JWT_PRIVATE_KEY is not set: this app verifies tokens but cannot sign them")
    if isinstance(identity, bool) or not isinstance(identity, (str, int)) or identity == "":
        raise TypeError(f"identity must be a non-empty str or an int user id, got {type(identity).__name__}")
    extra = dict(claims or {})
    reserved = sorted(RESERVED_CLAIMS & extra.keys())
    if reserved:
        raise ValueError(f"claims may not set {', '.join(reserved)}: they are set from the config")
    if expires_in is None:
        lifetime = state.access_expires if token_type == "access" else state.refresh_expires
    else:
        lifetime = int(_config_seconds(expires_in, "expires_in", 1))
    now = int(time.time())
    payload: dict[str, t.Any] = {
        **extra,
        "sub": str(identity),
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
        "jti": uuid.uuid4().hex,
        "type": token_type,
    }
    if state.encode_audience is not None:
        payload["aud"] = state.encode_audience
    if state.encode_issuer is not None:
        payload["iss"] = state.encode_issuer
    headers = {"kid": state.key_id} if state.key_id is not None else None
    return jwt.encode(payload, state.signing_key, algorithm=state.algorithm, headers=headers)


# Most specific first: InvalidSignatureError is a DecodeError.
_FAILURES: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "Token has expired"),
    (jwt.ImmatureSignatureError, "Token is not valid yet"),
    (jwt.InvalidAudienceError, "Token audience is not accepted"),
    (jwt.InvalidIssuerError, "Token issuer is not accepted"),
    (jwt.InvalidSignatureError, "Token signature is invalid"),
    (jwt.InvalidAlgorithmError, "Token algorithm is not accepted"),
    (jwt.DecodeError, "Malformed token"),
)


def _failure_message(exc: jwt.PyJWTError) -> str:
    # Our own words: PyJWT's messages may quote parts of the token.
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"Token has no {exc.claim!r} claim"
    for exc_type, message in _FAILURES:
        if isinstance(exc, exc_type):
            return message
    return "Invalid token"


def _key_for(token: str, state: AuthState) -> VerificationKey:
    if not state.verify_keys:
        assert state.default_key is not None  # _build_state sets one key or the other
        return state.default_key
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.PyJWTError:
        raise UnauthorizedError("Malformed token") from None
    if not isinstance(kid, str):
        raise UnauthorizedError("Token has no key id (kid)")
    key = state.verify_keys.get(kid)
    if key is None:
        raise UnauthorizedError("Token key id is not accepted")
    return key


def decode_token(token: str, *, expected_type: TokenType | None = "access") -> dict[str, t.Any]:
    """Verify ``token`` and return its claims.

    Checks the signature with an explicit algorithm allow-list (the key's type
    decides which), the key by ``kid`` when key ids are configured, ``exp`` (required),
    ``nbf``, ``iat``, ``aud``, ``iss`` with ``JWT_DECODE_LEEWAY``, the ``type`` claim
    against ``expected_type`` (``None``: access or refresh) and revocation.

    :raises UnauthorizedError: any defect (401, ``error="invalid_token"``).
    :raises ServiceUnavailableError: the revocation store does not answer (503).
    """
    if expected_type not in (*TOKEN_TYPES, None):
        raise ValueError(f"expected_type must be 'access', 'refresh' or None, got {expected_type!r}")
    state = get_state()
    if not isinstance(token, str) or not token:
        raise UnauthorizedError("Malformed token")
    claims = state.verified.get(token)
    if claims is None:
        key = _key_for(token, state)
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=list(key.algorithms),
                audience=state.decode_audience,
                issuer=state.decode_issuer,
                leeway=state.leeway,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.PyJWTError as exc:
            raise UnauthorizedError(_failure_message(exc)) from exc
        state.verified.put(token, claims)
    else:
        # Verified before: only what time changes is checked again, as PyJWT checks it.
        now = time.time()
        if int(claims["exp"]) <= now - state.leeway:
            raise UnauthorizedError(_failure_message(jwt.ExpiredSignatureError()))
        for not_before in ("nbf", "iat"):
            if not_before in claims and int(claims[not_before]) > now + state.leeway:
                raise UnauthorizedError(_failure_message(jwt.ImmatureSignatureError()))
    token_type = claims["type"]
    if token_type not in TOKEN_TYPES:
        raise UnauthorizedError("Token type is not accepted")
    if expected_type == "access" and token_type == "refresh":
        raise UnauthorizedError("A refresh token cannot be used here; send an access token")
    if expected_type == "refresh" and token_type == "access":
        raise UnauthorizedError("An access token cannot be used here; send a refresh token")
    if state.revocation_store.is_revoked(claims["jti"]):
        raise UnauthorizedError("Token has been revoked")
    return claims


def revoke_token(claims: t.Mapping[str, t.Any]) -> None:
    """Revoke the token whose decoded ``claims`` are given, until its ``exp`` plus
    ``JWT_DECODE_LEEWAY``: decoding accepts it until then.

    :raises ValueError: ``claims`` lack a ``jti`` or an ``exp``.
    :raises ServiceUnavailableError: the revocation store does not answer (503).
    """
    jti, exp = claims.get("jti"), claims.get("exp")
    if not isinstance(jti, str) or not jti or isinstance(exp, bool) or not isinstance(exp, (int, float)):
        raise ValueError("revoke_token needs the decoded claims of a token, with 'jti' and 'exp'")
    state = get_state()
    state.revocation_store.revoke(jti, math.ceil(exp + state.leeway))


# -- the current caller ---------------------------------------------------------------


def get_bearer_token() -> str:
    """The bearer token of the current request's ``Authorization`` header.

    :raises UnauthorizedError: no bearer token (401 without ``error=``), or a
        malformed ``Bearer`` header (401 ``invalid_token``).
    """
    token = _read_bearer_token()
    if token is None:
        raise UnauthorizedError("Authentication required: send 'Authorization: Bearer <token>'", error=None)
    return token


def _read_bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    parts = header.split(None, 1)
    if not parts or parts[0].lower() != "bearer":
        return None  # no credentials, or another scheme: no bearer token (RFC 6750 3.1)
    if len(parts) != 2 or len(parts[1].split()) != 1:
        raise UnauthorizedError("Malformed Authorization header: expected 'Bearer <token>'")
    return parts[1].strip()


def _authenticate() -> Identity | None:
    """The caller of this request, resolved once; a failure is kept and raised again."""
    failure = g.get("_fbp_auth_error")
    if failure is not None:
        raise failure
    if g.get("_fbp_auth_checked"):
        return t.cast(Identity | None, g.get("_fbp_identity"))
    g._fbp_auth_checked = True
    try:
        token = _read_bearer_token()
        if token is None:
            return None
        claims = decode_token(token)
    except (UnauthorizedError, ServiceUnavailableError) as exc:
        g._fbp_auth_error = exc
        raise
    state = get_state()
    role = claims.get("role")
    role = role if isinstance(role, str) else None
    email = claims.get("email")
    identity = Identity(
        id=claims["sub"],
        email=email if isinstance(email, str) else None,
        role=role,
        permissions=state.roles.get(role, frozenset()) if role is not None else frozenset(),
        claims=claims,
    )
    # The rate limiter reads g._fbp_identity for per-user keys.
    g._fbp_identity = identity
    set_log_context(user_id=identity.id)
    return identity


def _identify_request() -> None:
    """``before_request``: know the caller before other hooks (the rate limiter) run.

    A bad token is kept, not raised: a protected view raises it, a public one serves
    the request anonymously.
    """
    # ``g`` belongs to the app context, which requests share when one is pushed
    # already (tests, scripts): forget any caller of an earlier request.
    for name in ("_fbp_auth_checked", "_fbp_auth_error", "_fbp_identity", "_fbp_user"):
        g.pop(name, None)
    try:
        _authenticate()
    except (UnauthorizedError, ServiceUnavailableError):
        log.debug("Request token rejected; kept for the view to decide")


def get_current_identity() -> Identity | None:
    """The verified caller of the current request, or ``None`` (no or bad token, no request)."""
    if not has_request_context():
        return None
    try:
        return _authenticate()
    except (UnauthorizedError, ServiceUnavailableError):
        return None


def _get_current_user() -> t.Any:
    identity = get_current_identity()
    if identity is None:
        return None
    loader = get_state().user_loader
    if loader is None:
        return identity
    if "_fbp_user" not in g:
        g._fbp_user = loader(identity)
    return g._fbp_user


#: the caller: an :class:`Identity`, or what ``user_loader(identity)`` returned;
#: ``None`` (falsy) when there is no authenticated caller.
current_user: t.Any = LocalProxy(_get_current_user)


def _require_identity() -> Identity:
    identity = _authenticate()
    if identity is None:
        raise UnauthorizedError("Authentication required: send 'Authorization: Bearer <token>'", error=None)
    if get_state().user_loader is not None and _get_current_user() is None:
        raise UnauthorizedError("The user of this token no longer exists")
    return identity


def ensure_owner(owner_id: object, *, override_roles: t.Iterable[str] = ("moderator", "admin")) -> None:
    """Allow the caller if they own the resource (``owner_id`` is their id) or hold an override role.

    :raises UnauthorizedError: no authenticated caller (401).
    :raises ForbiddenError: someone else's resource (403 ``forbidden``).
    """
    identity = _require_identity()
    if owner_id is not None and str(owner_id) == identity.id:
        return
    if identity.role is not None and identity.role in tuple(override_roles):
        return
    raise ForbiddenError("Only the owner can do this")


# -- decorators -----------------------------------------------------------------------


def _requirement(
    view: t.Callable[..., t.Any],
    *,
    required: bool,
    permissions: t.Sequence[str] = (),
    roles: t.Sequence[str] = (),
) -> dict[str, t.Any]:
    """Merge this decorator's requirement with those of decorators below it."""
    inner = getattr(view, "_fbp_auth", None) or {"required": False, "permissions": [], "roles": []}
    merged_permissions = list(inner["permissions"]) + [
        p for p in permissions if p not in inner["permissions"]
    ]
    if inner["roles"] and roles:
        # A caller has one role: it must be in every stacked list.
        merged_roles = [r for r in inner["roles"] if r in roles]
        if not merged_roles:
            raise ValueError(f"No role is in both {list(inner['roles'])} and {list(roles)}")
    else:
        merged_roles = list(inner["roles"] or roles)
    return {
        "required": bool(inner["required"] or required),
        "permissions": merged_permissions,
        "roles": merged_roles,
    }


def _guard(
    view: t.Callable[P, R],
    *,
    required: bool,
    permissions: t.Sequence[str] = (),
    roles: t.Sequence[str] = (),
) -> t.Callable[P, R]:
    requirement = _requirement(view, required=required, permissions=permissions, roles=roles)

    @functools.wraps(view)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        if required:
            identity = _require_identity()
            missing = [p for p in permissions if p not in identity.permissions]
            if missing:
                noun = "permission" if len(missing) == 1 else "permissions"
                raise ForbiddenError(f"This needs the {', '.join(missing)} {noun}")
            if roles and identity.role not in roles:
                raise ForbiddenError(f"This needs the role {' or '.join(roles)}")
        else:
            _authenticate()
        return t.cast(R, current_app.ensure_sync(view)(*args, **kwargs))

    # Read by the API layer to document security and the 401/403 responses.
    setattr(wrapper, "_fbp_auth", requirement)  # noqa: B010
    return wrapper


def require_auth(view: t.Callable[P, R]) -> t.Callable[P, R]:
    """Decorator: the view needs a valid access token (use bare: ``@require_auth``).

    Missing token: 401 without ``error=``; a bad one: 401 ``invalid_token``.
    """
    return _guard(view, required=True)


def optional_auth(view: t.Callable[P, R]) -> t.Callable[P, R]:
    """Decorator: a token is optional (use bare: ``@optional_auth``).

    Without one, :data:`current_user` is ``None``; a token that is sent must be valid (401).
    """
    return _guard(view, required=False)


def require_permission(*permissions: str) -> t.Callable[[t.Callable[P, R]], t.Callable[P, R]]:
    """Decorator: the caller's role must grant every permission named (401 / 403)."""
    if not permissions:
        raise ValueError("require_permission needs at least one permission")

    def decorator(view: t.Callable[P, R]) -> t.Callable[P, R]:
        return _guard(view, required=True, permissions=permissions)

    return decorator


def require_role(*roles: str) -> t.Callable[[t.Callable[P, R]], t.Callable[P, R]]:
    """Decorator: the caller's role must be one of those named (401 / 403)."""
    if not roles:
        raise ValueError("require_role needs at least one role")

    def decorator(view: t.Callable[P, R]) -> t.Callable[P, R]:
        return _guard(view, required=True, roles=roles)

    return decorator
