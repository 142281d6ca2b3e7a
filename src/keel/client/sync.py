"""``keel.Client``: the blocking facade over :class:`keel.AsyncClient`.

Each method runs the async one on the client's own event loop, in a daemon thread: the
same code, retries and errors. A client never closed does not keep the process alive.

::

    with keel.Client("http://127.0.0.1:8000") as k:
        outcome = k.call("intent", {"text": "my card has not arrived"})
        k.correct(outcome.trace_id, "card_arrival")
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

from keel.client.aio import AsyncClient

P = ParamSpec("P")
T = TypeVar("T")


def _blocking(method: Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, T]]
              ) -> Callable[Concatenate[Client, P], T]:
    """The blocking twin of an AsyncClient method."""

    def run(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._run(method(self.aio, *args, **kwargs))

    run.__name__, run.__qualname__ = method.__name__, f"Client.{method.__name__}"
    run.__doc__ = method.__doc__
    return run


class Client:
    """Takes what :class:`AsyncClient` takes; ``close()`` it (or use ``with``) to free
    its connections and its thread."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None,
                 **options: Any) -> None:
        self.aio = AsyncClient(base_url, api_key, **options)
        self.base_url = self.aio.base_url
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="keel-client",
                                        daemon=True)
        self._thread.start()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop.is_closed():
            coro.close()
            raise RuntimeError("this keel.Client is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # interrupted (Ctrl-C): do not leave the request running
            raise

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._run(self.aio.aclose())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    call = _blocking(AsyncClient.call)
    features = _blocking(AsyncClient.features)
    feedback = _blocking(AsyncClient.feedback)
    thumbs_up = _blocking(AsyncClient.thumbs_up)
    thumbs_down = _blocking(AsyncClient.thumbs_down)
    rate = _blocking(AsyncClient.rate)
    comment = _blocking(AsyncClient.comment)
    correct = _blocking(AsyncClient.correct)
    outcome = _blocking(AsyncClient.outcome)
    list_feedback = _blocking(AsyncClient.list_feedback)
    feedback_stats = _blocking(AsyncClient.feedback_stats)
    reviews = _blocking(AsyncClient.reviews)
    next_review = _blocking(AsyncClient.next_review)
    verdict = _blocking(AsyncClient.verdict)
