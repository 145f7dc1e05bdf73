"""Helpers shared by every extension: per-app state, config coercion, and the view
that serves the current request."""

from __future__ import annotations

import typing as t

from flask import current_app
from flask import Flask
from flask import request

StateT = t.TypeVar("StateT")


def register_state(app: Flask, key: str, state: object) -> None:
    """Store ``state`` as ``app.extensions[key]``.

    :raises RuntimeError: the part is already registered on this app.
    """
    if key in app.extensions:
        raise RuntimeError(f"{key!r} is already registered on app {app.name!r}; call init_app once per app.")
    app.extensions[key] = state


def lookup_state(key: str, state_type: type[StateT], app: Flask | None = None) -> StateT:
    """Return the per-app state of a part, from ``app`` or the current app.

    :raises RuntimeError: outside an app context, or the part was not registered.
    """
    if app is None:
        try:
            app = current_app._get_current_object()  # type: ignore[attr-defined]
        except RuntimeError:  # werkzeug's "Working outside of application context."
            raise RuntimeError(
                f"{key!r} needs an application context: use 'with app.app_context():'."
            ) from None
    try:
        state = app.extensions[key]
    except KeyError:
        raise RuntimeError(
            f"{key!r} is not registered on app {app.name!r}; did you forget init_app(app)?"
        ) from None
    if not isinstance(state, state_type):
        raise RuntimeError(f"app.extensions[{key!r}] holds {type(state).__name__}, not ours")
    return state


def config_bool(value: object, key: str) -> bool:
    """Read a boolean config value, accepting what ``from_prefixed_env`` produces."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in {"1", "true", "yes", "on"}:
        return True
    if isinstance(value, str) and value.strip().lower() in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"{key} must be a boolean, got {value!r}")


def config_list(value: object, key: str) -> list[str]:
    """Read a list of strings: a list, or one comma-separated string."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, (list, tuple, set, frozenset)):
        return [str(part) for part in value]
    raise ValueError(f"{key} must be a list or a comma-separated string, got {value!r}")


def config_int(value: object, key: str, *, minimum: int | None = None) -> int:
    """Read an integer config value (an int or a numeric string)."""
    try:
        number: int = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be an integer, got {value!r}") from None
    if isinstance(value, bool) or (minimum is not None and number < minimum):
        raise ValueError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return number


def request_view() -> tuple[t.Any, t.Any, t.Any]:
    """The current request's view function, its ``MethodView`` class, and the class's
    method that handles the request (``get`` for ``HEAD`` when there is no ``head``,
    as ``MethodView`` dispatches it); ``None`` for what there is not.

    Looked up once per request (the rate limiter and the response cache both ask), and
    again if another app or route serves the same environ.
    """
    environ = request.environ
    asked = (current_app._get_current_object(), request.endpoint, request.method)  # type: ignore[attr-defined]
    found: tuple[t.Any, tuple[t.Any, t.Any, t.Any]] | None = environ.get(_VIEW_ENVIRON_KEY)
    if found is None or found[0] != asked:
        found = environ[_VIEW_ENVIRON_KEY] = (asked, _lookup_view())
    return found[1]


_VIEW_ENVIRON_KEY = "flask_backend_patterns.view"


def _lookup_view() -> tuple[t.Any, t.Any, t.Any]:
    view = current_app.view_functions.get(request.endpoint or "")
    view_class = getattr(view, "view_class", None)
    if view_class is None:
        return view, None, None
    method = request.method.lower()
    handler = getattr(view_class, method, None)
    if handler is None and method == "head":
        handler = getattr(view_class, "get", None)
    return view, view_class, handler
