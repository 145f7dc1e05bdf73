"""Units of work: commit on success, full rollback on any error, nested savepoints."""

from __future__ import annotations

import contextlib
import typing as t

import sqlalchemy as sa
from flask import current_app
from sqlalchemy import orm

_DEPTH_KEY = "backend_patterns.transaction_depth"

SessionLike = t.Union[orm.Session, "orm.scoped_session[orm.Session]"]


def _default_session() -> orm.Session:
    try:
        return t.cast(orm.Session, current_app.extensions["sqlalchemy"].session)
    except KeyError:
        raise RuntimeError("transaction() got no session and the app has no Flask-SQLAlchemy") from None


@contextlib.contextmanager
def transaction(session: SessionLike | None = None) -> t.Iterator[orm.Session]:
    """Run a block (or, as ``@transaction()``, a function) as one unit of work.

    The outermost ``transaction()`` on a session commits when the block ends and rolls
    everything back when it raises, then re-raises. A ``transaction()`` inside another
    is a SAVEPOINT: its failure undoes only its own work if the caller catches the
    error; the outer block still decides whether anything is committed.

    ``session`` defaults to the current app's Flask-SQLAlchemy session. Work already
    pending in the session when the outermost block starts is part of the unit.
    """
    sess = t.cast(orm.Session, session) if session is not None else _default_session()
    depth = sess.info.get(_DEPTH_KEY, 0)
    sess.info[_DEPTH_KEY] = depth + 1
    try:
        if depth:
            with sess.begin_nested():
                yield sess
            return
        try:
            yield sess
            sess.commit()
        except BaseException:
            sess.rollback()
            raise
    finally:
        sess.info[_DEPTH_KEY] = depth


def enable_sqlite_savepoints(engine: sa.Engine) -> None:
    """Make SAVEPOINTs (nested ``transaction()``) work on SQLite's ``pysqlite`` driver.

    pysqlite starts transactions lazily and on its own terms, so a SAVEPOINT issued
    first opens (and its RELEASE commits) a transaction of its own. This takes the
    driver's transaction handling away and emits ``BEGIN`` when SQLAlchemy begins,
    the recipe from SQLAlchemy's SQLite documentation. No-op on other databases.
    """
    if engine.dialect.name != "sqlite" or engine.dialect.driver != "pysqlite":
        return

    @sa.event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi_connection: t.Any, _record: t.Any) -> None:
        dbapi_connection.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def _begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN")
