"""Read-through caching of repositories, on Flask-Caching.

:class:`CachedRepository` wraps any :class:`~flask_backend_patterns.repository.Repository`:
reads (``find_by_id``, ``find_by_ids``, ``find_all``, ``find_page``, ``count``, ``exists``)
are served from the cache and filled on a miss; writes pass through and invalidate.
:class:`RepositoryCache` is the per-app extension that holds the backend: Redis
(Flask-Caching's ``RedisCache``) when ``CACHE_REDIS_URL`` is set, an in-process
``SimpleCache`` otherwise.

How invalidation stays correct across workers: every model has a *namespace version*
in the cache and every key holds it. A write bumps the version after its database
commit; a reader reads the version before it loads from the database and stores what
it loaded under that version. A reader that could have loaded pre-commit data therefore
stores it under a version nobody reads once the bump is done, and the write's response
is sent after the bump. See ``docs/cache.md``.

Values are JSON, never pickle: ORM instances become dicts of their loaded column values
and come back as detached instances (:class:`ModelCodec`).
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import enum
import functools
import hashlib
import json
import logging
import math
import re
import threading
import time
import typing as t
import uuid
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field

import sqlalchemy as sa
from cachelib.serializers import BaseSerializer
from flask import Flask
from flask import has_request_context
from flask import request
from flask import Response
from flask_caching.backends import BaseCache
from flask_caching.backends import NullCache
from flask_caching.backends import RedisCache
from flask_caching.backends import SimpleCache
from sqlalchemy import event
from sqlalchemy import orm
from sqlalchemy.orm.attributes import set_committed_value

from ._extension import config_bool
from ._extension import config_int
from ._extension import lookup_state
from ._extension import register_state
from ._extension import request_view
from ._redis import DirectConnection
from .repository import Filters
from .repository import Include
from .repository import Page
from .repository import Repository
from .repository import Sort

try:
    from redis import RedisError as _RedisError
    from redis import WatchError as _WatchError
except ImportError:  # the cache works without redis (SimpleCache)

    class _RedisError(Exception):  # type: ignore[no-redef]
        """Stands in when redis is not installed: never raised."""

    class _WatchError(_RedisError):  # type: ignore[no-redef]
        """Stands in when redis is not installed: never raised."""


log = logging.getLogger("flask_backend_patterns.cache")

EXTENSION_KEY = "backend_patterns.cache"

ModelT = t.TypeVar("ModelT")
R = t.TypeVar("R")
F = t.TypeVar("F", bound=t.Callable[..., t.Any])

#: format marker of every stored value; a value without it is a miss (another release).
_FORMAT = 1
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
#: the session.info keys that carry namespaces written in the session's open transaction.
_PENDING_KEY = "backend_patterns.cache.pending"
_LISTENING_KEY = "backend_patterns.cache.listening"
#: what decoding a value from another release (or a corrupted one) raises: a miss.
_PAYLOAD_ERRORS = (ValueError, KeyError, TypeError, AttributeError, sa.exc.InvalidRequestError)
_CACHE_TYPES = {"redis": "redis", "simple": "simple", "null": "null"}


# -- JSON values -------------------------------------------------------------------------


def _encode_value(value: t.Any) -> t.Any:
    """A column value (or a query argument) as JSON: native types as they are, the rest tagged."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, enum.Enum):
        # Checked before int and str: IntEnum and str-enums are both.
        return {"enum": value.name, "value": _encode_value(value.value)}
    if isinstance(value, int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"f": repr(value)}
    if isinstance(value, dt.datetime):
        return {"dt": value.isoformat()}
    if isinstance(value, dt.date):
        return {"d": value.isoformat()}
    if isinstance(value, dt.time):
        return {"t": value.isoformat()}
    if isinstance(value, dt.timedelta):
        return {"td": [value.days, value.seconds, value.microseconds]}
    if isinstance(value, decimal.Decimal):
        return {"dec": str(value)}
    if isinstance(value, uuid.UUID):
        return {"uuid": str(value)}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"b": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("only mappings with string keys can be stored as JSON")
        return {"map": {k: _encode_value(v) for k, v in value.items()}}
    if isinstance(value, list | tuple):
        return {"list": [_encode_value(v) for v in value]}
    if isinstance(value, set | frozenset):
        # Sets have no order: sort by the canonical text so equal sets give equal keys.
        items = [_encode_value(v) for v in value]
        return {"list": sorted(items, key=lambda v: json.dumps(v, sort_keys=True))}
    raise TypeError(f"a {type(value).__name__} cannot be stored in the cache as JSON")


def _decode_value(raw: t.Any, enum_class: type[enum.Enum] | None = None) -> t.Any:
    """The reverse of :func:`_encode_value`. ``enum_class`` restores enum members by name."""
    if not isinstance(raw, dict):
        if isinstance(raw, list):
            raise ValueError("untagged list in a cached value")
        return raw
    if len(raw) == 2 and "enum" in raw and "value" in raw:
        if enum_class is not None:
            return enum_class[raw["enum"]]
        return _decode_value(raw["value"])
    if len(raw) != 1:
        raise ValueError("not a tagged value")
    ((tag, data),) = raw.items()
    if tag == "list":
        return [_decode_value(v) for v in data]
    if tag == "map":
        return {k: _decode_value(v) for k, v in data.items()}
    if tag == "td":
        days, seconds, micro = data
        return dt.timedelta(days=days, seconds=seconds, microseconds=micro)
    decoders: dict[str, t.Callable[[str], t.Any]] = {
        "dt": dt.datetime.fromisoformat,
        "d": dt.date.fromisoformat,
        "t": dt.time.fromisoformat,
        "dec": decimal.Decimal,
        "uuid": uuid.UUID,
        "b": functools.partial(base64.b64decode, validate=True),
        "f": float,
    }
    if tag not in decoders or not isinstance(data, str):
        raise ValueError(f"unknown tag {tag!r} in a cached value")
    return decoders[tag](data)


def _canonical(args: t.Mapping[str, t.Any]) -> str:
    """Canonical JSON of normalised query arguments: equal queries give equal text.

    :raises TypeError: an argument that has no JSON form (the query is not cached).
    """
    return json.dumps(_encode_value(args), sort_keys=True, separators=(",", ":"), allow_nan=False)


def _wrap(data: t.Any) -> bytes:
    return json.dumps({"f": _FORMAT, "d": data}, separators=(",", ":"), allow_nan=False).encode()


def _unwrap(payload: bytes) -> t.Any:
    document = json.loads(payload)
    if not isinstance(document, dict) or document.get("f") != _FORMAT or "d" not in document:
        raise ValueError("not a value this release stored")
    return document["d"]


def _enum_class(prop: orm.ColumnProperty[t.Any]) -> type[enum.Enum] | None:
    column_type = prop.columns[0].type
    if isinstance(column_type, sa.types.TypeDecorator):
        column_type = column_type.impl_instance
    enum_class = getattr(column_type, "enum_class", None)
    return enum_class if isinstance(enum_class, type) and issubclass(enum_class, enum.Enum) else None


def namespace_of(model: type[t.Any]) -> str:
    """The cache namespace of a mapped class: the name of its base mapped class.

    Classes of one inheritance hierarchy share it, since a write to a subclass row
    changes what a query of the base class returns.
    """
    mapper: orm.Mapper[t.Any] = sa.inspect(model)
    return mapper.base_mapper.class_.__name__


#: one codec per mapped class (weakly: a class that goes away takes its codec along).
_CODECS: weakref.WeakKeyDictionary[type[t.Any], ModelCodec] = weakref.WeakKeyDictionary()


def _codec_for(model: type[t.Any]) -> ModelCodec:
    """The codec of ``model``, made once: a repository is often made per request, and
    the codec's fingerprint compiles every column's type."""
    codec = _CODECS.get(model)
    if codec is None:
        codec = _CODECS[model] = ModelCodec(model)
    return codec


