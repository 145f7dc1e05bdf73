"""The cost of the middleware stack's parts on a trivial endpoint, over gunicorn."""

from __future__ import annotations

import argparse
import os
import statistics

from bench.common import compare
from bench.common import JWT_SECRET
from bench.common import machine
from bench.common import median_ratio
from bench.common import Server
from bench.common import write_section


def _token(redis_url: str) -> str:
    os.environ.update(BENCH_JWT_SECRET=JWT_SECRET, BENCH_REDIS_URL=redis_url)
    from bench.stack_app import create_app
    from flask_backend_patterns import create_access_token

    app = create_app()
    with app.app_context():
        return create_access_token("bench-user", claims={"role": "user"}, expires_in=3600)


def bench_auth(args: argparse.Namespace) -> None:
    env = {**os.environ, "BENCH_JWT_SECRET": JWT_SECRET, "BENCH_REDIS_URL": args.redis_url}
    bearer = {"Authorization": f"Bearer {_token(args.redis_url)}"}
    with (
        Server("bench.stack_app:create_app()", env, args.workers, "/ping") as ours,
        Server("bench.bare_app:create_app()", env, args.workers, "/ping") as bare,
    ):
        runs = compare(
            {
                "protected": (ours.base + "/ping-auth", bearer),
                "unprotected": (ours.base + "/ping", {}),
                "bare": (bare.base + "/ping", {}),
            },
            rounds=args.rounds,
            duration=args.duration,
            connections=args.connections,
        )
    cost = 1 - median_ratio(runs["protected"], runs["unprotected"])
    rows = "\n".join(
        f"| {i + 1} | {p:.0f} | {u:.0f} | {b:.0f} | {1 - p / u:.1%} |"
        for i, (p, u, b) in enumerate(zip(runs["protected"], runs["unprotected"], runs["bare"], strict=True))
    )
    medians = {name: statistics.median(values) for name, values in runs.items()}
    write_section(
        "auth",
        f"""
## Bearer verification cost

`python bench/run.py --only auth --rounds {args.rounds} --duration {args.duration}`, {machine()}.

`bench/stack_app.py` under `gunicorn -w {args.workers}`: `/ping-auth` (request id, JSON access
log, error handler, HS256 verification of a bearer token, its revocation lookup in Redis) against
`/ping` of the same app (the same stack without auth), and a bare Flask `/ping`;
`wrk -t1 -c{args.connections} -d{args.duration}s`, {args.rounds} rounds, alternating.

| round | protected req/s | unprotected req/s | bare req/s | verification cost |
|---|---|---|---|---|
{rows}

**Median: protected {medians["protected"]:.0f} req/s, unprotected {medians["unprotected"]:.0f} req/s,
bare {medians["bare"]:.0f} req/s; verification costs {cost:.1%} of throughput** (target <= 15%).
""",
    )
