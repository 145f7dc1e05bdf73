"""Background jobs over RQ, run inside an app context with the request id of their caller.

:class:`JobQueue` queues a call (``enqueue(func, *args, job_id=..., retry=...)``) on Redis
when ``BACKEND_JOBS_REDIS_URL`` is set, and runs it inline, in the caller, when it is not.
Jobs are stored as JSON (never pickle): the function by its import path, the arguments as
JSON values. A worker (``flask jobs worker``, or plain ``rq worker`` given
``BACKEND_JOBS_APP_FACTORY``) runs each job inside a fresh app context, with the request id
of the request that queued it bound for every log line.
"""

from __future__ import annotations

import collections
import datetime as dt
import functools
import json
import logging
import math
import pkgutil
import re
import threading
import traceback
import types
import typing as t
import uuid
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace

import click
import redis
from flask import current_app
from flask import Flask
from flask import has_app_context
from flask.cli import AppGroup
from rq import get_current_job
from rq import Queue
from rq import Retry
from rq import SimpleWorker
from rq import Worker
from rq.exceptions import InvalidJobOperation
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.job import JobStatus
from rq.registry import FailedJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.worker import BaseWorker

from ._extension import config_bool
from ._extension import config_int
from ._extension import config_list
from ._extension import lookup_state
from ._extension import register_state
from .errors import NotFoundError
from .errors import ServiceUnavailableError
from .logging import bind_request_id
from .logging import get_request_id
from .logging import redact
from .logging import set_log_context

log = logging.getLogger("flask_backend_patterns.jobs")

EXTENSION_KEY = "backend_patterns.jobs"

#: the serializer every queue, job and worker of this part uses; ``rq worker`` needs
#: ``--serializer rq.serializers.JSONSerializer`` to read our jobs.
SERIALIZER = JSONSerializer
#: statuses of a job that has not ended: queuing the same id again returns it.
PENDING_STATUSES = frozenset({"queued", "scheduled", "deferred", "started"})
#: seconds between the retries of ``retry=n``: doubling from 10 s, capped at 10 minutes.
RETRY_BACKOFF_START = 10
RETRY_BACKOFF_CAP = 600
#: the longest ``JobInfo.error`` line; the full traceback is in ``exc_info``.
ERROR_LINE_LIMIT = 300

_JOB_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_QUEUE_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
_FACTORY_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_LOCK_PREFIX = "backend_patterns:jobs:enqueue-lock:"
_JSON_DEPTH_LIMIT = 100
_REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)

RetrySpec = int | Retry | None


@dataclass(frozen=True)
class JobInfo:
    """What is known about one job: its status and, once it ended, its result or error.

    ``status`` is RQ's: ``queued``, ``started``, ``finished``, ``failed``, ``scheduled``
    (waiting for a retry), ``deferred``, and rarely ``stopped`` or ``canceled``.
    ``result`` is the return value of a finished job. ``error`` is one short line for API
    consumers (``"ValueError: market 7 has no name"``); ``exc_info`` holds the full
    traceback for operators and must not be sent to clients.
    """

    id: str
    status: str
    func: str
    queue: str | None = None
    result: t.Any = None
    error: str | None = None
    exc_info: str | None = field(default=None, repr=False)
    enqueued_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None
    request_id: str | None = None
    inline: bool = False

    @property
    def pending(self) -> bool:
        """True while the job has not ended (queued, scheduled, deferred or started)."""
        return self.status in PENDING_STATUSES

    def as_dict(self) -> dict[str, t.Any]:
        """The fields an API may show: id, status, result, error, enqueued_at, ended_at.

        Times are ISO 8601 UTC strings; ``exc_info`` is left out on purpose.
        """
        return {
            "id": self.id,
            "status": self.status,
            "result": self.result,
            "error": self.error,
            "enqueued_at": self.enqueued_at.isoformat() if self.enqueued_at else None,
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
        }


@dataclass
class _InlineCall:
    """An inline job as run: kept so that ``requeue`` can run it again."""

    info: JobInfo
    func: str
    args: list[t.Any]
    kwargs: dict[str, t.Any]
    retries: int