class ModelCodec:
    """Turns instances of one mapped class into JSON-ready dicts and back.

    ``dump`` keeps the *loaded* column attributes (a projected read keeps only what it
    selected; nothing is lazy-loaded) and the named relationships, nested one level.
    Datetimes are ISO 8601 (with their offset when aware), ``Decimal``, ``UUID``, dates,
    times, intervals and enums are tagged, ``bytes`` are base64.

    ``load`` builds a *detached* instance with those attributes, as if loaded by a
    session that was then closed: every other attribute raises
    ``sqlalchemy.orm.exc.DetachedInstanceError`` on access instead of loading. The
    instance can be re-attached with ``session.merge(obj, load=False)``.
    """

    def __init__(self, model: type[t.Any]) -> None:
        self.model = model
        self.mapper: orm.Mapper[t.Any] = sa.inspect(model)
        shape = sorted(
            (m.class_.__name__, p.key, str(p.columns[0].type))
            for m in self.mapper.self_and_descendants
            for p in m.column_attrs
        )
        #: changes when the mapped columns change: keys of another schema never meet.
        self.fingerprint = hashlib.sha256(json.dumps(shape).encode()).hexdigest()[:16]
        self._enums: dict[orm.Mapper[t.Any], dict[str, type[enum.Enum] | None]] = {}

    def dump(self, obj: t.Any, relations: t.Sequence[str] = ()) -> dict[str, t.Any]:
        """``obj`` as a dict of its loaded columns and the loaded ``relations``.

        :raises TypeError: a column value with no JSON form.
        """
        state = sa.inspect(obj)
        mapper = state.mapper
        values = state.dict
        data: dict[str, t.Any] = {
            "c": {p.key: _encode_value(values[p.key]) for p in mapper.column_attrs if p.key in values}
        }
        if mapper.base_mapper is not mapper:
            data["t"] = mapper.class_.__name__
        related: dict[str, t.Any] = {}
        for name in relations:
            if name not in values or name not in mapper.relationships:
                continue
            value = values[name]
            if value is None:
                related[name] = None
            elif mapper.relationships[name].uselist:
                related[name] = [self.dump(v) for v in value]
            else:
                related[name] = self.dump(value)
        if related:
            data["r"] = related
        return data

    def _enum_classes(self, mapper: orm.Mapper[t.Any]) -> dict[str, type[enum.Enum] | None]:
        """Column key -> its enum class (or None), per mapper, computed once."""
        found = self._enums.get(mapper)
        if found is None:
            found = self._enums[mapper] = {p.key: _enum_class(p) for p in mapper.column_attrs}
        return found

    def load(self, data: t.Mapping[str, t.Any]) -> t.Any:
        """A detached instance from what :meth:`dump` made.

        :raises ValueError: ``data`` is not a dump of this model.
        """
        return self._load(data, self.mapper)

    def _load(self, data: t.Mapping[str, t.Any], mapper: orm.Mapper[t.Any]) -> t.Any:
        subclass = data.get("t")
        if subclass is not None:
            matches = [m for m in mapper.self_and_descendants if m.class_.__name__ == subclass]
            if not matches:
                raise ValueError(f"{subclass!r} is not a subclass of {mapper.class_.__name__}")
            mapper = matches[0]
        obj = mapper.class_manager.new_instance()
        enums = self._enum_classes(mapper)
        # Straight into the instance's dict, as SQLAlchemy's own loading does: no events,
        # no history (set_committed_value per column cost most of a cached read).
        values = orm.attributes.instance_dict(obj)
        for key, raw in data["c"].items():
            if key in enums:  # a column dropped since the value was stored is left out
                values[key] = _decode_value(raw, enums[key]) if type(raw) in (dict, list) else raw
        for name, raw in data.get("r", {}).items():
            if name not in mapper.relationships:
                continue
            rel = mapper.relationships[name]
            if raw is None:
                value: t.Any = [] if rel.uselist else None
            elif rel.uselist:
                value = [self._load(item, rel.mapper) for item in raw]
            else:
                value = self._load(raw, rel.mapper)
            set_committed_value(obj, name, value)
        # Values set without history, then made "persistent but detached": what is not
        # set is expired and raises on access rather than loading a wrong value.
        orm.make_transient_to_detached(obj)
        return obj


# -- backends ------------------------------------------------------------------------------


class _BytesSerializer(BaseSerializer):
    """Stores bytes as they are and refuses anything else: nothing is ever pickled."""

    def dumps(self, value: t.Any, protocol: int = 0) -> bytes:
        if isinstance(value, bytes):
            return value
        raise TypeError(f"the repository cache stores bytes only, got {type(value).__name__}")

    def loads(self, bvalue: bytes | None) -> bytes | None:  # type: ignore[override]
        return bvalue


def _initial_version() -> int:
    # Microseconds since the epoch: a version key lost (flush, eviction, restart) starts
    # above every version it had, so old entries are never read again.
    return time.time_ns() // 1000


class _Store(t.Protocol):
    kind: str
    backend: BaseCache
    client: t.Any | None

    def get(self, key: str) -> bytes | None: ...

    def get_many(self, keys: t.Sequence[str]) -> list[bytes | None]: ...

    def prefetch_many(self, keys: t.Sequence[str]) -> None:
        """Let ``get_many(keys)`` ride along with the request's next Redis command."""

    def discard_prefetch(self, keys: t.Sequence[str]) -> None:
        """Drop the read ``prefetch_many(keys)`` queued: ``get_many`` reads afresh."""

    def set(self, key: str, payload: bytes, ttl: int) -> None: ...

    def versions(self, keys: t.Sequence[str]) -> list[int]: ...

    def bump(self, key: str) -> int: ...

    def acquire(self, key: str, token: str, ttl_ms: int) -> bool: ...

    def release(self, key: str, token: str) -> None: ...

    def ping(self) -> None: ...

    def close(self) -> None: ...


class _RedisStore:
    """Values through Flask-Caching's ``RedisCache``; versions and locks on its client."""

    kind = "redis"

    def __init__(self, client: t.Any, ttl: int, owns_client: bool) -> None:
        self.client = client
        backend = RedisCache(host=client, default_timeout=ttl)
        backend.serializer = t.cast(t.Any, _BytesSerializer())
        self.backend: BaseCache = backend
        self._owns_client = owns_client
        self._direct = DirectConnection(client)

    def get(self, key: str) -> bytes | None:
        return t.cast("bytes | None", self.backend.get(key))

    def get_many(self, keys: t.Sequence[str]) -> list[bytes | None]:
        # The read of every hit: one MGET (the keys carry no RedisCache prefix), over
        # this thread's own connection, unless it rode along with an earlier command.
        prefetched = self._direct.take("MGET", *keys)
        if prefetched is not None:
            return list(prefetched.reply)
        return list(self._direct.execute("MGET", *keys))

    def prefetch_many(self, keys: t.Sequence[str]) -> None:
        self._direct.prefetch("MGET", *keys)

    def discard_prefetch(self, keys: t.Sequence[str]) -> None:
        self._direct.take("MGET", *keys)

    def set(self, key: str, payload: bytes, ttl: int) -> None:
        self.backend.set(key, payload, timeout=ttl)

    def versions(self, keys: t.Sequence[str]) -> list[int]:
        raw = self.backend.get_many(*keys)
        found: dict[str, int] = {}
        for key, value in zip(keys, raw, strict=True):
            if value is not None and value.isdigit():
                found[key] = int(value)
        missing = [k for k in keys if k not in found]
        if missing:
            pipe = self.client.pipeline(transaction=False)
            for key in missing:
                pipe.set(key, _initial_version(), nx=True)
            for key in missing:
                pipe.get(key)
            results = pipe.execute()[len(missing) :]
            for key, value in zip(missing, results, strict=True):
                if value is None or not value.isdigit():
                    # Not a number (a foreign value): replace it with a fresh start.
                    value = str(_initial_version()).encode()
                    self.client.set(key, value)
                found[key] = int(value)
        return [found[k] for k in keys]

    def bump(self, key: str) -> int:
        pipe = self.client.pipeline(transaction=False)
        pipe.set(key, _initial_version(), nx=True)
        pipe.incr(key)
        return int(pipe.execute()[1])

    def acquire(self, key: str, token: str, ttl_ms: int) -> bool:
        # SET NX PX in one command: a holder that dies frees the lock when it expires.
        return bool(self.client.set(key, token, nx=True, px=ttl_ms))

    def release(self, key: str, token: str) -> None:
        # Delete only our own lock: it may have expired and been taken by another loader.
        try:
            with self.client.pipeline() as pipe:
                pipe.watch(key)
                if pipe.get(key) in (token, token.encode()):
                    pipe.multi()
                    pipe.delete(key)
                    pipe.execute()
                else:
                    pipe.unwatch()
        except _WatchError:
            pass  # changed under us: then it was not ours any more

    def ping(self) -> None:
        self.client.ping()

    def close(self) -> None:
        self._direct.close()
        if self._owns_client:
            self.client.close()


