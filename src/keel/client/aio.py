"""``keel.AsyncClient``: a running Keel server from Python, on httpx.

::

    async with keel.AsyncClient() as k:            # KEEL_BASE_URL, KEEL_API_KEY
        outcome = await k.call("intent", {"text": "my card has not arrived"}, user="u1")
        await k.thumbs_up(outcome.trace_id)
        await k.outcome(outcome.trace_id, "ticket_resolved")

Errors are Keel's own exceptions (:mod:`keel.client.errors`). A 429 or 503 is tried
again, up to ``max_retries`` times, after the ``Retry-After`` the server sent (else an
exponential backoff with jitter), unless that is longer than ``max_wait_s``: then the
error is raised at once, its ``retry_after`` saying when to come back. Connection
errors before anything was sent are tried again the same way.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from keel.client.errors import error_from_response, retry_after
from keel.client.results import (
    FeatureInfo,
    FeedbackPage,
    FeedbackRecord,
    FeedbackResult,
    FeedbackStats,
    Review,
    ReviewPage,
    outcome_from_json,
)
from keel.types import JSON, Outcome

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
RETRY_STATUSES = frozenset({429, 503})
USER_AGENT = "keel-client/0.1.0"


class AsyncClient:
    """One server, one connection pool. ``base_url`` and ``api_key`` default to
    ``KEEL_BASE_URL`` (else ``http://127.0.0.1:8000``) and ``KEEL_API_KEY`` (else none).
    ``transport`` replaces the network, e.g. ``httpx.ASGITransport(app)`` in tests."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float = 60.0, max_retries: int = 3, max_wait_s: float = 30.0,
                 backoff_s: float = 0.5, transport: httpx.AsyncBaseTransport | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.base_url = (base_url or env.get("KEEL_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        key = api_key if api_key is not None else env.get("KEEL_API_KEY")
        self.max_retries, self.max_wait_s, self.backoff_s = max_retries, max_wait_s, backoff_s
        headers = {"user-agent": USER_AGENT, "accept": "application/json"}
        if key:
            headers["authorization"] = f"Bearer {key}"
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=headers,
                                       timeout=timeout, transport=transport)
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep  # tests replace it

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- the wire -------------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        return float(self.backoff_s * 2**attempt * (0.5 + random.random() / 2))

    async def request(self, method: str, path: str, *, body: JSON = None,
                      params: Mapping[str, Any] | None = None) -> httpx.Response:
        """One request with the retries; a KeelError for any error status."""
        content = None if body is None else orjson.dumps(body)
        headers = None if content is None else {"content-type": "application/json"}
        query = {k: v for k, v in (params or {}).items() if v is not None}
        attempt = 0
        while True:
            try:
                response = await self._http.request(method, path, content=content,
                                                    headers=headers, params=query)
            except (httpx.ConnectError, httpx.ConnectTimeout):
                if attempt >= self.max_retries:
                    raise
                await self.sleep(self._backoff(attempt))
                attempt += 1
                continue
            if response.status_code in RETRY_STATUSES and attempt < self.max_retries:
                wait = retry_after(response.headers)
                wait = self._backoff(attempt) if wait is None else wait
                if wait <= self.max_wait_s:
                    await self.sleep(wait)
                    attempt += 1
                    continue
            if response.is_error:
                raise error_from_response(response.status_code, response.content,
                                          response.headers)
            return response

    async def _json(self, method: str, path: str, *, body: JSON = None,
                    params: Mapping[str, Any] | None = None) -> Any:
        response = await self.request(method, path, body=body, params=params)
        return None if response.status_code == 204 else orjson.loads(response.content)

    # --- features -------------------------------------------------------------------

    async def call(self, feature: str, input: dict[str, JSON], *, user: str | None = None,
                   session: str | None = None) -> Outcome:
        """Call a feature (``POST /v1/features/{feature}``). ``user`` is the end user
        (ledgers, budgets, sticky canaries), ``session`` keeps a canary sticky without one.
        Every target failing raises AllTargetsFailed (its ``trace_id`` set)."""
        envelope: dict[str, JSON] = {"input": input}
        if user is not None:
            envelope["user"] = user
        if session is not None:
            envelope["session"] = session
        body = await self._json("POST", f"/v1/features/{_seg(feature)}", body=envelope)
        return outcome_from_json(body)

    async def features(self) -> list[FeatureInfo]:
        body = await self._json("GET", "/v1/features")
        return [FeatureInfo.from_json(f) for f in body["features"]]

    # --- feedback -------------------------------------------------------------------

    async def feedback(self, trace_id: str, kind: str, *, value: float | str | None = None,
                       name: str | None = None, comment: str | None = None,
                       output: JSON = None, source: str | None = None,
                       metadata: dict[str, JSON] | None = None) -> FeedbackResult:
        """Attach feedback to a call (``POST /api/feedback``); sending the same again is
        harmless. Kinds: thumbs, rating, comment, correction, outcome (docs/feedback.md)."""
        body: dict[str, JSON] = {"trace_id": trace_id, "kind": kind}
        for key, given in (("value", value), ("name", name), ("comment", comment),
                           ("output", output), ("source", source), ("metadata", metadata)):
            if given is not None:
                body[key] = given
        return FeedbackResult.from_json(await self._json("POST", "/api/feedback", body=body))

    async def thumbs_up(self, trace_id: str, *, comment: str | None = None,
                        source: str | None = None) -> FeedbackResult:
        return await self.feedback(trace_id, "thumbs", value="up", comment=comment,
                                   source=source)

    async def thumbs_down(self, trace_id: str, *, comment: str | None = None,
                          source: str | None = None) -> FeedbackResult:
        return await self.feedback(trace_id, "thumbs", value="down", comment=comment,
                                   source=source)

    async def rate(self, trace_id: str, rating: float, *, comment: str | None = None,
                   source: str | None = None) -> FeedbackResult:
        """A rating from 1 to 5."""
        return await self.feedback(trace_id, "rating", value=rating, comment=comment,
                                   source=source)

    async def comment(self, trace_id: str, text: str, *,
                      source: str | None = None) -> FeedbackResult:
        return await self.feedback(trace_id, "comment", comment=text, source=source)

    async def correct(self, trace_id: str, output: JSON, *, comment: str | None = None,
                      source: str | None = None) -> FeedbackResult:
        """What the answer should have been, in the feature's output shape (a label
        feature takes ``"label"`` or ``{"label": "label"}``)."""
        return await self.feedback(trace_id, "correction", output=output, comment=comment,
                                   source=source)

    async def outcome(self, trace_id: str, name: str, value: float | None = None, *,
                      source: str | None = None,
                      metadata: dict[str, JSON] | None = None) -> FeedbackResult:
        """A business outcome of the call, e.g. ``ticket_resolved`` or ``refund_issued``
        with its amount; ``value=0`` records that it did not happen."""
        return await self.feedback(trace_id, "outcome", name=name, value=value, source=source,
                                   metadata=metadata)

    async def list_feedback(self, *, trace_id: str | None = None, feature: str | None = None,
                            kind: str | None = None, version: str | None = None,
                            limit: int = 50, offset: int = 0) -> FeedbackPage:
        body = await self._json("GET", "/api/feedback", params={
            "trace_id": trace_id, "feature": feature, "kind": kind, "version": version,
            "limit": limit, "offset": offset})
        return FeedbackPage([FeedbackRecord.from_json(f) for f in body["feedback"]],
                            body["total"], body["limit"], body["offset"])

    async def feedback_stats(self, feature: str, *, since: float | None = None,
                             until: float | None = None) -> FeedbackStats:
        """Thumbs, ratings, corrections and outcome rates per version (default: calls of
        the last 7 days)."""
        body = await self._json("GET", "/api/feedback/stats",
                                params={"feature": feature, "since": since, "until": until})
        return FeedbackStats.from_json(body)

    # --- the review queue -------------------------------------------------------------

    async def reviews(self, *, feature: str | None = None, status: str = "pending",
                      limit: int = 50, offset: int = 0) -> ReviewPage:
        body = await self._json("GET", "/api/reviews", params={
            "feature": feature, "status": status, "limit": limit, "offset": offset})
        return ReviewPage([Review.from_json(i) for i in body["items"]], body["total"],
                          body["limit"], body["offset"])

    async def next_review(self, reviewer: str, *, feature: str | None = None) -> Review | None:
        """Claim the next item for ``reviewer``; None when nothing is left."""
        body: dict[str, JSON] = {"reviewer": reviewer}
        if feature is not None:
            body["feature"] = feature
        item = await self._json("POST", "/api/reviews/next", body=body)
        return None if item is None else Review.from_json(item)

    async def verdict(self, trace_id: str, reviewer: str, verdict: str, *, output: JSON = None,
                      reason: str | None = None) -> Review:
        """approve, edit (with ``output``) or reject (with ``reason``)."""
        body: dict[str, JSON] = {"reviewer": reviewer, "verdict": verdict}
        if output is not None:
            body["output"] = output
        if reason is not None:
            body["reason"] = reason
        item = await self._json("POST", f"/api/reviews/{_seg(trace_id)}/verdict", body=body)
        return Review.from_json(item)


def _seg(value: str) -> str:
    """One path segment, escaped."""
    return quote(value, safe="")
