"""JobQueue against a real Redis (database 8 only) and real RQ workers, and inline.

Workers run in process (``SimpleWorker``, burst) where speed matters, and as
``flask jobs worker`` / ``rq worker`` subprocesses where forking matters (timeouts,
SIGKILL, SIGTERM). Under ``CI=true`` an unreachable Redis fails these tests; elsewhere
the Redis tests are skipped and the inline ones still run.
"""

from __future__ import annotations

import calendar
import contextlib
import datetime as dt
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
import typing as t
import urllib.parse

import pytest
import redis
from rq import Retry
from rq import SimpleWorker
from rq.job import Job
from rq.registry import StartedJobRegistry

from flask_backend_patterns import jobs as jobs_module
from flask_backend_patterns.errors import NotFoundError
from flask_backend_patterns.errors import ServiceUnavailableError
from flask_backend_patterns.jobs import JobQueue
from flask_backend_patterns.logging import JsonFormatter
from tests import jobs_support
from tests.jobs_support import create_app
from tests.jobs_support import jobs


def _database_8(url: str) -> str:
    """The same Redis server as ``url``, database 8: the only one these tests touch."""
    return urllib.parse.urlsplit(url)._replace(path="/8").geturl()


REDIS_URL = _database_8(os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
#: nothing listens on port 1: a Redis that does not answer.
DEAD_REDIS_URL = "redis://127.0.0.1:1/0"
ROOT = pathlib.Path(__file__).resolve().parents[2]
#: bound on any wait for a subprocess; the waits end as soon as the state is reached.
WAIT_LIMIT = 15.0


@pytest.fixture
def redis_db() -> t.Iterator[redis.Redis]:
    """Database 8, flushed before and after the test."""
    conn = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        conn.ping()
    except redis.exceptions.ConnectionError as exc:
        conn.close()
        if IN_CI:
            pytest.fail(f"Redis at {REDIS_URL} does not answer (CI needs it): {exc}")
        pytest.skip(f"Redis at {REDIS_URL} does not answer: {exc}")
    conn.flushdb()
    yield conn
    conn.flushdb()
    conn.close()


@pytest.fixture(autouse=True)
def _fresh_factory_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs_module, "_factory_apps", {})


def make_app(**config: t.Any) -> t.Any:
    return create_app({"TESTING": True, "BACKEND_LOGGING_CONFIGURE": False, **config})


@pytest.fixture
def app(redis_db: redis.Redis) -> t.Any:
    return make_app(BACKEND_JOBS_REDIS_URL=REDIS_URL, JOBS_TEST_MARKER="test-app")


@pytest.fixture
def inline_app() -> t.Any:
    return make_app(JOBS_TEST_MARKER="inline-app")


