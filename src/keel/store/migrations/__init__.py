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
    (
        "005_control",
        # the control plane (#5): the version registry and its aliases, immutable dataset
        # versions, eval runs, rollouts, and leases for the one leader among processes.
        # events.routed is the version the router chose first (events.version is the one
        # that answered, None on errors): live canary metrics are grouped by it.
        """
        ALTER TABLE events ADD COLUMN routed TEXT;
        CREATE INDEX events_feature_routed_ts ON events (feature, routed, ts);
        CREATE TABLE versions (
            feature TEXT NOT NULL,
            name TEXT NOT NULL,
            number INTEGER NOT NULL,
            provider TEXT NOT NULL,
            model TEXT NOT NULL,
            spec TEXT NOT NULL,
            spec_hash TEXT NOT NULL,
            artifact_path TEXT,
            artifact_sha256 TEXT,
            dataset TEXT,
            dataset_digest TEXT,
            card TEXT NOT NULL,
            source TEXT NOT NULL,
            registered_by TEXT NOT NULL,
            registered_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (feature, name),
            UNIQUE (feature, number)
        );
        CREATE TABLE aliases (
            feature TEXT NOT NULL,
            alias TEXT NOT NULL,
            version TEXT NOT NULL,
            actor TEXT NOT NULL,
            ts DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (feature, alias)
        );
        CREATE TABLE alias_moves (
            id INTEGER PRIMARY KEY,
            feature TEXT NOT NULL,
            alias TEXT NOT NULL,
            old_version TEXT,
            new_version TEXT,
            actor TEXT NOT NULL,
            forced INTEGER NOT NULL DEFAULT 0,
            reason TEXT,
            eval_run TEXT,
            ts DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX alias_moves_feature ON alias_moves (feature, ts);
        CREATE TABLE dataset_versions (
            dataset TEXT NOT NULL,
            number INTEGER NOT NULL,
            digest TEXT NOT NULL,
            items INTEGER NOT NULL,
            splits TEXT NOT NULL,
            parent INTEGER,
            note TEXT,
            created_by TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (dataset, number),
            UNIQUE (dataset, digest)
        );
        CREATE TABLE dataset_items (
            item_hash TEXT PRIMARY KEY,
            input TEXT NOT NULL,
            expected TEXT,
            metadata TEXT NOT NULL,
            provenance TEXT NOT NULL
        );
        CREATE TABLE dataset_members (
            dataset TEXT NOT NULL,
            number INTEGER NOT NULL,
            item_hash TEXT NOT NULL,
            split TEXT NOT NULL,
            PRIMARY KEY (dataset, number, item_hash)
        );
        CREATE INDEX dataset_members_split ON dataset_members (dataset, number, split);
        CREATE TABLE gate_pins (
            feature TEXT NOT NULL,
            dataset TEXT NOT NULL,
            number INTEGER NOT NULL,
            actor TEXT NOT NULL,
            ts DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (feature)
        );
        CREATE TABLE eval_runs (
            id TEXT PRIMARY KEY,
            feature TEXT NOT NULL,
            version TEXT NOT NULL,
            dataset TEXT NOT NULL,
            dataset_number INTEGER NOT NULL,
            dataset_digest TEXT NOT NULL,
            split TEXT,
            status TEXT NOT NULL,
            config TEXT NOT NULL,
            metrics TEXT,
            gate TEXT,
            passed INTEGER,
            items INTEGER NOT NULL,
            done INTEGER NOT NULL DEFAULT 0,
            actor TEXT NOT NULL,
            started_at DOUBLE PRECISION NOT NULL,
            finished_at DOUBLE PRECISION
        );
        CREATE INDEX eval_runs_version ON eval_runs (feature, version, dataset, dataset_number);
        CREATE TABLE eval_results (
            run_id TEXT NOT NULL,
            item_hash TEXT NOT NULL,
            output TEXT,
            scores TEXT NOT NULL,
            latency_ms DOUBLE PRECISION,
            cost_usd DOUBLE PRECISION,
            error TEXT,
            PRIMARY KEY (run_id, item_hash)
        );
        CREATE TABLE rollouts (
            id INTEGER PRIMARY KEY,
            feature TEXT NOT NULL,
            candidate TEXT NOT NULL,
            baseline TEXT NOT NULL,
            state TEXT NOT NULL,
            step INTEGER NOT NULL,
            weight DOUBLE PRECISION NOT NULL,
            config TEXT NOT NULL,
            step_started_at DOUBLE PRECISION NOT NULL,
            inconclusive_since DOUBLE PRECISION,
            reason TEXT,
            created_by TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX rollouts_feature_state ON rollouts (feature, state);
        CREATE TABLE rollout_transitions (
            id INTEGER PRIMARY KEY,
            rollout_id INTEGER NOT NULL,
            from_state TEXT,
            to_state TEXT NOT NULL,
            step INTEGER NOT NULL,
            weight DOUBLE PRECISION NOT NULL,
            reason TEXT NOT NULL,
            metrics TEXT,
            actor TEXT NOT NULL,
            ts DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX rollout_transitions_rollout ON rollout_transitions (rollout_id, ts);
        CREATE TABLE leases (
            name TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            until DOUBLE PRECISION NOT NULL
        );
        """,
    ),
]
