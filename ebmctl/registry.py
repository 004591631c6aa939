"""Named registries with "did you mean" errors."""

from __future__ import annotations

import difflib
from typing import Generic, Iterator, TypeVar

from ebmctl.errors import ConfigError, PluginError

T = TypeVar("T")


def did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    if close:
        return f"; did you mean {close[0]!r}?"
    if choices:
        return f"; choose from {', '.join(sorted(choices))}"
    return ""


class Registry(Generic[T]):
    """A mapping from names to objects that remembers which plugin registered each one."""

    def __init__(self, what: str):
        self.what = what
        self._items: dict[str, T] = {}
        self._owners: dict[str, str] = {}

    def register(self, name: str, obj: T, plugin: str = "?") -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {plugin!r} registered a {self.what} without a name")
        if name in self._items:
            raise PluginError(
                f"plugin {plugin!r} registered {self.what} {name!r}, "
                f"already registered by plugin {self._owners[name]!r}"
            )
        self._items[name] = obj
        self._owners[name] = plugin

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.what} {name!r}{did_you_mean(name, list(self._items))}"
            ) from None

    def drop_plugin(self, plugin: str) -> list[str]:
        """Remove everything ``plugin`` registered (a plugin that failed is left out whole)."""
        names = self.by_plugin(plugin)
        for n in names:
            del self._items[n], self._owners[n]
        return names

    def owner(self, name: str) -> str:
        return self._owners[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def by_plugin(self, plugin: str) -> list[str]:
        return sorted(n for n, p in self._owners.items() if p == plugin)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)
