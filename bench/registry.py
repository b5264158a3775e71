"""One registry shape for data sets, models, defenses and attacks: a name maps to a factory.

An unknown name raises :class:`~bench.errors.UnknownNameError`, whose message lists the valid
names (as timm's ``create_model`` does).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, Mapping, TypeVar

from bench.errors import UnknownNameError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered factory with a one-line summary and the defaults shown by ``bench list``."""

    name: str
    factory: Callable[..., T]
    summary: str = ""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """Name -> :class:`Entry`. ``kind`` names the registry in error messages ("defense")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def add(
        self,
        name: str,
        factory: Callable[..., T],
        summary: str = "",
        defaults: Mapping[str, Any] | None = None,
        **extra: Any,
    ) -> Entry[T]:
        """Register ``factory`` under ``name``; a name is registered once."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        entry = Entry(name, factory, summary, dict(defaults or {}), dict(extra))
        self._entries[name] = entry
        return entry

    def register(
        self, name: str, summary: str = "", defaults: Mapping[str, Any] | None = None, **extra: Any
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator form of :meth:`add`."""

        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            self.add(name, factory, summary, defaults, **extra)
            return factory

        return deco

    def remove(self, name: str) -> None:
        """Unregister ``name`` (tests use it to clean up what they registered)."""
        self._entries.pop(name, None)

    def __getitem__(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self.names()) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._entries)

    def create(self, name: str, *args: Any, **kwargs: Any) -> T:
        """Call the factory registered under ``name``."""
        return self[name].factory(*args, **kwargs)
