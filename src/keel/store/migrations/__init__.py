"""Named schema migrations, applied once each and recorded in ``keel_migrations``.

Append new ones at the end; never edit one that has shipped. The SQL is kept to the
subset SQLite and PostgreSQL share, so both backends run the same list.
"""

from __future__ import annotations

MIGRATIONS: list[tuple[str, str]] = [
    (
        "001_events",
        """
        CREATE TABLE events (
            trace_id TEXT PRIMARY KEY,
            ts DOUBLE PRECISION NOT NULL,
            feature TEXT NOT NULL,
            version TEXT,
            decision TEXT NOT NULL,
            confidence DOUBLE PRECISION,
            latency_ms DOUBLE PRECISION NOT NULL,
            input_tokens INTEGER NOT NULL,
            output_tokens INTEGER NOT NULL,
            cost_usd DOUBLE PRECISION,
            user_id TEXT,
            key_id TEXT,
            error_code TEXT,
            timings TEXT NOT NULL,
            attempts TEXT NOT NULL,
            validations TEXT NOT NULL,
            input TEXT,
            output TEXT
        );
        CREATE INDEX events_ts ON events (ts);
        CREATE INDEX events_feature_ts ON events (feature, ts);
        """,
    ),
    (
        "002_reviews",
        """
        CREATE TABLE reviews (
            trace_id TEXT PRIMARY KEY,
            ts DOUBLE PRECISION NOT NULL,
            feature TEXT NOT NULL,
            version TEXT,
            confidence DOUBLE PRECISION,
            reason TEXT,
            status TEXT NOT NULL DEFAULT 'pending'
        );
        CREATE INDEX reviews_feature_status ON reviews (feature, status, ts);
        """,
    ),
]
