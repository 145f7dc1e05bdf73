"""A tiny app for the job tests, and the job functions they queue.

Workers started by the tests load it with ``FLASK_APP=tests.jobs_support:create_app``;
plain ``rq worker`` builds it through ``BACKEND_JOBS_APP_FACTORY``. Settings reach it as
``FLASK_*`` environment variables (``FLASK_BACKEND_JOBS_REDIS_URL``).
"""

from __future__ import annotations

import logging
import os
import pathlib
import time
import typing as t

from flask import current_app
from flask import Flask
from flask import g
from flask import request

from flask_backend_patterns.jobs import JobQueue
from flask_backend_patterns.logging import get_request_id
from flask_backend_patterns.logging import RequestLogging

FACTORY = "tests.jobs_support:create_app"

jobs = JobQueue()
log = logging.getLogger("tests.jobs_support")


def create_app(config: dict[str, t.Any] | None = None) -> Flask:
    """The test app: request ids, the job queue, and a route that queues a job."""
    app = Flask(__name__)
    app.config.update(BACKEND_JOBS_APP_FACTORY=FACTORY, JOBS_TEST_MARKER="default")
    app.config.from_prefixed_env()
    app.config.update(config or {})
    RequestLogging(app)
    jobs.init_app(app)

    @app.post("/reports")
    def queue_report() -> tuple[dict[str, t.Any], int]:
        body = request.get_json()
        info = jobs.enqueue(write_report, body["title"], job_id=body.get("job_id"))
        return {"job_id": info.id, "status": info.status}, 202

    return app


def add(a: int, b: int) -> int:
    """Return ``a + b``."""
    return a + b


def write_report(title: str) -> dict[str, t.Any]:
    """Log one line per step and say which request id and app the job saw."""
    log.info("writing report %s", title)
    log.info("report %s written", title)
    return {"title": title, "request_id": get_request_id()}


def describe_context() -> dict[str, t.Any]:
    """Which app runs the job (its marker and identity) and whether ``g`` started empty."""
    fresh = "seen" not in g
    g.seen = True
    return {
        "marker": current_app.config["JOBS_TEST_MARKER"],
        "app_id": id(current_app._get_current_object()),  # type: ignore[attr-defined]
        "fresh_g": fresh,
    }


def fail_until_ok(folder: str) -> str:
    """Record an attempt in ``folder/attempts``; fail until ``folder/ok`` exists."""
    path = pathlib.Path(folder)
    with (path / "attempts").open("a") as attempts:
        attempts.write("attempt\n")
    if not (path / "ok").exists():
        raise RuntimeError(f"not yet: {folder} has no ok file")
    return "ok"


def attempts_in(folder: str) -> int:
    """How many times :func:`fail_until_ok` ran on ``folder``."""
    path = pathlib.Path(folder) / "attempts"
    return len(path.read_text().splitlines()) if path.exists() else 0


def sleep_for(seconds: float) -> str:
    """Sleep; a timeout shorter than ``seconds`` interrupts it."""
    time.sleep(seconds)
    return "slept"


def wait_for_release(folder: str, limit: float = 60.0) -> str:
    """Write the process id to ``folder/pid``, then wait until ``folder/release`` exists."""
    path = pathlib.Path(folder)
    (path / "pid").write_text(str(os.getpid()))
    deadline = time.monotonic() + limit
    while not (path / "release").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("never released")
        time.sleep(0.05)
    return "released"


def return_a_set() -> set[int]:
    """Return a value JSON cannot hold."""
    return {1, 2}


def enqueue_itself(job_id: str) -> str:
    """Queue this same job again, by the same id, while it runs: return what that gave."""
    return jobs.enqueue(enqueue_itself, job_id, job_id=job_id).status