class _InlineHistory:
    """The last ``size`` inline jobs of one app, newest last. Process-local by design."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._calls: collections.OrderedDict[str, _InlineCall] = collections.OrderedDict()
        self._lock = threading.Lock()

    def claim(self, call: _InlineCall) -> JobInfo | None:
        """Record ``call`` as started, unless a job with its id is running: return that one."""
        with self._lock:
            running = self._calls.get(call.info.id)
            if running is not None and running.info.pending:
                return running.info
            self._store(call)
            return None

    def finish(self, call: _InlineCall, info: JobInfo) -> None:
        """Replace the record of ``call`` by its outcome."""
        with self._lock:
            call.info = info
            self._store(call)

    def get(self, job_id: str) -> _InlineCall | None:
        """The record of ``job_id``, if it is still kept."""
        with self._lock:
            return self._calls.get(job_id)

    def all(self) -> list[_InlineCall]:
        """Every kept record, oldest first."""
        with self._lock:
            return list(self._calls.values())

    def _store(self, call: _InlineCall) -> None:
        self._calls[call.info.id] = call
        self._calls.move_to_end(call.info.id)
        while len(self._calls) > self.size:
            self._calls.popitem(last=False)


@dataclass
class JobQueueState:
    """Per-app state of :class:`JobQueue`.

    ``connection`` is ``None`` in inline mode; ``queues`` maps each configured queue name
    to its RQ ``Queue`` (empty in inline mode).
    """

    inline: bool
    queue_names: list[str]
    default_timeout: int
    result_ttl: int
    failure_ttl: int
    app_factory: str | None
    connection: redis.Redis | None = field(repr=False)
    queues: dict[str, Queue] = field(repr=False)
    history: _InlineHistory = field(repr=False)

    def queue(self, name: str | None = None) -> Queue:
        """The RQ queue ``name`` (the first configured one by default).

        :raises RuntimeError: inline mode, where there is no queue.
        :raises ValueError: ``name`` is not in ``BACKEND_JOBS_QUEUES``.
        """
        if self.connection is None:
            raise RuntimeError(
                "Jobs run inline (no BACKEND_JOBS_REDIS_URL, or BACKEND_JOBS_INLINE): no queue."
            )
        return self.queues[self.queue_name(name)]

    def queue_name(self, name: str | None = None) -> str:
        """``name`` checked against ``BACKEND_JOBS_QUEUES`` (the first one by default).

        :raises ValueError: ``name`` is not in ``BACKEND_JOBS_QUEUES``.
        """
        if name is None:
            return self.queue_names[0]
        if name not in self.queue_names:
            raise ValueError(f"Unknown queue {name!r}; BACKEND_JOBS_QUEUES lists {self.queue_names}.")
        return name


class JobQueue:
    """Queue calls to run in the background with RQ, or inline when Redis is not configured.

    Config keys (defaults in brackets):

    - ``BACKEND_JOBS_REDIS_URL`` [None]: the Redis holding the queues; unset, jobs run
      inline, in the caller.
    - ``BACKEND_JOBS_INLINE`` [False]: run jobs inline even when a Redis URL is set.
    - ``BACKEND_JOBS_QUEUES`` [["default"]]: queue names, in priority order; the first is
      where ``enqueue`` puts jobs unless told otherwise.
    - ``BACKEND_JOBS_DEFAULT_TIMEOUT`` [180]: seconds a job may run before it is stopped
      and failed (``-1``: no limit).
    - ``BACKEND_JOBS_RESULT_TTL`` [500]: seconds a finished job and its result are kept.
    - ``BACKEND_JOBS_FAILURE_TTL`` [604800, 7 days]: seconds a failed job is kept, and so
      requeueable.
    - ``BACKEND_JOBS_APP_FACTORY`` [None]: ``"package.module:create_app"``, called with no
      arguments by a worker that has no app (plain ``rq worker``).
    - ``BACKEND_JOBS_INLINE_HISTORY`` [1000]: how many inline jobs ``get_job`` remembers.

    Registers the ``flask jobs`` command group (``worker``, ``failed``, ``requeue``).
    """

    def __init__(self, app: Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read the config of ``app``, connect the queues and add the ``jobs`` commands.

        No connection is made here: Redis is first contacted by the first job call.

        :raises RuntimeError: already registered on this app.
        :raises ValueError: a config value of the wrong type or shape.
        """
        app.config.setdefault("BACKEND_JOBS_REDIS_URL", None)
        app.config.setdefault("BACKEND_JOBS_INLINE", False)
        app.config.setdefault("BACKEND_JOBS_QUEUES", ["default"])
        app.config.setdefault("BACKEND_JOBS_DEFAULT_TIMEOUT", 180)
        app.config.setdefault("BACKEND_JOBS_RESULT_TTL", 500)
        app.config.setdefault("BACKEND_JOBS_FAILURE_TTL", 7 * 24 * 3600)
        app.config.setdefault("BACKEND_JOBS_APP_FACTORY", None)
        app.config.setdefault("BACKEND_JOBS_INLINE_HISTORY", 1000)
        state = _state_from_config(app.config)
        register_state(app, EXTENSION_KEY, state)
        app.cli.add_command(jobs_cli)

    def enqueue(
        self,
        func: t.Callable[..., t.Any] | str,
        /,
        *args: t.Any,
        job_id: str | None = None,
        queue: str | None = None,
        retry: RetrySpec = None,
        timeout: int | None = None,
        result_ttl: int | None = None,
        failure_ttl: int | None = None,
        **kwargs: t.Any,
    ) -> JobInfo:
        """Queue ``func(*args, **kwargs)``; see :meth:`enqueue_call`.

        The keyword names above are options of the job, not of ``func``: use
        :meth:`enqueue_call` to pass a keyword argument named like one of them.
        """
        return self.enqueue_call(
            func,
            args,
            kwargs,
            job_id=job_id,
            queue=queue,
            retry=retry,
            timeout=timeout,
            result_ttl=result_ttl,
            failure_ttl=failure_ttl,
        )

    def enqueue_call(
        self,
        func: t.Callable[..., t.Any] | str,
        args: t.Sequence[t.Any] = (),
        kwargs: t.Mapping[str, t.Any] | None = None,
        *,
        job_id: str | None = None,
        queue: str | None = None,
        retry: RetrySpec = None,
        timeout: int | None = None,
        result_ttl: int | None = None,
        failure_ttl: int | None = None,
    ) -> JobInfo:
        """Queue ``func(*args, **kwargs)`` on the current app's queue, or run it inline.

        ``func`` is a module-level function, or its import path (``"pkg.mod:func"``).
        ``args`` and ``kwargs`` must be JSON values (tuples arrive as lists). The request
        id of the current request travels with the job. ``job_id`` (letters, digits,
        ``_`` and ``-``) makes the call idempotent: while a job with that id is queued,
        scheduled, deferred or started, the same job is returned and nothing is queued; a
        finished or failed job with that id is replaced and runs again.

        ``retry`` is an ``rq.Retry`` (``Retry(max=3, interval=[10, 60])``) or a number of
        retries with doubling waits (10 s, 20 s, ... at most 600 s). ``timeout``,
        ``result_ttl`` and ``failure_ttl`` default to the ``BACKEND_JOBS_*`` keys.

        :raises TypeError: ``func`` cannot be found by an import path, or an argument is
            not JSON.
        :raises ValueError: a bad job id, queue name, retry or ttl.
        :raises ServiceUnavailableError: Redis does not answer (503).
        """
        state = get_state()
        target = function_path(func)
        call_args = list(args)
        call_kwargs = dict(kwargs or {})
        check_json(call_args, "args")
        check_json(call_kwargs, "kwargs")
        if job_id is not None and (not isinstance(job_id, str) or not _JOB_ID_RE.match(job_id)):
            raise ValueError(f"job_id must be 1-128 characters of [A-Za-z0-9_-], got {job_id!r}")
        rq_retry = _retry(retry)
        timeout = _option_int(timeout, state.default_timeout, "timeout", allow_unlimited=True)
        result_ttl = _option_int(result_ttl, state.result_ttl, "result_ttl", allow_unlimited=True, minimum=0)
        failure_ttl = _option_int(failure_ttl, state.failure_ttl, "failure_ttl", allow_unlimited=True)
        queue_name = state.queue_name(queue)  # checked inline too: the same call must work with Redis
        if state.inline:
            return _run_inline(
                state,
                _InlineCall(
                    info=JobInfo(
                        id=job_id or uuid.uuid4().hex,
                        status="started",
                        func=target,
                        enqueued_at=_utcnow(),
                        request_id=get_request_id(),
                        inline=True,
                    ),
                    func=target,
                    args=call_args,
                    kwargs=call_kwargs,
                    retries=rq_retry.max if rq_retry else 0,
                ),
            )
        rq_queue = state.queue(queue_name)
        options: dict[str, t.Any] = {
            "args": [target, call_args, call_kwargs],
            "job_id": job_id,
            "retry": rq_retry,
            "timeout": timeout,
            "result_ttl": result_ttl,
            "failure_ttl": failure_ttl,
            "description": describe_call(target, call_args, call_kwargs),
            "meta": {
                "func": target,
                "request_id": get_request_id(),
                "app_factory": state.app_factory,
            },
        }
        try:
            if job_id is None:
                return job_info(_enqueue(rq_queue, options))
            return _enqueue_once(rq_queue, job_id, options)
        except _REDIS_DOWN as exc:
            raise _queue_unavailable(exc) from exc

    def get_job(self, job_id: str) -> JobInfo | None:
        """The status of job ``job_id`` (with its result or error), or ``None`` if unknown.

        A job is forgotten ``BACKEND_JOBS_RESULT_TTL`` seconds after it finished and
        ``BACKEND_JOBS_FAILURE_TTL`` after it failed. Inline, only this process's last
        ``BACKEND_JOBS_INLINE_HISTORY`` jobs are known.

        :raises ServiceUnavailableError: Redis does not answer (503).
        """
        state = get_state()
        if not isinstance(job_id, str) or not _JOB_ID_RE.match(job_id):
            return None
        if state.inline:
            call = state.history.get(job_id)
            return call.info if call else None
        try:
            return job_info(Job.fetch(job_id, connection=state.connection, serializer=SERIALIZER))
        except NoSuchJobError:
            return None
        except _REDIS_DOWN as exc:
            raise _queue_unavailable(exc) from exc

    def failed_jobs(self, queue: str | None = None) -> list[JobInfo]:
        """The failed jobs still kept, of ``queue`` or of every queue, soonest to expire first.

        :raises ServiceUnavailableError: Redis does not answer (503).
        """
        state = get_state()
        names = [state.queue_name(queue)] if queue else state.queue_names
        if state.inline:
            return [call.info for call in state.history.all() if call.info.status == "failed"]
        queues = [state.queue(name) for name in names]
        found: list[JobInfo] = []
        try:
            for rq_queue in queues:
                ids = rq_queue.failed_job_registry.get_job_ids()
                jobs = Job.fetch_many(ids, connection=rq_queue.connection, serializer=SERIALIZER)
                found.extend(job_info(job) for job in jobs if job is not None)
        except _REDIS_DOWN as exc:
            raise _queue_unavailable(exc) from exc
        return found

    def requeue(self, job_id: str) -> JobInfo:
        """Queue failed job ``job_id`` again (inline: run it again now) and return it.

        A requeued job gets no new retries: it runs once more.

        :raises NotFoundError: no failed job has that id (404).
        :raises ServiceUnavailableError: Redis does not answer (503).
        """
        state = get_state()
        missing = NotFoundError(f"No failed job with id {job_id!r}.")
        if not isinstance(job_id, str) or not _JOB_ID_RE.match(job_id):
            raise missing
        if state.inline:
            call = state.history.get(job_id)
            if call is None or call.info.status != "failed":
                raise missing
            return _run_inline(
                state,
                replace(
                    call,
                    info=replace(
                        call.info,
                        status="started",
                        error=None,
                        exc_info=None,
                        enqueued_at=_utcnow(),
                        ended_at=None,
                    ),
                    retries=0,
                ),
            )
        try:
            job = Job.fetch(job_id, connection=state.connection, serializer=SERIALIZER)
            registry = FailedJobRegistry(job.origin, connection=state.connection, serializer=SERIALIZER)
            # requeue() takes the job out of the registry atomically: of two callers, one wins.
            return job_info(registry.requeue(job))
        except (NoSuchJobError, InvalidJobOperation):
            raise missing from None
        except _REDIS_DOWN as exc:
            raise _queue_unavailable(exc) from exc

    def worker(
        self,
        queues: t.Sequence[str] | None = None,
        *,
        worker_class: type[BaseWorker] = Worker,
        **options: t.Any,
    ) -> BaseWorker:
        """An RQ worker for the current app's queues (all of ``BACKEND_JOBS_QUEUES`` by default).

        ``worker_class`` is ``rq.Worker`` (a forked work horse per job), or
        ``rq.SimpleWorker`` (jobs in this process: faster, no isolation; its timeouts need
        ``work()`` to run in the main thread). ``options`` go to its
        constructor (``name``, ``worker_ttl``, ...). Call ``work(burst=...)`` on it inside
        an app context, as ``flask jobs worker`` does.

        :raises RuntimeError: inline mode, where there is no queue to work.
        :raises ValueError: an unknown queue name.
        """
        state = get_state()
        names = list(queues) if queues else state.queue_names
        rq_queues = [state.queue(name) for name in names]
        options.setdefault("default_result_ttl", state.result_ttl)
        return worker_class(rq_queues, connection=state.connection, serializer=SERIALIZER, **options)


