"""Service layer: business operations over a repository, each one unit of work."""

from __future__ import annotations

import typing as t

from .errors import NotFoundError
from .repository import Page
from .repository import Repository
from .transactions import transaction

ModelT = t.TypeVar("ModelT")


class Service(t.Generic[ModelT]):
    """Business operations over one repository.

    Reads return what the repository returns, ``get`` raising
    :class:`~flask_backend_patterns.errors.NotFoundError` for an unknown id. Each
    write runs in :func:`~flask_backend_patterns.transactions.transaction`, so it is
    committed when the method returns and rolled back whole when it raises.
    Subclasses add the rules of their domain and call these.
    """

    def __init__(self, repository: Repository[ModelT]) -> None:
        self.repository = repository

    @property
    def _session(self) -> t.Any:
        # A SQLAlchemyRepository, or a wrapper of one (CachedRepository), has a session.
        try:
            return getattr(self.repository, "session", None)
        except RuntimeError:
            return None  # outside Flask-SQLAlchemy: transaction() uses its default

    def list(self, **query: t.Any) -> Page[ModelT]:
        """One page of rows; ``query`` as :meth:`SQLAlchemyRepository.find_page`."""
        return self.repository.find_page(**query)

    def get(
        self, id: t.Any, *, fields: t.Sequence[str] | None = None, include: t.Sequence[str] = ()
    ) -> ModelT:
        """The row ``id``.

        :raises NotFoundError: no such row.
        """
        obj = self.repository.find_by_id(id, fields=fields, include=include)
        if obj is None:
            raise NotFoundError(f"{self._resource_name()} not found")
        return obj

    def create(self, data: t.Mapping[str, t.Any]) -> ModelT:
        """Create a row and commit."""
        with transaction(self._session):
            return self.repository.create(data)

    def update(self, id: t.Any, data: t.Mapping[str, t.Any]) -> ModelT:
        """Change the fields in ``data`` and commit.

        :raises NotFoundError: no such row.
        """
        with transaction(self._session):
            return self.repository.update(id, data)

    def delete(self, id: t.Any) -> None:
        """Delete a row and commit.

        :raises NotFoundError: no such row.
        """
        with transaction(self._session):
            self.repository.delete(id)

    def _resource_name(self) -> str:
        model = getattr(self.repository, "model", None)
        return model.__name__ if model is not None else "Resource"
