"""Benchmarks of the foundation; writes docs/benchmarks.md.

1. Throughput of ``GET /api/markets?status=active&sort=-volume&limit=20`` on 100,000
   PostgreSQL rows vs bare Flask ``/ping``, both under the same gunicorn settings, driven
   by wrk on loopback, alternating, several rounds; the ratio is taken per round, then
   the median.
2. Server-side time of one page at depth 0, 10k and 90k, by offset and by keyset cursor
   (the repository call, in process), median of many runs.

Needs PostgreSQL (``DATABASE_URL``, default the local ``bench`` database, made if
missing) and ``wrk``. Usage: ``python bench/run.py [--rounds 5] [--duration 5]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
LIST_PATH = "/api/markets?status=active&sort=-volume&limit=20"
N_MARKETS = 100_000
SECRET = "bench-secret-key-0123456789-0123456789-abcdef"


def ensure_database(url: str) -> None:
    parsed = sa.make_url(url)
    admin = sa.create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if not conn.scalar(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": parsed.database}):
            conn.execute(sa.text(f'CREATE DATABASE "{parsed.database}"'))
    admin.dispose()


def env_for(url: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": url, "FLASK_SECRET_KEY": SECRET, "REDIS_URL": ""}


def seed(url: str) -> None:
    env = env_for(url)
    flask = [sys.executable, "-m", "flask", "--app", "example_app"]
    subprocess.run([*flask, "db", "upgrade"], env=env, cwd=ROOT, check=True, capture_output=True)
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        have = conn.scalar(sa.text("SELECT count(*) FROM markets"))
    engine.dispose()
    if have != N_MARKETS:
        print(f"seeding {N_MARKETS} markets (had {have})", flush=True)
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text("TRUNCATE positions, markets, users"))
        engine.dispose()
        started = time.perf_counter()
        subprocess.run(
            [*flask, "seed", "--markets", str(N_MARKETS), "--users", "100", "--seed", "1"],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        print(f"seeded in {time.perf_counter() - started:.1f} s", flush=True)
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text("VACUUM ANALYZE markets"))
    engine.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_gunicorn(target: str, url: str, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-w",
            str(workers),
            "-b",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            target,
        ],
        cwd=ROOT,
        env={**env_for(url), "FLASK_EXAMPLE_AUTO_MIGRATE": "false"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base + ("/ping" if "bare" in target else "/healthz"), timeout=2):
                return proc, base
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"gunicorn {target} did not start")


def wrk(url: str, duration: int, connections: int) -> float:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", url], capture_output=True, text=True, check=True
    ).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"errors while benchmarking {url}:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match:
        raise RuntimeError(out)
    return float(match.group(1))


def throughput(url: str, rounds: int, duration: int, workers: int, connections: int) -> dict[str, object]:
    ours, ours_base = start_gunicorn("example_app:create_app()", url, workers)
    bare, bare_base = start_gunicorn("bench.bare_app:create_app()", url, workers)
    try:
        with urllib.request.urlopen(ours_base + LIST_PATH) as response:
            body = json.loads(response.read())
        assert body["success"] and len(body["data"]) == 20, body
        wrk(ours_base + LIST_PATH, 2, connections)  # warm-up: imports, pools, caches
        wrk(bare_base + "/ping", 2, connections)
        rows = []
        for i in range(rounds):
            list_rps = wrk(ours_base + LIST_PATH, duration, connections)
            ping_rps = wrk(bare_base + "/ping", duration, connections)
            rows.append((list_rps, ping_rps, list_rps / ping_rps))
            print(
                f"round {i + 1}: list {list_rps:.0f} req/s, ping {ping_rps:.0f} req/s, "
                f"ratio {list_rps / ping_rps:.3f}",
                flush=True,
            )
    finally:
        for proc in (ours, bare):
            proc.terminate()
            proc.wait(timeout=20)
    return {
        "rows": rows,
        "list": statistics.median(r[0] for r in rows),
        "ping": statistics.median(r[1] for r in rows),
        "ratio": statistics.median(r[2] for r in rows),
    }


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


def write_doc(args: argparse.Namespace, tp: dict[str, object], pages: list[tuple[int, float, float]]) -> None:
    base_keyset = pages[0][2]
    rows = "\n".join(
        f"| {i + 1} | {r[0]:.0f} | {r[1]:.0f} | {r[2]:.3f} |"
        for i, r in enumerate(tp["rows"])  # type: ignore[arg-type]
    )
    page_rows = "\n".join(
        f"| {d:,} | {o:.2f} | {k:.2f} | {o / pages[0][1]:.2f}x | {k / base_keyset:.2f}x |"
        for d, o, k in pages
    )
    notes_marker = "## Reading these figures"
    old = DOC.read_text() if DOC.exists() else ""
    notes = old[old.index(notes_marker) :] if notes_marker in old else ""
    DOC.write_text(
        f"""# Benchmarks

Measured by `python bench/run.py --rounds {args.rounds} --duration {args.duration}` (or `tox -e bench`)
on {dt.date.today().isoformat()}, on this project's CI machine kind: {os.cpu_count()} cores, Python
{platform.python_version()}, PostgreSQL on the same machine, load from `wrk` on loopback. The machine
is small and noisy, so both sides of each comparison run in the same run, alternating, and the
figures are medians.

## List endpoint vs bare Flask

`GET {LIST_PATH}` on {N_MARKETS:,} markets in PostgreSQL (the full stack: request id, JSON access
log line, flask-smorest argument parsing, repository with count, marshmallow dump, error
handlers) against a bare Flask `/ping`, both under `gunicorn -w {args.workers}` (sync workers),
`wrk -t1 -c{args.connections} -d{args.duration}s`, {args.rounds} rounds.

| round | list req/s | /ping req/s | ratio |
|---|---|---|---|
{rows}

**Median: list {tp["list"]:.0f} req/s, /ping {tp["ping"]:.0f} req/s, ratio {tp["ratio"]:.3f}x**
(target >= 0.35x).

## Keyset vs offset at depth

Server-side time of one page (`sort=-volume`, 20 rows, no filter, no count), the
repository call in process, median of {args.page_runs} runs per cell. The cells are timed in two
round robins: the first page with the keyset pages, then the offset pages (the deep offset scans
evict the caches, which is why the offset column's depth 0 is slower than the keyset column's,
which is the first page, no cursor).

| depth (rows skipped) | offset ms | keyset ms | offset vs depth 0 | keyset vs depth 0 |
|---|---|---|---|---|
{page_rows}

Target: a keyset page at depth 90k costs <= 1.5x page 1. Offset pages grow with depth; keyset
pages read the index from the cursor's position on.

"""
        + notes
    )
    print(f"wrote {DOC}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/bench"),
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--page-runs", type=int, default=50)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    ensure_database(args.database_url)
    seed(args.database_url)
    tp = throughput(args.database_url, args.rounds, args.duration, args.workers, args.connections)
    pages = page_times(args.database_url, args.page_runs)
    write_doc(args, tp, pages)


if __name__ == "__main__":
    main()