def get_state(app: Flask | None = None) -> JobQueueState:
    """Return the :class:`JobQueue` state of ``app`` (or the current app)."""
    return lookup_state(EXTENSION_KEY, JobQueueState, app)


def _state_from_config(config: t.Mapping[str, t.Any]) -> JobQueueState:
    url = config["BACKEND_JOBS_REDIS_URL"]
    if url is not None and not isinstance(url, str):
        raise ValueError(f"BACKEND_JOBS_REDIS_URL must be a redis:// URL or None, got {url!r}")
    queue_names = config_list(config["BACKEND_JOBS_QUEUES"], "BACKEND_JOBS_QUEUES")
    if not queue_names:
        raise ValueError("BACKEND_JOBS_QUEUES must name at least one queue")
    for name in queue_names:
        if not _QUEUE_NAME_RE.match(name):
            raise ValueError(f"BACKEND_JOBS_QUEUES: {name!r} is not 1-100 characters of [A-Za-z0-9._-]")
    factory = config["BACKEND_JOBS_APP_FACTORY"] or None
    if factory is not None and (not isinstance(factory, str) or not _FACTORY_RE.match(factory)):
        raise ValueError(
            f"BACKEND_JOBS_APP_FACTORY must look like 'package.module:create_app', got {factory!r}"
        )
    default_timeout = config_int(
        config["BACKEND_JOBS_DEFAULT_TIMEOUT"], "BACKEND_JOBS_DEFAULT_TIMEOUT", minimum=-1
    )
    if default_timeout == 0:
        raise ValueError("BACKEND_JOBS_DEFAULT_TIMEOUT must be a number of seconds >= 1, or -1 for no limit")
    result_ttl = config_int(config["BACKEND_JOBS_RESULT_TTL"], "BACKEND_JOBS_RESULT_TTL", minimum=-1)
    failure_ttl = config_int(config["BACKEND_JOBS_FAILURE_TTL"], "BACKEND_JOBS_FAILURE_TTL", minimum=-1)
    if failure_ttl == 0:
        raise ValueError("BACKEND_JOBS_FAILURE_TTL must be >= 1 (or -1 to keep failed jobs): 0 loses them")
    history = config_int(config["BACKEND_JOBS_INLINE_HISTORY"], "BACKEND_JOBS_INLINE_HISTORY", minimum=1)
    inline = config_bool(config["BACKEND_JOBS_INLINE"], "BACKEND_JOBS_INLINE") or not url
    connection: redis.Redis | None = None
    queues: dict[str, Queue] = {}
    if not inline:
        assert url is not None
        try:
            # from_url only parses: the first command opens the connection.
            connection = redis.Redis.from_url(url)
        except ValueError as exc:
            raise ValueError(f"BACKEND_JOBS_REDIS_URL: {exc}") from None
        queues = {
            name: Queue(name, connection=connection, serializer=SERIALIZER, default_timeout=default_timeout)
            for name in queue_names
        }
    return JobQueueState(
        inline=inline,
        queue_names=queue_names,
        default_timeout=default_timeout,
        result_ttl=result_ttl,
        failure_ttl=failure_ttl,
        app_factory=factory,
        connection=connection,
        queues=queues,
        history=_InlineHistory(history),
    )


