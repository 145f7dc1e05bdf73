"""JSON log lines, request ids and the access line."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import threading

import pytest
from flask import Flask

from flask_backend_patterns.errors import ErrorHandler
from flask_backend_patterns.logging import bind_request_id
from flask_backend_patterns.logging import configure_json_logging
from flask_backend_patterns.logging import get_request_id
from flask_backend_patterns.logging import is_valid_request_id
from flask_backend_patterns.logging import JsonFormatter
from flask_backend_patterns.logging import new_request_id
from flask_backend_patterns.logging import redact
from flask_backend_patterns.logging import RequestLogging
from flask_backend_patterns.logging import set_log_context

log = logging.getLogger("tests.app")


@pytest.fixture
def lines():
    """Every record logged during the test, formatted by JsonFormatter, parsed."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    root.removeHandler(handler)
    root.setLevel(old_level)


@pytest.fixture
def app():
    app = Flask(__name__)
    app.config.update(TESTING=True, BACKEND_LOGGING_CONFIGURE=False)
    RequestLogging(app)
    ErrorHandler(app)

    @app.post("/login")
    def login():
        set_log_context(user_id="u1")
        log.info("login attempt", extra={"password": "hunter2", "email": "a@b.c"})
        return {"request_id": get_request_id()}

    @app.get("/fail")
    def fail():
        raise RuntimeError("Bearer abc.def.ghi broke")

    return app


def test_request_id_is_made_and_echoed(app, lines):
    response = app.test_client().post("/login")
    rid = response.headers["X-Request-ID"]
    assert is_valid_request_id(rid) and response.get_json()["request_id"] == rid
    assert {line["request_id"] for line in lines()} == {rid}


@pytest.mark.parametrize("incoming", ["abc-123", "a.b_c", "x" * 128])
def test_well_formed_request_id_is_accepted(app, incoming):
    assert (
        app.test_client().post("/login", headers={"X-Request-ID": incoming}).headers["X-Request-ID"]
        == incoming
    )


@pytest.mark.parametrize("incoming", ["", "x" * 129, "has space", "semi;colon", "é"])
def test_malformed_request_id_is_replaced(app, incoming):
    rid = app.test_client().post("/login", headers={"X-Request-ID": incoming}).headers["X-Request-ID"]
    assert rid != incoming and is_valid_request_id(rid)


def test_access_line_has_every_field(app, lines):
    app.test_client().post("/login", headers={"X-Request-ID": "req-1"})
    access = [line for line in lines() if line["logger"] == "flask_backend_patterns.access"]
    assert len(access) == 1
    line = access[0]
    for key in (
        "timestamp",
        "level",
        "message",
        "logger",
        "request_id",
        "method",
        "path",
        "status",
        "duration_ms",
        "remote_addr",
        "user_id",
    ):
        assert key in line, key
    assert (line["method"], line["path"], line["status"], line["user_id"]) == ("POST", "/login", 200, "u1")
    assert line["request_id"] == "req-1" and line["duration_ms"] >= 0
    assert line["timestamp"].endswith("+00:00")


def test_secrets_never_logged(app, lines):
    app.test_client().post("/login", headers={"Authorization": "Bearer eyJhbGciOi.eyJzdWIiOi.sig"})
    app.test_client().get("/fail")
    text = json.dumps(lines())
    assert "hunter2" not in text and "eyJhbGciOi" not in text and "abc.def.ghi" not in text
    app_line = next(line for line in lines() if line["message"] == "login attempt")
    assert app_line["password"] == "[REDACTED]" and app_line["email"] == "a@b.c"


def test_error_line_carries_stack_and_request_id(app, lines):
    response = app.test_client().get("/fail", headers={"X-Request-ID": "boom-1"})
    assert response.get_json()["request_id"] == "boom-1"
    error = next(line for line in lines() if line["level"] == "ERROR" and line.get("exc_type"))
    assert error["exc_type"] == "RuntimeError" and "Traceback" in error["stack"]
    assert error["request_id"] == "boom-1"


def test_access_line_for_500_is_error_level(app, lines):
    app.test_client().get("/fail")
    access = next(line for line in lines() if line["logger"] == "flask_backend_patterns.access")
    assert access["level"] == "ERROR" and access["status"] == 500


