"""Named schema migrations, applied once each and recorded in ``keel_migrations``.

Append new ones at the end; never edit one that has shipped. The SQL is kept to the
subset SQLite and PostgreSQL share, so both backends run the same list.
"""

from __future__ import annotations

from collections.abc import Callable

from keel.store import rollups
from keel.store.db import Connection


def _rollups_006() -> str:
    """006_rollups, written out by code because of its 72 histogram columns; frozen with
    the migration (keel.store.rollups describes the tables and reads them)."""
    hist = ", ".join(f"h{i:02d} BIGINT NOT NULL DEFAULT 0" for i in range(72))
    tables = []
    for level in ("minute", "hour", "day"):
        tables.append(f"""
        CREATE TABLE rollup_{level} (
            bucket BIGINT NOT NULL,
            feature TEXT NOT NULL,
            version TEXT NOT NULL,
            decision TEXT NOT NULL,
            calls BIGINT NOT NULL,
            client_errors BIGINT NOT NULL,
            validation_failures BIGINT NOT NULL,
            input_tokens BIGINT NOT NULL,
            output_tokens BIGINT NOT NULL,
            cost_usd DOUBLE PRECISION NOT NULL,
            cost_unknown BIGINT NOT NULL,
            latency_sum DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (bucket, feature, version, decision)
        );
        CREATE INDEX rollup_{level}_feature ON rollup_{level} (feature, bucket);
        CREATE TABLE latency_{level} (
            bucket BIGINT NOT NULL,
            feature TEXT NOT NULL,
            version TEXT NOT NULL,
            latency_min DOUBLE PRECISION NOT NULL,
            latency_max DOUBLE PRECISION NOT NULL,
            {hist},
            PRIMARY KEY (bucket, feature, version)
        );
        CREATE INDEX latency_{level}_feature ON latency_{level} (feature, bucket);""")
    return "".join(tables) + """
        CREATE TABLE ledger (
            day BIGINT NOT NULL,
            feature TEXT NOT NULL,
            version TEXT NOT NULL,
            key_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            calls BIGINT NOT NULL,
            input_tokens BIGINT NOT NULL,
            output_tokens BIGINT NOT NULL,
            cost_usd DOUBLE PRECISION NOT NULL,
            cost_unknown BIGINT NOT NULL,
            PRIMARY KEY (day, feature, version, key_id, user_id)
        );
        CREATE TABLE ledger_user (
            day BIGINT NOT NULL,
            user_id TEXT NOT NULL,
            calls BIGINT NOT NULL,
            input_tokens BIGINT NOT NULL,
            output_tokens BIGINT NOT NULL,
            cost_usd DOUBLE PRECISION NOT NULL,
            cost_unknown BIGINT NOT NULL,
            PRIMARY KEY (day, user_id)
        );
        CREATE INDEX ledger_user_user ON ledger_user (user_id, day);
        CREATE TABLE ledger_key (
            day BIGINT NOT NULL,
            key_id TEXT NOT NULL,
            calls BIGINT NOT NULL,
            input_tokens BIGINT NOT NULL,
            output_tokens BIGINT NOT NULL,
            cost_usd DOUBLE PRECISION NOT NULL,
            cost_unknown BIGINT NOT NULL,
            PRIMARY KEY (day, key_id)
        );
        CREATE INDEX events_decision_ts ON events (decision, ts) WHERE decision <> 'accepted';
        CREATE INDEX events_user_ts ON events (user_id, ts);
        CREATE INDEX events_key_ts ON events (key_id, ts);
        """


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
    (
        "006_rollups",
        # the dashboard's aggregates and the cost ledger, kept by the event writer in the
        # transaction that inserts the events (keel.store.rollups); filled from the events
        # already stored by the migration's data step (DATA_STEPS). Empty version, user or
        # key is ''. Plus the events indexes the explorer's filters need.
        _rollups_006(),
    ),
    (
        "007_budget_alerts",
        # one row per budget, scope value, period and threshold crossed (50/80/100%);
        # delivered: NULL when no webhook is set, else whether the webhook took it
        """
        CREATE TABLE budget_alerts (
            id INTEGER PRIMARY KEY,
            budget TEXT NOT NULL,
            scope TEXT NOT NULL,
            value TEXT NOT NULL,
            period TEXT NOT NULL,
            period_start DOUBLE PRECISION NOT NULL,
            threshold DOUBLE PRECISION NOT NULL,
            spent_usd DOUBLE PRECISION NOT NULL,
            limit_usd DOUBLE PRECISION NOT NULL,
            delivered INTEGER,
            ts DOUBLE PRECISION NOT NULL,
            UNIQUE (budget, value, period_start, threshold)
        );
        CREATE INDEX budget_alerts_ts ON budget_alerts (ts);
        """,
    ),
    (
        "008_event_details",
        # why a call ended as it did (Event.reason), and where its answer came from:
        # a cache (exact / semantic) or a routing policy's choice, with what that saved
        """
        ALTER TABLE events ADD COLUMN reason TEXT;
        ALTER TABLE events ADD COLUMN cache TEXT;
        ALTER TABLE events ADD COLUMN saved_usd DOUBLE PRECISION;
        ALTER TABLE events ADD COLUMN policy TEXT;
        """,
    ),
    (
        "009_access",
        # API keys (#7): only the sha256 of a key is kept; id is its first 12 hex digits
        # (what events record), prefix its first characters (for people). features: a
        # JSON list, NULL for every feature. audit_log: every control-plane change, a
        # hash chain (keel.control.audit): seq counts from 1 with no gaps, hash = sha256
        # over prev_hash and the row
        """
        CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            digest TEXT NOT NULL UNIQUE,
            prefix TEXT NOT NULL,
            name TEXT NOT NULL,
            role TEXT NOT NULL,
            features TEXT,
            created_by TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            revoked_by TEXT,
            revoked_at DOUBLE PRECISION
        );
        CREATE UNIQUE INDEX api_keys_live_name ON api_keys (name) WHERE revoked_at IS NULL;
        CREATE TABLE audit_log (
            seq BIGINT PRIMARY KEY,
            ts DOUBLE PRECISION NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT NOT NULL,
            details TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL
        );
        CREATE INDEX audit_log_target ON audit_log (target, seq);
        """,
    ),
    (
        "011_feedback",
        # end-user feedback and business outcomes per call (keel.control.feedback): one
        # row per (trace id, kind, outcome name or '', source); the call's feature,
        # versions and time are copied in, so canary outcome rates need no join
        """
        CREATE TABLE feedback (
            id TEXT PRIMARY KEY,
            trace_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            name TEXT NOT NULL,
            source TEXT NOT NULL,
            feature TEXT NOT NULL,
            version TEXT,
            routed TEXT,
            call_ts DOUBLE PRECISION NOT NULL,
            user_id TEXT,
            value DOUBLE PRECISION,
            comment TEXT,
            output TEXT,
            metadata TEXT NOT NULL,
            key_id TEXT,
            revision INTEGER NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            UNIQUE (trace_id, kind, name, source)
        );
        CREATE INDEX feedback_feature_routed_ts ON feedback (feature, routed, call_ts);
        CREATE INDEX feedback_feature_updated ON feedback (feature, updated_at);
        """,
    ),
    (
        "012_retention",
        # how far pruning got (keel.control.retention): payloads cleared up to a time,
        # and when the leader last pruned, so a restart does not prune again at once
        """
        CREATE TABLE retention_marks (
            name TEXT PRIMARY KEY,
            value DOUBLE PRECISION NOT NULL
        );
        """,
    ),
]

# Python steps run after a migration's SQL, in the same transaction: data the shared SQL
# subset cannot compute portably (006: the rollups of the events already stored)
DATA_STEPS: dict[str, Callable[[Connection], object]] = {
    "006_rollups": rollups.backfill,
}
