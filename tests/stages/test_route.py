from __future__ import annotations

from keel.stages.route import Router
from keel.types import Call


def test_champion_first_then_fallbacks_without_duplicates() -> None:
    router = Router({"champion": "v2"}, ["v1", "v2", "v3"])
    assert router.route(Call("f", {}, "t")).versions == ("v2", "v1", "v3")


def test_moving_an_alias_changes_the_route() -> None:
    router = Router({"champion": "v1"}, [])
    assert router.route(Call("f", {}, "t")).versions == ("v1",)
    router.set_alias("champion", "v2")
    assert router.route(Call("f", {}, "t")).versions == ("v2",)
