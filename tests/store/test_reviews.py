"""The review queue's store: ordering, atomic claims, overlap, closing and agreement."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from keel.store.reviews import (
    ReviewClosed,
    ReviewDuplicate,
    ReviewNotFound,
    ReviewStore,
    Vote,
    final_verdict,
)
from keel.types import OnFail, ReviewRequest, ValidationResult
from tests.backends import store_at


def request(trace_id: str, confidence: float | None = 0.3, ts: float = 1000.0,
            feature: str = "f", overlap: int = 1) -> ReviewRequest:
    return ReviewRequest(
        trace_id=trace_id, ts=ts, feature=feature, version="v1", mode="deferred",
        confidence=confidence, reason="low confidence", input={"text": trace_id},
        output={"label": "a"},
        validations=[ValidationResult("allowed_labels", True, OnFail.REFUSE)], overlap=overlap)


def make(tmp_path: Path, *items: ReviewRequest) -> ReviewStore:
    store = store_at(tmp_path / "keel.db")
    store.migrate()
    conn = store.connect()
    store.write_reviews(conn, list(items))
    conn.close()
    return ReviewStore(store)


def test_list_orders_by_confidence_unknown_first_or_by_age(tmp_path: Path) -> None:
    reviews = make(tmp_path, request("hi", 0.45, ts=1), request("lo", 0.1, ts=3),
                   request("none", None, ts=4), request("mid", 0.3, ts=2),
                   request("other", 0.01, ts=5, feature="g"))
    assert [i.trace_id for i in reviews.list_items("f")] == ["none", "lo", "mid", "hi"]
    assert [i.trace_id for i in reviews.list_items("f", order="oldest")] == ["hi", "mid", "lo", "none"]
    assert [i.trace_id for i in reviews.list_items(limit=2, offset=1)] == ["other", "lo"]
    assert reviews.count() == 5 and reviews.count("g") == 1
    reviews.record("lo", "ann", "approve")
    assert [i.trace_id for i in reviews.list_items("f", status="done")] == ["lo"]
    assert len(reviews.list_items("f", status="all")) == 4 and reviews.count("f") == 3
    item = reviews.get("mid")
    assert item is not None and item.to_json()["validations"] == [
        {"validator": "allowed_labels", "passed": True, "on_fail": "refuse", "message": None}]
    assert reviews.get("nope") is None


def test_claim_follows_the_order_and_skips_what_the_reviewer_passed(tmp_path: Path) -> None:
    reviews = make(tmp_path, request("old", 0.4, ts=1), request("unsure", 0.1, ts=2))
    first = reviews.claim("ann")
    assert first is not None and first.trace_id == "unsure" and first.assigned_to == "ann"
    again = reviews.claim("ann")  # asking twice gives the same item, not a second one
    assert again is not None and again.trace_id == "unsure"
    assert reviews.release("unsure", "ann")
    skipped = reviews.claim("ann", skip={"unsure"})
    assert skipped is not None and skipped.trace_id == "old"
    bob = reviews.claim("bob", order="oldest")
    assert bob is not None and bob.trace_id == "unsure"  # "old" is ann's now
    assert reviews.claim("cy") is None
    assert reviews.claim("cy", feature="g") is None


def test_overlap_one_never_hands_an_item_out_twice_under_concurrency(tmp_path: Path) -> None:
    n_items, n_threads = 60, 8
    reviews = make(tmp_path, *(request(f"t{i:02d}", i / 100, ts=i) for i in range(n_items)))
    claims: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(n_threads)

    def reviewer(k: int) -> None:
        start.wait()
        while True:
            item = reviews.claim(f"r{k}")
            if item is None:
                return
            with lock:
                claims.append(item.trace_id)
            reviews.record(item.trace_id, f"r{k}", "approve")

    threads = [threading.Thread(target=reviewer, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(claims) == [f"t{i:02d}" for i in range(n_items)]  # each once, all of them
    assert reviews.count(status="done") == n_items
    assert all(len(i.votes) == 1 for i in reviews.list_items(status="done", limit=500))


def test_overlap_one_fresh_claimers_in_parallel_get_distinct_items(tmp_path: Path) -> None:
    reviews = make(tmp_path, *(request(f"t{i}", 0.2) for i in range(20)))
    got: list[str | None] = []
    lock = threading.Lock()
    start = threading.Barrier(30)

    def claim(k: int) -> None:
        start.wait()
        item = reviews.claim(f"r{k}")
        with lock:
            got.append(None if item is None else item.trace_id)

    threads = [threading.Thread(target=claim, args=(k,)) for k in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    handed = [g for g in got if g is not None]
    assert len(handed) == 20 and len(set(handed)) == 20 and got.count(None) == 10


def test_overlap_two_goes_to_two_distinct_reviewers(tmp_path: Path) -> None:
    reviews = make(tmp_path, request("a", 0.1, overlap=2), request("b", 0.2, overlap=2))
    ann, bob, cy = (reviews.claim(r) for r in ("ann", "bob", "cy"))
    assert ann is not None and bob is not None and cy is not None
    assert ann.trace_id == bob.trace_id == "a" and cy.trace_id == "b"
    assert reviews.claim("dan") is not None  # b still has room for one more
    assert reviews.claim("eve") is None
    first = reviews.record("a", "ann", "approve")
    assert first.status == "pending" and first.final_verdict is None
    assert reviews.claim("ann") is None  # voted on a; b is full (cy, dan)
    assert reviews.release("b", "dan")
    again = reviews.claim("ann")
    assert again is not None and again.trace_id == "b"
    with pytest.raises(ReviewDuplicate):
        reviews.record("a", "ann", "reject", reason="changed my mind")
    closed = reviews.record("a", "bob", "approve")
    assert closed.status == "done" and closed.final_verdict == "approve"
    assert closed.final_output == {"label": "a"} and [v.reviewer for v in closed.votes] == ["ann", "bob"]
    with pytest.raises(ReviewClosed):
        reviews.record("a", "cy", "approve")
    with pytest.raises(ReviewNotFound):
        reviews.record("zz", "cy", "approve")


def test_an_expired_lease_frees_the_item(tmp_path: Path) -> None:
    reviews = make(tmp_path, request("a"))
    assert reviews.claim("ann", leases={"f": 10}, now=100.0) is not None
    assert reviews.claim("bob", now=105.0) is None
    late = reviews.claim("bob", now=111.0)
    assert late is not None and late.trace_id == "a"
    assert reviews.get("a").assigned_to is None  # type: ignore[union-attr]  # (real clock: expired)


def test_closing_by_majority_and_agreement_stats(tmp_path: Path) -> None:
    reviews = make(tmp_path, request("agree", overlap=2), request("split", overlap=2),
                   request("edits", overlap=2), request("three", overlap=3), request("single"),
                   request("open", overlap=2))
    reviews.record("agree", "ann", "approve")
    reviews.record("agree", "bob", "approve")
    reviews.record("split", "ann", "approve")
    split = reviews.record("split", "bob", "reject", reason="wrong")
    assert split.final_verdict == "reject" and split.final_output is None  # a tie rejects
    reviews.record("edits", "ann", "edit", {"label": "b"})
    edits = reviews.record("edits", "bob", "edit", {"label": "b"})
    assert edits.final_verdict == "edit" and edits.final_output == {"label": "b"}
    reviews.record("three", "ann", "approve")
    reviews.record("three", "bob", "reject", reason="no")
    three = reviews.record("three", "cy", "edit", {"label": "a"})  # unchanged: an approval
    assert three.votes[-1].verdict == "approve" and three.votes[-1].output is None
    assert three.final_verdict == "approve"
    reviews.record("single", "ann", "reject", reason="bad")
    reviews.record("open", "ann", "approve")
    reviews.claim("dan", feature="f")  # nothing claimable for dan but "open"
    (stats,) = reviews.stats()
    assert (stats.pending, stats.in_progress, stats.done) == (0, 1, 5)
    assert (stats.approved, stats.edited, stats.rejected) == (2, 1, 2)
    assert stats.rejected_share == pytest.approx(0.4)
    assert stats.multi_reviewed == 4
    assert stats.unanimous == pytest.approx(2 / 4)
    assert stats.pairwise == pytest.approx((1 + 0 + 1 + 1 / 3) / 4)
    assert stats.to_json()["agreement"] == {"items": 4, "unanimous": 0.5,
                                            "pairwise": pytest.approx(7 / 12)}
    assert reviews.stats("nope") == []


def vote(verdict: str, output: object = None, reviewer: str = "r") -> Vote:
    return Vote(reviewer, verdict, output, "why" if verdict == "reject" else None, 0.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(("votes", "expected"), [
    ([vote("approve")], ("approve", {"label": "a"})),
    ([vote("approve"), vote("approve"), vote("reject")], ("approve", {"label": "a"})),
    ([vote("approve"), vote("edit", {"label": "b"})], ("reject", None)),
    ([vote("approve"), vote("edit", {"label": "b"}), vote("reject")], ("reject", None)),
    ([vote("edit", {"label": "c"}), vote("edit", {"label": "b"}), vote("edit", {"label": "b"})],
     ("edit", {"label": "b"})),
    ([vote("edit", {"label": "c"}), vote("edit", {"label": "b"}), vote("approve")],
     ("edit", {"label": "c"})),  # edit wins; its corrections tie: the earliest
    ([vote("reject"), vote("reject"), vote("approve")], ("reject", None)),
])
def test_final_verdict(votes: list[Vote], expected: tuple[str, object]) -> None:
    verdict, output, reason = final_verdict(votes, {"label": "a"})
    assert (verdict, output) == expected
    if verdict == "reject":
        assert reason


def test_final_verdict_needs_votes() -> None:
    with pytest.raises(ValueError):
        final_verdict([], None)


def test_on_close_runs_in_the_closing_transaction(tmp_path: Path) -> None:
    reviews = make(tmp_path, request("a"))

    def boom(conn: object, item: object) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        reviews.record("a", "ann", "approve", on_close=boom)
    item = reviews.get("a")
    assert item is not None and item.status == "pending" and item.votes == []  # rolled back