# -- what runs in the worker ------------------------------------------------------------

_factory_apps: dict[str, Flask] = {}
_factory_lock = threading.Lock()


def run_job(func: str, args: list[t.Any], kwargs: dict[str, t.Any]) -> t.Any:
    """Run a queued call: the function every job of :class:`JobQueue` names in Redis.

    Runs ``func(*args, **kwargs)`` inside a new app context (of the current app, or of
    the app that ``BACKEND_JOBS_APP_FACTORY`` makes, once per process), with the job's
    request id and ``job_id`` on every log line. Not meant to be queued by hand.

    :raises RuntimeError: no app context and no app factory in the job.
    :raises TypeError: the return value is not JSON.
    """
    job = get_current_job()
    meta: dict[str, t.Any] = job.meta if job is not None else {}
    if has_app_context():
        app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    else:
        app = _app_from_factory(meta.get("app_factory"))
    return _perform(app, func, args, kwargs, meta.get("request_id"), job.id if job is not None else None)


def _perform(
    app: Flask,
    func: str,
    args: list[t.Any],
    kwargs: dict[str, t.Any],
    request_id: str | None,
    job_id: str | None,
) -> t.Any:
    # A fresh app context per job: its own ``g`` and its own teardown (sessions closed).
    with app.app_context(), bind_request_id(request_id):
        set_log_context(job_id=job_id)
        log.info("job %s started: %s", job_id, func, extra={"func": func})
        try:
            result = _resolve(func)(*args, **kwargs)
            check_json(result, "the return value")
        except Exception as exc:
            # One line with the request id; the worker (or the inline runner) logs the stack.
            log.error("job %s failed: %s", job_id, error_line(_format_exception(exc)), extra={"func": func})
            raise
        log.info("job %s finished", job_id, extra={"func": func})
        return result


