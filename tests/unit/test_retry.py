"""retry(), @retrying and RetryPolicy: attempts, backoff, jitter, what is retried, the log."""

from __future__ import annotations

import functools
import inspect
import logging
import math
import random

import pytest

from flask_backend_patterns.retry import retry
from flask_backend_patterns.retry import retrying
from flask_backend_patterns.retry import RetryPolicy

LOGGER = "flask_backend_patterns.retry"


class TransientError(Exception):
    pass


class SlowTransientError(TransientError):
    pass


class FakeClock:
    """Records the delays it is asked to sleep; never sleeps."""

    def __init__(self):
        self.sleeps = []

    def sleep(self, seconds):
        self.sleeps.append(seconds)


@pytest.fixture
def clock():
    return FakeClock()


def failing(times, exc_type=TransientError, result="ok"):
    """A function that raises a new ``exc_type`` on its first ``times`` calls, then returns."""
    raised = []

    def flaky():
        if len(raised) < times:
            raised.append(exc_type(f"failure {len(raised) + 1}"))
            raise raised[-1]
        return result

    flaky.raised = raised
    return flaky


class Counter:
    """Counts its calls and raises what it is given each time."""

    def __init__(self, exc=None):
        self.calls = 0
        self.exc = exc

    def __call__(self):
        self.calls += 1
        if self.exc is not None:
            raise self.exc
        return "done"


def test_success_on_first_attempt_calls_once_and_never_sleeps(clock, caplog):
    func = Counter()
    assert retry(func, on=(TransientError,), sleep=clock.sleep) == "done"
    assert func.calls == 1
    assert clock.sleeps == []
    assert [r for r in caplog.records if r.name == LOGGER] == []


def test_success_after_failures_returns_the_value(clock):
    func = failing(2, result={"id": 7})
    assert retry(func, on=(TransientError,), attempts=3, sleep=clock.sleep) == {"id": 7}
    assert len(func.raised) == 2
    assert len(clock.sleeps) == 2


def test_calls_the_function_attempts_times_then_gives_up(clock):
    func = Counter(TransientError("down"))
    with pytest.raises(TransientError):
        retry(func, on=(TransientError,), attempts=4, sleep=clock.sleep)
    assert func.calls == 4
    assert len(clock.sleeps) == 3


def test_one_attempt_means_no_retry(clock):
    func = Counter(TransientError("down"))
    with pytest.raises(TransientError):
        retry(func, on=(TransientError,), attempts=1, sleep=clock.sleep)
    assert func.calls == 1
    assert clock.sleeps == []


def test_last_exception_is_reraised_unchanged(clock):
    func = failing(10)
    with pytest.raises(TransientError) as excinfo:
        retry(func, on=(TransientError,), attempts=3, sleep=clock.sleep)
    assert excinfo.value is func.raised[-1]
    assert str(excinfo.value) == "failure 3"
    # The traceback still reaches the line in the function that raised.
    assert excinfo.traceback[-1].name == "flaky"
    assert excinfo.value.__context__ is None
    assert excinfo.value.__cause__ is None


def test_exception_not_named_propagates_at_once(clock, caplog):
    func = Counter(KeyError("missing"))
    with pytest.raises(KeyError):
        retry(func, on=(TransientError, ConnectionError), attempts=5, sleep=clock.sleep)
    assert func.calls == 1
    assert clock.sleeps == []
    assert [r for r in caplog.records if r.name == LOGGER] == []


def test_exception_raised_after_a_retry_propagates_if_not_named(clock):
    calls = []

    def func():
        calls.append(1)
        if len(calls) == 1:
            raise TransientError("first")
        raise ValueError("second")

    with pytest.raises(ValueError, match="second"):
        retry(func, on=(TransientError,), attempts=5, sleep=clock.sleep)
    assert len(calls) == 2
    assert len(clock.sleeps) == 1


def test_subclass_of_a_named_exception_is_retried(clock):
    func = failing(2, exc_type=SlowTransientError)
    assert retry(func, on=(TransientError,), sleep=clock.sleep) == "ok"
    assert len(func.raised) == 2


def test_delays_grow_by_factor_up_to_max_delay_without_jitter(clock):
    func = Counter(TransientError("down"))
    with pytest.raises(TransientError):
        retry(
            func,
            on=(TransientError,),
            attempts=7,
            base_delay=1.0,
            factor=2.0,
            max_delay=5.0,
            jitter=False,
            sleep=clock.sleep,
        )
    assert clock.sleeps == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_factor_one_keeps_the_delay_constant(clock):
    func = failing(3)
    retry(func, on=(TransientError,), attempts=4, base_delay=0.5, factor=1.0, jitter=False, sleep=clock.sleep)
    assert clock.sleeps == [0.5, 0.5, 0.5]