def test_request_id_does_not_leak_between_requests(app):
    client = app.test_client()
    client.post("/login", headers={"X-Request-ID": "first"})
    assert get_request_id() is None
    assert client.post("/login").headers["X-Request-ID"] != "first"


def test_bind_request_id_outside_a_request(lines):
    with bind_request_id("job-req-9") as rid:
        log.info("in a job")
        assert get_request_id() == rid == "job-req-9"
    assert get_request_id() is None
    assert lines()[-1]["request_id"] == "job-req-9"


def test_bind_request_id_makes_one_when_missing_or_bad():
    with bind_request_id(None) as a, bind_request_id("bad id") as b:
        assert is_valid_request_id(a) and is_valid_request_id(b) and b != "bad id"


def test_request_ids_are_per_thread():
    seen = {}

    def work(name):
        with bind_request_id(name):
            seen[name] = get_request_id()

    threads = [threading.Thread(target=work, args=(f"t{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == {f"t{i}": f"t{i}" for i in range(4)}


def test_redact_masks_nested_and_inline_secrets():
    value = {
        "user": {"Password": "p", "api_key": "k"},
        "note": "sent Bearer abc123 and eyJa12345.eyJb12345.sig",
    }
    out = redact(value)
    assert out["user"] == {"Password": "[REDACTED]", "api_key": "[REDACTED]"}
    assert "abc123" not in out["note"] and "eyJa12345" not in out["note"]


def test_configure_json_logging_is_idempotent():
    stream = io.StringIO()
    root = logging.getLogger()
    before = list(root.handlers)
    old_level = root.level
    try:
        configure_json_logging("INFO", stream=stream)
        handler = configure_json_logging("INFO", stream=stream)
        assert sum(1 for h in root.handlers if getattr(h, "_backend_patterns_json", False)) == 1
        logging.getLogger("x").info("hello")
        assert json.loads(stream.getvalue().splitlines()[-1])["message"] == "hello"
    finally:
        root.removeHandler(handler)
        root.handlers[:] = before
        root.setLevel(old_level)


def test_init_app_configures_json_logging_by_default():
    root = logging.getLogger()
    before = list(root.handlers)
    old_level = root.level
    try:
        app = Flask(__name__)
        RequestLogging(app)
        assert any(getattr(h, "_backend_patterns_json", False) for h in root.handlers)
        assert not app.logger.handlers  # Flask's plain-text handler is gone
    finally:
        root.handlers[:] = before
        root.setLevel(old_level)


@pytest.mark.parametrize(
    ("key", "value"), [("BACKEND_LOGGING_LEVEL", "LOUD"), ("BACKEND_LOGGING_ACCESS_LOG", "maybe")]
)
def test_bad_config_fails_at_init_app(key, value):
    app = Flask(__name__)
    app.config.update({key: value, "BACKEND_LOGGING_CONFIGURE": False})
    with pytest.raises(ValueError, match=key):
        RequestLogging(app)


def test_access_log_can_be_turned_off_from_env_style_value(lines):
    app = Flask(__name__)
    app.config.update(BACKEND_LOGGING_CONFIGURE=False, BACKEND_LOGGING_ACCESS_LOG="false")
    RequestLogging(app)
    app.test_client().get("/")
    assert not [line for line in lines() if line["logger"] == "flask_backend_patterns.access"]


@pytest.mark.parametrize("text", ["BEARER abc123secret", "Basic dXNlcjpwYXNz", "bearer abc123secret"])
def test_redact_is_case_insensitive(text):
    assert "abc123secret" not in redact(text) and "dXNlcjpwYXNz" not in redact(text)


def test_log_context_set_in_a_bound_block_ends_with_it(lines):
    with bind_request_id("job-1"):
        set_log_context(user_id="u9")
        log.info("inside")
    log.info("after")
    inside, after = lines()[-2:]
    assert inside["user_id"] == "u9" and "user_id" not in after


def test_new_request_ids_are_well_formed_unique_and_differ_in_a_forked_worker():
    ids = {new_request_id() for _ in range(10_000)}
    assert len(ids) == 10_000 and all(len(i) == 32 and is_valid_request_id(i) for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a gunicorn worker forked from the same parent
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    assert len(child) == 32 and child != new_request_id()


def test_redaction_decides_each_key_name_once_and_stays_bounded():
    from flask_backend_patterns import logging as fbp_logging

    keys = ("password", "token")
    assert redact({"Password": "x", "user": {"api_TOKEN": "y", "n": 1}}, keys) == {
        "Password": "[REDACTED]",
        "user": {"api_TOKEN": "[REDACTED]", "n": 1},
    }
    decided = fbp_logging._secret_key_decisions(keys)
    assert decided["Password"] is True and decided["user"] is False
    redact({f"field{i}": i for i in range(fbp_logging._MAX_DECISIONS + 10)}, keys)
    assert len(decided) <= fbp_logging._MAX_DECISIONS


def test_a_key_that_equals_a_name_decided_before_is_decided_on_its_own_text():
    import enum

    class Field(enum.StrEnum):
        PASSWORD = "pw"

        def __str__(self) -> str:
            return "password"

    keys = ("password",)
    assert redact({"pw": "plain"}, keys) == {"pw": "plain"}
    assert redact({Field.PASSWORD: "s3cret"}, keys) == {Field.PASSWORD: "[REDACTED]"}


def test_request_ids_do_not_follow_the_global_random_seed():
    import random

    random.seed(1)
    first = new_request_id()
    random.seed(1)
    assert new_request_id() != first


@contextlib.contextmanager
def only_json_handler():
    """The root logger with nothing but configure_json_logging's handler (pytest's own
    capture handlers, which it adds for each test phase, taken off): the access line's
    direct path."""
    root = logging.getLogger()
    saved, saved_level = root.handlers[:], root.level
    for handler in saved:
        root.removeHandler(handler)
    stream = io.StringIO()
    handler = configure_json_logging("INFO", stream=stream)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        for filt in root.filters[:]:
            root.removeFilter(filt)
        for handler in saved:
            root.addHandler(handler)
        root.setLevel(saved_level)


def test_the_access_line_written_directly_is_the_line_logging_writes(app, monkeypatch):
    access_records = []
    init_record = logging.LogRecord.__init__

    def spy(self, name, *args, **kwargs):
        if name == "flask_backend_patterns.access":
            access_records.append(name)
        init_record(self, name, *args, **kwargs)

    monkeypatch.setattr(logging.LogRecord, "__init__", spy)
    client = app.test_client()

    def run(stream):
        start = len(stream.getvalue().splitlines())
        for method, path in (("POST", "/login"), ("GET", "/nowhere"), ("GET", "/fail")):
            client.open(path, method=method, headers={"X-Request-ID": f"id-{path[1:]}"})
        return [json.loads(line) for line in stream.getvalue().splitlines()[start:]]

    with only_json_handler() as stream:
        direct = run(stream)
        assert access_records == []  # no LogRecord was made for the access lines
        logging.getLogger().addFilter(lambda record: True)  # anything on the way: the logging path
        through_logging = run(stream)
    assert len(access_records) == 3

    def comparable(line):
        return {k: v for k, v in line.items() if k not in ("timestamp", "duration_ms", "stack")}

    assert [comparable(line) for line in direct] == [comparable(line) for line in through_logging]
    access = [line for line in direct if line["logger"] == "flask_backend_patterns.access"]
    assert [(a["status"], a["level"]) for a in access] == [(200, "INFO"), (404, "INFO"), (500, "ERROR")]
    assert access[0]["user_id"] == "u1" and access[0]["pid"] == os.getpid()


def test_a_handler_of_its_own_on_the_access_logger_still_gets_the_access_record(app):
    own = io.StringIO()
    handler = logging.StreamHandler(own)
    access = logging.getLogger("flask_backend_patterns.access")
    access.addHandler(handler)
    try:
        with only_json_handler() as stream:
            app.test_client().get("/nowhere")
    finally:
        access.removeHandler(handler)
    assert own.getvalue() == "GET /nowhere 404\n"
    assert json.loads(stream.getvalue().splitlines()[-1])["status"] == 404


@pytest.mark.parametrize("method", ["callHandlers", "makeRecord"])
def test_a_tool_that_patches_logging_still_sees_the_access_record(app, monkeypatch, method):
    seen = []
    original = getattr(logging.Logger, method)

    def patched(self, *args, **kwargs):  # as Sentry's integration or a tracer would
        seen.append(self.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(logging.Logger, method, patched)
    with only_json_handler() as stream:
        app.test_client().get("/nowhere")
    assert "flask_backend_patterns.access" in seen
    assert json.loads(stream.getvalue().splitlines()[-1])["status"] == 404