def _app_from_factory(factory: object) -> Flask:
    if not isinstance(factory, str) or not factory:
        raise RuntimeError(
            "This job runs without an app context and its app set no BACKEND_JOBS_APP_FACTORY: "
            "run the worker with 'flask jobs worker', or set BACKEND_JOBS_APP_FACTORY "
            "('package.module:create_app') so plain 'rq worker' can build the app."
        )
    with _factory_lock:
        app = _factory_apps.get(factory)
        if app is None:
            made = _resolve(factory)()
            if not isinstance(made, Flask):
                raise RuntimeError(f"BACKEND_JOBS_APP_FACTORY {factory!r} returned {made!r}, not a Flask app")
            app = _factory_apps[factory] = made
    return app


def _resolve(path: str) -> t.Callable[..., t.Any]:
    found = pkgutil.resolve_name(path)
    if not callable(found):
        raise TypeError(f"{path!r} is not callable")
    return t.cast(t.Callable[..., t.Any], found)


# -- inline mode ----------------------------------------------------------------------


def _run_inline(state: JobQueueState, call: _InlineCall) -> JobInfo:
    running = state.history.claim(call)
    if running is not None:
        return running
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    # The job gets what a worker would: JSON values, not the caller's objects.
    args, kwargs = json.loads(json.dumps([call.args, call.kwargs]))
    attempt = 0
    while True:
        attempt += 1
        try:
            result = _perform(app, call.func, args, kwargs, call.info.request_id, call.info.id)
        except Exception as exc:  # noqa: BLE001 -- a job's failure is recorded, as a worker records it
            if attempt <= call.retries:
                # Retries run at once: waiting out an interval would hold the request.
                log.warning("inline job %s: attempt %d failed, retrying now", call.info.id, attempt)
                continue
            log.error("inline job %s failed", call.info.id, exc_info=exc)
            exc_text = _format_exception(exc)
            info = replace(
                call.info, status="failed", error=error_line(exc_text), exc_info=exc_text, ended_at=_utcnow()
            )
        else:
            info = replace(call.info, status="finished", result=result, ended_at=_utcnow())
        state.history.finish(call, info)
        return info


