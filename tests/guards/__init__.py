"""Tests of the guard detectors. BANKING77 is read by path from ``../shared`` (or
``$KEEL_BANKING77_DIR``), never copied into the repo."""

from __future__ import annotations

import csv
import os
from functools import cache
from pathlib import Path

BANKING77 = Path(os.environ.get(
    "KEEL_BANKING77_DIR", Path(__file__).resolve().parents[3] / "shared" / "data" / "banking77"))


@cache
def banking77_texts(split: str = "test") -> tuple[str, ...]:
    """The customer messages of one BANKING77 split (3,080 in ``test``)."""
    with (BANKING77 / f"{split}.csv").open(newline="", encoding="utf-8") as f:
        return tuple(row["text"] for row in csv.DictReader(f))
