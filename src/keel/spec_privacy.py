"""keel.yaml's privacy and retention sections (docs/privacy.md):

    features:
      triage:
        privacy: {store_input: redacted, store_output: full}
    retention:
      events_days: 90
      payloads_days: 30
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

StoreMode = Literal["full", "redacted", "none"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PrivacySpec(_Strict):
    """What a feature's events keep of each call. Secrets are masked whatever this says."""

    store_input: StoreMode = Field(
        default="full", description="full, redacted (personal data masked) or none")
    store_output: StoreMode = Field(
        default="full", description="full, redacted (personal data masked) or none")
    kinds: list[Literal["email", "phone", "card", "iban", "national_id"]] | None = Field(
        default=None, description="the personal data redacted masks (default: every kind)")


class RetentionSpec(_Strict):
    """How long the store keeps things, in days (null: for ever). The day rollups and the
    cost ledger are always kept. The defaults keep what the dashboard (30-day views),
    SLO windows (up to 90 days) and drift reports read."""

    events_days: float | None = Field(default=90, gt=0, description="events, whole")
    payloads_days: float | None = Field(
        default=30, gt=0, description="the input and output of events (the rest stays)")
    closed_reviews_days: float | None = Field(
        default=365, gt=0, description="review items closed this long ago, with their verdicts")
    minute_rollups_days: float | None = Field(default=31, gt=0)
    hour_rollups_days: float | None = Field(default=90, gt=0)
    interval_s: float = Field(default=3600, gt=0, description="how often the leader prunes")
    batch_size: int = Field(default=2000, ge=1, le=100_000, description="rows per statement")
