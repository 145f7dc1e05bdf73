"""Benchmarks; each writes its section of docs/benchmarks.md.

- ``list``: ``GET /api/markets?status=active&sort=-volume&limit=20`` on 100,000 PostgreSQL
  rows, uncached and cached, and the same query written plainly (``bench/plain_app.py``),
  and the least that request can cost here (``bench/floor_app.py``), vs bare Flask ``/ping``,
  all under the same gunicorn settings.
- ``pages``: server-side time of one page at depth 0, 10k and 90k, by offset and by
  keyset cursor (the repository call, in process).
- ``cache``: cached vs uncached ``GET /api/markets`` (the list above) and one market.
- ``stack``: a trivial endpoint behind the full middleware stack (request id, access log,
  errors, HS256 bearer verification with its revocation lookup, a Redis rate limit), the
  same without auth, and bare Flask ``/ping``.
- ``jobs``: our ``enqueue`` vs bare RQ's, and a worker's jobs/s forking vs not.
- ``search``: query latency (embedding plus top 10) over 100,000 market vectors, and the
  labelled set's hit@1 and MRR for each embedder.

Needs PostgreSQL (``--database-url``, default the local ``bench`` database, made if
missing), Redis (``--redis-url``) and ``wrk``.
Usage: ``python bench/run.py [--only list,pages,cache,stack,jobs,search] [--rounds 5] [--duration 5]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from bench import stack
from bench.cache import bench_cache
from bench.common import app_envs
from bench.common import compare
from bench.common import DEFAULT_DATABASE_URL
from bench.common import DEFAULT_REDIS_URL
from bench.common import ensure_database
from bench.common import machine
from bench.common import median_ratio
from bench.common import N_MARKETS
from bench.common import SECRET
from bench.common import seed
from bench.common import Server
from bench.common import write_section
from bench.jobs import bench_jobs
from bench.search import bench_search

LIST_PATH = "/api/markets?status=active&sort=-volume&limit=20"
BENCHES = ("list", "pages", "cache", "stack", "jobs", "search")


def bench_list(args: argparse.Namespace) -> None:
    # Without REDIS_URL no cache; with it, as deployed, reads are cached.
    uncached_env, cached_env = app_envs(args.database_url, args.redis_url)
    floor_env = {**uncached_env, "BENCH_REDIS_URL": args.redis_url}
    with (
        Server("example_app:create_app()", uncached_env, args.workers, "/healthz") as uncached,
        Server("example_app:create_app()", cached_env, args.workers, "/healthz") as cached,
        Server("bench.plain_app:create_app()", uncached_env, args.workers, LIST_PATH) as plain,
        Server("bench.floor_app:create_list_app()", floor_env, args.workers, LIST_PATH) as floor,
        Server("bench.floor_app:create_list_app(False)", floor_env, args.workers, LIST_PATH) as query,
        Server("bench.bare_app:create_app()", uncached_env, args.workers, "/ping") as bare,
    ):
        runs = compare(
            {
                "list": (uncached.base + LIST_PATH, {}),
                "cached": (cached.base + LIST_PATH, {}),
                "plain": (plain.base + LIST_PATH, {}),
                "floor": (floor.base + LIST_PATH, {}),
                "query": (query.base + LIST_PATH, {}),
                "ping": (bare.base + "/ping", {}),
            },
            rounds=args.rounds,
            duration=args.duration,
            connections=args.connections,
        )
    names = ("list", "cached", "plain", "floor", "query")
    rows = "\n".join(
        f"| {i + 1} | "
        + " | ".join(f"{runs[name][i]:.0f}" for name in (*names, "ping"))
        + " | "
        + " | ".join(f"{runs[name][i] / runs['ping'][i]:.3f}" for name in names)
        + " |"
        for i in range(args.rounds)
    )
    ratios = {name: median_ratio(runs[name], runs["ping"]) for name in names}
    medians = {name: statistics.median(values) for name, values in runs.items()}
    write_section(
        "list",
        f"""
## List endpoint vs bare Flask

`python bench/run.py --only list --rounds {args.rounds} --duration {args.duration}`, {machine()}.

`GET {LIST_PATH}` on {N_MARKETS:,} markets in PostgreSQL, the full stack (request id, JSON access
log line, rate limit counted in Redis, flask-smorest argument parsing, repository with the total,
marshmallow dump, error handlers), twice: without `REDIS_URL` (no cache: every request reads
PostgreSQL) and with it, as deployed (the response cache on Redis, warm: the same URL every
time). Three references:

- plain: the same query written plainly (`bench/plain_app.py`: flask-smorest,
  Flask-SQLAlchemy with its default engine, marshmallow; no request id, log line, rate limit,
  total, cursor or ETag);
- floor: the request written by hand with nothing between Flask and the wire
  (`bench/floor_app.py`): the page and total in one prepared statement on one psycopg
  connection in autocommit, rows to JSON by hand, with the stack's layers equally bare (a
  request id, one JSON line, one exact count in Redis over a raw socket);
- query: the floor without those layers: the query and its JSON, nothing else.