class _LocalStore:
    """Values in an in-process Flask-Caching backend; versions in this process."""

    client = None

    def __init__(self, backend: BaseCache, kind: str) -> None:
        self.kind = kind
        self.backend = backend
        if isinstance(backend, SimpleCache):
            backend.serializer = t.cast(t.Any, _BytesSerializer())
        # Versions are not stored in the backend: SimpleCache evicts oldest entries first
        # and a lost version would be re-read as a fresh start anyway, but needlessly.
        self._versions: dict[str, int] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        return t.cast("bytes | None", self.backend.get(key))

    def prefetch_many(self, keys: t.Sequence[str]) -> None:
        return None  # in process: nothing to save

    def discard_prefetch(self, keys: t.Sequence[str]) -> None:
        return None

    def get_many(self, keys: t.Sequence[str]) -> list[bytes | None]:
        return list(self.backend.get_many(*keys))

    def set(self, key: str, payload: bytes, ttl: int) -> None:
        self.backend.set(key, payload, timeout=ttl)

    def versions(self, keys: t.Sequence[str]) -> list[int]:
        with self._lock:
            return [self._versions.setdefault(k, _initial_version()) for k in keys]

    def bump(self, key: str) -> int:
        with self._lock:
            self._versions[key] = self._versions.get(key, _initial_version()) + 1
            return self._versions[key]

    def acquire(self, key: str, token: str, ttl_ms: int) -> bool:
        return True  # one process: the per-key flight already lets one thread load

    def release(self, key: str, token: str) -> None:
        return None

    def ping(self) -> None:
        return None

    def close(self) -> None:
        return None


# -- state and extension ------------------------------------------------------------------


@dataclass
class CacheStats:
    """Counters of one app's repository cache (thread-safe).

    ``hits``: reads served from the cache; ``misses``: reads that did not find a value;
    ``loads``: reads that went to the database (misses, fallbacks while the backend
    is down, reads in a transaction with pending writes); ``coalesced``: misses served
    by another caller's load (stampede protection at work); ``errors``: backend
    errors and timeouts.
    """

    hits: int = 0
    misses: int = 0
    loads: int = 0
    coalesced: int = 0
    errors: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def incr(self, name: str, amount: int = 1) -> None:
        """Add ``amount`` to the counter ``name``."""
        with self._lock:
            setattr(self, name, getattr(self, name) + amount)

    def snapshot(self) -> dict[str, int]:
        """The counters as a dict, read together."""
        with self._lock:
            return {
                "hits": self.hits,
                "misses": self.misses,
                "loads": self.loads,
                "coalesced": self.coalesced,
                "errors": self.errors,
            }


@dataclass(frozen=True)
class CacheHealth:
    """What :func:`cache_health` found: the backend kind, whether it answered, and why not."""

    backend: str
    ok: bool
    error: str | None = None


class _Outcome(enum.Enum):
    FAILED = "failed"


_FAILED: t.Final = _Outcome.FAILED


