"""Eval records for the ``cheapest`` routing policy (:mod:`keel.stages.route_policy`).

A version's record is its latest finished eval run on the policy's dataset version (and
split). ``name@N`` names the version; a bare ``name`` means the version pinned for the
feature with ``keel data pin`` when the pin is of that dataset, else its latest version.
Records are read when eval runs land — :class:`keel.control.sync.ControlSync` watches
``eval_runs`` and calls :func:`refresh_routing` — never per call.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import orjson

from keel.control.datasets import DatasetStore, parse_ref
from keel.spec_routing import CheapestSpec
from keel.stages.route_policy import EvalRecord
from keel.store.db import Store

if TYPE_CHECKING:
    from keel.gateway import Keel


def dataset_version(store: Store, feature: str, ref: str) -> tuple[str, int] | None:
    """The (dataset, number) a ``cheapest`` policy reads; None: the dataset has no version."""
    name, number = parse_ref(ref)
    if number is not None:
        return name, number
    pinned = DatasetStore(store).pinned(feature)
    if pinned is not None and pinned[0] == name:
        return pinned
    with store.connection() as conn:
        row = conn.execute("SELECT MAX(number) FROM dataset_versions WHERE dataset = ?",
                           (name,)).fetchone()
    return None if row is None or row[0] is None else (name, int(row[0]))


def eval_records(store: Store, feature: str, spec: CheapestSpec) -> dict[str, EvalRecord]:
    """Each version's latest finished run on the policy's dataset version and split."""
    which = dataset_version(store, feature, spec.dataset)
    if which is None:
        return {}
    sql = ("SELECT id, version, metrics FROM eval_runs WHERE feature = ? AND dataset = ?"
           " AND dataset_number = ? AND status = 'done' AND metrics IS NOT NULL")
    args: list[Any] = [feature, *which]
    if spec.split is None:
        sql += " AND split IS NULL"
    else:
        sql += " AND split = ?"
        args.append(spec.split)
    with store.connection() as conn:
        rows = conn.execute(sql + " ORDER BY finished_at, id", args).fetchall()
    return {row[1]: EvalRecord(row[0], orjson.loads(row[2])) for row in rows}  # newest wins


async def refresh_routing(keel: Keel) -> None:
    """Give every ``cheapest`` policy its features' current eval records."""
    for name, feature in keel.features.items():
        spec = feature.spec.routing
        if feature.routing is None or spec is None or spec.cheapest is None:
            continue
        records = await asyncio.to_thread(eval_records, keel.store, name, spec.cheapest)
        feature.routing.set_evals(records)
