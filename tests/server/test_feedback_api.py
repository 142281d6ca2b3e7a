"""The feedback API in-process (ASGI): idempotency, every error path, listings, stats,
weak labels, and feedback that races the event writer."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from keel.control.datasets import DatasetSink, DatasetStore
from keel.gateway import Keel
from keel.server import create_app
from keel.server.feedback import FeedbackService
from keel.store.db import Connection
from keel.types import Completion, Decision, Event
from tests.conftest import basic_feature, scripted, settings_in, spec_with
from tests.server.access_kit import bearer, create_keys, make_keel, served


@asynccontextmanager
async def client_for(keel: Keel) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(keel)
    app.state.feedback.grace_s = 0.2  # unknown trace ids: 404 without the full grace
    transport = httpx.ASGITransport(app=app)
    async with keel, httpx.AsyncClient(transport=transport, base_url="http://keel") as client:
        yield client


@pytest.fixture
def keel(tmp_path: Path) -> Keel:
    return Keel(spec_with(basic_feature()), settings_in(tmp_path))


@pytest.fixture
async def client(keel: Keel) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(keel) as client:
        yield client


def service(client: httpx.AsyncClient) -> FeedbackService:
    transport = client._transport
    assert isinstance(transport, httpx.ASGITransport)
    found: FeedbackService = transport.app.state.feedback  # type: ignore[attr-defined]
    return found


async def call(client: httpx.AsyncClient, text: str = "hi", user: str | None = None) -> str:
    r = await client.post("/v1/features/f", json={"input": {"text": text}, "user": user})
    assert r.status_code == 200, r.text
    trace_id: str = r.json()["trace_id"]
    return trace_id


async def stored_call(client: httpx.AsyncClient, keel: Keel, text: str = "hi") -> str:
    trace_id = await call(client, text)
    keel.writer.flush()
    return trace_id


async def send(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await client.post("/api/feedback", json=body)


# --- idempotency -------------------------------------------------------------------------


async def test_the_same_feedback_twice_is_one_record_and_a_change_updates_it(
        client: httpx.AsyncClient, keel: Keel) -> None:
    trace = await stored_call(client, keel)
    r = await send(client, trace_id=trace, kind="thumbs", value="up")
    assert r.status_code == 201, r.text
    first = r.json()
    assert first["result"] == "created" and first["changed"] == []
    record = first["feedback"]
    assert record["trace_id"] == trace and record["feature"] == "f" and record["version"] == "v1"
    assert record["routed"] == "v1" and record["kind"] == "thumbs" and record["value"] == "up"
    assert record["source"] == "user" and record["revision"] == 1 and record["name"] is None

    again = await send(client, trace_id=trace, kind="thumbs", value="up")
    assert again.status_code == 200 and again.json()["result"] == "unchanged"
    assert again.json()["feedback"] == record

    changed = await send(client, trace_id=trace, kind="thumbs", value="down",
                         comment="wrong label")
    assert changed.status_code == 200
    body = changed.json()
    assert body["result"] == "updated" and body["changed"] == ["value", "comment"]
    assert body["feedback"]["id"] == record["id"] and body["feedback"]["revision"] == 2
    assert body["feedback"]["value"] == "down" and body["feedback"]["comment"] == "wrong label"
    assert body["feedback"]["created_at"] == record["created_at"]

    # another source, another kind and each outcome name are records of their own
    assert (await send(client, trace_id=trace, kind="thumbs", value="up",
                       source="agent")).status_code == 201
    assert (await send(client, trace_id=trace, kind="outcome",
                       name="ticket_resolved")).status_code == 201
    assert (await send(client, trace_id=trace, kind="outcome", name="refund_issued",
                       value=25.5)).status_code == 201
    r = await client.get("/api/feedback", params={"trace_id": trace})
    assert r.status_code == 200 and r.json()["total"] == 4


async def test_metadata_and_outputs_compare_by_value_not_spelling(
        client: httpx.AsyncClient, keel: Keel) -> None:
    trace = await stored_call(client, keel)
    meta = {"b": 1, "a": [1, 2]}
    assert (await send(client, trace_id=trace, kind="rating", value=4,
                       metadata=meta)).status_code == 201
    r = await client.post("/api/feedback", content=(
        '{"metadata": {"a": [1, 2], "b": 1}, "value": 4.0, "kind": "rating", '
        f'"trace_id": "{trace}"}}'))
    assert r.status_code == 200 and r.json()["result"] == "unchanged"


# --- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "param"), [
    ({"kind": "thumbs", "value": "up"}, "trace_id"),
    ({"trace_id": "has space", "kind": "thumbs", "value": "up"}, "trace_id"),
    ({"trace_id": "t", "kind": "like", "value": "up"}, "kind"),
    ({"trace_id": "t", "kind": "thumbs"}, "value"),
    ({"trace_id": "t", "kind": "thumbs", "value": True}, "value"),
    ({"trace_id": "t", "kind": "rating", "value": 6}, "value"),
    ({"trace_id": "t", "kind": "rating", "value": "5"}, "value"),
    ({"trace_id": "t", "kind": "comment"}, "comment"),
    ({"trace_id": "t", "kind": "comment", "comment": "   "}, "comment"),
    ({"trace_id": "t", "kind": "comment", "comment": "x" * 4001}, "comment"),
    ({"trace_id": "t", "kind": "correction"}, "output"),
    ({"trace_id": "t", "kind": "correction", "output": {"label": "a"}, "value": 1}, "value"),
    ({"trace_id": "t", "kind": "thumbs", "value": "up", "output": {"label": "a"}}, "output"),
    ({"trace_id": "t", "kind": "outcome"}, "name"),
    ({"trace_id": "t", "kind": "outcome", "name": "Ticket Resolved"}, "name"),
    ({"trace_id": "t", "kind": "outcome", "name": "x", "value": "yes"}, "value"),
    ({"trace_id": "t", "kind": "thumbs", "value": "up", "name": "x"}, "name"),
    ({"trace_id": "t", "kind": "thumbs", "value": "up", "source": ""}, "source"),
    ({"trace_id": "t", "kind": "thumbs", "value": "up", "metadata": []}, "metadata"),
    ({"trace_id": "t", "kind": "thumbs", "value": "up", "stars": 5}, "stars"),
])
async def test_an_unusable_payload_is_a_422_naming_the_field(
        client: httpx.AsyncClient, body: dict[str, Any], param: str) -> None:
    r = await client.post("/api/feedback", json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_feedback" and error["param"] == param
    assert error["type"] == "invalid_request_error" and error["message"]


@pytest.mark.parametrize(("content", "status", "code"), [
    (b"", 400, "empty_body"), (b"{oops", 400, "invalid_json"), (b"[]", 400, "invalid_request"),
])
async def test_a_body_that_is_not_a_json_object_keeps_its_usual_code(
        client: httpx.AsyncClient, content: bytes, status: int, code: str) -> None:
    r = await client.post("/api/feedback", content=content)
    assert r.status_code == status and r.json()["error"]["code"] == code


async def test_an_unknown_trace_id_is_a_404(client: httpx.AsyncClient) -> None:
    r = await send(client, trace_id="0" * 32, kind="thumbs", value="up")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "event_not_found"
    assert r.json()["error"]["param"] == "trace_id"


async def test_a_correction_must_fit_the_feature_output(client: httpx.AsyncClient,
                                                        keel: Keel) -> None:
    trace = await stored_call(client, keel)
    r = await send(client, trace_id=trace, kind="correction", output={"label": "c"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "output"
    assert "not a label" in r.json()["error"]["message"]
    r = await send(client, trace_id=trace, kind="correction", output="b")  # normalised
    assert r.status_code == 201 and r.json()["feedback"]["output"] == {"label": "b"}


# --- the race with the event writer ------------------------------------------------------


@contextmanager
def held_writer(keel: Keel) -> Iterator[threading.Event]:
    """The event writer blocks before each write until the returned event is set."""
    gate = threading.Event()
    write = keel.store.write_events

    def slow(conn: Connection, events: Any) -> None:
        gate.wait(10)
        write(conn, events)

    keel.store.write_events = slow  # type: ignore[method-assign]
    try:
        yield gate
    finally:
        gate.set()


async def test_feedback_right_after_the_call_is_not_a_404_while_the_event_is_queued(
        client: httpx.AsyncClient, keel: Keel) -> None:
    with held_writer(keel) as gate:
        trace = await call(client, user="u1")
        assert service(client).store.call(trace) is None  # still in the writer's queue
        r = await send(client, trace_id=trace, kind="outcome", name="ticket_resolved")
        assert r.status_code == 201, r.text
        record = r.json()["feedback"]
        assert record["feature"] == "f" and record["routed"] == "v1" and record["user"] == "u1"
        assert service(client).store.call(trace) is None  # recorded without waiting
        gate.set()
    keel.writer.flush()
    assert service(client).store.call(trace) is not None


async def test_a_correction_sent_while_the_event_is_queued_waits_for_it_to_label(
        client: httpx.AsyncClient, keel: Keel) -> None:
    with held_writer(keel) as gate:
        trace = await call(client, "my card is late")
        asyncio.get_running_loop().call_later(0.3, gate.set)
        r = await send(client, trace_id=trace, kind="correction", output={"label": "b"})
    assert r.status_code == 201, r.text
    assert r.json()["example"] == {"dataset": "f-feedback", "example_id": f"{trace}:user",
                                   "label": "correction"}
    example = DatasetSink(keel.store).get("f-feedback", f"{trace}:user")
    assert example is not None and example.input == {"text": "my card is late"}


async def test_a_correction_whose_event_never_arrives_is_kept_without_a_label(
        client: httpx.AsyncClient, keel: Keel) -> None:
    service(client).wait_s = 0.2
    with held_writer(keel):
        trace = await call(client)
        r = await send(client, trace_id=trace, kind="correction", output={"label": "b"})
        assert r.status_code == 201 and r.json()["example"] is None
    keel.writer.flush()
    # sent again once the event is stored: the same record, and now the label
    r = await send(client, trace_id=trace, kind="correction", output={"label": "b"})
    assert r.json()["result"] == "unchanged" and r.json()["example"]["label"] == "correction"


async def test_a_call_stored_by_another_process_during_the_grace_is_found(
        client: httpx.AsyncClient, keel: Keel) -> None:
    service(client).grace_s = 5.0
    trace = "f" * 32
    event = Event(trace, 1.0, "f", "v1", Decision.ACCEPTED, 0.9, 1.0, {}, 1, 1, None,
                  [], [], {"text": "x"}, {"label": "a"}, routed="v1")

    def store_later() -> None:
        with keel.store.connection() as conn:
            keel.store.write_events(conn, [event])

    asyncio.get_running_loop().call_later(0.2, lambda: threading.Thread(target=store_later).start())
    r = await send(client, trace_id=trace, kind="thumbs", value="up")
    assert r.status_code == 201 and r.json()["feedback"]["call_ts"] == 1.0


# --- listings and stats ------------------------------------------------------------------


async def test_listing_by_trace_and_by_feature(client: httpx.AsyncClient, keel: Keel) -> None:
    t1, t2 = await stored_call(client, keel, "one"), await stored_call(client, keel, "two")
    await send(client, trace_id=t1, kind="rating", value=5)
    await send(client, trace_id=t2, kind="comment", comment="slow")
    await send(client, trace_id=t2, kind="thumbs", value="down")
    r = await client.get("/api/feedback", params={"feature": "f"})
    body = r.json()
    assert r.status_code == 200 and body["total"] == 3 and body["limit"] == 50
    assert [f["kind"] for f in body["feedback"]] == ["thumbs", "comment", "rating"]  # newest first
    r = await client.get("/api/feedback", params={"feature": "f", "kind": "comment"})
    assert [f["comment"] for f in r.json()["feedback"]] == ["slow"]
    r = await client.get("/api/feedback", params={"trace_id": t1})
    assert [f["value"] for f in r.json()["feedback"]] == [5.0]
    r = await client.get("/api/feedback", params={"feature": "f", "limit": 1, "offset": 1})
    assert [f["kind"] for f in r.json()["feedback"]] == ["comment"]
    r = await client.get("/api/feedback", params={"feature": "nope"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "feature_not_found"
    r = await client.get("/api/feedback", params={"kind": "like"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "kind"


async def test_stats_per_version(client: httpx.AsyncClient, keel: Keel) -> None:
    traces = [await call(client, f"m{i}") for i in range(4)]
    keel.writer.flush()
    await send(client, trace_id=traces[0], kind="thumbs", value="up")
    await send(client, trace_id=traces[1], kind="thumbs", value="up")
    await send(client, trace_id=traces[2], kind="thumbs", value="down")
    await send(client, trace_id=traces[0], kind="rating", value=4)
    await send(client, trace_id=traces[1], kind="rating", value=2)
    await send(client, trace_id=traces[3], kind="correction", output={"label": "b"})
    await send(client, trace_id=traces[0], kind="outcome", name="ticket_resolved")
    await send(client, trace_id=traces[1], kind="outcome", name="ticket_resolved", value=0)
    await send(client, trace_id=traces[2], kind="outcome", name="refund_issued", value=10)
    await send(client, trace_id=traces[3], kind="outcome", name="refund_issued", value=30)
    r = await client.get("/api/feedback/stats", params={"feature": "f"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["feature"] == "f" and len(body["versions"]) == 1
    v1 = body["versions"][0]
    assert v1["version"] == "v1" and v1["calls"] == 4 and v1["with_feedback"] == 4
    assert v1["thumbs"] == {"up": 2, "down": 1, "up_rate": pytest.approx(2 / 3)}
    assert v1["ratings"] == {"count": 2, "mean": 3.0}
    assert v1["corrections"] == {"calls": 1, "rate": 0.25}
    assert v1["outcomes"]["ticket_resolved"] == {"calls": 1, "rate": 0.25, "value_sum": 0.0,
                                                 "value_mean": 0.0}
    assert v1["outcomes"]["refund_issued"] == {"calls": 2, "rate": 0.5, "value_sum": 40.0,
                                               "value_mean": 20.0}
    assert body["totals"]["calls"] == 4 and body["totals"]["version"] is None
    r = await client.get("/api/feedback/stats")
    assert r.status_code == 400 and r.json()["error"]["param"] == "feature"


# --- weak labels -------------------------------------------------------------------------


async def test_thumbs_and_corrections_become_weak_labels_apart_from_reviews(
        client: httpx.AsyncClient, keel: Keel) -> None:
    trace = await stored_call(client, keel, "where is my card")
    sink = DatasetSink(keel.store)
    r = await send(client, trace_id=trace, kind="thumbs", value="up")
    assert r.json()["example"]["label"] == "thumbs_up"
    example = sink.get("f-feedback", f"{trace}:user")
    assert example is not None and example.expected == {"label": "a"}
    assert example.provenance["source"] == "feedback" and example.provenance["verdict"] == "thumbs_up"
    assert example.metadata["label_quality"] == "weak"

    await send(client, trace_id=trace, kind="thumbs", value="down")
    example = sink.get("f-feedback", f"{trace}:user")
    assert example is not None and example.expected is None  # a negative

    await send(client, trace_id=trace, kind="correction", output={"label": "b"})
    await send(client, trace_id=trace, kind="thumbs", value="up")  # the correction still wins
    example = sink.get("f-feedback", f"{trace}:user")
    assert example is not None and example.expected == {"label": "b"}
    assert example.provenance["original_output"] == {"label": "a"}
    assert sink.count("f-feedback") == 1 and sink.count("f-reviews") == 0

    r = await send(client, trace_id=trace, kind="rating", value=1)  # no label from ratings
    assert r.json()["example"] is None
    version = DatasetStore(keel.store).commit("f-feedback", actor="test")
    items = DatasetStore(keel.store).items("f-feedback", version.number)
    assert [i.expected for i in items] == [{"label": "b"}]


async def test_no_weak_labels_into_a_dataset_a_gate_uses(tmp_path: Path) -> None:
    keel = Keel(spec_with(basic_feature(gate={"dataset": "f-feedback@1"})), settings_in(tmp_path))
    async with client_for(keel) as client:
        trace = await stored_call(client, keel)
        r = await send(client, trace_id=trace, kind="correction", output={"label": "b"})
        assert r.status_code == 201 and r.json()["example"] is None
        assert DatasetSink(keel.store).count("f-feedback") == 0


async def test_thumbs_on_a_refused_answer_make_no_label(client: httpx.AsyncClient,
                                                        keel: Keel) -> None:
    scripted(keel, "p1").script = [Completion(output={"label": "a"}, confidence=0.01)]
    trace = await stored_call(client, keel)
    r = await send(client, trace_id=trace, kind="thumbs", value="up")
    assert r.status_code == 201 and r.json()["example"] is None


# --- keys --------------------------------------------------------------------------------


async def test_an_app_key_sends_feedback_only_on_its_features(tmp_path: Path) -> None:
    keel = make_keel(tmp_path)
    async with served(keel) as client:
        keys = create_keys(keel.store)
        r = await client.post("/v1/features/g", json={"input": {"text": "hi"}},
                              headers=bearer(keys["app"]))
        trace = r.json()["trace_id"]
        body = {"trace_id": trace, "kind": "thumbs", "value": "up"}
        r = await client.post("/api/feedback", json=body, headers=bearer(keys["app_f"]))
        assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"
        r = await client.post("/api/feedback", json=body, headers=bearer(keys["viewer"]))
        assert r.status_code == 403
        r = await client.post("/api/feedback", json=body, headers=bearer(keys["app"]))
        assert r.status_code == 201, r.text
        r = await client.get("/api/feedback/stats", params={"feature": "g"},
                             headers=bearer(keys["viewer"]))
        assert r.status_code == 200 and r.json()["totals"]["thumbs"]["up"] == 1


# --- privacy -----------------------------------------------------------------------------


async def test_feedback_keeps_no_secrets_and_follows_the_features_privacy(
        tmp_path: Path) -> None:
    keel = Keel(spec_with(basic_feature(output={"kind": "text"}, validators=[],
                                        privacy={"store_output": "redacted"})),
                settings_in(tmp_path))
    scripted(keel, "p1").default = Completion(output={"text": "hello"}, confidence=0.9)
    secret = "sk-proj-" + "a1B2c3D4e5" * 4
    async with client_for(keel) as client:
        trace = await stored_call(client, keel)
        r = await send(client, trace_id=trace, kind="correction",
                       output={"text": "write to ann@example.com"},
                       comment=f"my key {secret} and ann@example.com",
                       metadata={"api_key": secret})
        assert r.status_code == 201, r.text
        record = r.json()["feedback"]
        assert "ann@example.com" not in record["output"]["text"]
        assert secret not in record["comment"] and "ann@example.com" not in record["comment"]
        assert record["metadata"]["api_key"] != secret
        example = DatasetSink(keel.store).get("f-feedback", f"{trace}:user")
        assert example is not None and "ann@example.com" not in str(example.expected)
