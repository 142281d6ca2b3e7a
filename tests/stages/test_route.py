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


def test_a_pinned_call_gets_exactly_its_version() -> None:
    router = Router({"champion": "v1", "canary": "v3"}, ["v2"])
    call = Call("f", {}, "t", pin="v2")
    assert router.route(call).versions == ("v2",)
    assert router.route(call).alias == "pinned"


def test_no_canary_traffic_without_a_split_or_a_canary_alias() -> None:
    from keel.stages.route import Split

    router = Router({"champion": "v1", "canary": "v3"}, [])
    assert {router.choose(Call("f", {}, "t", user=f"u{i}")) for i in range(200)} == {"champion"}
    only_champion = Router({"champion": "v1"}, [])
    only_champion.set_split(Split(1.0))
    assert only_champion.choose(Call("f", {}, "t", user="u")) == "champion"


def test_the_split_is_sticky_by_user_then_session_and_its_share_is_right() -> None:
    from keel.stages.route import Split

    router = Router({"champion": "v1", "canary": "v3"}, ["v2"])
    router.set_split(Split(0.25, "user", "rollout-1"))
    users = [f"user-{i}" for i in range(4000)]
    first = {u: router.choose(Call("f", {}, "t", user=u)) for u in users}
    assert all(router.choose(Call("f", {}, "t2", user=u)) == first[u] for u in users[:200])
    share = sum(a == "canary" for a in first.values()) / len(users)
    assert 0.22 < share < 0.28
    canary = router.route(Call("f", {}, "t", user=next(u for u in users if first[u] == "canary")))
    assert canary.versions == ("v3", "v1", "v2")  # a failing canary falls back to the champion
    # a session keeps the split sticky when there is no user
    by_session = {router.choose(Call("f", {}, f"t{i}", session="s-1")) for i in range(50)}
    assert len(by_session) == 1
    # raising the share only moves users from champion to canary
    router.set_split(Split(0.5, "user", "rollout-1"))
    assert all(router.choose(Call("f", {}, "t", user=u)) == "canary"
               for u in users if first[u] == "canary")