# -- redis mode -----------------------------------------------------------------------


def _enqueue(rq_queue: Queue, options: dict[str, t.Any]) -> Job:
    # One MULTI/EXEC for the job, its place in the queue and the queue's entry in RQ's set
    # of queues: a plain Queue.enqueue_call spends a round trip of its own on that set.
    with rq_queue.connection.pipeline() as pipe:
        job = rq_queue.enqueue_call(run_job, pipeline=pipe, **options)
        pipe.execute()
    return job


def _enqueue_once(rq_queue: Queue, job_id: str, options: dict[str, t.Any]) -> JobInfo:
    connection = rq_queue.connection
    # The lock makes "look for a pending job, else queue one" atomic across processes.
    lock = connection.lock(f"{_LOCK_PREFIX}{job_id}", timeout=30, blocking_timeout=10)
    if not lock.acquire():
        raise ServiceUnavailableError(f"Job {job_id!r} is being queued by another process; try again.")
    try:
        try:
            existing: Job | None = Job.fetch(job_id, connection=connection, serializer=SERIALIZER)
        except NoSuchJobError:
            existing = None
        if existing is not None:
            if JobStatus(existing.get_status(refresh=False)).value in PENDING_STATUSES:
                return job_info(existing)
            existing.delete()
        return job_info(_enqueue(rq_queue, options))
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            log.warning("enqueue lock of job %s expired before release", job_id)


def job_info(job: Job) -> JobInfo:
    """Describe an RQ job of this part as a :class:`JobInfo`."""
    status = JobStatus(job.get_status(refresh=False)).value
    meta = job.meta if isinstance(job.meta, dict) else {}
    result: t.Any = None
    exc_text: str | None = None
    if status not in PENDING_STATUSES:
        latest = job.latest_result()
        if latest is not None and latest.type == Result.Type.SUCCESSFUL:
            result = latest.return_value
        elif latest is not None and latest.exc_string:
            exc_text = latest.exc_string
        elif status == "failed":
            # RQ 2.0 records some failures (abandoned jobs) on the job hash only, not as a result.
            exc_text = getattr(job, "_exc_info", None) or None
    return JobInfo(
        id=job.id,
        status=status,
        func=str(meta.get("func") or job.description or ""),
        queue=job.origin or None,
        result=result,
        error=error_line(exc_text) if exc_text else None,
        exc_info=exc_text,
        enqueued_at=_aware(job.enqueued_at),
        ended_at=_aware(job.ended_at),
        request_id=meta.get("request_id"),
    )


