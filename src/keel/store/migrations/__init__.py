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
            output TEXT,
            checks TEXT
        );
        CREATE INDEX events_ts ON events (ts);
        CREATE INDEX events_feature_ts ON events (feature, ts);
        """,
    ),
    (
        "002_reviews",
        """
        CREATE TABLE review_items (
            trace_id TEXT PRIMARY KEY,
            ts DOUBLE PRECISION NOT NULL,
            feature TEXT NOT NULL,
            version TEXT,
            mode TEXT NOT NULL,
            confidence DOUBLE PRECISION,
            reason TEXT,
            input TEXT,
            output TEXT,
            validations TEXT NOT NULL,
            overlap INTEGER NOT NULL DEFAULT 1,
            audit INTEGER NOT NULL DEFAULT 0,
            status TEXT NOT NULL DEFAULT 'pending',
            assigned_to TEXT,
            assigned_until DOUBLE PRECISION,
            final_verdict TEXT,
            final_output TEXT,
            decided_at DOUBLE PRECISION
        );
        CREATE INDEX review_items_queue ON review_items (feature, status, confidence, ts);
        CREATE TABLE review_verdicts (
            trace_id TEXT NOT NULL,
            reviewer TEXT NOT NULL,
            verdict TEXT NOT NULL,
            output TEXT,
            reason TEXT,
            ts DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (trace_id, reviewer)
        );
        CREATE TABLE dataset_examples (
            dataset TEXT NOT NULL,
            example_id TEXT NOT NULL,
            input TEXT NOT NULL,
            expected TEXT,
            metadata TEXT NOT NULL,
            provenance TEXT NOT NULL,
            ts DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (dataset, example_id)
        );
        """,
    ),
    (
        "003_review_claims",
        # one row per live assignment of an item to a reviewer: with overlap n an item
        # is handed to up to n reviewers at once (review_items.assigned_to keeps the
        # latest, for display). Rows go when the reviewer votes or the item closes;
        # expired ones (until < now) no longer count.
        """
        CREATE TABLE review_claims (
            trace_id TEXT NOT NULL,
            reviewer TEXT NOT NULL,
            until DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (trace_id, reviewer)
        );
        CREATE INDEX review_claims_reviewer ON review_claims (reviewer, until);
        CREATE INDEX review_items_status_ts ON review_items (status, ts);
        CREATE INDEX review_items_feature_status_ts ON review_items (feature, status, ts);
        CREATE INDEX review_items_status_confidence ON review_items (status, confidence, ts);
        """,
    ),
    (
        "004_policy_changes",
        """
        CREATE TABLE policy_changes (
            id INTEGER PRIMARY KEY,
            feature TEXT NOT NULL,
            field TEXT NOT NULL,
            old_value DOUBLE PRECISION,
            new_value DOUBLE PRECISION,
            actor TEXT NOT NULL,
            source TEXT NOT NULL,
            details TEXT NOT NULL,
            ts DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX policy_changes_feature ON policy_changes (feature, field, ts);
        """,
    ),
]