@contextlib.contextmanager
def kept_signal_handlers() -> t.Iterator[None]:
    """An in-process worker installs SIGINT/SIGTERM handlers; give pytest its own back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def work(app: t.Any, *, in_app_context: bool = True, with_scheduler: bool = False) -> None:
    """Run every queued job with an in-process ``SimpleWorker`` in burst mode."""
    with app.app_context():
        worker = jobs.worker(worker_class=SimpleWorker)
    with kept_signal_handlers():
        if in_app_context:
            with app.app_context():
                worker.work(burst=True, with_scheduler=with_scheduler)
        else:
            worker.work(burst=True, with_scheduler=with_scheduler)


def rq_job(app: t.Any, job_id: str) -> Job:
    with app.app_context():
        return Job.fetch(
            job_id, connection=jobs_module.get_state().connection, serializer=jobs_module.SERIALIZER
        )


def info(app: t.Any, job_id: str) -> jobs_module.JobInfo:
    with app.app_context():
        found = jobs.get_job(job_id)
    assert found is not None
    return found


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        FLASK_APP="tests.jobs_support:create_app",
        FLASK_BACKEND_JOBS_REDIS_URL=REDIS_URL,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        **extra,
    )
    return env


def flask_jobs(*args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    """``flask jobs ...`` in a subprocess, as an operator would run it."""
    return subprocess.run(
        [sys.executable, "-m", "flask", "jobs", *args],
        cwd=ROOT,
        env=cli_env(**extra_env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@contextlib.contextmanager
def flask_worker(*args: str, release: pathlib.Path) -> t.Iterator[subprocess.Popen[str]]:
    """A long-running ``flask jobs worker`` in its own process group, killed with it at the end.

    Its log goes to ``worker.log`` beside ``release``, which is touched on the way out so
    that a job still waiting on it ends too.
    """
    with (release.parent / "worker.log").open("w") as log_file:
        worker = subprocess.Popen(
            [sys.executable, "-m", "flask", "jobs", "worker", *args],
            cwd=ROOT,
            env=cli_env(),
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            text=True,
            start_new_session=True,
        )
        try:
            yield worker
        finally:
            release.touch()
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=WAIT_LIMIT)


def wait_until(condition: t.Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_LIMIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {WAIT_LIMIT} s waiting for {what}")
        time.sleep(0.05)


def json_lines(text: str) -> list[dict[str, t.Any]]:
    lines = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            lines.append(json.loads(line))
    return [line for line in lines if isinstance(line, dict)]


class JsonLines(logging.Handler):
    """Keeps each record as the JSON object the library's formatter writes."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, t.Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def job_log_lines() -> t.Iterator[list[dict[str, t.Any]]]:
    """JSON lines written by the job functions and by the jobs part."""
    handler = JsonLines()
    loggers = [logging.getLogger("tests.jobs_support"), logging.getLogger("flask_backend_patterns.jobs")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    yield handler.lines
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


# -- queue, run, look up --------------------------------------------------------------


def test_queued_job_runs_in_a_worker_and_finishes_with_its_result(app):
    with app.app_context():
        queued = jobs.enqueue(jobs_support.add, 2, 3)
    assert queued.status == "queued"
    assert queued.func == "tests.jobs_support:add"
    work(app)
    done = info(app, queued.id)
    assert (done.status, done.result, done.error) == ("finished", 5, None)
    assert done.ended_at is not None and done.ended_at.tzinfo is not None
    assert done.as_dict()["result"] == 5


def test_unknown_job_id_is_none(app):
    with app.app_context():
        assert jobs.get_job("no-such-job") is None
        assert jobs.get_job("not a valid id!") is None


def test_job_runs_in_a_fresh_app_context_of_the_worker_app(app):
    with app.app_context():
        first = jobs.enqueue(jobs_support.describe_context).id
        second = jobs.enqueue(jobs_support.describe_context).id
    work(app)
    results = [info(app, job_id).result for job_id in (first, second)]
    assert [r["marker"] for r in results] == ["test-app", "test-app"]
    assert {r["app_id"] for r in results} == {id(app)}
    assert all(r["fresh_g"] for r in results)


def test_worker_without_an_app_builds_one_from_the_factory_once(app, monkeypatch):
    monkeypatch.setenv("FLASK_JOBS_TEST_MARKER", "factory-app")
    with app.app_context():
        ids = [jobs.enqueue(jobs_support.describe_context).id for _ in range(2)]
    work(app, in_app_context=False)
    results = [info(app, job_id).result for job_id in ids]
    assert [r["marker"] for r in results] == ["factory-app", "factory-app"]
    assert results[0]["app_id"] == results[1]["app_id"] != id(app)


def test_worker_without_an_app_or_factory_fails_the_job_with_a_clear_error(redis_db):
    app = make_app(BACKEND_JOBS_REDIS_URL=REDIS_URL, BACKEND_JOBS_APP_FACTORY=None)
    with app.app_context():
        job_id = jobs.enqueue(jobs_support.add, 1, 1).id
    work(app, in_app_context=False)
    failed = info(app, job_id)
    assert failed.status == "failed"
    assert "BACKEND_JOBS_APP_FACTORY" in failed.error


def test_request_id_of_the_queuing_request_is_on_every_job_log_line(app, job_log_lines):
    response = app.test_client().post(
        "/reports", json={"title": "q3"}, headers={"X-Request-ID": "req-from-client-1"}
    )
    assert response.status_code == 202
    work(app)
    job_id = response.get_json()["job_id"]
    assert info(app, job_id).request_id == "req-from-client-1"
    messages = [line["message"] for line in job_log_lines]
    assert "writing report q3" in messages and "report q3 written" in messages
    assert {line["request_id"] for line in job_log_lines} == {"req-from-client-1"}
    assert {line["job_id"] for line in job_log_lines} == {job_id}
    assert info(app, job_id).result["request_id"] == "req-from-client-1"


def test_job_queued_outside_a_request_logs_under_a_new_request_id(app, job_log_lines):
    with app.app_context():
        job_id = jobs.enqueue(jobs_support.write_report, "nightly").id
    work(app)
    ids = {line["request_id"] for line in job_log_lines}
    assert len(ids) == 1 and None not in ids
    assert info(app, job_id).result["request_id"] in ids


# -- JSON, not pickle -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "where"),
    [
        pytest.param((dt.datetime(2026, 1, 1),), {}, r"args\[0\] is a datetime", id="datetime"),
        pytest.param((), {"ids": {1, 2}}, r"kwargs\['ids'\] is a set", id="set"),
        pytest.param(({1: "a"},), {}, r"args\[0\] has the key 1", id="int-key"),
        pytest.param((float("nan"),), {}, r"args\[0\] is nan", id="nan"),
        pytest.param(([object()],), {}, r"args\[0\]\[0\] is a object", id="nested-object"),
    ],
)
def test_non_json_arguments_are_rejected_at_enqueue_and_nothing_is_queued(app, args, kwargs, where):
    with app.app_context(), pytest.raises(TypeError, match=where):
        jobs.enqueue(jobs_support.add, *args, **kwargs)
    with app.app_context():
        assert jobs_module.get_state().queue().count == 0


