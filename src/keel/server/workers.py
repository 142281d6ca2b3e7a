"""``keel serve --workers N``: N processes behind one socket, each its own Keel.

uvicorn's supervisor starts the workers (``spawn``) and restarts one that dies; each
imports :func:`app` and builds a Keel from the settings the parent resolved (passed
in ``KEEL_WORKER_SETTINGS``, so flags and environment mean the same in every worker).
The workers share nothing in memory: the store (SQLite's file, or PostgreSQL) and
Redis, when configured, are what they share; one of them leads the control plane
through the store's lease (keel.control.leader), the others follow it.
"""

from __future__ import annotations

import base64
import os
import pickle

from fastapi import FastAPI

from keel.gateway import Keel
from keel.server import create_app
from keel.settings import Settings
from keel.spec import load_spec

ENV = "KEEL_WORKER_SETTINGS"


def export(settings: Settings) -> None:
    """Hand ``settings`` to the workers about to be spawned."""
    os.environ[ENV] = base64.b64encode(pickle.dumps(settings)).decode()


def app() -> FastAPI:
    """The worker's app (a uvicorn factory): its Keel starts in the app's lifespan."""
    raw = os.environ.get(ENV)
    # written by export() in the parent process, never by a user: pickle is safe here
    settings = pickle.loads(base64.b64decode(raw)) if raw else Settings.from_env()
    assert isinstance(settings, Settings)
    return create_app(Keel(load_spec(settings.config), settings))
