"""What every benchmark shares: servers, load, the database, and docs/benchmarks.md.

Each benchmark owns one section of ``docs/benchmarks.md``, between
``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``, and rewrites only that section;
the hand-written "Reading these figures" part is never touched.
"""

from __future__ import annotations

import datetime as dt
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
N_MARKETS = 100_000
SECRET = "bench-secret-key-0123456789-0123456789-abcdef"
JWT_SECRET = "bench-jwt-secret-0123456789-0123456789-abcdef"
DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/bench"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"
NOTES_MARKER = "## Reading these figures"
HEADER = """# Benchmarks

Each section says the command that measured it. The machine is small (2 cores) and noisy, so
both sides of each comparison run in the same run, alternating round by round, and the
figures are medians. Load comes from `wrk` on loopback; PostgreSQL and Redis run on the same
machine.

"""


def machine() -> str:
    """One line describing where a figure was measured."""
    return f"{dt.date.today().isoformat()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def ensure_database(url: str) -> None:
    """Create the benchmark database if it is missing."""
    parsed = sa.make_url(url)
    admin = sa.create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if not conn.scalar(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": parsed.database}):
            conn.execute(sa.text(f'CREATE DATABASE "{parsed.database}"'))
    admin.dispose()


def env_for(database_url: str, redis_url: str = "") -> dict[str, str]:
    """The environment of the example app (and of ``flask`` commands) in a benchmark."""
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "FLASK_SECRET_KEY": SECRET,
        "FLASK_JWT_SECRET_KEY": JWT_SECRET,
        "FLASK_EXAMPLE_AUTO_MIGRATE": "false",
    }


#: a rate limit that is counted like any other and that no benchmark's load reaches.
NO_LIMIT = "100000000 per minute"


def app_envs(database_url: str, redis_url: str) -> tuple[dict[str, str], dict[str, str]]:
    """The example app's environment without and with ``REDIS_URL`` (uncached, cached).

    Both count their rate limit in Redis, never reached: only the cache differs.
    Without ``REDIS_URL`` a configured database reads through (``NullCache``).
    """
    limits = {"FLASK_RATELIMIT_DEFAULT": NO_LIMIT, "FLASK_RATELIMIT_STORAGE_URI": redis_url}
    return {**env_for(database_url), **limits}, {**env_for(database_url, redis_url), **limits}


def seed(url: str) -> None:
    """Migrate, and seed ``N_MARKETS`` markets unless exactly that many are there."""
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
            conn.execute(sa.text("TRUNCATE positions, markets, users CASCADE"))
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


class Server:
    """``gunicorn -w N target`` on a free loopback port, stopped on exit."""

    def __init__(self, target: str, env: dict[str, str], workers: int, ready_path: str) -> None:
        self.target, self.env, self.workers, self.ready_path = target, env, workers, ready_path
        self.base = ""
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-w", str(self.workers), "-b", f"127.0.0.1:{port}"]
            + ["--log-level", "warning", self.target],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.base + self.ready_path, timeout=2):
                    return self
            except OSError:
                time.sleep(0.2)
        self.proc.kill()
        raise RuntimeError(f"gunicorn {self.target} did not start")

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(timeout=20)


def wrk(url: str, duration: int, connections: int, headers: dict[str, str] | None = None) -> float:
    """Requests per second that ``wrk -t1`` sustains on ``url``; any non-2xx fails the run."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s"]
    for name, value in (headers or {}).items():
        command += ["-H", f"{name}: {value}"]
    out = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"errors while benchmarking {url}:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match:
        raise RuntimeError(out)
    return float(match.group(1))


Target = tuple[str, dict[str, str]]


def compare(
    targets: dict[str, Target], *, rounds: int, duration: int, connections: int
) -> dict[str, list[float]]:
    """req/s of each target per round; the targets alternate within every round."""
    for url, headers in targets.values():  # warm-up: imports, pools, caches
        wrk(url, 2, connections, headers)
    results: dict[str, list[float]] = {name: [] for name in targets}
    for i in range(rounds):
        for name, (url, headers) in targets.items():
            results[name].append(wrk(url, duration, connections, headers))
        line = ", ".join(f"{name} {values[-1]:.0f}" for name, values in results.items())
        print(f"round {i + 1}: {line} req/s", flush=True)
    return results


def median_ratio(numerator: list[float], denominator: list[float]) -> float:
    """The median of the per-round ratios."""
    return statistics.median(n / d for n, d in zip(numerator, denominator, strict=True))


def write_section(name: str, text: str) -> None:
    """Replace (or add) the section ``name`` of docs/benchmarks.md."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{text.strip()}\n{end}\n"
    doc = DOC.read_text() if DOC.exists() else HEADER
    if start in doc and end in doc:
        before, rest = doc.split(start, 1)
        after = rest.split(end, 1)[1].lstrip("\n")
        doc = before + block + ("\n" + after if after else "")
    elif NOTES_MARKER in doc:
        before, notes = doc.split(NOTES_MARKER, 1)
        doc = before.rstrip("\n") + "\n\n" + block + "\n" + NOTES_MARKER + notes
    else:
        doc = doc.rstrip("\n") + "\n\n" + block
    DOC.write_text(doc)
    print(f"wrote section {name} of {DOC}")