def test_job_data_in_redis_is_json_naming_the_function_by_path(app, redis_db):
    with app.app_context():
        job_id = jobs.enqueue(jobs_support.add, 1, 2, job_id="json-1").id
    job = rq_job(app, job_id)
    assert json.loads(job.data) == [
        "flask_backend_patterns.jobs.run_job",
        None,
        ["tests.jobs_support:add", [1, 2], {}],
        {},
    ]
    assert json.loads(redis_db.hget(job.key, "meta"))["func"] == "tests.jobs_support:add"


def test_enqueue_registers_its_queue_where_rq_tools_look_for_queues(app, redis_db):
    with app.app_context():
        job_id = jobs.enqueue(jobs_support.add, 1, 2).id
        assert jobs_module.get_state().queue().get_job_ids() == [job_id]
    assert redis_db.smembers("rq:queues") == {b"rq:queue:default"}


@pytest.mark.parametrize(
    "func",
    [
        pytest.param(lambda: 1, id="lambda"),
        pytest.param(JobQueue().enqueue, id="method"),
        pytest.param("tests.jobs_support:no_such_function", id="missing-path"),
    ],
)
def test_functions_a_worker_cannot_import_are_rejected(inline_app, func):
    with inline_app.app_context(), pytest.raises(TypeError, match="Job function"):
        jobs.enqueue(func)


def test_job_function_given_by_path_runs(app):
    with app.app_context():
        job_id = jobs.enqueue("tests.jobs_support:add", 4, 5).id
    work(app)
    assert info(app, job_id).result == 9


def test_return_value_that_is_not_json_fails_the_job(app):
    with app.app_context():
        job_id = jobs.enqueue(jobs_support.return_a_set).id
    work(app)
    failed = info(app, job_id)
    assert failed.status == "failed"
    assert failed.error.startswith("TypeError: the return value is a set")
    assert "Traceback" in failed.exc_info and "Traceback" not in failed.error
    assert "exc_info" not in failed.as_dict()


# -- one job per id -------------------------------------------------------------------


def test_same_job_id_while_pending_gives_the_one_queued_job(app):
    with app.app_context():
        first = jobs.enqueue(jobs_support.add, 1, 1, job_id="report-7")
        second = jobs.enqueue(jobs_support.add, 100, 100, job_id="report-7")
        assert jobs_module.get_state().queue().count == 1
    assert first.id == second.id == "report-7"
    assert second.status == "queued"
    work(app)
    assert info(app, "report-7").result == 2


