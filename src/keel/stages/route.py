"""Version choice: which versions one call may try, in order.

Today the route is the ``champion`` alias's version, then the feature's fallbacks.
:class:`Router` is the seam for canary splits (sticky per user) and cost-aware choice:
they change :meth:`Router.choose`, nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

from keel.types import Call


@dataclass(frozen=True, slots=True)
class Route:
    versions: tuple[str, ...]  # the chosen version first, then its fallbacks
    alias: str


class Router:
    def __init__(self, aliases: dict[str, str], fallbacks: list[str]) -> None:
        self._aliases = dict(aliases)
        self._fallbacks = tuple(fallbacks)
        self._cache: dict[str, Route] = {}

    def set_alias(self, alias: str, version: str) -> None:
        self._aliases[alias] = version
        self._cache.clear()

    def choose(self, call: Call) -> str:
        """The alias this call is served by. Canary splits will decide here."""
        return "champion"

    def route(self, call: Call) -> Route:
        alias = self.choose(call)
        route = self._cache.get(alias)
        if route is None:
            first = self._aliases[alias]
            rest = tuple(v for v in self._fallbacks if v != first)
            route = self._cache[alias] = Route((first, *rest), alias)
        return route
