"""Persistence behind one interface (:class:`keel.store.db.Store`). SQLite (one file,
WAL) is the embedded default; PostgreSQL when ``KEEL_DATABASE_URL`` names one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from keel.store.db import Connection, Store
from keel.store.sqlite import SQLiteStore

if TYPE_CHECKING:
    from keel.settings import Settings

__all__ = ["Connection", "SQLiteStore", "Store", "open_store"]

POSTGRES_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")


def open_store(settings: Settings) -> Store:
    """The store the settings name: ``database_url`` if set (``postgresql://...`` or
    ``sqlite:///path``), else the SQLite file at ``database``."""
    url = settings.database_url
    if url and url.startswith(POSTGRES_SCHEMES):
        try:
            from keel.store.postgres import PostgresStore  # psycopg: the `scale` extra
        except ImportError as exc:
            from keel.errors import ConfigError

            raise ConfigError(f"KEEL_DATABASE_URL names PostgreSQL, but {exc.name} is not "
                              "installed: pip install 'keel[scale]'") from exc
        return PostgresStore(url)
    if url and url.startswith("sqlite:///"):
        return SQLiteStore(url.removeprefix("sqlite:///"))
    if url:
        from keel.errors import ConfigError

        raise ConfigError(f"KEEL_DATABASE_URL {url.split('://')[0]}://... is not supported: "
                          "use postgresql://user@host:port/db or sqlite:///path/to/keel.db")
    return SQLiteStore(settings.database)
