"""Cached vs uncached market reads of the example app on PostgreSQL, over gunicorn."""

from __future__ import annotations

import argparse
import statistics

import sqlalchemy as sa

from bench.common import app_envs
from bench.common import compare
from bench.common import machine
from bench.common import median_ratio
from bench.common import N_MARKETS
from bench.common import Server
from bench.common import write_section

LIST_PATH = "/api/markets?status=active&sort=-volume&limit=20"


def _a_market_id(database_url: str) -> str:
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        market_id = conn.scalar(sa.text("SELECT id FROM markets ORDER BY volume DESC, id LIMIT 1"))
    engine.dispose()
    return str(market_id)


def bench_cache(args: argparse.Namespace) -> None:
    market_path = f"/api/markets/{_a_market_id(args.database_url)}"
    uncached_env, cached_env = app_envs(args.database_url, args.redis_url)
    with (
        Server("example_app:create_app()", cached_env, args.workers, "/healthz") as cached,
        Server("example_app:create_app()", uncached_env, args.workers, "/healthz") as uncached,
    ):
        runs = compare(
            {
                "list cached": (cached.base + LIST_PATH, {}),
                "list uncached": (uncached.base + LIST_PATH, {}),
                "market cached": (cached.base + market_path, {}),
                "market uncached": (uncached.base + market_path, {}),
            },
            rounds=args.rounds,
            duration=args.duration,
            connections=args.connections,
        )
    list_ratio = median_ratio(runs["list cached"], runs["list uncached"])
    market_ratio = median_ratio(runs["market cached"], runs["market uncached"])
    rows = "\n".join(
        f"| {i + 1} | {lc:.0f} | {lu:.0f} | {lc / lu:.2f}x | {mc:.0f} | {mu:.0f} | {mc / mu:.2f}x |"
        for i, (lc, lu, mc, mu) in enumerate(
            zip(
                runs["list cached"],
                runs["list uncached"],
                runs["market cached"],
                runs["market uncached"],
                strict=True,
            )
        )
    )
    medians = {name: statistics.median(values) for name, values in runs.items()}
    write_section(
        "cache",
        f"""
## Cached vs uncached reads

`python bench/run.py --only cache --rounds {args.rounds} --duration {args.duration}`, {machine()}.

The example app under `gunicorn -w {args.workers}` on {N_MARKETS:,} PostgreSQL markets, twice: with
`REDIS_URL` (market reads through `cached_response` and `CachedRepository` on Redis) and without
(a configured database without Redis reads through: `NullCache`). Both count a rate limit in
Redis that the load never reaches, so that only the cache differs. `GET {LIST_PATH}` and `GET /api/markets/<id>`, the same URL every time
(a warm cache: what the cache is for), `wrk -t1 -c{args.connections} -d{args.duration}s`,
{args.rounds} rounds, the four alternating within each round.

| round | list cached | list uncached | ratio | market cached | market uncached | ratio |
|---|---|---|---|---|---|---|
{rows}

**Medians (req/s): list {medians["list cached"]:.0f} cached vs {medians["list uncached"]:.0f} uncached,
{list_ratio:.2f}x (target >= 3x); one market {medians["market cached"]:.0f} vs
{medians["market uncached"]:.0f}, {market_ratio:.2f}x.**
""",
    )