class _Flight:
    """One in-process load of a key that other threads wait for."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.payload: bytes | None = None


@dataclass(eq=False)
class RepositoryCacheState:
    """Per-app state of :class:`RepositoryCache`: the backend, the settings and the counters.

    ``backend`` is the Flask-Caching backend the values live in; ``redis`` the Redis
    client, or ``None`` for an in-process backend. Reach it with :func:`get_state`.
    """

    store: _Store = field(repr=False)
    ttl: int
    key_prefix: str
    lock_timeout_ms: int
    lock_wait_ms: int
    poll_interval_ms: int
    retry_interval_ms: int
    warn_interval: int
    clock: t.Callable[[], float] = field(repr=False)
    sleep: t.Callable[[float], None] = field(repr=False)
    stats: CacheStats = field(default_factory=CacheStats)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _flights: dict[str, _Flight] = field(default_factory=dict, init=False, repr=False)
    _pending_bumps: set[str] = field(default_factory=set, init=False, repr=False)
    #: bumps this process made or retried: a read queued before one is not used after it.
    _bumps: int = field(default=0, init=False, repr=False)
    #: put a hit's MGET on the rate limiter's round trip (BACKEND_CACHE_PREFETCH).
    prefetch: bool = field(default=True, repr=False)
    _down_until: float | None = field(default=None, init=False, repr=False)
    _last_warning: float | None = field(default=None, init=False, repr=False)
    #: (namespaces, kind, query) -> the keys a read of them takes: hot reads repeat.
    _keys_made: dict[tuple[tuple[str, ...], str, str], tuple[str, ...]] = field(
        default_factory=dict, init=False, repr=False
    )

    @property
    def backend_kind(self) -> str:
        """``"redis"``, ``"simple"`` or ``"null"``."""
        return self.store.kind

    @property
    def stores_nothing(self) -> bool:
        """True on ``NullCache``: reads go straight to the database, without keys,
        versions, locks or encoding, whose work would be thrown away."""
        return self.store.kind == "null"

    @property
    def backend(self) -> BaseCache:
        """The Flask-Caching backend object the values are stored in."""
        return self.store.backend

    @property
    def redis(self) -> t.Any | None:
        """The Redis client, or ``None`` for an in-process backend."""
        return self.store.client

    # -- public --------------------------------------------------------------------------

    def ping(self) -> bool:
        """Whether the backend answers now (always true in process). Never raises."""
        return self.health().ok

    def health(self) -> CacheHealth:
        """Ask the backend directly (not through the error back-off) whether it answers."""
        try:
            self.store.ping()
        except _RedisError as exc:
            return CacheHealth(self.backend_kind, False, f"{type(exc).__name__}: {exc}")
        return CacheHealth(self.backend_kind, True)

    def invalidate(self, namespace: str) -> bool:
        """Bump the version of ``namespace`` now: every cached read of it is dropped.

        Returns ``False`` when the backend did not answer; the bump is then retried
        by this process at its next cache access (and logged).
        """
        self._recover()
        self._bumps += 1
        if self._call(functools.partial(self.store.bump, self._version_key(namespace))) is _FAILED:
            with self._lock:
                self._pending_bumps.add(namespace)
            log.warning(
                "Cache invalidation of %s failed; retried at this worker's next cache access. "
                "Until then workers that reach the cache may serve entries of %s up to %s s old.",
                namespace,
                namespace,
                self.ttl,
                extra={"cache_namespace": namespace},
            )
            return False
        log.debug("cache invalidated %s", namespace, extra={"cache_namespace": namespace})
        return True

    def close(self) -> None:
        """Close the Redis connections this state opened (not a client you passed in)."""
        self.store.close()

    # -- internals used by CachedRepository ----------------------------------------------------

    def _version_key(self, namespace: str) -> str:
        return f"{self.key_prefix}:{namespace}:version"

    def _key(
        self, namespaces: t.Sequence[str], versions: t.Sequence[int], kind: str, query: str, fingerprint: str
    ) -> str:
        # The versions of included models are hashed in: a write to any of them moves the key.
        related = [[n, v] for n, v in zip(namespaces[1:], versions[1:], strict=True)]
        digest = hashlib.sha256(json.dumps([kind, query, fingerprint, related]).encode()).hexdigest()
        return f"{self.key_prefix}:{namespaces[0]}:v{versions[0]}:{kind}:{digest}"

    def _call(self, op: t.Callable[[], R]) -> R | t.Literal[_Outcome.FAILED]:
        """Run a backend operation; ``_FAILED`` when it errs or the back-off is on."""
        down_until = self._down_until
        if down_until is not None and self.clock() < down_until:
            return _FAILED
        try:
            return op()
        except _RedisError as exc:
            self._failed(exc)
            return _FAILED

    def _failed(self, exc: Exception) -> None:
        self.stats.incr("errors")
        now = self.clock()
        with self._lock:
            self._down_until = now + self.retry_interval_ms / 1000
            warn = self._last_warning is None or now - self._last_warning >= self.warn_interval
            if warn:
                self._last_warning = now
        if warn:
            log.warning(
                "Cache backend unavailable (%s: %s); reading from the database until it answers",
                type(exc).__name__,
                exc,
                extra={"cache_backend": self.backend_kind},
            )

    def _recover(self) -> None:
        """Retry the bumps that failed while the backend was down."""
        if not self._pending_bumps:
            return
        with self._lock:
            pending = sorted(self._pending_bumps)
        for namespace in pending:
            if self._call(functools.partial(self.store.bump, self._version_key(namespace))) is _FAILED:
                return
            with self._lock:
                self._pending_bumps.discard(namespace)
                self._bumps += 1
            log.info("Cache invalidation of %s done after the backend came back", namespace)

    def _versions(self, namespaces: t.Sequence[str]) -> list[int] | None:
        self._recover()
        keys = [self._version_key(n) for n in namespaces]
        versions = self._call(functools.partial(self.store.versions, keys))
        return None if versions is _FAILED else versions

    def _get(self, key: str) -> bytes | None | t.Literal[_Outcome.FAILED]:
        return self._call(functools.partial(self.store.get, key))

    def _get_many(self, keys: t.Sequence[str]) -> list[bytes | None] | None:
        found = self._call(functools.partial(self.store.get_many, keys))
        return None if found is _FAILED else found

    def _set(self, key: str, payload: bytes, ttl: int) -> None:
        self._call(functools.partial(self.store.set, key, payload, ttl))

    def _debug(self, outcome: str, key: str) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("cache %s %s", outcome, key, extra={"cache_stats": self.stats.snapshot()})

    def _load(self, load: t.Callable[[], R]) -> R:
        self.stats.incr("loads")
        return load()

    def _read_versioned(
        self,
        namespaces: t.Sequence[str],
        kind: str,
        query: str,
        ttl: int,
        load: t.Callable[[], R],
        pack: t.Callable[[R, list[int]], bytes],
        unpack: t.Callable[[bytes], tuple[list[int], R]],
    ) -> R:
        """Like :meth:`_read_through`, in one round trip on a hit.

        The value's key does not hold the versions: the value carries the versions it
        was loaded under (``pack``/``unpack``), and one ``MGET`` reads them with the
        current versions. A value of other versions is a miss, exactly as a key of other
        versions would be.
        """
        self._recover()
        *version_keys, key = keys = self._versioned_keys(namespaces, kind, query)
        queued_at = _prefetched().pop(tuple(keys), None)
        if queued_at is not None and queued_at != self._bumps:
            # This process bumped a version since the read was queued (a write in this
            # request, a retried invalidation): the read may predate it.
            self.store.discard_prefetch(keys)
        found = self._call(functools.partial(self.store.get_many, keys))
        if found is _FAILED:
            return self._load(load)
        *raw_versions, payload = found
        versions = [int(v) for v in raw_versions if v is not None and v.isdigit()]
        if len(versions) != len(namespaces):
            started = self._versions(namespaces)  # unset versions start here
            if started is None:
                return self._load(load)
            versions = started
        if payload is not None:
            try:
                stored_versions, value = unpack(payload)
            except _PAYLOAD_ERRORS:
                log.debug("cache value at %s is unreadable; reloading", key)
            else:
                if stored_versions == versions:
                    self.stats.incr("hits")
                    self._debug("hit", key)
                    return value

        def unpack_current(stored: bytes) -> R:
            stored_versions, value = unpack(stored)
            if stored_versions != versions:
                raise ValueError("a value of other versions")  # a waiter must not take it
            return value

        current = versions
        return self._read_through(key, ttl, load, lambda value: pack(value, current), unpack_current)

    def _versioned_keys(self, namespaces: t.Sequence[str], kind: str, query: str) -> list[str]:
        """The version keys of ``namespaces``, then the value's key: what a hit reads.

        Remembered for the last :data:`_KEYS_REMEMBERED` reads (a hit makes the keys twice:
        its prefetch, then its read; and hot queries repeat).
        """
        made = self._keys_made
        remembered = (tuple(namespaces), kind, query)
        keys = made.get(remembered)
        if keys is None:
            digest = hashlib.sha256(json.dumps([kind, query]).encode()).hexdigest()
            keys = (
                *(self._version_key(n) for n in namespaces),
                f"{self.key_prefix}:{namespaces[0]}:{kind}:{digest}",
            )
            if len(made) >= _KEYS_REMEMBERED:
                made.clear()
            made[remembered] = keys
        return list(keys)

    def _prefetch_versioned(self, namespaces: t.Sequence[str], kind: str, query: str) -> None:
        """Let the ``MGET`` of :meth:`_read_versioned` ride along with the request's next
        Redis command (the rate limiter's count), when the backend answers."""
        down_until = self._down_until
        if not self.prefetch or self._pending_bumps or (down_until is not None and self.clock() < down_until):
            return
        keys = self._versioned_keys(namespaces, kind, query)
        _prefetched()[tuple(keys)] = self._bumps
        self.store.prefetch_many(keys)

    def _read_through(
        self,
        key: str,
        ttl: int,
        load: t.Callable[[], R],
        encode: t.Callable[[R], bytes],
        decode: t.Callable[[bytes], R],
        fill: t.Callable[[R], dict[str, bytes]] | None = None,
    ) -> R:
        """The cached value of ``key``, or ``load()`` once (stored, with ``fill``'s extras)."""
        cached = self._get(key)
        if cached is _FAILED:
            return self._load(load)
        if cached is not None:
            try:
                value = decode(cached)
            except _PAYLOAD_ERRORS:
                log.debug("cache value at %s is unreadable; reloading", key)
            else:
                self.stats.incr("hits")
                self._debug("hit", key)
                return value
        self.stats.incr("misses")
        self._debug("miss", key)
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if not leader:
            # Another thread of this process is loading this key: wait for its value.
            wait = (self.lock_timeout_ms + self.lock_wait_ms) / 1000
            if flight.done.wait(wait) and flight.payload is not None:
                try:
                    value = decode(flight.payload)
                except _PAYLOAD_ERRORS:
                    pass  # e.g. loaded under other versions than ours: load our own
                else:
                    self.stats.incr("coalesced")
                    return value
            return self._load_and_store(key, ttl, load, encode, fill)[0]
        try:
            value, payload = self._load_locked(key, ttl, load, encode, decode, fill)
            flight.payload = payload
            return value
        finally:
            flight.done.set()
            with self._lock:
                self._flights.pop(key, None)

    def _load_locked(
        self,
        key: str,
        ttl: int,
        load: t.Callable[[], R],
        encode: t.Callable[[R], bytes],
        decode: t.Callable[[bytes], R],
        fill: t.Callable[[R], dict[str, bytes]] | None,
    ) -> tuple[R, bytes | None]:
        lock_key = f"{key}:lock"
        token = uuid.uuid4().hex
        acquired = self._call(functools.partial(self.store.acquire, lock_key, token, self.lock_timeout_ms))
        try:
            found: bytes | None | t.Literal[_Outcome.FAILED] = None
            if acquired is True:
                # Look once more: a loader may have filled the key between our miss and now.
                found = self._get(key)
            elif acquired is False:
                # Another worker is loading: poll for its value, a bounded while.
                found = self._wait_for(key)
            if isinstance(found, bytes):
                try:
                    value = decode(found)
                except _PAYLOAD_ERRORS:
                    pass
                else:
                    self.stats.incr("coalesced")
                    return value, found
            # Nothing there (or the winner died or is slow): load rather than fail.
            return self._load_and_store(key, ttl, load, encode, fill, store=acquired is not _FAILED)
        finally:
            if acquired is True:
                self._call(functools.partial(self.store.release, lock_key, token))

    def _wait_for(self, key: str) -> bytes | None:
        deadline = self.clock() + self.lock_wait_ms / 1000
        while self.clock() < deadline:
            self.sleep(self.poll_interval_ms / 1000)
            found = self._get(key)
            if found is _FAILED:
                return None
            if found is not None:
                return found
        return None

    def _load_and_store(
        self,
        key: str,
        ttl: int,
        load: t.Callable[[], R],
        encode: t.Callable[[R], bytes],
        fill: t.Callable[[R], dict[str, bytes]] | None,
        *,
        store: bool = True,
    ) -> tuple[R, bytes | None]:
        value = self._load(load)
        try:
            payload = encode(value)
        except _NotStored:
            return value, None  # e.g. an error response: served, never stored
        if store:
            self._set(key, payload, ttl)
            for extra_key, extra_payload in (fill(value) if fill is not None else {}).items():
                self._set(extra_key, extra_payload, ttl)
        return value, payload


def _cache_type(config: t.Mapping[str, t.Any], has_client: bool) -> str:
    value = config.get("CACHE_TYPE")
    if not value:
        return "redis" if has_client or config.get("CACHE_REDIS_URL") else "simple"
    name = str(value).rsplit(".", 1)[-1].lower()
    name = name.removesuffix("cache") or name
    if name not in _CACHE_TYPES:
        raise ValueError(
            f"CACHE_TYPE {value!r} is not supported by the repository cache; "
            "use RedisCache, SimpleCache or NullCache"
        )
    return _CACHE_TYPES[name]


def _redis_client(config: t.Mapping[str, t.Any], socket_timeout: float) -> t.Any:
    try:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
    except ImportError:
        raise RuntimeError(
            "the repository cache is configured for Redis but the redis package is missing: "
            "pip install 'flask-backend-patterns[redis]'"
        ) from None
    options: dict[str, t.Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        # One immediate retry (a pooled connection the server closed), never a long backoff:
        # a request must not wait for Redis longer than it would for the database.
        "retry": Retry(NoBackoff(), 1),
    }
    extra = config.get("CACHE_OPTIONS") or {}
    if not isinstance(extra, t.Mapping):
        raise ValueError(f"CACHE_OPTIONS must be a mapping of redis client options, got {extra!r}")
    options.update(extra)
    if options.get("decode_responses"):
        raise ValueError("CACHE_OPTIONS: decode_responses is not supported by the repository cache")
    url = config.get("CACHE_REDIS_URL")
    if url:
        return redis.Redis.from_url(str(url), **options)
    return redis.Redis(
        host=config.get("CACHE_REDIS_HOST", "localhost"),
        port=config_int(config.get("CACHE_REDIS_PORT", 6379), "CACHE_REDIS_PORT", minimum=1),
        db=config_int(config.get("CACHE_REDIS_DB", 0), "CACHE_REDIS_DB", minimum=0),
        password=config.get("CACHE_REDIS_PASSWORD"),
        **options,
    )


class RepositoryCache:
    """The backend of :class:`CachedRepository` for an app, on Flask-Caching.

    Redis (Flask-Caching's ``RedisCache``) when ``CACHE_REDIS_URL`` is set or
    ``CACHE_TYPE`` says so, an in-process ``SimpleCache`` otherwise. Values are JSON
    bytes; the backend's pickling serializer is replaced, so nothing is ever pickled.
    The backend is its own: an app's other Flask-Caching ``Cache`` is not touched.

    Config keys (defaults in brackets). Flask-Caching's, read as it reads them:

    - ``CACHE_TYPE`` [unset: Redis if ``CACHE_REDIS_URL`` is set, else SimpleCache]:
      ``RedisCache``, ``SimpleCache`` or ``NullCache`` (nothing cached).
    - ``CACHE_REDIS_URL`` [unset]; without it, ``CACHE_REDIS_HOST`` ["localhost"],
      ``CACHE_REDIS_PORT`` [6379], ``CACHE_REDIS_DB`` [0], ``CACHE_REDIS_PASSWORD``.
    - ``CACHE_OPTIONS`` [{}]: extra keyword arguments of the ``redis.Redis`` client.
    - ``CACHE_THRESHOLD`` [500]: entries a SimpleCache keeps.

    Ours:

    - ``BACKEND_CACHE_TTL`` [300]: seconds a value lives.
    - ``BACKEND_CACHE_KEY_PREFIX`` ["fbp"]: first part of every key.
    - ``BACKEND_CACHE_LOCK_TIMEOUT_MS`` [5000]: life of a per-key load lock.
    - ``BACKEND_CACHE_LOCK_WAIT_MS`` [3000]: how long a miss waits for another
      worker's load before loading itself.
    - ``BACKEND_CACHE_POLL_INTERVAL_MS`` [20]: how often it looks while waiting.
    - ``BACKEND_CACHE_SOCKET_TIMEOUT_MS`` [500]: Redis connect and read timeout.
    - ``BACKEND_CACHE_RETRY_INTERVAL_MS`` [1000]: after a Redis error, reads go
      straight to the database for this long.
    - ``BACKEND_CACHE_WARN_INTERVAL`` [30]: seconds between two "cache unavailable"
      warnings.
    - ``BACKEND_CACHE_PREFETCH`` [True]: send a ``cached_response`` hit's read with the
      rate limiter's count when both use the same Redis (one round trip, not two).

    ``redis_client`` (e.g. a ``fakeredis.FakeRedis``) is used instead of one made from
    the config; ``clock`` (monotonic seconds) and ``sleep`` replace ``time.monotonic``
    and ``time.sleep`` (tests).
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        redis_client: t.Any | None = None,
        clock: t.Callable[[], float] | None = None,
        sleep: t.Callable[[float], None] | None = None,
    ) -> None:
        self._redis_client = redis_client
        self._clock = clock or time.monotonic
        self._sleep = sleep or time.sleep
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Make the backend of ``app`` (no connection is opened yet).

        :raises RuntimeError: already registered on this app; Redis configured without
            the redis package.
        :raises ValueError: a config value of the wrong type, an unsupported ``CACHE_TYPE``.
        """
        app.config.setdefault("BACKEND_CACHE_TTL", 300)
        app.config.setdefault("BACKEND_CACHE_KEY_PREFIX", "fbp")
        app.config.setdefault("BACKEND_CACHE_LOCK_TIMEOUT_MS", 5000)
        app.config.setdefault("BACKEND_CACHE_LOCK_WAIT_MS", 3000)
        app.config.setdefault("BACKEND_CACHE_POLL_INTERVAL_MS", 20)
        app.config.setdefault("BACKEND_CACHE_SOCKET_TIMEOUT_MS", 500)
        app.config.setdefault("BACKEND_CACHE_RETRY_INTERVAL_MS", 1000)
        app.config.setdefault("BACKEND_CACHE_WARN_INTERVAL", 30)
        app.config.setdefault("BACKEND_CACHE_PREFETCH", True)
        config = app.config
        ttl = config_int(config["BACKEND_CACHE_TTL"], "BACKEND_CACHE_TTL", minimum=1)
        prefix = str(config["BACKEND_CACHE_KEY_PREFIX"])
        if not _PREFIX_RE.match(prefix):
            raise ValueError(f"BACKEND_CACHE_KEY_PREFIX must be 1-100 of [A-Za-z0-9_.:-], got {prefix!r}")
        socket_timeout = config_int(
            config["BACKEND_CACHE_SOCKET_TIMEOUT_MS"], "BACKEND_CACHE_SOCKET_TIMEOUT_MS", minimum=1
        )
        kind = _cache_type(config, self._redis_client is not None)
        store: _Store
        if kind == "redis":
            client = self._redis_client
            owns = client is None
            if client is None:
                client = _redis_client(config, socket_timeout / 1000)
            store = _RedisStore(client, ttl, owns_client=owns)
        elif kind == "simple":
            threshold = config_int(config.get("CACHE_THRESHOLD", 500), "CACHE_THRESHOLD", minimum=1)
            store = _LocalStore(SimpleCache(threshold=threshold, default_timeout=ttl), "simple")
        else:
            store = _LocalStore(NullCache(), "null")
        state = RepositoryCacheState(
            store=store,
            ttl=ttl,
            key_prefix=prefix,
            lock_timeout_ms=config_int(
                config["BACKEND_CACHE_LOCK_TIMEOUT_MS"], "BACKEND_CACHE_LOCK_TIMEOUT_MS", minimum=1
            ),
            lock_wait_ms=config_int(
                config["BACKEND_CACHE_LOCK_WAIT_MS"], "BACKEND_CACHE_LOCK_WAIT_MS", minimum=0
            ),
            poll_interval_ms=config_int(
                config["BACKEND_CACHE_POLL_INTERVAL_MS"], "BACKEND_CACHE_POLL_INTERVAL_MS", minimum=1
            ),
            retry_interval_ms=config_int(
                config["BACKEND_CACHE_RETRY_INTERVAL_MS"], "BACKEND_CACHE_RETRY_INTERVAL_MS", minimum=0
            ),
            warn_interval=config_int(
                config["BACKEND_CACHE_WARN_INTERVAL"], "BACKEND_CACHE_WARN_INTERVAL", minimum=0
            ),
            clock=self._clock,
            sleep=self._sleep,
            prefetch=config_bool(config["BACKEND_CACHE_PREFETCH"], "BACKEND_CACHE_PREFETCH"),
        )
        try:
            register_state(app, EXTENSION_KEY, state)
        except RuntimeError:
            state.close()
            raise
        # First of all hooks, so that the hit's read is queued before any part (the
        # rate limiter) makes its round trip to Redis.
        app.before_request_funcs.setdefault(None, []).insert(0, _prefetch_response)


def get_state(app: Flask | None = None) -> RepositoryCacheState:
    """Return the :class:`RepositoryCache` state of ``app`` (or the current app)."""
    return lookup_state(EXTENSION_KEY, RepositoryCacheState, app)


def cache_health(app: Flask | None = None) -> CacheHealth:
    """Whether the repository cache's backend answers, for a readiness check.

    ``ok`` is false when Redis does not answer (``error`` says why); an in-process
    backend is always ok. A ``/readyz`` view raises
    :class:`~flask_backend_patterns.errors.ServiceUnavailableError` when it is false.
    """
    return get_state(app).health()


#: headers of a view's response that a cached copy does not keep: made again per response.
_UNKEPT_HEADERS = frozenset({"content-length", "date", "connection", "transfer-encoding"})


def cached_response(*models: type[t.Any], ttl: int | None = None) -> t.Callable[[F], F]:
    """Cache a read view's 200 responses, invalidated with the namespaces of ``models``.

    For views whose response depends only on the URL (route, view args, query string)
    and on rows of ``models``: the key is made of the endpoint, the view args and the
    query string, normalised, and the models' namespace versions, which every write through a :class:`CachedRepository`
    bumps after its commit. So the guarantee is the repository's: after a write's
    response, no worker serves a response built from the old rows. Put it above
    flask-smorest's ``@blp.arguments``: a hit then skips the argument parsing, the
    view, the repository and the serializer, and sends the stored body as it was.

    Only 200 responses are stored (the body and the view's headers, but ``Content-Length``
    and ``Date``; never one that sets a cookie or sends ``Vary``); conditional
    requests (``If-None-Match``) and anything but GET and HEAD go straight to the view,
    as do all requests when the backend is down. Not for views whose output depends on
    the caller (``current_user``) or on request headers.

    :raises ValueError: no model given, or ``ttl`` < 1.
    """
    if not models:
        raise ValueError("cached_response needs the models its responses are built from")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1):
        raise ValueError(f"ttl must be an integer >= 1, got {ttl!r}")
    namespaces = list(dict.fromkeys(namespace_of(model) for model in models))

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: t.Any, **kwargs: t.Any) -> t.Any:
            if not _response_cacheable():
                return view(*args, **kwargs)
            state = get_state()
            if state.stores_nothing:
                return state._load(functools.partial(view, *args, **kwargs))
            try:
                query = _response_query()
            except TypeError:
                return view(*args, **kwargs)  # view args with no JSON form: no key, no cache
            return state._read_versioned(
                namespaces,
                "response",
                query,
                ttl if ttl is not None else state.ttl,
                lambda: _Uncacheable.wrap(view(*args, **kwargs)),
                _pack_response,
                _unpack_response,
            ).response

        setattr(wrapper, _CACHED_RESPONSE_ATTR, namespaces)
        return t.cast(F, wrapper)

    return decorator


