"""Real servers for end-to-end tests: gunicorn workers, and a private Redis to stop at will."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import typing as t
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import IN_CI
from tests.conftest import TEST_JWT_SECRET
from tests.conftest import TEST_SECRET

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def request(
    method: str, url: str, body: t.Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], t.Any]:
    """One HTTP request on a new connection: (status, headers, parsed JSON body or None)."""
    data = json.dumps(body).encode() if body is not None else None
    all_headers = {**({"Content-Type": "application/json"} if data else {}), **(headers or {})}
    req = urllib.request.Request(url, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            raw = response.read()
            return response.status, dict(response.headers), json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        with exc:
            raw = exc.read()
            return exc.code, dict(exc.headers), json.loads(raw) if raw else None


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], t.Any]:
    return request("GET", url, headers=headers)


def post(url: str, body: t.Any = None, headers: dict[str, str] | None = None) -> tuple[int, t.Any]:
    status, _, parsed = request("POST", url, body, headers)
    return status, parsed


@contextlib.contextmanager
def gunicorn_server(
    database_uri: str, tmp_path: Path, *, workers: int, env: dict[str, str] | None = None
) -> t.Iterator[tuple[str, Path]]:
    """``gunicorn -w workers "example_app:create_app()"`` on loopback: (base URL, log file)."""
    port = free_port()
    full_env = {
        **os.environ,
        "DATABASE_URL": database_uri,
        "FLASK_SECRET_KEY": TEST_SECRET,
        "FLASK_JWT_SECRET_KEY": TEST_JWT_SECRET,
        "FLASK_EXAMPLE_AUTO_MIGRATE": "false",
        **(env or {}),
    }
    log_path = tmp_path / f"gunicorn-{port}.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-w", str(workers), "-b", f"127.0.0.1:{port}"]
            + ["--graceful-timeout", "5", "example_app:create_app()"],
            cwd=ROOT,
            env=full_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if get(f"{base}/healthz")[0] == 200:
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(log_path.read_text()) from None
                time.sleep(0.2)
        yield base, log_path
    finally:
        proc.terminate()
        proc.wait(timeout=20)


class RedisServer:
    """A private ``redis-server`` on a free port, which a test may stop and start again."""

    def __init__(self, tmp_path: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            if IN_CI:
                pytest.fail("redis-server is needed for the Redis fault tests")
            pytest.skip("redis-server is not installed")
        self.binary = binary
        self.port = free_port()
        self.dir = tmp_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            + ["--dir", str(self.dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def private_redis(tmp_path: Path) -> t.Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
