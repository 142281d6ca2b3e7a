"""Held review: a caller waiting for a human verdict on its output.

The pipeline parks the call on :meth:`ReviewHub.wait`; the review API calls
:meth:`ReviewHub.resolve` when an item gets its final verdict. One hub per process
(on the app object); a verdict given in another process is seen by polling the
store (``poll``), so a held call never depends on which process the reviewer hit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from keel.types import JSON

Verdict = Literal["approve", "edit", "reject"]


@dataclass(frozen=True, slots=True)
class FinalVerdict:
    """What the reviewers decided about one item (after overlap, by majority)."""

    verdict: Verdict
    output: JSON  # the approved or corrected output; None when rejected
    reviewers: list[str] = field(default_factory=list)
    reason: str | None = None


Poll = Callable[[str], Awaitable[FinalVerdict | None]]


class ReviewHub:
    def __init__(self, poll: Poll | None = None, poll_interval_s: float = 0.5) -> None:
        self._waiters: dict[str, asyncio.Future[FinalVerdict]] = {}
        self._poll = poll
        self._poll_interval_s = poll_interval_s

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def wait(self, trace_id: str, timeout_s: float) -> FinalVerdict | None:
        """The final verdict, or None when none came within ``timeout_s``."""
        future: asyncio.Future[FinalVerdict] = asyncio.get_running_loop().create_future()
        self._waiters[trace_id] = future
        try:
            async with asyncio.timeout(timeout_s):
                if self._poll is None:
                    return await future
                while True:
                    done, _ = await asyncio.wait({future}, timeout=self._poll_interval_s)
                    if done:
                        return future.result()
                    found = await self._poll(trace_id)
                    if found is not None:
                        return found
        except TimeoutError:
            return None
        finally:
            self._waiters.pop(trace_id, None)

    def resolve(self, trace_id: str, verdict: FinalVerdict) -> bool:
        """Hand a final verdict to the caller waiting on it; False when nobody waits."""
        future = self._waiters.get(trace_id)
        if future is None or future.done():
            return False
        future.set_result(verdict)
        return True
