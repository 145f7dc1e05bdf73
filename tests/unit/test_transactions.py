"""transaction(): commit on success, full rollback on failure, nested savepoints."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import orm

from flask_backend_patterns.transactions import enable_sqlite_savepoints
from flask_backend_patterns.transactions import transaction


class Base(orm.DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    name: orm.Mapped[str] = orm.mapped_column(sa.String(50), unique=True)


@pytest.fixture
def session(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'tx.db'}")
    enable_sqlite_savepoints(engine)
    Base.metadata.create_all(engine)
    with orm.Session(engine) as session:
        yield session
    engine.dispose()


def names(session):
    with orm.Session(session.get_bind()) as fresh:  # what another connection sees
        return sorted(fresh.scalars(sa.select(Item.name)))


def test_commits_on_success(session):
    with transaction(session):
        session.add(Item(name="a"))
    assert names(session) == ["a"]


def test_failure_half_way_writes_nothing(session):
    with pytest.raises(RuntimeError), transaction(session):
        session.add(Item(name="a"))
        session.flush()
        session.add(Item(name="b"))
        session.flush()
        raise RuntimeError("half-way")
    assert names(session) == []


def test_database_error_rolls_back_everything(session):
    with transaction(session):
        session.add(Item(name="dup"))
    with pytest.raises(sa.exc.IntegrityError), transaction(session):
        session.add(Item(name="fresh"))
        session.flush()
        session.add(Item(name="dup"))
        session.flush()
    assert names(session) == ["dup"]


def test_nested_failure_caught_undoes_only_the_savepoint(session):
    with transaction(session):
        session.add(Item(name="outer"))
        with pytest.raises(ValueError), transaction(session):
            session.add(Item(name="inner"))
            session.flush()
            raise ValueError
        session.add(Item(name="after"))
    assert names(session) == ["after", "outer"]


def test_nested_success_committed_by_outer_only(session):
    with pytest.raises(KeyError), transaction(session):
        with transaction(session):
            session.add(Item(name="inner"))
        assert names(session) == []  # the savepoint alone commits nothing
        raise KeyError
    assert names(session) == []


def test_decorator_form(session):
    @transaction(session)
    def add(name):
        session.add(Item(name=name))
        if name == "bad":
            raise LookupError

    add("good")
    with pytest.raises(LookupError):
        add("bad")
    assert names(session) == ["good"]


def test_depth_resets_after_failure(session):
    with pytest.raises(RuntimeError), transaction(session):
        raise RuntimeError
    assert session.info["backend_patterns.transaction_depth"] == 0


def test_defaults_to_flask_sqlalchemy_session(tmp_path):
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path / 'f.db'}"
    db = SQLAlchemy(app, model_class=Base)
    with app.app_context():
        enable_sqlite_savepoints(db.engine)
        Base.metadata.create_all(db.engine)
        with transaction() as sess:
            sess.add(Item(name="x"))
        assert names(db.session) == ["x"]
        db.engine.dispose()


def test_without_flask_sqlalchemy_is_a_clear_error():
    app = Flask(__name__)
    with app.app_context(), pytest.raises(RuntimeError, match="Flask-SQLAlchemy"), transaction():
        pass
