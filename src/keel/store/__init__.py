"""Persistence behind one interface. SQLite (one file, WAL) is the embedded default."""

from keel.store.sqlite import SQLiteStore

__all__ = ["SQLiteStore"]
