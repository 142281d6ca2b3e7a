"""Version choice: which versions one call may try, in order.

The route is the ``champion`` alias's version, then the feature's fallbacks. During a
canary rollout a share of calls goes to the ``canary`` alias instead: which calls is
decided by a hash of the sticky key (the user, else the session), so one user keeps
seeing one version for the whole step, and raising the share only moves users from the
champion to the canary, never back. Calls with no sticky key are split at random.

An eval call (``Call.pin``) is served by exactly the pinned version, no fallback.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from keel.types import Call


@dataclass(frozen=True, slots=True)
class Route:
    versions: tuple[str, ...]  # the chosen version first, then its fallbacks
    alias: str


@dataclass(frozen=True, slots=True)
class Split:
    """A live canary: ``weight`` of the traffic goes to the ``canary`` alias."""

    weight: float
    sticky: str = "user"  # user | session | none
    salt: str = ""  # the rollout's id: a new rollout reshuffles who is in the canary


def bucket(key: str, salt: str) -> float:
    """A stable point in [0, 1) for a sticky key."""
    digest = hashlib.blake2b(f"{salt}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class Router:
    def __init__(self, aliases: dict[str, str], fallbacks: list[str],
                 rng: random.Random | None = None) -> None:
        self._aliases = dict(aliases)
        self._fallbacks = tuple(fallbacks)
        self._cache: dict[str, Route] = {}
        self.split: Split | None = None
        self._rng = rng or random.Random()

    @property
    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    def set_alias(self, alias: str, version: str) -> None:
        self._aliases[alias] = version
        self._cache.clear()

    def set_aliases(self, aliases: dict[str, str]) -> None:
        """Replace every alias at once (the registry's view after a move elsewhere)."""
        if aliases != self._aliases:
            self._aliases = dict(aliases)
            self._cache.clear()

    def set_split(self, split: Split | None) -> None:
        self.split = split if split is not None and split.weight > 0 else None

    def choose(self, call: Call) -> str:
        """The alias this call is served by: ``canary`` for its share during a rollout."""
        split = self.split
        if split is None or "canary" not in self._aliases:
            return "champion"
        key = None
        if split.sticky == "user":
            key = call.user or call.session
        elif split.sticky == "session":
            key = call.session
        point = bucket(key, split.salt) if key else self._rng.random()
        return "canary" if point < split.weight else "champion"

    def route(self, call: Call) -> Route:
        if call.pin is not None:
            return Route((call.pin,), "pinned")
        alias = self.choose(call)
        route = self._cache.get(alias)
        if route is None:
            first = self._aliases[alias]
            # a canary's failures fall back to the champion first: users are protected,
            # and the failure still counts against the canary (events keep `routed`)
            chain = (self._aliases["champion"], *self._fallbacks) if alias == "canary" else self._fallbacks
            rest = tuple(dict.fromkeys(v for v in chain if v != first))
            route = self._cache[alias] = Route((first, *rest), alias)
        return route