_CACHED_RESPONSE_ATTR = "_fbp_cached_response"


_PREFETCHED_ENVIRON_KEY = "flask_backend_patterns.cache.prefetched"


def _prefetched() -> dict[tuple[str, ...], int]:
    """The reads this request queued, with the process's bump count when each was."""
    if not has_request_context():
        return {}
    found: dict[tuple[str, ...], int] = request.environ.setdefault(_PREFETCHED_ENVIRON_KEY, {})
    return found


def _response_query() -> str:
    """The key of the current request's response, before hashing.

    The route and its query string, normalised (sorted pairs, as canonical JSON): so
    :func:`cached_response` may sit above the argument parsing, and a hit skips it
    too. Only 200s are stored, so only a query that parsed and validated once is ever
    answered from the cache.

    With plain (``str``/``int``) view args the text is a function of the endpoint, the
    view args and the raw query string: each process remembers it for its hot URLs, so
    the prefetch hook and the view's wrapper make it once and a hot URL's hit parses no
    query string.

    :raises TypeError: view args with no JSON form.
    """
    view_args = request.view_args or {}
    if not all(type(value) in _AS_THEY_ARE for value in view_args.values()):
        return _canonical({"endpoint": request.endpoint, "view_args": view_args, "query": _sorted_args()})
    remembered = (request.endpoint, request.query_string, tuple(view_args.items()))
    query = _RESPONSE_QUERIES.get(remembered)
    if query is None:
        # What _canonical gives, without its walk: str and int encode as they are.
        encoded = {
            "map": {
                "endpoint": request.endpoint,
                "view_args": {"map": view_args},
                "query": {"list": [{"list": list(pair)} for pair in _sorted_args()]},
            }
        }
        query = json.dumps(encoded, sort_keys=True, separators=(",", ":"))
        if len(_RESPONSE_QUERIES) >= _KEYS_REMEMBERED:
            _RESPONSE_QUERIES.clear()
        _RESPONSE_QUERIES[remembered] = query
    return query


