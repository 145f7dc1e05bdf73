"""Semantic search over markets: the index job and each process's vector matrix.

A market's vector is made by the index job (``index_market``), queued when a market is
created or changed and by ``POST /api/markets/<id>/index``. The job writes the vector and
bumps the single ``search_revision`` row in one transaction, so revisions commit in
order. Each process keeps the vectors in a :class:`~example_app.search.VectorIndex` and,
before a search, loads the rows newer than the revision it holds (a full reload when rows
went away, e.g. a market was deleted).
"""

from __future__ import annotations

import logging
import threading
import typing as t
from dataclasses import dataclass
from dataclasses import field

import sqlalchemy as sa
from flask import current_app
from flask import Flask

from flask_backend_patterns.errors import ServiceUnavailableError
from flask_backend_patterns.jobs import JobInfo
from flask_backend_patterns.retry import retrying
from flask_backend_patterns.transactions import transaction

from .extensions import db
from .extensions import jobs
from .models import Market
from .models import MarketEmbedding
from .models import SearchRevision
from .search import Embedder
from .search import get_embedder
from .search import market_text
from .search import vector_from_bytes
from .search import vector_to_bytes
from .search import VectorIndex

log = logging.getLogger(__name__)

EXTENSION_KEY = "example_app.market_index"


def current_embedder() -> Embedder:
    """The embedder named by ``EXAMPLE_SEARCH_EMBEDDER`` ("hashing" or "sentence")."""
    return get_embedder(current_app.config["EXAMPLE_SEARCH_EMBEDDER"])


def index_job_id(market_id: str, version: int) -> str:
    """One job per market version: queuing the same version twice while pending is one job,
    and a change made while a job runs gets a job of its own."""
    return f"index-{market_id}-{version}"


@retrying(on=(sa.exc.OperationalError,), attempts=3, base_delay=0.2, max_delay=2.0)
def index_market(market_id: str) -> dict[str, t.Any]:
    """The index job: embed the market as it is now and store the vector (retried when the
    database blips). Returns what it did, as JSON."""
    market = db.session.get(Market, market_id)
    if market is None:
        return {"market_id": market_id, "indexed": False, "reason": "market not found"}
    embedder = current_embedder()
    version, text = market.version, market_text(market.name, market.description)
    # End the read before the slow embedding: no transaction idles through it (and on
    # SQLite a write from a stale read snapshot would fail).
    db.session.rollback()
    vector = embedder.embed([text])[0]
    with transaction(db.session):
        # The revision's row lock comes first (as in every writer of embeddings), then
        # the market is read again: a job of an older version, slower to embed than the
        # job of a newer one, must not overwrite its vector.
        revision = bump_search_revision(db.session)
        current = db.session.scalar(sa.select(Market.version).where(Market.id == market_id))
        if current != version:
            return {"market_id": market_id, "indexed": False, "reason": "changed since; newer job indexes it"}
        row = db.session.get(MarketEmbedding, market_id) or MarketEmbedding(market_id=market_id)
        row.embedder = embedder.name
        row.vector = vector_to_bytes(vector)
        row.market_version = market.version
        row.revision = revision
        db.session.add(row)
    log.info("indexed market %s at revision %s", market_id, revision)
    return {"market_id": market_id, "indexed": True, "revision": revision, "embedder": embedder.name}


def reindex_all(*, batch_size: int = 1000, progress: t.Callable[[int], None] | None = None) -> int:
    """Embed every market again and store the vectors, in batches; returns how many.

    For markets written without the API (``flask seed``, SQL), and after a change of
    embedder. Each batch is one transaction with one revision bump.
    """
    embedder = current_embedder()
    done = 0
    last_id = ""
    while True:
        rows = db.session.execute(
            sa.select(Market.id, Market.name, Market.description, Market.version)
            .where(Market.id > last_id)
            .order_by(Market.id)
            .limit(batch_size)
        ).all()
        if not rows:
            return done
        db.session.rollback()  # no transaction idles through the embedding (see index_market)
        vectors = embedder.embed([market_text(r.name, r.description) for r in rows])
        with transaction(db.session):
            revision = bump_search_revision(db.session)
            ids = [r.id for r in rows]
            # Under the revision lock: markets deleted or changed since they were read are
            # left to their own jobs.
            still = dict(
                db.session.execute(sa.select(Market.id, Market.version).where(Market.id.in_(ids))).all()
            )
            fresh = [(r, v) for r, v in zip(rows, vectors, strict=True) if still.get(r.id) == r.version]
            keep = [r.id for r, _ in fresh]
            if keep:
                db.session.execute(sa.delete(MarketEmbedding).where(MarketEmbedding.market_id.in_(keep)))
                db.session.execute(
                    sa.insert(MarketEmbedding),
                    [
                        {
                            "market_id": r.id,
                            "embedder": embedder.name,
                            "vector": vector_to_bytes(vector),
                            "market_version": r.version,
                            "revision": revision,
                        }
                        for r, vector in fresh
                    ],
                )
        done += len(rows)
        last_id = rows[-1].id
        if progress is not None:
            progress(len(rows))


