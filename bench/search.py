"""Semantic search: query latency over 100,000 markets, and quality on the labelled set.

Builds ``N_MARKETS`` synthetic market texts (deterministic), embeds them with the hashing
embedder (timing the throughput), loads a :class:`~example_app.search.VectorIndex`, then
times embedding a query plus its top 10 for ``QUERIES`` queries, ``--rounds`` times over.
The sentence embedder, when the ``semantic`` extra is installed, is timed the same way on
a matrix of random unit vectors (a search costs the same whatever the values; embedding
100,000 texts with it would take many minutes on 2 cores). Both embedders are scored on
``tests/data/search_labelled.json`` (hit@1, MRR).

Writes the ``search`` section of docs/benchmarks.md. Needs no database, Redis or network.
Usage: ``python bench/run.py --only search`` or ``python -m bench.search [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
import typing as t

import numpy as np

from bench.common import machine
from bench.common import N_MARKETS
from bench.common import ROOT
from bench.common import write_section
from example_app.search import Embedder
from example_app.search import evaluate
from example_app.search import get_embedder
from example_app.search import market_text
from example_app.search import VectorIndex

LABELLED = ROOT / "tests" / "data" / "search_labelled.json"
QUERIES = 200
TOP_K = 10
TARGET_P50_MS = 30.0

_TEAMS = [
    "Arsenal",
    "Liverpool",
    "Real Madrid",
    "Barcelona",
    "Bayern Munich",
    "Juventus",
    "Celtics",
    "Lakers",
    "Warriors",
    "Chiefs",
    "Eagles",
    "Yankees",
    "Dodgers",
    "Maple Leafs",
    "Brazil",
    "Argentina",
    "France",
    "England",
    "Spain",
    "Germany",
    "Japan",
    "Morocco",
    "New Zealand",
]
_COMPETITIONS = [
    "World Cup",
    "Champions League",
    "Premier League",
    "NBA Finals",
    "Super Bowl",
    "World Series",
    "Stanley Cup",
    "Rugby World Cup",
    "Euro",
    "Copa America",
    "Six Nations",
    "Olympic final",
]
_COINS = [("Bitcoin", "BTC"), ("Ether", "ETH"), ("Solana", "SOL"), ("XRP", "XRP"), ("Dogecoin", "DOGE")]
_COUNTRIES = [
    "United States",
    "United Kingdom",
    "France",
    "Germany",
    "Brazil",
    "India",
    "Japan",
    "Canada",
    "Mexico",
    "Italy",
    "Spain",
    "Australia",
    "South Korea",
    "Poland",
    "Argentina",
    "Nigeria",
]
_OFFICES = ["presidential", "parliamentary", "general", "mayoral", "senate", "regional"]
_PARTIES = ["conservative", "labour", "green", "liberal", "socialist", "centrist", "nationalist"]
_INDICATORS = [
    ("inflation", "year-over-year consumer price index"),
    ("unemployment", "headline jobless rate"),
    ("GDP growth", "real gross domestic product growth"),
    ("the policy rate", "central bank's main interest rate"),
    ("the 10-year bond yield", "benchmark government bond yield"),
]
_CITIES = [
    "London",
    "New York",
    "Paris",
    "Tokyo",
    "Chicago",
    "Berlin",
    "Madrid",
    "Toronto",
    "Sydney",
    "Mumbai",
    "São Paulo",
    "Zürich",
    "Seoul",
    "Denver",
    "Miami",
    "Oslo",
]
_WEATHER = [
    ("snow", "inches of snowfall"),
    ("rain", "millimetres of rain"),
    ("heat", "days above 35 °C"),
    ("frost", "nights below freezing"),
]
_COMPANIES = [
    "Apple",
    "Google",
    "Microsoft",
    "Tesla",
    "SpaceX",
    "Nvidia",
    "Amazon",
    "Meta",
    "OpenAI",
    "Samsung",
    "Sony",
    "Nintendo",
    "Netflix",
    "Anthropic",
    "Rivian",
    "Boeing",
]
_PRODUCTS = [
    "a foldable phone",
    "smart glasses",
    "a humanoid robot",
    "a new flagship model",
    "a console",
    "a self-driving taxi service",
    "a satellite internet plan",
    "an electric pickup",
    "a chip",
    "a streaming bundle",
    "a reusable rocket",
    "an AI assistant",
]
_MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
_SYLLABLES = ["ka", "lo", "mi", "ra", "ten", "vo", "sil", "dor", "an", "bre", "zu", "mar", "qui", "el", "no"]


def _person(rng: random.Random) -> str:
    """A made-up full name: the vocabulary of 100,000 markets is mostly proper nouns."""

    def word() -> str:
        return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()

    return f"{word()} {word()}"


def synthetic_market(rng: random.Random) -> tuple[str, str]:
    """One market's (name, description), drawn from templates of six kinds."""
    year = rng.randint(2026, 2030)
    month = rng.choice(_MONTHS)
    kind = rng.randrange(6)
    if kind == 0:
        team, competition = rng.choice(_TEAMS), rng.choice(_COMPETITIONS)
        return (
            f"Will {team} win the {year} {competition}?",
            f"Resolves YES if {team} win the final of the {year} {competition}, played in {month} "
            f"{year}. Resolves NO if they are eliminated or the final is not played by the end of {year}.",
        )
    if kind == 1:
        (coin, ticker), price = (
            rng.choice(_COINS),
            rng.choice([1, 5, 10, 100, 1000, 5000, 100_000]) * rng.randint(1, 9),
        )
        direction = rng.choice(["above", "below"])
        return (
            f"Will {coin} trade {direction} ${price:,} by {month} {year}?",
            f"Resolves YES if the {ticker}/USD price on a major exchange is {direction} {price:,} US dollars "
            f"at any time before the end of {month} {year}, per the exchange's published daily candles.",
        )
    if kind == 2:
        person, country, office = _person(rng), rng.choice(_COUNTRIES), rng.choice(_OFFICES)
        party = rng.choice(_PARTIES)
        return (
            f"Will {person} win the {year} {country} {office} election?",
            f"Resolves YES if {person}, the {party} candidate, is declared the winner of the {year} "
            f"{office} election in {country} by the official electoral authority.",
        )
    if kind == 3:
        (indicator, meaning), country = rng.choice(_INDICATORS), rng.choice(_COUNTRIES)
        level = round(rng.uniform(0.5, 9.5), 1)
        return (
            f"Will {indicator} in {country} be above {level}% in {month} {year}?",
            f"Resolves YES if the {meaning} of {country} for {month} {year}, in the first official "
            f"release, is above {level}%.",
        )
    if kind == 4:
        city, (event, unit) = rng.choice(_CITIES), rng.choice(_WEATHER)
        amount = rng.randint(2, 60)
        return (
            f"Will {city} see more than {amount} {unit} in {month} {year}?",
            f"Resolves YES if the national weather service's station in {city} records more than "
            f"{amount} {unit} during {month} {year}. A market on {event} in {city}.",
        )
    company, product = rng.choice(_COMPANIES), rng.choice(_PRODUCTS)
    return (
        f"Will {company} launch {product} before {month} {year}?",
        f"Resolves YES if {company} makes {product} available to buy, or opens it to the public, "
        f"before the first of {month} {year}. An announcement alone does not count.",
    )