def _sorted_args() -> list[tuple[str, str]]:
    # By name only: a sort is stable, so a repeated parameter keeps the order of its
    # values, which the parsing may depend on.
    return sorted(request.args.items(multi=True), key=_first)


#: the types _encode_value returns as they are (bool is not int here: type() is exact), and
#: whose equal values of one type have one text (not so for floats: 0.0 == -0.0).
_AS_THEY_ARE = frozenset({str, int})
#: how many response texts and key sets each process remembers (then it starts afresh).
_KEYS_REMEMBERED = 1024
_RESPONSE_QUERIES: dict[tuple[str | None, bytes, tuple[tuple[str, t.Any], ...]], str] = {}


def _first(pair: tuple[str, str]) -> str:
    return pair[0]


def _cached_response_namespaces() -> list[str] | None:
    """The namespaces of the current request's ``cached_response`` view, if it has one."""
    view, view_class, handler = request_view()
    return getattr(handler if view_class is not None else view, _CACHED_RESPONSE_ATTR, None)


def _response_cacheable() -> bool:
    """Whether :func:`cached_response` may answer the current request from the cache:
    a GET or HEAD that is not conditional (the view answers ``If-None-Match``)."""
    return request.method in ("GET", "HEAD") and "If-None-Match" not in request.headers


def _prefetch_response() -> None:
    """``before_request``, first: put the ``MGET`` of a ``cached_response`` hit on the
    rate limiter's round trip to the same Redis (it is sent only if one is made)."""
    if not _response_cacheable():
        return
    namespaces = _cached_response_namespaces()
    if namespaces is None:
        return
    state = get_state()
    if state.stores_nothing:
        return
    try:
        query = _response_query()
    except TypeError:
        return  # view args with no JSON form: the view runs uncached
    state._prefetch_versioned(namespaces, "response", query)


@dataclass
class _Uncacheable:
    """A view's response, and whether it may be stored."""

    response: t.Any
    storable: bool

    @classmethod
    def wrap(cls, response: t.Any) -> _Uncacheable:
        storable = isinstance(response, Response) and response.status_code == 200 and not response.is_streamed
        return cls(response, storable)


