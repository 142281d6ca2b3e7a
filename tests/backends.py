"""The store backends the suite runs against (``pytest --backend sqlite|postgres``).

With ``postgres`` every SQLite path a test names is served by its own PostgreSQL
schema instead (``keel_t_<hash of the path>``), so a test that opens ``tmp/keel.db``
twice, or hands the path to a server it starts, sees one database, and two paths are
two databases, as with files. Redis-backed parts use ``KEEL_TEST_REDIS_URL``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from keel.settings import Settings
from keel.store import Store, open_store

POSTGRES_URL = os.environ.get("KEEL_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")
REDIS_URL = os.environ.get("KEEL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
BACKEND = "sqlite"  # set by tests/conftest.py from --backend
SCHEMA_PREFIX = "keel_t_"  # + the pytest process id: concurrent runs keep apart
RUN_PREFIX = f"{SCHEMA_PREFIX}{os.getpid()}_"


def schema_for(path: Path | str) -> str:
    return RUN_PREFIX + hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:16]


def url_for(path: Path | str) -> str:
    return f"{POSTGRES_URL}?schema={schema_for(path)}"


def store_at(path: Path | str) -> Store:
    """The store a test's database path stands for, on the backend under test (also in
    fixtures wider than a test, where the per-test Settings patch is not active)."""
    if BACKEND == "postgres":
        return open_store(Settings(database=Path(path), database_url=url_for(path)))
    return open_store(Settings(database=Path(path)))


def db_args(path: Path | str) -> list[str]:
    """The ``--db`` flag for a ``keel`` subprocess: the file, or on PostgreSQL the URL of
    the schema that stands for it (what :func:`store_at` opens in the test)."""
    return ["--db", url_for(path) if BACKEND == "postgres" else str(path)]
