from __future__ import annotations

import asyncio

from keel.stages.hold import FinalVerdict, ReviewHub


async def test_a_verdict_reaches_the_waiting_caller() -> None:
    hub = ReviewHub()
    waiter = asyncio.create_task(hub.wait("t1", 5))
    await asyncio.sleep(0)
    assert hub.waiting == 1
    assert hub.resolve("t1", FinalVerdict("edit", {"label": "b"}, ["ann"]))
    verdict = await waiter
    assert verdict is not None and verdict.output == {"label": "b"}
    assert hub.waiting == 0
    assert not hub.resolve("t1", FinalVerdict("approve", None))  # nobody waits any more


async def test_no_verdict_in_time_is_none() -> None:
    hub = ReviewHub()
    assert await hub.wait("t2", 0.01) is None
    assert hub.waiting == 0


async def test_a_verdict_from_another_process_is_found_by_polling() -> None:
    found: list[str] = []

    async def poll(trace_id: str) -> FinalVerdict | None:
        found.append(trace_id)
        return FinalVerdict("approve", {"label": "a"}) if len(found) >= 2 else None

    hub = ReviewHub(poll, poll_interval_s=0.01)
    verdict = await hub.wait("t3", 5)
    assert verdict is not None and verdict.verdict == "approve" and found == ["t3", "t3"]
