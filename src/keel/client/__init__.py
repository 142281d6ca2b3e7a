"""A Python client for a running Keel server (docs/client.md).

:class:`AsyncClient` is the core (httpx); :class:`Client` is its blocking facade. Both
are exported as ``keel.AsyncClient`` and ``keel.Client``.
"""

from keel.client.aio import AsyncClient
from keel.client.errors import error_from_response
from keel.client.results import (
    FeatureInfo,
    FeedbackPage,
    FeedbackRecord,
    FeedbackResult,
    FeedbackStats,
    OutcomeStats,
    Review,
    ReviewPage,
    VersionFeedback,
    WeakLabel,
)
from keel.client.sync import Client

__all__ = [
    "AsyncClient",
    "Client",
    "FeatureInfo",
    "FeedbackPage",
    "FeedbackRecord",
    "FeedbackResult",
    "FeedbackStats",
    "OutcomeStats",
    "Review",
    "ReviewPage",
    "VersionFeedback",
    "WeakLabel",
    "error_from_response",
]
