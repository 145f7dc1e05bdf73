"""The cost of the middleware stack on a trivial endpoint, over gunicorn: bearer
verification alone, and the whole stack against bare Flask."""

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


def bench_stack(args: argparse.Namespace) -> None:
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
    stack_ratio = median_ratio(runs["protected"], runs["bare"])
    rows = "\n".join(
        f"| {i + 1} | {p:.0f} | {u:.0f} | {b:.0f} | {1 - p / u:.1%} | {p / b:.3f} |"
        for i, (p, u, b) in enumerate(zip(runs["protected"], runs["unprotected"], runs["bare"], strict=True))
    )
    medians = {name: statistics.median(values) for name, values in runs.items()}
    write_section(
        "stack",
        f"""
## The middleware stack: bearer verification cost, and the full stack vs bare Flask

`python bench/run.py --only stack --rounds {args.rounds} --duration {args.duration}`, {machine()}.

`bench/stack_app.py` under `gunicorn -w {args.workers}`: `/ping-auth` is the full stack (request id,
JSON access log line, error handler, HS256 verification of a bearer token and its revocation
lookup in Redis, a rate limit counted in Redis); `/ping` of the same app is the same stack
without auth; a bare Flask `/ping` is the baseline. `wrk -t1 -c{args.connections} -d{args.duration}s`,
{args.rounds} rounds, the three alternating within each round.

| round | full stack req/s | stack without auth req/s | bare req/s | verification cost | full stack / bare |
|---|---|---|---|---|---|
{rows}

**Medians: full stack {medians["protected"]:.0f} req/s, without auth {medians["unprotected"]:.0f} req/s,
bare {medians["bare"]:.0f} req/s. Bearer verification costs {cost:.1%} of throughput (target <= 15%);
the full stack serves {stack_ratio:.2f}x bare Flask (target >= 0.6x).**
""",
    )
