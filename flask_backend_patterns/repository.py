"""Repository base over SQLAlchemy 2 / Flask-SQLAlchemy.

``Repository[ModelT]`` is the protocol every repository (and the cached one) follows;
``SQLAlchemyRepository[ModelT]`` implements it for one mapped class with allow-listed
filter and sort fields, column projection, batch-loaded relations and keyset pages.

Repositories only talk to the database: they ``flush`` and never ``commit``. Wrap a
unit of work in :func:`flask_backend_patterns.transactions.transaction`.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import functools
import typing as t
import uuid
from dataclasses import dataclass

import sqlalchemy as sa
from flask import current_app
from itsdangerous import BadData
from itsdangerous import URLSafeSerializer
from sqlalchemy import orm

from .errors import NotFoundError
from .errors import ValidationError

ModelT = t.TypeVar("ModelT")
T = t.TypeVar("T")

FILTER_OPERATORS = frozenset({"eq", "ne", "in", "not_in", "lt", "lte", "gt", "gte", "contains"})
_CURSOR_SALT = "backend_patterns.repository.cursor"

Filters = t.Mapping[str, t.Any]
Sort = str | t.Sequence[str] | None


@dataclass(frozen=True)
class Page(t.Generic[T]):
    """One page of a list: its items and how to get the rest.

    ``total`` is the number of rows matching the filters (``None`` when not asked
    for); ``next_cursor`` fetches the following page by keyset, ``None`` on the last.
    """

    items: list[T]
    total: int | None
    limit: int
    offset: int | None
    next_cursor: str | None


class Repository(t.Protocol[ModelT]):
    """What the service layer needs from a repository."""

    def find_by_id(
        self, id: t.Any, *, fields: t.Sequence[str] | None = None, include: t.Sequence[str] = ()
    ) -> ModelT | None: ...

    def find_by_ids(self, ids: t.Iterable[t.Any]) -> list[ModelT]: ...

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
    ) -> list[ModelT]: ...

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
    ) -> Page[ModelT]: ...

    def count(self, filters: Filters | None = None) -> int: ...

    def exists(self, filters: Filters | None = None) -> bool: ...

    def create(self, data: t.Mapping[str, t.Any]) -> ModelT: ...

    def update(self, id: t.Any, data: t.Mapping[str, t.Any]) -> ModelT: ...

    def delete(self, id: t.Any) -> None: ...


class UtcDateTime(sa.types.TypeDecorator[dt.datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite stores naive UTC).

    Values must be aware; they come back aware in UTC, so comparisons and cursors
    behave the same on SQLite and PostgreSQL.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("UtcDateTime needs an aware datetime")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


def utcnow() -> dt.datetime:
    """The current time, aware, in UTC."""
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Include:
    """A relation that ``include=`` may embed: loaded for a whole page in one query.

    ``relationship`` names the mapped relationship; ``columns`` the related columns to
    load (``None``: all).
    """

    relationship: str
    columns: tuple[str, ...] | None = None


@dataclass(frozen=True)
class _SortKey:
    name: str
    column: sa.ColumnElement[t.Any]
    descending: bool

    @property
    def token(self) -> str:
        return f"-{self.name}" if self.descending else self.name


def _encode_value(value: t.Any) -> t.Any:
    if isinstance(value, dt.datetime):
        return {"dt": value.isoformat()}
    if isinstance(value, dt.date):
        return {"d": value.isoformat()}
    if isinstance(value, decimal.Decimal):
        return {"dec": str(value)}
    if isinstance(value, uuid.UUID):
        return {"uuid": str(value)}
    if isinstance(value, bytes):
        return {"b": base64.b64encode(value).decode()}
    return value


def _decode_value(value: t.Any) -> t.Any:
    if isinstance(value, dict) and len(value) == 1:
        ((tag, raw),) = value.items()
        decoders: dict[str, t.Callable[[str], t.Any]] = {
            "dt": dt.datetime.fromisoformat,
            "d": dt.date.fromisoformat,
            "dec": decimal.Decimal,
            "uuid": uuid.UUID,
            "b": base64.b64decode,
        }
        if tag in decoders and isinstance(raw, str):
            return decoders[tag](raw)
    if isinstance(value, (dict, list)):
        raise ValueError("unexpected cursor value")
    return value


@functools.lru_cache(maxsize=8)
def _cursor_serializer(secret: str | bytes) -> URLSafeSerializer:
    # Built once per secret: every page of every list signs or checks a cursor.
    return URLSafeSerializer(secret, salt=_CURSOR_SALT)


def _invalid(field: str, message: str) -> ValidationError:
    return ValidationError(f"Invalid {field}: {message}", details={field: [message]})


class SQLAlchemyRepository(t.Generic[ModelT]):
    """A repository for one mapped class.

    Subclass and set the class attributes::

        class MarketRepository(SQLAlchemyRepository[Market]):
            model = Market
            filter_fields = {"status": {"eq", "in"}, "volume": {"gte", "lte"}}
            sort_fields = {"volume", "created_at", "name", "id"}
            default_sort = "-created_at"
            includes = {"creator": Include("creator", ("id", "name"))}

    ``session`` is a SQLAlchemy ``Session`` or ``scoped_session``; by default the
    current app's Flask-SQLAlchemy session. Keyset cursors are signed with
    ``cursor_secret``, by default the app's ``SECRET_KEY``: every worker and host
    must share it. Sort fields must be NOT NULL columns for keyset pages to be exact.

    Bad input (an unknown filter, sort or projected field, a limit out of range, a
    forged cursor) raises :class:`~flask_backend_patterns.errors.ValidationError`.
    """

    model: t.ClassVar[type[t.Any]]
    #: field -> operators allowed on it (see ``FILTER_OPERATORS``).
    filter_fields: t.ClassVar[t.Mapping[str, t.Collection[str]]] = {}
    sort_fields: t.ClassVar[t.Collection[str]] = ()
    default_sort: t.ClassVar[str | t.Sequence[str]] = ()
    #: fields ``fields=`` may select; ``None``: every column.
    projectable_fields: t.ClassVar[t.Collection[str] | None] = None
    includes: t.ClassVar[t.Mapping[str, Include]] = {}
    default_limit: t.ClassVar[int] = 20
    max_limit: t.ClassVar[int] = 100
    #: beyond this an offset is refused (databases overflow; use cursors to go deep).
    max_offset: t.ClassVar[int] = 1_000_000_000

    def __init__(
        self,
        session: orm.Session | orm.scoped_session[orm.Session] | None = None,
        *,
        cursor_secret: str | bytes | None = None,
    ) -> None:
        self._session = session
        self._cursor_secret = cursor_secret

    # -- plumbing ----------------------------------------------------------------

    @property
    def session(self) -> orm.Session:
        """The session this repository works in."""
        if self._session is not None:
            return t.cast(orm.Session, self._session)
        try:
            return t.cast(orm.Session, current_app.extensions["sqlalchemy"].session)
        except KeyError:
            raise RuntimeError(
                f"{type(self).__name__} got no session and the app has no Flask-SQLAlchemy"
            ) from None

    @classmethod
    def _mapper(cls) -> orm.Mapper[t.Any]:
        return t.cast(orm.Mapper[t.Any], sa.inspect(cls.model))

    @classmethod
    def _pk_name(cls) -> str:
        """The attribute name of the (single) primary key."""
        mapper = cls._mapper()
        if len(mapper.primary_key) != 1:
            raise TypeError(
                f"{cls.__name__}: one primary key column is needed, {cls.model} has {len(mapper.primary_key)}"
            )
        return mapper.get_property_by_column(mapper.primary_key[0]).key

    @classmethod
    def _pk(cls) -> sa.ColumnElement[t.Any]:
        return cls._column(cls._pk_name())

    @classmethod
    def _column(cls, name: str) -> sa.ColumnElement[t.Any]:
        return t.cast(sa.ColumnElement[t.Any], getattr(cls.model, name))

    @classmethod
    def column_names(cls) -> list[str]:
        """Names of the mapped column attributes of the model."""
        return [attr.key for attr in cls._mapper().column_attrs]

    def _serializer(self) -> URLSafeSerializer:
        secret = self._cursor_secret or current_app.config.get("SECRET_KEY")
        if not secret:
            raise RuntimeError("keyset cursors need a secret: set SECRET_KEY or pass cursor_secret")
        return _cursor_serializer(secret)

    # -- query parts -----------------------------------------------------------------

    def _filter_clauses(self, filters: Filters | None) -> list[sa.ColumnElement[bool]]:
        clauses: list[sa.ColumnElement[bool]] = []
        for key, value in (filters or {}).items():
            name, _, op = key.partition("__")
            op = op or ("in" if isinstance(value, (list, tuple, set, frozenset)) else "eq")
            allowed = self.filter_fields.get(name)
            if allowed is None:
                raise _invalid(
                    "filters", f"'{name}' is not a filter field; use one of {sorted(self.filter_fields)}"
                )
            if op not in allowed or op not in FILTER_OPERATORS:
                raise _invalid("filters", f"operator '{op}' is not allowed on '{name}'")
            column = self._column(name)
            if op in ("in", "not_in"):
                values = list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]
                clauses.append(column.in_(values) if op == "in" else column.not_in(values))
            elif op == "contains":
                clauses.append(column.icontains(str(value), autoescape=True))
            else:
                operator = {
                    "eq": "__eq__",
                    "ne": "__ne__",
                    "lt": "__lt__",
                    "lte": "__le__",
                    "gt": "__gt__",
                    "gte": "__ge__",
                }[op]
                clauses.append(getattr(column, operator)(value))
        return clauses

    def _sort_keys(self, sort: Sort) -> list[_SortKey]:
        tokens: t.Sequence[str]
        if sort is None or sort == "" or sort == []:
            sort = self.default_sort
        tokens = [s.strip() for s in sort.split(",")] if isinstance(sort, str) else list(sort)
        keys: list[_SortKey] = []
        pk_name = self._pk_name()
        for token in tokens:
            if not token:
                continue
            name = token.lstrip("+-")
            if name not in self.sort_fields:
                raise _invalid("sort", f"cannot sort by '{name}'; use one of {sorted(self.sort_fields)}")
            if any(k.name == name for k in keys):
                raise _invalid("sort", f"'{name}' is given twice")
            keys.append(_SortKey(name, self._column(name), token.startswith("-")))
        if not any(k.name == pk_name for k in keys):
            # Ties are broken by primary key so that pages are stable.
            keys.append(_SortKey(pk_name, self._column(pk_name), keys[-1].descending if keys else False))
        return keys

    def _check_page(self, limit: int | None, offset: int | None, cursor: str | None) -> int:
        limit = self.default_limit if limit is None else limit
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= self.max_limit:
            raise _invalid("limit", f"must be between 1 and {self.max_limit}")
        if offset is not None and (
            isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= self.max_offset
        ):
            raise _invalid("offset", f"must be between 0 and {self.max_offset}")
        if cursor is not None and offset:
            raise _invalid("cursor", "give either cursor or offset, not both")
        return limit

    def _load_options(
        self, fields: t.Sequence[str] | None, include: t.Sequence[str], extra_columns: t.Iterable[str] = ()
    ) -> list[t.Any]:
        options: list[t.Any] = []
        relations: list[tuple[str, Include]] = []
        for name in include:
            spec = self.includes.get(name)
            if spec is None:
                raise _invalid("include", f"cannot include '{name}'; use one of {sorted(self.includes)}")
            relations.append((name, spec))
        if fields is not None:
            allowed = self.projectable_fields if self.projectable_fields is not None else self.column_names()
            unknown = [f for f in fields if f not in allowed]
            if unknown or not fields:
                raise _invalid("fields", f"unknown field(s) {unknown}; use any of {sorted(allowed)}")
            needed = dict.fromkeys([*fields, self._pk_name(), *extra_columns])
            for _, spec in relations:
                # The foreign keys a relation is loaded through must be loaded too.
                rel = self._mapper().relationships[spec.relationship]
                needed.update(dict.fromkeys(c.key for c in rel.local_columns if c.key is not None))
            options.append(orm.load_only(*(getattr(self.model, n) for n in needed), raiseload=True))
        for _, spec in relations:
            loader = orm.selectinload(getattr(self.model, spec.relationship))
            if spec.columns is not None:
                target = self._mapper().relationships[spec.relationship].mapper.class_
                loader = loader.load_only(*(getattr(target, c) for c in spec.columns))
            options.append(loader)
        return options

    def _decode_cursor(self, cursor: str, keys: list[_SortKey]) -> list[t.Any]:
        try:
            payload = self._serializer().loads(cursor)
            if not isinstance(payload, dict) or payload.get("s") != [k.token for k in keys]:
                raise _invalid("cursor", "this cursor belongs to another sort order")
            values = [_decode_value(v) for v in payload["v"]]
            if len(values) != len(keys):
                raise ValueError("cursor length")
        except (BadData, KeyError, TypeError, ValueError):
            raise _invalid("cursor", "not a cursor this API issued") from None
        return values

    def _encode_cursor(self, item: t.Any, keys: list[_SortKey]) -> str:
        values = [_encode_value(getattr(item, k.name)) for k in keys]
        return str(self._serializer().dumps({"s": [k.token for k in keys], "v": values}))

    @staticmethod
    def _after(keys: list[_SortKey], values: list[t.Any]) -> sa.ColumnElement[bool]:
        """Rows strictly after ``values`` in the order of ``keys``."""
        if len({k.descending for k in keys}) == 1:
            # One direction: a row-value comparison, which an index on the keys serves.
            left = sa.tuple_(*(k.column for k in keys))
            right = sa.tuple_(*(sa.literal(v, k.column.type) for k, v in zip(keys, values, strict=True)))
            return left < right if keys[0].descending else left > right
        clauses = []
        for i, key in enumerate(keys):
            equal = [keys[j].column == values[j] for j in range(i)]
            beyond = key.column < values[i] if key.descending else key.column > values[i]
            clauses.append(sa.and_(*equal, beyond))
        return sa.or_(*clauses)

    def _list_statement(
        self,
        *,
        filters: Filters | None,
        sort: Sort,
        limit: int,
        offset: int | None,
        cursor: str | None,
        fields: t.Sequence[str] | None,
        include: t.Sequence[str],
    ) -> tuple[sa.Select[t.Any], list[_SortKey]]:
        keys = self._sort_keys(sort)
        stmt = sa.select(self.model).where(*self._filter_clauses(filters))
        if cursor is not None:
            stmt = stmt.where(self._after(keys, self._decode_cursor(cursor, keys)))
        stmt = stmt.order_by(*(k.column.desc() if k.descending else k.column.asc() for k in keys))
        stmt = stmt.options(*self._load_options(fields, include, [k.name for k in keys]))
        if offset:
            stmt = stmt.offset(offset)
        return stmt.limit(limit), keys

    # -- reads -------------------------------------------------------------------

    def find_by_id(
        self, id: t.Any, *, fields: t.Sequence[str] | None = None, include: t.Sequence[str] = ()
    ) -> ModelT | None:
        """The row with this primary key, or ``None``."""
        stmt = sa.select(self.model).where(self._pk() == id).options(*self._load_options(fields, include))
        return t.cast("ModelT | None", self.session.scalars(stmt).first())

    def find_by_ids(self, ids: t.Iterable[t.Any]) -> list[ModelT]:
        """The rows with these primary keys, in the order given, in one query.

        Unknown ids are skipped; a repeated id appears once.
        """
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return []
        pk_name = self._pk_name()
        rows = self.session.scalars(sa.select(self.model).where(self._pk().in_(wanted))).all()
        by_id = {getattr(row, pk_name): row for row in rows}
        return [by_id[i] for i in wanted if i in by_id]

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
        """Rows matching ``filters`` (``field`` or ``field__op`` -> value), sorted, one page.

        ``sort`` is ``"name"``, ``"-name"`` or several, comma-separated; ties are
        broken by primary key. ``fields`` selects only those columns (others raise on
        access); ``include`` loads the named relations in one extra query each.
        """
        limit = self._check_page(limit, offset, cursor)
        stmt, _ = self._list_statement(
            filters=filters,
            sort=sort,
            limit=limit,
            offset=offset,
            cursor=cursor,
            fields=fields,
            include=include,
        )
        return list(self.session.scalars(stmt).all())

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
        """Like :meth:`find_all`, with the total count and the next page's cursor.

        A cursor page costs the same at any depth; ``offset`` pages grow with depth.
        """
        limit = self._check_page(limit, offset, cursor)
        stmt, keys = self._list_statement(
            filters=filters,
            sort=sort,
            limit=limit + 1,
            offset=offset,
            cursor=cursor,
            fields=fields,
            include=include,
        )
        total: int | None = None
        if with_total:
            # The total rides along as one more column of the page query: one round trip.
            rows = self.session.execute(stmt.add_columns(self.total_expression(filters))).all()
            items = [row[0] for row in rows]
            if rows:
                total = int(rows[0][1] or 0)
            elif cursor is None and not offset:
                total = 0
            else:
                total = self.count(filters)
        else:
            items = list(self.session.scalars(stmt).all())
        next_cursor = None
        if len(items) > limit:
            items = items[:limit]
            next_cursor = self._encode_cursor(items[-1], keys)
        return Page(items, total, limit, None if cursor is not None else (offset or 0), next_cursor)

    def total_expression(self, filters: Filters | None = None) -> sa.ScalarSelect[t.Any]:
        """The SQL that counts the rows matching ``filters``, as a scalar subquery.

        :meth:`count` runs it and :meth:`find_page` adds it to the page query. Override
        it to answer from something cheaper than ``COUNT(*)``, such as a counter table.
        """
        return (
            sa.select(sa.func.count())
            .select_from(self.model)
            .where(*self._filter_clauses(filters))
            .scalar_subquery()
        )

    def count(self, filters: Filters | None = None) -> int:
        """How many rows match ``filters``."""
        return int(self.session.scalar(sa.select(self.total_expression(filters))) or 0)

    def exists(self, filters: Filters | None = None) -> bool:
        """Whether any row matches ``filters``."""
        inner = sa.select(self._pk()).where(*self._filter_clauses(filters)).limit(1)
        return bool(self.session.scalar(sa.select(sa.exists(inner))))

    # -- writes (flush, never commit) ------------------------------------------------

    def _check_writable(self, data: t.Mapping[str, t.Any]) -> None:
        names = set(self.column_names()) | set(self._mapper().relationships.keys())
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{self.model.__name__} has no attribute(s) {unknown}")

    def create(self, data: t.Mapping[str, t.Any]) -> ModelT:
        """Add a row built from ``data`` and flush it (ids and defaults are set).

        :raises ValueError: a key that is not an attribute of the model.
        """
        self._check_writable(data)
        obj = self.model(**data)
        self.session.add(obj)
        self.session.flush()
        return t.cast(ModelT, obj)

    def _get_or_raise(self, id: t.Any) -> ModelT:
        obj = self.session.get(self.model, id)
        if obj is None:
            raise NotFoundError(f"{self.model.__name__} {id} not found")
        return t.cast(ModelT, obj)

    def update(self, id: t.Any, data: t.Mapping[str, t.Any]) -> ModelT:
        """Set the attributes in ``data`` on the row ``id`` and flush.

        :raises NotFoundError: no such row.
        :raises ValueError: a key that is not an attribute of the model.
        """
        self._check_writable(data)
        obj = self._get_or_raise(id)
        for key, value in data.items():
            setattr(obj, key, value)
        self.session.flush()
        return obj

    def delete(self, id: t.Any) -> None:
        """Delete the row ``id`` and flush.

        :raises NotFoundError: no such row.
        """
        self.session.delete(self._get_or_raise(id))
        self.session.flush()