Against a bare Flask `/ping`; all under `gunicorn -w {args.workers}` (sync workers),
`wrk -t1 -c{args.connections} -d{args.duration}s`, {args.rounds} rounds, the six alternating.

| round | uncached | cached | plain | floor | query | /ping | uncached / ping | cached / ping | plain / ping | floor / ping | query / ping |
|---|---|---|---|---|---|---|---|---|---|---|---|
{rows}

**Medians (req/s): uncached {medians["list"]:.0f}, cached {medians["cached"]:.0f}, plain {medians["plain"]:.0f},
floor {medians["floor"]:.0f}, query {medians["query"]:.0f}, /ping {medians["ping"]:.0f}. Of bare Flask: uncached
{ratios["list"]:.3f}x, cached {ratios["cached"]:.3f}x, plain {ratios["plain"]:.3f}x, floor {ratios["floor"]:.3f}x,
query alone {ratios["query"]:.3f}x** (target >= 0.35x).
""",
    )


def page_times(url: str, runs: int) -> list[tuple[int, float, float]]:
    from example_app import create_app
    from example_app.repositories import MarketRepository

    app = create_app(
        {
            "SQLALCHEMY_DATABASE_URI": url,
            "SECRET_KEY": SECRET,
            "EXAMPLE_AUTO_MIGRATE": False,
            "BACKEND_LOGGING_CONFIGURE": False,
        }
    )
    # No filter: depth 90k must exist (about a third of the rows are active).
    query = {"sort": "-volume", "limit": 20, "with_total": False}
    with app.app_context():
        repo = MarketRepository()
        cursors = {}
        for depth in (10_000, 90_000):
            # The cursor a client holds after reading `depth` rows.
            cursors[depth] = repo.find_page(**query, offset=depth - 20).next_cursor
            if cursors[depth] is None:
                raise RuntimeError(f"no cursor at depth {depth}: too few rows")
        # Two round robins, so that the machine's drift hits every cell of a group alike:
        # the first page and the keyset pages, then the offset pages (whose deep scans
        # would otherwise evict the caches the cheap queries run with).
        groups: list[dict[tuple[str, int], dict[str, object]]] = [
            {("first", 0): {"offset": 0}, **{("keyset", d): {"cursor": c} for d, c in cursors.items()}},
            {("offset", 0): {"offset": 0}, **{("offset", d): {"offset": d} for d in cursors}},
        ]
        medians: dict[tuple[str, int], float] = {}
        for calls in groups:
            samples: dict[tuple[str, int], list[float]] = {key: [] for key in calls}
            for _ in range(runs):
                for key, extra in calls.items():
                    repo.session.expunge_all()
                    started = time.perf_counter()
                    repo.find_page(**query, **extra)
                    samples[key].append((time.perf_counter() - started) * 1000)
            medians.update({key: statistics.median(values) for key, values in samples.items()})
        results = [(0, medians[("offset", 0)], medians[("first", 0)])]
        for depth in cursors:
            results.append((depth, medians[("offset", depth)], medians[("keyset", depth)]))
        for depth, offset_ms, keyset_ms in results:
            print(f"depth {depth}: offset {offset_ms:.2f} ms, keyset {keyset_ms:.2f} ms", flush=True)
    return results


def bench_pages(args: argparse.Namespace) -> None:
    pages = page_times(args.database_url, args.page_runs)
    page_rows = "\n".join(
        f"| {d:,} | {o:.2f} | {k:.2f} | {o / pages[0][1]:.2f}x | {k / pages[0][2]:.2f}x |"
        for d, o, k in pages
    )
    write_section(
        "pages",
        f"""
## Keyset vs offset at depth

`python bench/run.py --only pages --page-runs {args.page_runs}`, {machine()}.

Server-side time of one page (`sort=-volume`, 20 rows, no filter, no total), the repository
call in process, median of {args.page_runs} runs per cell. The cells are timed in two round
robins: the first page with the keyset pages, then the offset pages (the deep offset scans evict
the caches, which is why the offset column's depth 0 is slower than the keyset column's, which is
the first page, no cursor).

| depth (rows skipped) | offset ms | keyset ms | offset vs depth 0 | keyset vs depth 0 |
|---|---|---|---|---|
{page_rows}

Target: a keyset page at depth 90k costs <= 1.5x page 1. Offset pages grow with depth; keyset
pages read the index from the cursor's position on.
""",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--only", default=",".join(BENCHES), help=f"comma-separated: {', '.join(BENCHES)}")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--page-runs", type=int, default=300)
    args = parser.parse_args()
    chosen = [name for name in args.only.split(",") if name]
    unknown = set(chosen) - set(BENCHES)
    if unknown:
        parser.error(f"unknown benchmarks: {sorted(unknown)}")
    if {"list", "pages", "cache"} & set(chosen):
        ensure_database(args.database_url)
        seed(args.database_url)
    runners = {
        "list": bench_list,
        "pages": bench_pages,
        "cache": bench_cache,
        "stack": stack.bench_stack,
        "jobs": bench_jobs,
        "search": bench_search,
    }
    for name in chosen:
        started = time.perf_counter()
        runners[name](args)
        print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
