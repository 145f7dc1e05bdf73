"""Retry a call on named exceptions, with exponential backoff and full jitter.

:func:`retry` runs a call now; :func:`retrying` makes a decorator; both build a
:class:`RetryPolicy`, which holds the options and does the work. Nothing here needs
an app or an app context.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import random
import time
import typing as t
from dataclasses import dataclass

P = t.ParamSpec("P")
T = t.TypeVar("T")

_log = logging.getLogger("flask_backend_patterns.retry")

ExceptionTypes = tuple[type[Exception], ...]


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """What to retry, how often and how long to wait: the options of :func:`retry`.

    The delay before retry ``n`` (``n`` = 1 after the first failed attempt) is at most
    ``min(max_delay, base_delay * factor ** (n - 1))`` seconds; with ``jitter`` the
    delay is drawn uniformly from ``[0, that)`` ("full jitter"), so callers that
    failed together do not retry together.

    :param on: the exception classes to retry, a non-empty tuple (what you would write
        after ``except``). Required: other exceptions propagate at once.
    :param attempts: how many times the function is called at most, retries included.
    :param base_delay: seconds before the first retry, before jitter.
    :param factor: how much each further delay grows (``1.0`` keeps it constant).
    :param max_delay: the cap of any one delay, in seconds.
    :param jitter: draw each delay uniformly between 0 and its cap.
    :param sleep: called with the delay in seconds; inject a fake in tests.
    :param random: returns a float in ``[0, 1)`` for the jitter; inject a fake in tests.
    :param logger: where the line per retry goes; ``flask_backend_patterns.retry``
        when ``None``.
    :raises TypeError: an option of the wrong type (``on`` not a tuple of exception
        classes, ``attempts`` not an int, ``sleep`` not callable, ...).
    :raises ValueError: ``on`` empty, ``attempts`` < 1, a delay negative or not finite,
        ``base_delay`` > ``max_delay``, ``factor`` < 1.
    """

    on: ExceptionTypes
    attempts: int = 3
    base_delay: float = 0.1
    factor: float = 2.0
    max_delay: float = 10.0
    jitter: bool = True
    sleep: t.Callable[[float], object] = time.sleep
    random: t.Callable[[], float] = random.random
    logger: logging.Logger | None = None

    def __post_init__(self) -> None:
        _check_exception_types(self.on)
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise TypeError(f"attempts must be an int, got {self.attempts!r}")
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {self.attempts}")
        for name in ("base_delay", "factor", "max_delay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError(
                f"base_delay and max_delay must be >= 0, got {self.base_delay!r} and {self.max_delay!r}"
            )
        if self.base_delay > self.max_delay:
            raise ValueError(f"base_delay ({self.base_delay!r}) must be <= max_delay ({self.max_delay!r})")
        if self.factor < 1:
            raise ValueError(f"factor must be >= 1, got {self.factor!r}")
        if not isinstance(self.jitter, bool):
            raise TypeError(f"jitter must be a bool, got {self.jitter!r}")
        for name in ("sleep", "random"):
            if not callable(getattr(self, name)):
                raise TypeError(f"{name} must be callable, got {getattr(self, name)!r}")
        if self.logger is not None and not isinstance(self.logger, logging.Logger):
            raise TypeError(f"logger must be a logging.Logger or None, got {self.logger!r}")

    def backoff(self, retry_number: int) -> float:
        """The cap of the delay before retry ``retry_number`` (1, 2, ...), jitter aside.

        :raises ValueError: ``retry_number`` < 1.
        """
        if retry_number < 1:
            raise ValueError(f"retry_number must be >= 1, got {retry_number}")
        if self.base_delay == 0:
            return 0.0
        try:
            return float(min(self.max_delay, self.base_delay * self.factor ** (retry_number - 1)))
        except OverflowError:
            # factor ** n past the float range is far above any finite max_delay.
            return float(self.max_delay)

    def delay(self, retry_number: int) -> float:
        """The seconds to wait before retry ``retry_number``: :meth:`backoff`, times
        ``random()`` when ``jitter`` is on.

        :raises ValueError: ``retry_number`` < 1.
        """
        cap = self.backoff(retry_number)
        return cap * self.random() if self.jitter else cap

    def call(self, func: t.Callable[[], T]) -> T:
        """Call ``func()`` until it returns, retrying on the exceptions in ``on``.

        Returns what ``func`` returns. An exception not in ``on`` propagates at once;
        after the last attempt the last exception is re-raised as it is (same object,
        same traceback). Each retry writes one WARNING line first (see
        :func:`retry`). Pass arguments with ``functools.partial``.

        :raises TypeError: ``func`` is an ``async`` function (its coroutine would be
            returned, not awaited, so nothing would be retried).
        """
        _check_not_async(func)
        name = _callable_name(func)
        logger = self.logger if self.logger is not None else _log
        attempt = 1
        while True:
            try:
                return func()
            except self.on as exc:
                if attempt >= self.attempts:
                    raise
                delay = self.delay(attempt)
                # The exception's message and the call's arguments stay out of the line:
                # either may hold a secret (a token, a URL with credentials).
                logger.warning(
                    "%s raised %s on attempt %d of %d; retrying in %.3f s",
                    name,
                    type(exc).__name__,
                    attempt,
                    self.attempts,
                    delay,
                    extra={
                        "function": name,
                        "attempt": attempt,
                        "max_attempts": self.attempts,
                        "delay_s": delay,
                        "exc_type": type(exc).__name__,
                    },
                )
            # Sleep outside the handler: an interrupt during the wait is then not
            # reported as raised while handling the retried exception.
            self.sleep(delay)
            attempt += 1


def retry(
    func: t.Callable[[], T],
    *,
    on: ExceptionTypes,
    attempts: int = 3,
    base_delay: float = 0.1,
    factor: float = 2.0,
    max_delay: float = 10.0,
    jitter: bool = True,
    sleep: t.Callable[[float], object] = time.sleep,
    random: t.Callable[[], float] = random.random,
    logger: logging.Logger | None = None,
) -> T:
    """Call ``func()`` now, retrying on the exceptions in ``on`` with exponential backoff.

    ``func`` takes no arguments; bind them with ``functools.partial`` (the log line
    then names the function inside the partial). The options are those of
    :class:`RetryPolicy`. Each retry writes one WARNING line on ``logger`` with the
    ``extra`` fields ``function``, ``attempt`` (the attempt that failed, from 1),
    ``max_attempts``, ``delay_s`` and ``exc_type``; never the arguments or the
    exception's message.

    :returns: what ``func`` returns on its first successful attempt.
    :raises: the last exception after ``attempts`` failures, unchanged; any exception
        not in ``on`` at once.
    :raises TypeError: a bad option (see :class:`RetryPolicy`), or ``func`` is async.
    :raises ValueError: a bad option value (see :class:`RetryPolicy`).
    """
    policy = RetryPolicy(
        on=on,
        attempts=attempts,
        base_delay=base_delay,
        factor=factor,
        max_delay=max_delay,
        jitter=jitter,
        sleep=sleep,
        random=random,
        logger=logger,
    )
    return policy.call(func)


def retrying(
    *,
    on: ExceptionTypes,
    attempts: int = 3,
    base_delay: float = 0.1,
    factor: float = 2.0,
    max_delay: float = 10.0,
    jitter: bool = True,
    sleep: t.Callable[[float], object] = time.sleep,
    random: t.Callable[[], float] = random.random,
    logger: logging.Logger | None = None,
) -> t.Callable[[t.Callable[P, T]], t.Callable[P, T]]:
    """Decorator: every call of the function is retried as :func:`retry` does.

    The options are those of :class:`RetryPolicy`, checked when the decorator is
    made, not at the first call. The decorated function keeps its name, docstring
    and signature (``functools.wraps``); the original is ``__wrapped__``.

    :raises TypeError: a bad option, or the decorated function is async.
    :raises ValueError: a bad option value.
    """
    policy = RetryPolicy(
        on=on,
        attempts=attempts,
        base_delay=base_delay,
        factor=factor,
        max_delay=max_delay,
        jitter=jitter,
        sleep=sleep,
        random=random,
        logger=logger,
    )

    def decorate(func: t.Callable[P, T]) -> t.Callable[P, T]:
        _check_not_async(func)

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            return policy.call(functools.partial(func, *args, **kwargs))

        return wrapper

    return decorate


def _check_exception_types(on: object) -> None:
    if not isinstance(on, tuple):
        raise TypeError(f"on must be a tuple of exception classes, e.g. on=(ConnectionError,); got {on!r}")
    if not on:
        raise ValueError("on must name at least one exception class to retry")
    for item in on:
        # BaseException-only classes (KeyboardInterrupt, SystemExit) mean "stop now".
        if not (isinstance(item, type) and issubclass(item, Exception)):
            raise TypeError(f"on must hold subclasses of Exception, got {item!r}")


def _check_not_async(func: t.Callable[..., object]) -> None:
    if inspect.iscoroutinefunction(func):
        raise TypeError(f"{_callable_name(func)} is an async function; retry works on plain functions only")


def _callable_name(func: t.Callable[..., object]) -> str:
    """``module.qualname`` of ``func``, looking through ``functools.partial``."""
    while isinstance(func, functools.partial):
        func = func.func
    qualname = getattr(func, "__qualname__", None) or type(func).__qualname__
    module = getattr(func, "__module__", None)
    return f"{module}.{qualname}" if module else str(qualname)