def synthetic_queries(rng: random.Random, count: int) -> list[str]:
    """Short queries of the kind people type, about the same subjects as the markets."""
    makers: list[t.Callable[[], str]] = [
        lambda: f"{rng.choice(_TEAMS)} champions {rng.randint(2026, 2030)}",
        lambda: f"{rng.choice(_COINS)[1].lower()} price over {rng.randint(1, 9)}k",
        lambda: f"who wins the {rng.choice(_COUNTRIES)} {rng.choice(_OFFICES)} vote",
        lambda: f"{rng.choice(_INDICATORS)[0]} {rng.choice(_COUNTRIES)} next year",
        lambda: f"heavy {rng.choice(_WEATHER)[0]} in {rng.choice(_CITIES)} this winter",
        lambda: f"{rng.choice(_COMPANIES)} new {rng.choice(_PRODUCTS).split()[-1]} release date",
    ]
    return [rng.choice(makers)() for _ in range(count)]


def percentile(samples: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``samples``."""
    return float(np.percentile(np.asarray(samples), q))


def time_queries(
    embedder: Embedder, index: VectorIndex, queries: list[str], rounds: int
) -> list[list[float]]:
    """Milliseconds of embed(query) + top-10 search, per query, per round."""
    for query in queries[:10]:  # warm-up: caches, BLAS threads, the model's first call
        index.search(embedder.embed([query])[0], TOP_K)
    runs = []
    for _ in range(rounds):
        samples = []
        for query in queries:
            started = time.perf_counter()
            hits = index.search(embedder.embed([query])[0], TOP_K)
            samples.append((time.perf_counter() - started) * 1000)
            if len(hits) > TOP_K:
                raise RuntimeError("search returned more hits than asked for")
        runs.append(samples)
    return runs


def sentence_embedder() -> Embedder | None:
    """The sentence embedder, or None when the ``semantic`` extra is not installed."""
    try:
        return get_embedder("sentence")
    except RuntimeError as exc:
        print(f"sentence embedder skipped: {exc}", flush=True)
        return None


def latency_row(label: str, runs: list[list[float]]) -> str:
    """One table row: p50 and p95 over every sample, and the spread of the per-round p50s."""
    every = [sample for run in runs for sample in run]
    p50s = [statistics.median(run) for run in runs]
    return (
        f"| {label} | {percentile(every, 50):.2f} | {percentile(every, 95):.2f} | "
        f"{min(p50s):.2f}-{max(p50s):.2f} |"
    )


def bench_search(args: argparse.Namespace) -> None:
    """Measure search latency and quality, and write the ``search`` section."""
    rounds = max(1, int(getattr(args, "rounds", 3)))
    rng = random.Random(20261125)
    markets = [synthetic_market(rng) for _ in range(N_MARKETS)]
    texts = [market_text(name, description) for name, description in markets]
    ids = [f"m{i:06d}" for i in range(N_MARKETS)]
    queries = synthetic_queries(rng, QUERIES)

    hashing = get_embedder("hashing")
    started = time.perf_counter()
    matrix = hashing.embed(texts)
    embed_seconds = time.perf_counter() - started
    print(f"embedded {N_MARKETS:,} texts in {embed_seconds:.1f} s", flush=True)
    index = VectorIndex(hashing.dimension)
    started = time.perf_counter()
    index.replace(ids, matrix)
    load_seconds = time.perf_counter() - started
    del matrix
    hashing_runs = time_queries(hashing, index, queries, rounds)
    rows = [latency_row(f"hashing ({hashing.name})", hashing_runs)]
    hashing_p50 = percentile([s for run in hashing_runs for s in run], 50)
    print(rows[0], flush=True)

    with LABELLED.open(encoding="utf-8") as fh:
        labelled = json.load(fh)
    quality = {hashing.name: evaluate(hashing, labelled["markets"], labelled["queries"])}
    sizes = [f"hashing: {N_MARKETS * hashing.dimension * 4 / 2**20:.0f} MiB"]

    sentence = sentence_embedder()
    if sentence is not None:
        quality[sentence.name] = evaluate(sentence, labelled["markets"], labelled["queries"])
        vectors = np.random.default_rng(7).standard_normal((N_MARKETS, sentence.dimension), dtype=np.float32)
        sentence_index = VectorIndex(sentence.dimension)
        sentence_index.replace(ids, vectors)
        del vectors
        rows.append(
            latency_row(
                f"sentence ({sentence.name}), random unit vectors",
                time_queries(sentence, sentence_index, queries, rounds),
            )
        )
        sizes.append(f"sentence: {N_MARKETS * sentence.dimension * 4 / 2**20:.0f} MiB")
        print(rows[-1], flush=True)
    quality_rows = "\n".join(
        f"| {name} | {result['hit@1']:.3f} | {result['mrr']:.3f} | {result['n_queries']} |"
        for name, result in quality.items()
    )
    missing = (
        ""
        if sentence is not None
        else ("\nThe sentence embedder was not measured: the `semantic` extra is not installed.\n")
    )
    verdict = "met" if hashing_p50 <= TARGET_P50_MS else "NOT met"
    latency_rows = "\n".join(rows)
    write_section(
        "search",
        f"""
## Semantic search latency and quality

`python bench/run.py --only search --rounds {rounds}` (or `python -m bench.search`), {machine()}.

{N_MARKETS:,} synthetic market texts (six kinds of template, made-up names; deterministic) embedded
by the hashing embedder at **{N_MARKETS / embed_seconds:,.0f} texts/s** ({embed_seconds:.1f} s in all),
loaded into a `VectorIndex` in {load_seconds * 1000:.0f} ms. Each sample is one query embedded plus
its top {TOP_K} by exact cosine (one float32 matrix-vector product over every row, then a partial
sort); {QUERIES} queries, {rounds} rounds, in process. Matrix size: {", ".join(sizes)}.

| embedder | p50 ms | p95 ms | per-round p50 ms |
|---|---|---|---|
{latency_rows}

**Hashing embedder p50 {hashing_p50:.2f} ms** (target <= {TARGET_P50_MS:.0f} ms: {verdict}).
The sentence row times the model's query embedding on a matrix of random unit vectors: the search
costs the same whatever the values, and embedding {N_MARKETS:,} texts with the model takes too long
for a benchmark run.

Quality on `tests/data/search_labelled.json` ({len(labelled["markets"])} markets, queries phrased
differently from the market names, each with the market it should find first):

| embedder | hit@1 | MRR | queries |
|---|---|---|---|
{quality_rows}
{missing}""",
    )


def main() -> None:
    """Run the search benchmark alone: ``python -m bench.search``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    bench_search(parser.parse_args())


if __name__ == "__main__":
    main()
