"""The umbrella extension: registers every part the config enables."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field

from flask import Flask

from ._extension import config_bool
from ._extension import lookup_state
from ._extension import register_state
from .errors import ErrorHandler
from .logging import RequestLogging

EXTENSION_KEY = "backend_patterns"


@dataclass
class BackendPatternsState:
    """Per-app state of :class:`BackendPatterns`: the parts it registered."""

    parts: list[str] = field(default_factory=list)


class BackendPatterns:
    """Register the enabled parts on an app in one call.

    Config keys: ``BACKEND_ERRORS_ENABLED`` [True], ``BACKEND_LOGGING_ENABLED`` [True].
    Each part reads its own keys (see its docs page).
    """

    def __init__(self, app: Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register the enabled parts on ``app``.

        :raises RuntimeError: already registered on this app.
        """
        app.config.setdefault("BACKEND_ERRORS_ENABLED", True)
        app.config.setdefault("BACKEND_LOGGING_ENABLED", True)
        state = BackendPatternsState()
        register_state(app, EXTENSION_KEY, state)
        if config_bool(app.config["BACKEND_LOGGING_ENABLED"], "BACKEND_LOGGING_ENABLED"):
            RequestLogging(app)
            state.parts.append("logging")
        if config_bool(app.config["BACKEND_ERRORS_ENABLED"], "BACKEND_ERRORS_ENABLED"):
            ErrorHandler(app)
            state.parts.append("errors")


def get_state(app: Flask | None = None) -> BackendPatternsState:
    """Return the :class:`BackendPatterns` state of ``app`` (or the current app)."""
    return lookup_state(EXTENSION_KEY, BackendPatternsState, app)
