"""Fixtures of the end-to-end tests."""

from __future__ import annotations

from tests.e2e.servers import private_redis  # noqa: F401  (a fixture)