def _queue_unavailable(exc: BaseException) -> ServiceUnavailableError:
    log.error("job queue unavailable: %s", exc)
    return ServiceUnavailableError("The job queue is unavailable; try again later.")


# -- shared helpers -------------------------------------------------------------------


def function_path(func: t.Callable[..., t.Any] | str) -> str:
    """The import path (``"module:qualname"``) a worker finds ``func`` by.

    :raises TypeError: ``func`` is a lambda, a nested function, a method, defined in
        ``__main__``, or otherwise not reachable by its module and name.
    """
    if isinstance(func, (str, types.FunctionType, types.BuiltinFunctionType)):
        return _known_function_path(func)
    return _function_path(func)


# An app queues the same few functions over and over: checking one import path once per
# function, not once per job, takes an import look-up off every enqueue. Failures are not
# cached (lru_cache keeps no exceptions), so a fixed import is seen at the next call.
@functools.lru_cache(maxsize=1024)
def _known_function_path(func: t.Callable[..., t.Any] | str) -> str:
    return _function_path(func)


def _function_path(func: t.Callable[..., t.Any] | str) -> str:
    if isinstance(func, str):
        try:
            found = pkgutil.resolve_name(func)
        except (ImportError, AttributeError, ValueError) as exc:
            raise TypeError(f"Job function {func!r} cannot be imported: {exc}") from None
        if not callable(found):
            raise TypeError(f"Job function {func!r} is not callable")
        return func
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if not module or not qualname or "<" in qualname or module == "__main__":
        raise TypeError(
            f"Job function {func!r} must be a module-level function a worker can import "
            "(not a lambda, a nested function, a method or a function of __main__)."
        )
    path = f"{module}:{qualname}"
    try:
        found = pkgutil.resolve_name(path)
    except (ImportError, AttributeError, ValueError):
        found = None
    if found is not func:
        raise TypeError(f"Job function {func!r} is not what {path!r} imports: a worker could not find it.")
    return path


def check_json(value: t.Any, where: str = "value") -> None:
    """Raise :class:`TypeError` unless ``value`` is made of JSON values only.

    JSON values are ``None``, ``bool``, ``int``, finite ``float``, ``str``, lists (and
    tuples, which arrive as lists) and dicts with ``str`` keys. The message names where
    the offending value is (``args[1]['when']``).
    """
    _check_json(value, where, 0)


def _check_json(value: t.Any, where: str, depth: int) -> None:
    if depth > _JSON_DEPTH_LIMIT:
        raise TypeError(f"{where} is nested more than {_JSON_DEPTH_LIMIT} levels deep (or is circular)")
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{where} is {value!r}: JSON has no NaN or infinity")
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_json(item, f"{where}[{index}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has the key {key!r}: JSON object keys must be strings")
            _check_json(item, f"{where}[{key!r}]", depth + 1)
        return
    raise TypeError(
        f"{where} is a {type(value).__name__}, which a job cannot carry: jobs are stored as JSON. "
        "Pass JSON values (str, int, float, bool, None, lists, dicts with str keys), "
        "e.g. an id instead of a model, or datetime.isoformat() instead of a datetime."
    )


def describe_call(func: str, args: t.Sequence[t.Any], kwargs: t.Mapping[str, t.Any]) -> str:
    """``func(arg, ..., key=value)``, cut to 200 characters: the job's description."""
    parts = [repr(arg) for arg in args] + [f"{key}={value!r}" for key, value in kwargs.items()]
    text = f"{func}({', '.join(parts)})"
    return text if len(text) <= 200 else text[:197] + "..."


def error_line(exc_text: str) -> str:
    """The last line of a traceback (``"ValueError: boom"``), secrets masked, cut short."""
    lines = [line.strip() for line in exc_text.strip().splitlines() if line.strip()]
    line = str(redact(lines[-1])) if lines else "Job failed"
    return line if len(line) <= ERROR_LINE_LIMIT else line[: ERROR_LINE_LIMIT - 3] + "..."


