"""The public surface is deliberate: this test pins it (change it on purpose, not by accident)."""

from __future__ import annotations

import keel


def test_public_api_is_pinned() -> None:
    assert sorted(keel.__all__) == [
        "AsyncClient", "Attempt", "Call", "Client", "Completion", "ConfigError", "Decision",
        "Event", "Keel",
        "KeelError", "KeelSpec", "Outcome", "Settings", "SyncKeel", "Usage", "load_spec",
        "open_sync",
    ]
    for name in keel.__all__:
        assert getattr(keel, name) is not None


def test_the_sync_facade_answers_like_the_async_core(tmp_path: object) -> None:
    from pathlib import Path

    from tests.conftest import basic_feature, settings_in, spec_with

    with keel.open_sync(settings_in(Path(str(tmp_path))), spec_with(basic_feature())) as k:
        outcome = k.call("f", {"text": "hello"})
        assert outcome.decision is keel.Decision.ACCEPTED and outcome.output == {"label": "a"}
