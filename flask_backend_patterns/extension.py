"""The umbrella extension: registers every part the config enables."""

from __future__ import annotations

import typing as t
from dataclasses import dataclass
from dataclasses import field

from flask import Flask

from ._extension import config_bool
from ._extension import lookup_state
from ._extension import register_state
from .auth import Auth
from .auth import Identity
from .auth import RevocationStore
from .cache import RepositoryCache
from .errors import ErrorHandler
from .jobs import JobQueue
from .logging import RequestLogging
from .ratelimit import RateLimiting

EXTENSION_KEY = "backend_patterns"


@dataclass
class BackendPatternsState:
    """Per-app state of :class:`BackendPatterns`: the parts it registered."""

    parts: list[str] = field(default_factory=list)


class BackendPatterns:
    """Register the enabled parts on an app in one call.

    Config keys (defaults in brackets): ``BACKEND_ERRORS_ENABLED`` [True],
    ``BACKEND_LOGGING_ENABLED`` [True], and, opt-in since each needs config of its own
    (secrets, Redis) and changes what every request does: ``BACKEND_AUTH_ENABLED``
    [False], ``BACKEND_RATELIMIT_ENABLED`` [False], ``BACKEND_CACHE_ENABLED`` [False],
    ``BACKEND_JOBS_ENABLED`` [False]. Parts are registered in the order that makes them
    work together: logging, errors, auth, rate limits (after auth, so that a known
    caller is counted per user), cache, jobs. Each part reads its own keys (see its
    docs page); ``revocation_store`` and ``user_loader`` go to :class:`Auth`.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        revocation_store: RevocationStore | None = None,
        user_loader: t.Callable[[Identity], t.Any] | None = None,
    ) -> None:
        self.revocation_store = revocation_store
        self.user_loader = user_loader
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register the enabled parts on ``app``.

        :raises RuntimeError: already registered on this app.
        :raises ValueError: a part's config is wrong (raised by that part).
        """
        defaults = {
            "ERRORS": True,
            "LOGGING": True,
            "AUTH": False,
            "RATELIMIT": False,
            "CACHE": False,
            "JOBS": False,
        }
        for part, default in defaults.items():
            app.config.setdefault(f"BACKEND_{part}_ENABLED", default)
        state = BackendPatternsState()
        register_state(app, EXTENSION_KEY, state)
        parts: list[tuple[str, t.Callable[[Flask], object]]] = [
            ("logging", RequestLogging),
            ("errors", ErrorHandler),
            ("auth", lambda a: Auth(a, revocation_store=self.revocation_store, user_loader=self.user_loader)),
            ("ratelimit", RateLimiting),
            ("cache", RepositoryCache),
            ("jobs", JobQueue),
        ]
        for name, register in parts:
            key = f"BACKEND_{name.upper()}_ENABLED"
            if config_bool(app.config[key], key):
                register(app)
                state.parts.append(name)


def get_state(app: Flask | None = None) -> BackendPatternsState:
    """Return the :class:`BackendPatterns` state of ``app`` (or the current app)."""
    return lookup_state(EXTENSION_KEY, BackendPatternsState, app)