def _format_exception(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def _retry(retry: RetrySpec) -> Retry | None:
    if retry is None or isinstance(retry, Retry):
        return retry
    if isinstance(retry, bool) or not isinstance(retry, int) or retry < 0:
        raise ValueError(f"retry must be an rq.Retry or a number of retries >= 0, got {retry!r}")
    if retry == 0:
        return None
    return Retry(
        max=retry,
        interval=[min(RETRY_BACKOFF_START * 2**n, RETRY_BACKOFF_CAP) for n in range(retry)],
    )


def _option_int(
    value: int | None, default: int, name: str, *, allow_unlimited: bool, minimum: int = 1
) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int number of seconds, got {value!r}")
    if value < minimum and not (allow_unlimited and value == -1):
        raise ValueError(f"{name} must be >= {minimum} seconds, or -1 for no limit, got {value!r}")
    return value


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _aware(moment: dt.datetime | None) -> dt.datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=dt.UTC)


# -- command line ---------------------------------------------------------------------

jobs_cli = AppGroup("jobs", help="Background jobs: run a worker, list and requeue failed jobs.")


def _queue_option(values: tuple[str, ...]) -> list[str]:
    return [name for value in values for name in config_list(value, "--queues")]


@jobs_cli.command("worker")
@click.option("--burst", is_flag=True, help="Quit once the queues are empty instead of waiting for jobs.")
@click.option(
    "--queues",
    "-q",
    "queue_values",
    multiple=True,
    help="Queues to work, in priority order: comma-separated or repeated. Default: BACKEND_JOBS_QUEUES.",
)
@click.option(
    "--with-scheduler/--without-scheduler",
    default=True,
    show_default=True,
    help="Also move due scheduled jobs (retries waiting for their interval) to their queue.",
)
@click.option("--name", default=None, help="Worker name (unique among live workers). Default: random.")
@click.option("--max-jobs", type=click.IntRange(min=1), default=None, help="Quit after this many jobs.")
@click.option(
    "--fork/--no-fork",
    default=True,
    show_default=True,
    help="Run each job in a forked work horse (rq.Worker), or in the worker process itself "
    "(rq.SimpleWorker): several times the jobs/s for short jobs, but a job that crashes or leaks takes "
    "the worker with it.",
)
def worker_command(
    burst: bool,
    queue_values: tuple[str, ...],
    with_scheduler: bool,
    name: str | None,
    max_jobs: int | None,
    fork: bool,
) -> None:
    """Run an RQ worker for this app: each job in a forked work horse, inside an app context.

    With --no-fork each job runs in the worker process instead (still in its own app
    context, still stopped at its timeout). SIGTERM or Ctrl+C stops the worker warmly:
    the current job finishes first. A second one kills the job, which is failed as
    abandoned once its heartbeat expires (with --no-fork: failed at once, as SystemExit).
    """
    state = get_state()
    if state.inline:
        raise click.UsageError(
            "Jobs run inline (BACKEND_JOBS_REDIS_URL unset, or BACKEND_JOBS_INLINE on): no queue to work."
        )
    try:
        # JobQueue's methods act on the current app: a fresh object is as good as the app's.
        rq_worker = JobQueue().worker(
            _queue_option(queue_values) or None, worker_class=Worker if fork else SimpleWorker, name=name
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    # rq's work() installs the warm-shutdown SIGTERM/SIGINT handlers itself; nothing here replaces them.
    rq_worker.work(burst=burst, with_scheduler=with_scheduler, max_jobs=max_jobs)


@jobs_cli.command("failed")
@click.option("--queue", "-q", "queue_name", default=None, help="Only this queue. Default: all of them.")
def failed_command(queue_name: str | None) -> None:
    """List failed jobs that can be requeued: id, function, error."""
    try:
        failed = JobQueue().failed_jobs(queue_name)
    except (ValueError, ServiceUnavailableError) as exc:
        raise click.ClickException(str(exc)) from None
    if not failed:
        note = " (inline mode keeps failed jobs in the serving process only)" if get_state().inline else ""
        click.echo(f"No failed jobs{note}.")
        return
    for info in failed:
        click.echo(f"{info.id}\t{info.func}\t{info.error or ''}")


@jobs_cli.command("requeue")
@click.argument("job_ids", nargs=-1)
@click.option("--all", "requeue_all", is_flag=True, help="Requeue every failed job.")
def requeue_command(job_ids: tuple[str, ...], requeue_all: bool) -> None:
    """Queue failed jobs again, by id or --all."""
    queue = JobQueue()
    if requeue_all == bool(job_ids):
        raise click.UsageError("Give job ids or --all (not both).")
    try:
        ids = [info.id for info in queue.failed_jobs()] if requeue_all else list(job_ids)
        for job_id in ids:
            info = queue.requeue(job_id)
            click.echo(f"{info.id}\t{info.status}")
    except (NotFoundError, ServiceUnavailableError) as exc:
        raise click.ClickException(exc.message) from None
    if requeue_all:
        click.echo(f"Requeued {len(ids)} job(s).")