def test_zero_base_delay_never_waits(clock):
    func = failing(3)
    retry(func, on=(TransientError,), attempts=4, base_delay=0.0, sleep=clock.sleep, random=lambda: 1.0)
    assert clock.sleeps == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("random_value", "expected"),
    [
        (1.0, [0.5, 1.0, 2.0, 3.0]),
        (0.0, [0.0, 0.0, 0.0, 0.0]),
        (0.5, [0.25, 0.5, 1.0, 1.5]),
    ],
)
def test_full_jitter_scales_the_capped_delay_by_random(clock, random_value, expected):
    func = failing(4)
    retry(
        func,
        on=(TransientError,),
        attempts=5,
        base_delay=0.5,
        factor=2.0,
        max_delay=3.0,
        sleep=clock.sleep,
        random=lambda: random_value,
    )
    assert clock.sleeps == expected


def test_jittered_delays_stay_within_zero_and_the_cap(clock):
    policy = RetryPolicy(
        on=(TransientError,),
        attempts=40,
        base_delay=0.1,
        factor=2.0,
        max_delay=4.0,
        sleep=clock.sleep,
        random=random.Random(1234).random,
    )
    with pytest.raises(TransientError):
        policy.call(Counter(TransientError("down")))
    caps = [policy.backoff(n) for n in range(1, 40)]
    assert len(clock.sleeps) == 39
    assert all(0.0 <= delay <= cap for delay, cap in zip(clock.sleeps, caps, strict=True))
    # Jitter really moved the delays off their caps.
    assert sum(clock.sleeps) < sum(caps) * 0.9


def test_backoff_is_the_capped_exponential():
    policy = RetryPolicy(on=(TransientError,), base_delay=0.25, factor=3.0, max_delay=5.0)
    assert [policy.backoff(n) for n in (1, 2, 3, 4)] == [0.25, 0.75, 2.25, 5.0]


@pytest.mark.parametrize("factor", [2.0, 2])
def test_backoff_of_a_huge_retry_number_is_max_delay(factor):
    policy = RetryPolicy(on=(TransientError,), base_delay=0.1, factor=factor, max_delay=7.0)
    assert policy.backoff(5000) == 7.0


def test_backoff_needs_a_positive_retry_number():
    policy = RetryPolicy(on=(TransientError,))
    with pytest.raises(ValueError, match="retry_number"):
        policy.backoff(0)


def test_delay_without_jitter_is_the_backoff():
    policy = RetryPolicy(on=(TransientError,), jitter=False, random=lambda: 0.0)
    assert policy.delay(3) == policy.backoff(3) == 0.4


def test_one_warning_line_per_retry_with_its_fields(clock, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)

    def fetch_prices():
        raise ConnectionError("refused")

    with pytest.raises(ConnectionError):
        retry(
            fetch_prices,
            on=(ConnectionError,),
            attempts=3,
            base_delay=1.0,
            jitter=False,
            sleep=clock.sleep,
        )
    records = [r for r in caplog.records if r.name == LOGGER]
    assert len(records) == 2
    name = f"{__name__}.test_one_warning_line_per_retry_with_its_fields.<locals>.fetch_prices"
    for number, (record, delay) in enumerate(zip(records, [1.0, 2.0], strict=True), start=1):
        assert record.levelno == logging.WARNING
        assert record.function == name
        assert record.attempt == number
        assert record.max_attempts == 3
        assert record.delay_s == delay
        assert record.exc_type == "ConnectionError"
        assert record.getMessage() == (
            f"{name} raised ConnectionError on attempt {number} of 3; retrying in {delay:.3f} s"
        )
    assert records[0].delay_s == clock.sleeps[0]


def test_log_line_has_neither_arguments_nor_exception_message(clock, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)

    def login(password):
        raise TransientError(f"rejected {password}")

    with pytest.raises(TransientError):
        retry(functools.partial(login, "hunter2"), on=(TransientError,), attempts=2, sleep=clock.sleep)
    (record,) = [r for r in caplog.records if r.name == LOGGER]
    assert "hunter2" not in record.getMessage()
    assert "hunter2" not in repr(vars(record))
    assert record.function.endswith("<locals>.login")


def test_lines_go_to_the_logger_given(clock, caplog):
    caplog.set_level(logging.WARNING)
    mine = logging.getLogger("tests.retry.mine")
    retry(failing(1), on=(TransientError,), sleep=clock.sleep, logger=mine)
    assert [r.name for r in caplog.records] == ["tests.retry.mine"]


def test_an_error_from_sleep_is_not_chained_to_the_retried_exception():
    def interrupted_sleep(seconds):
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted") as excinfo:
        retry(failing(1), on=(TransientError,), sleep=interrupted_sleep)
    assert excinfo.value.__context__ is None


def test_policy_call_is_what_retry_does(clock):
    policy = RetryPolicy(on=(TransientError,), attempts=3, jitter=False, sleep=clock.sleep)
    func = failing(2)
    assert policy.call(func) == "ok"
    assert clock.sleeps == [0.1, 0.2]