class _NotStored(Exception):
    """Raised by the encoder of a response that must not be stored."""


def _pack_response(value: _Uncacheable, versions: list[int]) -> bytes:
    """One line of JSON (format, versions, status, headers), then the body's bytes as they
    are: a hit neither parses nor re-encodes the body."""
    if not value.storable:
        raise _NotStored
    response = value.response
    if "Set-Cookie" in response.headers or "Vary" in response.headers:
        raise _NotStored  # for one client, or varying with request headers the key ignores
    headers = [(k, v) for k, v in response.headers.items() if k.lower() not in _UNKEPT_HEADERS]
    head = {"f": _FORMAT, "v": versions, "s": response.status_code, "h": headers}
    # Compact JSON escapes every newline inside strings: the first b"\n" ends the head.
    body: bytes = response.get_data()
    return json.dumps(head, separators=(",", ":")).encode() + b"\n" + body


def _unpack_response(payload: bytes) -> tuple[list[int], _Uncacheable]:
    head_bytes, newline, body = payload.partition(b"\n")
    head = json.loads(head_bytes)
    if not newline or not isinstance(head, dict) or head.get("f") != _FORMAT:
        raise ValueError("not a response this release stored")
    return head["v"], _Uncacheable(Response(body, status=head["s"], headers=head["h"]), True)


# -- commits ---------------------------------------------------------------------------------


def _bump_after_commit(session: orm.Session) -> None:
    if session.in_nested_transaction():
        return  # a SAVEPOINT was released: the outer transaction may still roll back
    pending: set[tuple[RepositoryCacheState, str]] | None = session.info.pop(_PENDING_KEY, None)
    for state, namespace in sorted(pending or (), key=lambda p: p[1]):
        state.invalidate(namespace)


def _forget_after_rollback(session: orm.Session, transaction: orm.SessionTransaction) -> None:
    if transaction.parent is None:
        # The outermost transaction ended; after a commit the set was already taken, so
        # what is left was rolled back and never reached other readers: nothing to bump.
        session.info.pop(_PENDING_KEY, None)


def _invalidate_after_commit(session: orm.Session, state: RepositoryCacheState, namespace: str) -> None:
    session.info.setdefault(_PENDING_KEY, set()).add((state, namespace))
    if not session.info.get(_LISTENING_KEY):
        event.listen(session, "after_commit", _bump_after_commit)
        event.listen(session, "after_transaction_end", _forget_after_rollback)
        session.info[_LISTENING_KEY] = True


# -- the repository ------------------------------------------------------------------------------