def bump_search_revision(session: sa.orm.Session) -> int:
    """Take the next search revision, in the caller's transaction.

    Every change to the embeddings does, so each process's matrix notices it. The row
    lock taken here orders those transactions' commits by revision.
    """
    revision = session.execute(
        sa.update(SearchRevision)
        .where(SearchRevision.id == 1)
        .values(revision=SearchRevision.revision + 1)
        .returning(SearchRevision.revision)
    ).scalar_one_or_none()
    if revision is None:  # a database made without the migration's first row
        revision = 1
        session.add(SearchRevision(id=1, revision=revision))
    return int(revision)


def queue_index(market_id: str, version: int) -> JobInfo:
    """Queue the index job of a market at ``version`` (inline when no Redis is configured).

    :raises ServiceUnavailableError: the queue's Redis does not answer.
    """
    return jobs.enqueue(index_market, market_id, job_id=index_job_id(market_id, version))


def queue_index_after_write(market_id: str, version: int) -> None:
    """Queue the index job of a market just written; a queue outage does not undo the write.

    Called after the commit with the id and version read before it: reading them again
    would open a read transaction that an inline job's commit makes stale (on SQLite, a
    later write in that session would then fail). The market is committed already: the
    search misses its change until it is indexed again (``POST /api/markets/<id>/index``),
    which the warning says.
    """
    try:
        queue_index(market_id, version)
    except ServiceUnavailableError:
        log.warning("market %s saved but not queued for indexing: the job queue is down", market_id)


@dataclass
class MarketIndex:
    """This process's vectors of one embedder, and the search revision they reflect."""

    embedder: str
    dimension: int
    index: VectorIndex
    revision: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def refresh(self, session: sa.orm.Session) -> None:
        """Load what changed since our revision (everything, when rows went away)."""
        current = session.scalar(sa.select(SearchRevision.revision).where(SearchRevision.id == 1)) or 0
        if current == self.revision:
            return
        with self.lock:
            if current == self.revision:
                return
            table = MarketEmbedding
            mine = table.embedder == self.embedder
            rows = session.execute(
                sa.select(table.market_id, table.vector, table.revision).where(
                    mine, table.revision > self.revision
                )
            ).all()
            if rows:
                self.index.upsert(
                    [r.market_id for r in rows],
                    _matrix([r.vector for r in rows], self.dimension),
                )
            total = session.scalar(sa.select(sa.func.count()).select_from(table).where(mine)) or 0
            if total != len(self.index):
                # Rows went away (a market deleted, another embedder): start again.
                everything = session.execute(sa.select(table.market_id, table.vector).where(mine)).all()
                self.index.replace(
                    [r.market_id for r in everything],
                    _matrix([r.vector for r in everything], self.dimension),
                )
            self.revision = max([current, *(r.revision for r in rows)])


def _matrix(blobs: list[bytes], dimension: int) -> t.Any:
    import numpy as np

    if not blobs:
        return np.zeros((0, dimension), dtype=np.float32)
    return np.vstack([vector_from_bytes(b, dimension) for b in blobs])


def get_market_index(app: Flask | None = None) -> MarketIndex:
    """This process's :class:`MarketIndex` of the app's embedder (made on first use)."""
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    holder = app.extensions.get(EXTENSION_KEY)
    if holder is None:
        embedder = get_embedder(app.config["EXAMPLE_SEARCH_EMBEDDER"])
        holder = app.extensions.setdefault(
            EXTENSION_KEY, MarketIndex(embedder.name, embedder.dimension, VectorIndex(embedder.dimension))
        )
    return t.cast(MarketIndex, holder)