def test_decorator_retries_each_call_with_its_arguments(clock):
    seen = []

    @retrying(on=(TransientError,), attempts=3, sleep=clock.sleep)
    def add(a, b, *, scale=1):
        seen.append((a, b, scale))
        if len(seen) % 2:
            raise TransientError("odd call")
        return (a + b) * scale

    assert add(1, 2, scale=10) == 30
    assert add(3, 4) == 7
    assert seen == [(1, 2, 10), (1, 2, 10), (3, 4, 1), (3, 4, 1)]
    assert len(clock.sleeps) == 2


def test_decorator_gives_up_after_attempts(clock):
    calls = []

    @retrying(on=(TransientError,), attempts=2, sleep=clock.sleep)
    def always_down():
        calls.append(1)
        raise TransientError("down")

    with pytest.raises(TransientError):
        always_down()
    assert len(calls) == 2


def test_decorator_preserves_name_docstring_and_signature(clock):
    def get_quote(symbol: str, *, fresh: bool = False) -> float:
        """Fetch the latest quote for ``symbol``."""
        return 1.0

    wrapped = retrying(on=(TransientError,), sleep=clock.sleep)(get_quote)
    assert wrapped.__name__ == "get_quote"
    assert wrapped.__qualname__ == get_quote.__qualname__
    assert wrapped.__doc__ == "Fetch the latest quote for ``symbol``."
    assert wrapped.__wrapped__ is get_quote
    assert inspect.signature(wrapped) == inspect.signature(get_quote)


def test_decorator_logs_the_decorated_function_name(clock, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)

    calls = []

    @retrying(on=(TransientError,), sleep=clock.sleep)
    def reindex(market_id):
        calls.append(market_id)
        if len(calls) == 1:
            raise TransientError("busy")
        return market_id

    assert reindex("m1") == "m1"
    (record,) = [r for r in caplog.records if r.name == LOGGER]
    assert record.function == f"{__name__}.{reindex.__qualname__}"


def test_decorator_checks_options_when_made():
    with pytest.raises(ValueError, match="attempts"):
        retrying(on=(TransientError,), attempts=0)


def test_async_functions_are_refused(clock):
    async def fetch():
        return 1

    with pytest.raises(TypeError, match="async"):
        retry(fetch, on=(TransientError,), sleep=clock.sleep)
    with pytest.raises(TypeError, match="async"):
        retrying(on=(TransientError,), sleep=clock.sleep)(fetch)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        pytest.param({"on": TransientError}, TypeError, "tuple", id="on-a-bare-class"),
        pytest.param({"on": [TransientError]}, TypeError, "tuple", id="on-a-list"),
        pytest.param({"on": ()}, ValueError, "at least one", id="on-empty"),
        pytest.param({"on": ("TransientError",)}, TypeError, "subclasses", id="on-a-string"),
        pytest.param({"on": (KeyboardInterrupt,)}, TypeError, "subclasses", id="on-base-exception"),
        pytest.param({"attempts": 0}, ValueError, "attempts", id="attempts-zero"),
        pytest.param({"attempts": 2.0}, TypeError, "attempts", id="attempts-float"),
        pytest.param({"attempts": True}, TypeError, "attempts", id="attempts-bool"),
        pytest.param({"base_delay": -0.1}, ValueError, ">= 0", id="base-delay-negative"),
        pytest.param({"max_delay": -1.0, "base_delay": 0}, ValueError, ">= 0", id="max-delay-negative"),
        pytest.param({"base_delay": math.nan}, ValueError, "finite", id="base-delay-nan"),
        pytest.param({"max_delay": math.inf}, ValueError, "finite", id="max-delay-inf"),
        pytest.param({"base_delay": "1"}, TypeError, "number", id="base-delay-string"),
        pytest.param({"base_delay": 5.0, "max_delay": 1.0}, ValueError, "<= max_delay", id="base-over-max"),
        pytest.param({"factor": 0.5}, ValueError, "factor", id="factor-below-one"),
        pytest.param({"jitter": "yes"}, TypeError, "jitter", id="jitter-string"),
        pytest.param({"sleep": None}, TypeError, "sleep", id="sleep-not-callable"),
        pytest.param({"random": 0.5}, TypeError, "random", id="random-not-callable"),
        pytest.param({"logger": "app"}, TypeError, "logger", id="logger-a-name"),
    ],
)
def test_invalid_options_are_refused(options, error, match):
    options = {"on": (TransientError,), **options}
    with pytest.raises(error, match=match):
        RetryPolicy(**options)
    func = Counter()
    with pytest.raises(error, match=match):
        retry(func, **options)
    assert func.calls == 0
    with pytest.raises(error, match=match):
        retrying(**options)


def test_on_is_required():
    with pytest.raises(TypeError, match="on"):
        retry(Counter())


def test_retry_and_retrying_share_the_policy_defaults():
    policy_defaults = {
        name: param.default
        for name, param in inspect.signature(RetryPolicy).parameters.items()
        if param.default is not inspect.Parameter.empty
    }
    for func in (retry, retrying):
        defaults = {
            name: param.default
            for name, param in inspect.signature(func).parameters.items()
            if param.default is not inspect.Parameter.empty
        }
        assert defaults == policy_defaults
