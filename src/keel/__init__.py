"""Keel: the system around the model.

The public surface is small; everything else is an implementation detail::

    import keel
    async with keel.Keel.from_config() as k:
        outcome = await k.call("intent", {"text": "my card has not arrived"})

    with keel.open_sync() as k:                      # the same, blocking
        print(k.call("intent", {"text": "..."}).output)

    with keel.Client("http://127.0.0.1:8000") as k:  # a running server (AsyncClient too)
        k.thumbs_up(k.call("intent", {"text": "..."}).trace_id)
"""

from keel.client import AsyncClient, Client
from keel.errors import ConfigError, KeelError
from keel.gateway import Keel, SyncKeel, open_sync
from keel.settings import Settings
from keel.spec import KeelSpec, load_spec
from keel.types import Attempt, Call, Completion, Decision, Event, Outcome, Usage

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "Attempt",
    "Call",
    "Client",
    "Completion",
    "ConfigError",
    "Decision",
    "Event",
    "Keel",
    "KeelError",
    "KeelSpec",
    "Outcome",
    "Settings",
    "SyncKeel",
    "Usage",
    "load_spec",
    "open_sync",
]
