"""The cost of the middleware stack on a trivial endpoint, over gunicorn: bearer
verification alone, and the whole stack against bare Flask."""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
import typing as t

from bench.common import compare
from bench.common import JWT_SECRET
from bench.common import machine
from bench.common import median_ratio
from bench.common import Server
from bench.common import write_section

LAYER_NAMES = {
    "bare": "bare Flask",
    "errors": "+ error handler",
    "logging": "+ request id and JSON access line",
    "limit-memory": "+ rate limit, counted in process memory",
    "limit-redis": "+ rate limit counted in Redis instead",
    "auth": "+ bearer verification, revocation from the memory (the full stack)",
    "auth-no-memory": "the full stack with one Redis `EXISTS` per request for the revocation",
}


def layer_costs(redis_url: str, rounds: int, requests: int = 2000) -> dict[str, float]:
    """Median µs per request of each layer's app, called in process (no server, no
    network but Redis): where the time of the stack goes."""
    from werkzeug.test import EnvironBuilder

    from bench.bare_app import create_app as create_bare
    from bench.stack_app import create_layer_app
    from bench.stack_app import LAYERS

    token = _token(redis_url)
    apps = {"bare": create_bare(), **{layer: create_layer_app(layer) for layer in LAYERS}}
    sink = open(os.devnull, "w")  # noqa: SIM115  (open for the whole measurement)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sink)

    def start_response(*_: t.Any) -> None:
        return None

    environs = {}
    for name in apps:
        auth = name.startswith("auth")
        environs[name] = EnvironBuilder(
            path="/ping-auth" if auth else "/ping",
            headers={"Authorization": f"Bearer {token}"} if auth else {},
            environ_base={"REMOTE_ADDR": "127.0.0.1"},
        ).get_environ()

    def one_loop(name: str, n: int) -> float:
        app, environ = apps[name], environs[name]
        started = time.perf_counter()
        for _ in range(n):
            body = app.wsgi_app(dict(environ), start_response)
            b"".join(body)
            body.close()  # type: ignore[attr-defined]
        return (time.perf_counter() - started) / n * 1e6

    for name in apps:
        one_loop(name, 300)  # warm-up: connections, caches
    per_round: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(rounds):
        for name in apps:
            per_round[name].append(one_loop(name, requests))
    sink.close()
    return {name: statistics.median(values) for name, values in per_round.items()}


def _layer_table(costs: dict[str, float]) -> str:
    rows, previous = [], None
    for name, label in LAYER_NAMES.items():
        cost = costs[name]
        if name == "auth-no-memory":
            delta = f"{cost - costs['auth']:+.0f} vs the full stack"
        else:
            delta = "" if previous is None else f"{cost - costs[previous]:+.0f}"
            previous = name
        rows.append(f"| {label} | {cost:.0f} | {delta} |")
    return "\n".join(rows)


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
        Server("bench.floor_app:create_stack_app()", env, args.workers, "/ping") as floor,
        Server("bench.bare_app:create_app()", env, args.workers, "/ping") as bare,
    ):
        runs = compare(
            {
                "protected": (ours.base + "/ping-auth", bearer),
                "unprotected": (ours.base + "/ping", {}),
                "floor": (floor.base + "/ping-auth", bearer),
                "floor_unprotected": (floor.base + "/ping", {}),
                "bare": (bare.base + "/ping", {}),
            },
            rounds=args.rounds,
            duration=args.duration,
            connections=args.connections,
        )
    cost = 1 - median_ratio(runs["protected"], runs["unprotected"])
    stack_ratio = median_ratio(runs["protected"], runs["bare"])
    floor_ratio = median_ratio(runs["floor"], runs["bare"])
    floor_unprotected_ratio = median_ratio(runs["floor_unprotected"], runs["bare"])
    rows = "\n".join(
        f"| {i + 1} | {p:.0f} | {u:.0f} | {f:.0f} | {fu:.0f} | {b:.0f} | {1 - p / u:.1%} | {p / b:.3f} | {f / b:.3f} |"
        for i, (p, u, f, fu, b) in enumerate(
            zip(
                runs["protected"],
                runs["unprotected"],
                runs["floor"],
                runs["floor_unprotected"],
                runs["bare"],
                strict=True,
            )
        )
    )
    medians = {name: statistics.median(values) for name, values in runs.items()}
    costs = layer_costs(args.redis_url, args.rounds)
    write_section(
        "stack",
        f"""
## The middleware stack: bearer verification cost, and the full stack vs bare Flask

`python bench/run.py --only stack --rounds {args.rounds} --duration {args.duration}`, {machine()}.

`bench/stack_app.py` under `gunicorn -w {args.workers}`: `/ping-auth` is the full stack (request id,
JSON access log line, error handler, HS256 verification of a bearer token and its revocation
lookup in Redis, a rate limit counted in Redis); `/ping` of the same app is the same stack
without auth; a bare Flask `/ping` is the baseline. The floor (`bench/floor_app.py`) is the
same work written by hand with nothing between Flask and the wire: a request id, one JSON line
to stderr, a JSON error handler, one exact count in Redis over a raw socket, PyJWT's HS256
check; the least these layers can cost on this machine. `wrk -t1 -c{args.connections} -d{args.duration}s`,
{args.rounds} rounds, the five alternating within each round.

| round | full stack req/s | stack without auth | floor | floor without auth | bare | verification cost | full stack / bare | floor / bare |
|---|---|---|---|---|---|---|---|---|
{rows}

**Medians: full stack {medians["protected"]:.0f} req/s, without auth {medians["unprotected"]:.0f} req/s,
floor {medians["floor"]:.0f} req/s (without auth {medians["floor_unprotected"]:.0f}), bare {medians["bare"]:.0f} req/s.
Bearer verification costs {cost:.1%} of throughput (target <= 15%); the full stack serves
{stack_ratio:.2f}x bare Flask (target >= 0.6x), the floor {floor_ratio:.2f}x (without auth
{floor_unprotected_ratio:.2f}x).**

Where the time goes: each layer's app called in process (`app.wsgi_app`, no server, the log
lines to `/dev/null`), median microseconds per request of {args.rounds} rounds of 2,000 requests,
the layers alternating within each round. Under gunicorn each request also costs the
server's work and the connection (about {1e6 / medians["bare"] * 2:.0f} µs of the two cores' time per bare request
in the run above, {args.workers} workers on 2 cores).

| layers | µs per request | added |
|---|---|---|
{_layer_table(costs)}
""",
    )
