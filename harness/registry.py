"""A name -> object registry filled at the definition site, with did-you-mean errors."""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from harness.errors import unknown

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps short snake_case keys to registered objects."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering an object under `name`."""
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            return obj
        return deco

    def get(self, name: str) -> T:
        """The object registered as `name`, or a HarnessError listing what exists."""
        if name not in self._items:
            raise unknown(self.kind, name, self._items, "See `harness list`.")
        return self._items[name]

    def names(self) -> list[str]:
        """Registered keys in registration order."""
        return list(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)