def test_same_job_id_from_many_threads_at_once_queues_one_job(app):
    barrier = threading.Barrier(8)
    seen: list[str] = []

    def enqueue() -> None:
        with app.app_context():
            barrier.wait()
            seen.append(jobs.enqueue(jobs_support.add, 1, 2, job_id="burst-1").id)

    threads = [threading.Thread(target=enqueue) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == ["burst-1"] * 8
    with app.app_context():
        assert jobs_module.get_state().queue().get_job_ids() == ["burst-1"]


def test_same_job_id_after_it_finished_runs_again(app, tmp_path):
    (tmp_path / "ok").touch()
    with app.app_context():
        jobs.enqueue(jobs_support.fail_until_ok, str(tmp_path), job_id="again-1")
    work(app)
    assert info(app, "again-1").status == "finished"
    with app.app_context():
        again = jobs.enqueue(jobs_support.fail_until_ok, str(tmp_path), job_id="again-1")
    assert again.status == "queued"
    work(app)
    assert jobs_support.attempts_in(str(tmp_path)) == 2
    assert info(app, "again-1").status == "finished"


# -- retries, failure, requeue --------------------------------------------------------


@pytest.fixture
def scheduler_clock(monkeypatch):
    """The time RQ's scheduler sees, set by the test: due retries run without waiting."""
    clock = {"at": dt.datetime.now(dt.UTC)}
    monkeypatch.setattr("rq.scheduler.current_timestamp", lambda: calendar.timegm(clock["at"].timetuple()))
    return clock


def work_until_scheduled(app, job_id, interval):
    """Work once; the failed job must come back scheduled ``interval`` s after it failed.

    RQ stores the due time in whole seconds, so it is checked against the whole seconds
    around the run rather than against a clock.
    """
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    work(app, with_scheduler=True)
    after = dt.datetime.now(dt.UTC)
    assert info(app, job_id).status == "scheduled"
    with app.app_context():
        due = jobs_module.get_state().queue().scheduled_job_registry.get_scheduled_time(job_id)
    assert before + dt.timedelta(seconds=interval) <= due <= after + dt.timedelta(seconds=interval)
    return due


def test_failing_job_is_retried_at_the_given_intervals_then_failed_and_requeueable(
    app, tmp_path, scheduler_clock
):
    folder = str(tmp_path)
    with app.app_context():
        job_id = jobs.enqueue(jobs_support.fail_until_ok, folder, retry=Retry(max=2, interval=[1, 5])).id
    assert rq_job(app, job_id).retry_intervals == [1, 5]

    due = work_until_scheduled(app, job_id, interval=1)
    assert jobs_support.attempts_in(folder) == 1

    scheduler_clock["at"] = due - dt.timedelta(seconds=1)
    work(app, with_scheduler=True)  # not due yet: nothing runs
    assert jobs_support.attempts_in(folder) == 1

    scheduler_clock["at"] = due
    due = work_until_scheduled(app, job_id, interval=5)
    assert jobs_support.attempts_in(folder) == 2

    scheduler_clock["at"] = due
    work(app, with_scheduler=True)
    assert jobs_support.attempts_in(folder) == 3
    failed = info(app, job_id)
    assert failed.status == "failed"
    assert failed.error == f"RuntimeError: not yet: {folder} has no ok file"
    with app.app_context():
        assert [f.id for f in jobs.failed_jobs()] == [job_id]

    listing = flask_jobs("failed")
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.splitlines() == [f"{job_id}\ttests.jobs_support:fail_until_ok\t{failed.error}"]

    (tmp_path / "ok").touch()
    requeued = flask_jobs("requeue", job_id)
    assert requeued.returncode == 0, requeued.stderr
    assert requeued.stdout.splitlines() == [f"{job_id}\tqueued"]
    work(app)
    assert jobs_support.attempts_in(folder) == 4
    assert (info(app, job_id).status, info(app, job_id).result) == ("finished", "ok")


def test_retry_as_a_number_waits_doubling_intervals(app):
    with app.app_context():
        job_id = jobs.enqueue(jobs_support.add, 1, 1, retry=3).id
    job = rq_job(app, job_id)
    assert (job.retries_left, job.retry_intervals) == (3, [10, 20, 40])


def test_requeue_all_failed_jobs_from_the_command_line(app, tmp_path):
    with app.app_context():
        ids = sorted(jobs.enqueue(jobs_support.fail_until_ok, str(tmp_path)).id for _ in range(2))
    work(app)
    result = app.test_cli_runner().invoke(args=["jobs", "requeue", "--all"])
    assert result.exit_code == 0, result.output
    assert "Requeued 2 job(s)." in result.output
    assert sorted(info(app, job_id).status for job_id in ids) == ["queued", "queued"]
    with app.app_context():
        assert jobs.failed_jobs() == []


def test_requeue_of_a_job_that_did_not_fail_is_not_found(app):
    with app.app_context():
        job_id = jobs.enqueue(jobs_support.add, 1, 1).id
        with pytest.raises(NotFoundError):
            jobs.requeue(job_id)
        with pytest.raises(NotFoundError):
            jobs.requeue("never-queued")
    result = app.test_cli_runner().invoke(args=["jobs", "requeue", "never-queued"])
    assert result.exit_code == 1
    assert "No failed job with id 'never-queued'" in result.output


# -- real workers: the flask command, timeouts, kills, SIGTERM, plain rq -------------


def test_flask_jobs_worker_burst_runs_the_named_queues_with_the_request_id(redis_db):
    app = make_app(BACKEND_JOBS_REDIS_URL=REDIS_URL, BACKEND_JOBS_QUEUES=["default", "low"])
    response = app.test_client().post(
        "/reports", json={"title": "sub-1"}, headers={"X-Request-ID": "req-sub-1"}
    )
    job_id = response.get_json()["job_id"]
    with app.app_context():
        low_id = jobs.enqueue(jobs_support.add, 1, 1, queue="low").id

    run = flask_jobs(
        "worker", "--burst", "--queues", "default", FLASK_BACKEND_JOBS_QUEUES='["default", "low"]'
    )

    assert run.returncode == 0, run.stderr
    assert info(app, job_id).status == "finished"
    assert info(app, low_id).status == "queued"
    job_lines = [line for line in json_lines(run.stderr) if line.get("logger") == "tests.jobs_support"]
    assert [line["message"] for line in job_lines] == ["writing report sub-1", "report sub-1 written"]
    assert {line["request_id"] for line in job_lines} == {"req-sub-1"}


@pytest.mark.parametrize(
    ("options", "in_worker_process"),
    [pytest.param([], False, id="fork"), pytest.param(["--no-fork"], True, id="no-fork")],
)
def test_flask_jobs_worker_forks_a_work_horse_per_job_unless_told_not_to(app, options, in_worker_process):
    with app.app_context():
        job_id = jobs.enqueue(os.getpid).id
    worker = subprocess.Popen(
        [sys.executable, "-m", "flask", "jobs", "worker", "--burst", *options],
        cwd=ROOT,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, stderr = worker.communicate(timeout=60)
    assert worker.returncode == 0, stderr
    done = info(app, job_id)
    assert done.status == "finished", done.exc_info
    assert (done.result == worker.pid) is in_worker_process


@pytest.mark.parametrize("options", [pytest.param([], id="fork"), pytest.param(["--no-fork"], id="no-fork")])
def test_job_past_its_timeout_fails_cleanly_and_the_worker_goes_on(app, options):
    with app.app_context():
        slow = jobs.enqueue(jobs_support.sleep_for, 30, timeout=1).id
        after = jobs.enqueue(jobs_support.add, 2, 2).id
    run = flask_jobs("worker", "--burst", *options)
    assert run.returncode == 0, run.stderr
    failed = info(app, slow)
    assert failed.status == "failed"
    assert "JobTimeoutException" in failed.error
    assert info(app, after).result == 4


def test_worker_killed_mid_job_leaves_the_job_to_be_failed_not_lost(app, tmp_path):
    with app.app_context():
        job_id = jobs.enqueue(jobs_support.wait_for_release, str(tmp_path), timeout=60).id
        state = jobs_module.get_state()
        started = StartedJobRegistry(state.queue().name, connection=state.connection)
    with flask_worker("--without-scheduler", release=tmp_path / "release") as worker:
        wait_until(
            lambda: (tmp_path / "pid").exists() and info(app, job_id).status == "started", "the job to start"
        )
        horse = int((tmp_path / "pid").read_text())
        os.killpg(worker.pid, signal.SIGKILL)
        os.kill(horse, signal.SIGKILL)  # the work horse has its own process group
        worker.wait(timeout=WAIT_LIMIT)

    started.cleanup()  # the dead worker's heartbeat has not expired yet: still started
    assert info(app, job_id).status == "started"
    heartbeat_expired = time.time() + 3600
    started.cleanup(timestamp=heartbeat_expired)

    failed = info(app, job_id)
    assert failed.status == "failed"
    assert "AbandonedJobError" in failed.error
    with app.app_context():
        assert [f.id for f in jobs.failed_jobs()] == [job_id]
        assert jobs.requeue(job_id).status == "queued"


@pytest.mark.parametrize("options", [pytest.param([], id="fork"), pytest.param(["--no-fork"], id="no-fork")])
def test_sigterm_stops_the_worker_after_the_current_job_finishes(app, tmp_path, redis_db, options):
    with app.app_context():
        job_id = jobs.enqueue(jobs_support.wait_for_release, str(tmp_path), timeout=60).id
    with flask_worker("--name", "warm-shutdown-test", *options, release=tmp_path / "release") as worker:
        wait_until(
            lambda: (tmp_path / "pid").exists() and info(app, job_id).status == "started", "the job to start"
        )
        worker.send_signal(signal.SIGTERM)
        wait_until(
            lambda: redis_db.hexists("rq:worker:warm-shutdown-test", "shutdown_requested_date"),
            "the worker to take the SIGTERM",
        )
        assert worker.poll() is None
        (tmp_path / "release").touch()
        returncode = worker.wait(timeout=WAIT_LIMIT)
    assert returncode == 0
    assert (info(app, job_id).status, info(app, job_id).result) == ("finished", "released")


def test_cold_shutdown_of_a_non_forking_worker_fails_the_job_it_was_running(app, tmp_path, redis_db):
    with app.app_context():
        job_id = jobs.enqueue(jobs_support.wait_for_release, str(tmp_path), timeout=60).id
    with flask_worker("--name", "cold-shutdown-test", "--no-fork", release=tmp_path / "release") as worker:
        wait_until(
            lambda: (tmp_path / "pid").exists() and info(app, job_id).status == "started", "the job to start"
        )
        worker.send_signal(signal.SIGTERM)
        wait_until(
            lambda: redis_db.hexists("rq:worker:cold-shutdown-test", "shutdown_requested_date"),
            "the worker to take the SIGTERM",
        )
        first = dt.datetime.fromisoformat(
            redis_db.hget("rq:worker:cold-shutdown-test", "shutdown_requested_date").decode().rstrip("Z")
        ).replace(tzinfo=dt.UTC)
        # RQ ignores a second signal that comes within 1 s of the first.
        ignored_until = first + dt.timedelta(seconds=1.2)
        wait_until(
            lambda: dt.datetime.now(dt.UTC) > ignored_until, "RQ's window for a duplicate signal to pass"
        )
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=WAIT_LIMIT)
    assert (info(app, job_id).status, info(app, job_id).error) == ("failed", "SystemExit")


def test_plain_rq_worker_runs_our_jobs_in_the_factory_app(app):
    with app.app_context():
        job_id = jobs.enqueue(jobs_support.describe_context).id
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "rq.cli",
            "worker",
            "--burst",
            "--url",
            REDIS_URL,
            "--serializer",
            "rq.serializers.JSONSerializer",
            "default",
        ],
        cwd=ROOT,
        env=cli_env(FLASK_JOBS_TEST_MARKER="rq-cli"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    done = info(app, job_id)
    assert done.status == "finished", done.exc_info
    assert done.result["marker"] == "rq-cli"


# -- inline mode ----------------------------------------------------------------------


def test_without_redis_url_jobs_run_inline_and_report_their_result(inline_app, job_log_lines):
    response = inline_app.test_client().post(
        "/reports", json={"title": "now"}, headers={"X-Request-ID": "req-inline-1"}
    )
    assert response.status_code == 202
    assert response.get_json()["status"] == "finished"
    job_id = response.get_json()["job_id"]
    done = info(inline_app, job_id)
    assert (done.status, done.inline) == ("finished", True)
    assert done.result == {"title": "now", "request_id": "req-inline-1"}
    assert {line["request_id"] for line in job_log_lines} == {"req-inline-1"}


def test_inline_failure_is_retried_at_once_then_reported_and_requeueable(inline_app, tmp_path):
    folder = str(tmp_path)
    with inline_app.app_context():
        failed = jobs.enqueue(jobs_support.fail_until_ok, folder, retry=Retry(max=2, interval=[60]))
        assert jobs_support.attempts_in(folder) == 3
        assert failed.status == "failed"
        assert failed.error == f"RuntimeError: not yet: {folder} has no ok file"
        assert "Traceback" in failed.exc_info
        assert [f.id for f in jobs.failed_jobs()] == [failed.id]
        (tmp_path / "ok").touch()
        again = jobs.requeue(failed.id)
        assert (again.status, again.result) == ("finished", "ok")
        assert jobs.get_job(failed.id) == again
        assert jobs.failed_jobs() == []


def test_inline_job_arguments_arrive_as_json(inline_app):
    with inline_app.app_context():
        done = jobs.enqueue(jobs_support.add, [1], (2,))
    assert done.result == [1, 2]


def test_inline_same_job_id_while_running_gives_the_running_job(inline_app):
    with inline_app.app_context():
        outer = jobs.enqueue(jobs_support.enqueue_itself, "self-1", job_id="self-1")
    assert (outer.status, outer.result) == ("finished", "started")


def test_inline_history_is_bounded():
    app = make_app(BACKEND_JOBS_INLINE_HISTORY=2)
    with app.app_context():
        ids = [jobs.enqueue(jobs_support.add, n, n).id for n in range(3)]
        assert jobs.get_job(ids[0]) is None
        assert [jobs.get_job(job_id).result for job_id in ids[1:]] == [2, 4]


def test_inline_forced_never_touches_redis():
    app = make_app(BACKEND_JOBS_REDIS_URL=DEAD_REDIS_URL, BACKEND_JOBS_INLINE=True)
    with app.app_context():
        assert jobs.enqueue(jobs_support.add, 1, 2).result == 3


def test_worker_command_in_inline_mode_is_a_usage_error(inline_app):
    result = inline_app.test_cli_runner().invoke(args=["jobs", "worker", "--burst"])
    assert result.exit_code == 2
    assert "inline" in result.output


# -- configuration and outages --------------------------------------------------------


def test_unreachable_redis_is_a_503_error_at_enqueue():
    app = make_app(BACKEND_JOBS_REDIS_URL=DEAD_REDIS_URL)
    with app.app_context(), pytest.raises(ServiceUnavailableError) as raised:
        jobs.enqueue(jobs_support.add, 1, 2)
    assert raised.value.status == 503


@pytest.mark.parametrize(
    ("config", "message"),
    [
        pytest.param({"BACKEND_JOBS_REDIS_URL": "http://127.0.0.1:6379"}, "BACKEND_JOBS_REDIS_URL", id="url"),
        pytest.param({"BACKEND_JOBS_QUEUES": []}, "at least one queue", id="no-queues"),
        pytest.param({"BACKEND_JOBS_QUEUES": "a,b c"}, "BACKEND_JOBS_QUEUES", id="queue-name"),
        pytest.param({"BACKEND_JOBS_APP_FACTORY": "create_app"}, "package.module:create_app", id="factory"),
        pytest.param({"BACKEND_JOBS_DEFAULT_TIMEOUT": 0}, "BACKEND_JOBS_DEFAULT_TIMEOUT", id="timeout"),
        pytest.param({"BACKEND_JOBS_FAILURE_TTL": 0}, "BACKEND_JOBS_FAILURE_TTL", id="failure-ttl"),
    ],
)
def test_wrong_config_fails_at_init_app(config, message):
    with pytest.raises(ValueError, match=message):
        make_app(**config)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"job_id": "has space"}, "job_id", id="job-id"),
        pytest.param({"retry": -1}, "retry", id="retry"),
        pytest.param({"timeout": 0}, "timeout", id="timeout"),
        pytest.param({"queue": "elsewhere"}, "Unknown queue", id="queue"),
    ],
)
@pytest.mark.parametrize("redis_url", [DEAD_REDIS_URL, None], ids=["queued", "inline"])
def test_wrong_job_options_are_rejected_at_enqueue_before_redis_is_asked(options, message, redis_url):
    app = make_app(BACKEND_JOBS_REDIS_URL=redis_url)
    with app.app_context(), pytest.raises(ValueError, match=message):
        jobs.enqueue(jobs_support.add, 1, 1, **options)


def test_config_from_prefixed_env_values_is_accepted():
    app = make_app(
        BACKEND_JOBS_REDIS_URL=DEAD_REDIS_URL,
        BACKEND_JOBS_QUEUES="high,default",
        BACKEND_JOBS_DEFAULT_TIMEOUT="60",
        BACKEND_JOBS_INLINE="false",
    )
    state = jobs_module.get_state(app)
    assert (state.queue_names, state.default_timeout, state.inline) == (["high", "default"], 60, False)
