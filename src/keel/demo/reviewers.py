"""Simulated reviewers: people who work the review queue, answering from the true labels.

They use the queue exactly as people do (:class:`keel.control.reviews.ReviewQueue`, the
code behind ``/api/reviews`` and ``keel review``): ask for the next item, give a verdict,
and each closed item becomes a labelled example in the feature's review dataset.

A reviewer is right unless the message's coin says it slips (``reviewer_error``, drawn
per message from the seed). Right: approve a correct output, edit a wrong one to the
true label. Slipping: approve a *wrong* output as it is (automation bias, the usual way
reviewers fail) or change a *correct* one to another label. Nobody rejects: every
BANKING77 message has a right intent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from keel.control.reviews import ReviewQueue
from keel.demo.config import FEATURE, Message
from keel.gateway import Keel
from keel.store.reviews import ReviewItem
from keel.types import JSON

NAMES = ("sim-ann", "sim-ben", "sim-cho")


@dataclass(slots=True)
class Tally:
    """Verdicts given, and how many of them were wrong."""

    items: int = 0
    approved: int = 0
    edited: int = 0
    slips: int = 0

    def add(self, other: Tally) -> None:
        self.items += other.items
        self.approved += other.approved
        self.edited += other.edited
        self.slips += other.slips


def verdict_for(message: Message, output: JSON) -> tuple[str, JSON, bool]:
    """(verdict, corrected output or None, whether the verdict is wrong)."""
    said = output.get("label") if isinstance(output, dict) else None
    right = said == message.label
    if message.slip:
        return ("edit", {"label": message.wrong_label}, True) if right else ("approve", None, True)
    return ("approve", None, False) if right else ("edit", {"label": message.label}, False)


class SimulatedReviewers:
    def __init__(self, keel: Keel, truth: Mapping[str, Message]) -> None:
        """``truth``: trace id -> the message that call answered (filled as traffic runs)."""
        self.queue = ReviewQueue(keel)
        self.truth = truth
        self._unknown: set[str] = set()  # items of calls the demo did not make: left alone
        self._turn = 0

    async def drain(self) -> Tally:
        """Work the queue until nothing is left that the reviewers can judge."""
        tally = Tally()
        while True:
            reviewer = NAMES[self._turn % len(NAMES)]
            item = await self.queue.next(reviewer, FEATURE, skip=self._unknown)
            if item is None:
                return tally
            message = self.truth.get(item.trace_id)
            if message is None:
                self._unknown.add(item.trace_id)
                await self.queue.release(item.trace_id, reviewer)
                continue
            await self._judge(item, message, reviewer, tally)
            self._turn += 1

    async def _judge(self, item: ReviewItem, message: Message, reviewer: str,
                     tally: Tally) -> None:
        verdict, output, slip = verdict_for(message, item.output)
        await self.queue.submit(item.trace_id, reviewer, verdict, output)
        tally.items += 1
        tally.slips += slip
        if verdict == "approve":
            tally.approved += 1
        else:
            tally.edited += 1