class CachedRepository(t.Generic[ModelT]):
    """A :class:`~flask_backend_patterns.repository.Repository` that caches another one.

    ::

        markets = CachedRepository(MarketRepository())
        markets.find_by_id(market_id)      # from the cache, or loaded once and stored

    Reads are read-through with a TTL (``ttl``, else ``BACKEND_CACHE_TTL``); writes go to
    the wrapped repository and bump the model's namespace version after the database
    commit of the session they used (at once when the repository has no session), so
    no worker serves the old value after the write's response. Reads in a session with
    uncommitted writes of the model go to the database and are not stored.

    Cached instances are detached copies: their loaded columns (the ``fields`` of a
    projected read) and the relations named in ``include`` are set; anything else
    raises ``DetachedInstanceError`` on access. ``model`` defaults to
    ``repository.model``; ``namespace`` to :func:`namespace_of` the model. Needs
    :class:`RepositoryCache` on the app.
    """

    def __init__(
        self,
        repository: Repository[ModelT],
        *,
        model: type[t.Any] | None = None,
        namespace: str | None = None,
        ttl: int | None = None,
    ) -> None:
        model = model if model is not None else getattr(repository, "model", None)
        if model is None:
            raise TypeError(f"{type(repository).__name__} has no 'model': pass model= to CachedRepository")
        try:
            self._codec = _codec_for(model)
        except sa.exc.NoInspectionAvailable:
            raise TypeError(f"{model!r} is not a mapped class") from None
        namespace = namespace if namespace is not None else namespace_of(model)
        if not _NAME_RE.match(namespace):
            raise ValueError(f"namespace must be 1-100 of [A-Za-z0-9_.-], got {namespace!r}")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1):
            raise ValueError(f"ttl must be an integer >= 1, got {ttl!r}")
        self.repository = repository
        self.model = model
        self.namespace = namespace
        self.ttl = ttl

    @property
    def session(self) -> orm.Session:
        """The session of the wrapped repository.

        :raises AttributeError: the wrapped repository has none.
        """
        return t.cast(orm.Session, getattr(self.repository, "session"))  # noqa: B009

    # -- plumbing -------------------------------------------------------------------------

    def _session(self) -> orm.Session | None:
        try:
            session = getattr(self.repository, "session", None)
        except RuntimeError:
            return None  # a SQLAlchemyRepository outside Flask-SQLAlchemy: no session to follow
        if isinstance(session, orm.scoped_session):
            session = session()
        return session if isinstance(session, orm.Session) else None

    def _relations(self, include: t.Sequence[str]) -> list[str]:
        specs = getattr(self.repository, "includes", None) or {}
        names = []
        for name in include:
            spec = specs.get(name)
            names.append(spec.relationship if isinstance(spec, Include) else name)
        return names

    def _namespaces(self, include: t.Sequence[str]) -> list[str]:
        namespaces = [self.namespace]
        relationships = self._codec.mapper.relationships
        for name in self._relations(include):
            if name in relationships:
                related = namespace_of(relationships[name].mapper.class_)
                if related not in namespaces:
                    namespaces.append(related)
        return namespaces

    def _dirty(self, state: RepositoryCacheState, namespaces: t.Sequence[str]) -> bool:
        session = self._session()
        if session is None:
            return False
        pending: set[tuple[RepositoryCacheState, str]] = session.info.get(_PENDING_KEY) or set()
        return any((state, n) in pending for n in namespaces)

    def _ttl(self, state: RepositoryCacheState) -> int:
        return self.ttl if self.ttl is not None else state.ttl

    def _read(
        self,
        kind: str,
        args: t.Mapping[str, t.Any],
        include: t.Sequence[str],
        load: t.Callable[[], R],
        encode: t.Callable[[R], t.Any],
        decode: t.Callable[[t.Any], R],
    ) -> R:
        state = get_state()
        if state.stores_nothing:
            return state._load(load)
        namespaces = self._namespaces(include)
        if self._dirty(state, namespaces):
            # Uncommitted writes of this model in this session: read them, store nothing.
            return state._load(load)
        try:
            query = _canonical(args)
        except TypeError:
            return state._load(load)  # an argument with no canonical form: never cached
        versions = state._versions(namespaces)
        if versions is None:
            return state._load(load)
        key = state._key(namespaces, versions, kind, query, self._codec.fingerprint)
        return state._read_through(
            key,
            self._ttl(state),
            load,
            lambda value: _wrap(encode(value)),
            lambda payload: decode(_unwrap(payload)),
        )

    def _dump_list(self, items: t.Iterable[t.Any], relations: t.Sequence[str]) -> list[t.Any]:
        return [self._codec.dump(item, relations) for item in items]

    def _load_list(self, data: t.Any) -> list[ModelT]:
        if not isinstance(data, list):
            raise ValueError("expected a list")
        return [t.cast(ModelT, self._codec.load(item)) for item in data]

    def _load_one(self, data: t.Any) -> ModelT | None:
        return None if data is None else t.cast(ModelT, self._codec.load(data))

    @staticmethod
    def _fields(fields: t.Sequence[str] | None) -> list[str] | None:
        return None if fields is None else sorted(set(fields))

    @staticmethod
    def _sort(sort: Sort) -> list[str] | None:
        if sort is None or sort == "" or sort == []:
            return None
        return [s.strip() for s in sort.split(",")] if isinstance(sort, str) else list(sort)

    @staticmethod
    def _filters(filters: Filters | None) -> dict[str, t.Any] | None:
        return dict(filters) if filters else None

    # -- reads ----------------------------------------------------------------------------

    def find_by_id(
        self, id: t.Any, *, fields: t.Sequence[str] | None = None, include: t.Sequence[str] = ()
    ) -> ModelT | None:
        """The row with this primary key, or ``None`` (a missing id is cached too)."""
        include = list(include)
        relations = self._relations(include)
        return self._read(
            "item",
            {"id": id, "fields": self._fields(fields), "include": sorted(set(include))},
            include,
            lambda: self.repository.find_by_id(id, fields=fields, include=include),
            lambda obj: None if obj is None else self._codec.dump(obj, relations),
            self._load_one,
        )

    def find_by_ids(self, ids: t.Iterable[t.Any]) -> list[ModelT]:
        """The rows with these primary keys, in the order given; unknown ids skipped.

        Each id is cached as its own entry (shared with ``find_by_id(id)``); the ids
        not in the cache are loaded in one call of the wrapped repository.
        """
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return []
        state = get_state()
        namespaces = [self.namespace]
        if self._dirty(state, namespaces):
            return state._load(lambda: self.repository.find_by_ids(wanted))
        try:
            queries = [_canonical({"id": i, "fields": None, "include": []}) for i in wanted]
            batch_query = _canonical({"ids": wanted})
        except TypeError:
            return state._load(lambda: self.repository.find_by_ids(wanted))
        versions = state._versions(namespaces)
        cached = None
        if versions is not None:
            keys = [state._key(namespaces, versions, "item", q, self._codec.fingerprint) for q in queries]
            cached = state._get_many(keys)
        if versions is None or cached is None:
            return state._load(lambda: self.repository.find_by_ids(wanted))
        found: dict[int, ModelT | None] = {}
        for index, payload in enumerate(cached):
            if payload is not None:
                try:
                    found[index] = self._load_one(_unwrap(payload))
                except _PAYLOAD_ERRORS:
                    continue
        missing = [i for i in range(len(wanted)) if i not in found]
        state.stats.incr("hits", len(found))
        loaded: dict[t.Any, ModelT] = {}
        if missing:
            missing_ids = [wanted[i] for i in missing]
            mapper = self._codec.mapper

            def identity(obj: t.Any) -> t.Any:
                pk = mapper.primary_key_from_instance(obj)
                return pk[0] if len(pk) == 1 else tuple(pk)

            def fill(rows: list[ModelT]) -> dict[str, bytes]:
                # Each loaded row also becomes its own item entry. Ids not found are not
                # stored as missing: the wrapped repository may match ids by other rules
                # (type coercion) than find_by_id does.
                by_id = {identity(row): row for row in rows}
                return {
                    keys[i]: _wrap(self._codec.dump(by_id[wanted[i]])) for i in missing if wanted[i] in by_id
                }

            batch_key = state._key(namespaces, versions, "ids", batch_query, self._codec.fingerprint)
            rows = state._read_through(
                batch_key,
                self._ttl(state),
                lambda: self.repository.find_by_ids(missing_ids),
                lambda rows: _wrap(self._dump_list(rows, ())),
                lambda payload: self._load_list(_unwrap(payload)),
                fill,
            )
            loaded = {identity(row): row for row in rows}
        result: list[ModelT] = []
        for index, id in enumerate(wanted):
            obj = found[index] if index in found else loaded.get(id)
            if obj is not None:
                result.append(obj)
        return result

    def find_all(
        self,
        *,
        filters: Filters | None = None,
        sort: Sort = None,
        limit: int | None = None,
        offset: int = 0,
        cursor: str | None = None,
        fields: t.Sequence[str] | None = None,
        include: t.Sequence[str] = (),
    ) -> list[ModelT]:
        """One page of rows, as the wrapped repository's ``find_all``, cached."""
        include = list(include)
        relations = self._relations(include)
        args = {
            "filters": self._filters(filters),
            "sort": self._sort(sort),
            "limit": limit,
            "offset": offset,
            "cursor": cursor,
            "fields": self._fields(fields),
            "include": sorted(set(include)),
        }
        return self._read(
            "all",
            args,
            include,
            lambda: self.repository.find_all(
                filters=filters,
                sort=sort,
                limit=limit,
                offset=offset,
                cursor=cursor,
                fields=fields,
                include=include,
            ),
            lambda items: self._dump_list(items, relations),
            self._load_list,
        )

    def find_page(
        self,
        *,
        filters: Filters | None = None,
        sort: Sort = None,
        limit: int | None = None,
        offset: int | None = None,
        cursor: str | None = None,
        fields: t.Sequence[str] | None = None,
        include: t.Sequence[str] = (),
        with_total: bool = True,
    ) -> Page[ModelT]:
        """One :class:`~flask_backend_patterns.repository.Page`, as the wrapped
        repository's ``find_page``, cached (items, total, limit, offset, next_cursor)."""
        include = list(include)
        relations = self._relations(include)
        args = {
            "filters": self._filters(filters),
            "sort": self._sort(sort),
            "limit": limit,
            "offset": offset,
            "cursor": cursor,
            "fields": self._fields(fields),
            "include": sorted(set(include)),
            "with_total": with_total,
        }

        def encode(page: Page[ModelT]) -> dict[str, t.Any]:
            return {
                "items": self._dump_list(page.items, relations),
                "total": page.total,
                "limit": page.limit,
                "offset": page.offset,
                "next_cursor": page.next_cursor,
            }

        def decode(data: t.Any) -> Page[ModelT]:
            return Page(
                self._load_list(data["items"]),
                data["total"],
                data["limit"],
                data["offset"],
                data["next_cursor"],
            )

        return self._read(
            "page",
            args,
            include,
            lambda: self.repository.find_page(
                filters=filters,
                sort=sort,
                limit=limit,
                offset=offset,
                cursor=cursor,
                fields=fields,
                include=include,
                with_total=with_total,
            ),
            encode,
            decode,
        )

    def count(self, filters: Filters | None = None) -> int:
        """How many rows match ``filters``, cached."""
        return self._read(
            "count",
            {"filters": self._filters(filters)},
            (),
            lambda: self.repository.count(filters),
            _expect_int,
            _expect_int,
        )

    def exists(self, filters: Filters | None = None) -> bool:
        """Whether any row matches ``filters``, cached."""
        return self._read(
            "exists",
            {"filters": self._filters(filters)},
            (),
            lambda: self.repository.exists(filters),
            _expect_bool,
            _expect_bool,
        )

    # -- writes ----------------------------------------------------------------------------

    def create(self, data: t.Mapping[str, t.Any]) -> ModelT:
        """Create through the wrapped repository; invalidate the model after the commit."""
        try:
            return self.repository.create(data)
        finally:
            self._invalidate_on_commit()

    def update(self, id: t.Any, data: t.Mapping[str, t.Any]) -> ModelT:
        """Update through the wrapped repository; invalidate the model after the commit."""
        try:
            return self.repository.update(id, data)
        finally:
            self._invalidate_on_commit()

    def delete(self, id: t.Any) -> None:
        """Delete through the wrapped repository; invalidate the model after the commit."""
        try:
            self.repository.delete(id)
        finally:
            self._invalidate_on_commit()

    def invalidate(self) -> None:
        """Drop every cached read of this model (and of reads that include it), now.

        Call it after writing the model by other means (bulk SQL, another repository).
        When the wrapped repository's session is inside a transaction, the version is
        bumped again after that transaction commits, so a read between now and the
        commit cannot leave its pre-commit result in the cache.
        """
        state = get_state()
        state.invalidate(self.namespace)
        session = self._session()
        if session is not None and session.in_transaction():
            _invalidate_after_commit(session, state, self.namespace)

    def _invalidate_on_commit(self) -> None:
        # A write is invisible to other sessions until its commit: bump after it (and
        # not at all on rollback). Without a session to follow, the write is done: bump.
        state = get_state()
        session = self._session()
        if session is not None and session.in_transaction():
            _invalidate_after_commit(session, state, self.namespace)
        else:
            state.invalidate(self.namespace)


def _expect_int(data: object) -> int:
    if isinstance(data, int) and not isinstance(data, bool):
        return data
    raise ValueError("expected an integer")


def _expect_bool(data: object) -> bool:
    if isinstance(data, bool):
        return data
    raise ValueError("expected a boolean")
